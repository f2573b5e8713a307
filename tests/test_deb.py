"""`make deb` builds a package that installs with dpkg on this machine, runs from PATH, gives the
`votemesh` group the control socket, and leaves nothing behind after `dpkg --purge`.

Root only: it installs into the real /opt, /usr/bin, /lib/systemd/system and /etc. The package
name is fixed, so runs on one machine take turns through a lock file; a machine that already has
votemesh installed (or its directories) is left alone (skipped, with the reason). The package is
purged in `finally`, so a failing check still leaves the machine as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime.keys import keygen

ROOT = Path(__file__).resolve().parents[1]
LOCK = Path("/run/lock/votemesh-deb-test.lock")
LOCK_WAIT = 240.0
PLACES = ["/opt/votemesh", "/etc/votemesh", "/var/lib/votemesh", "/usr/bin/votemesh"]
UNITS = ["/lib/systemd/system/votemesh-agent.service", "/lib/systemd/system/votemesh-qnetd.service"]
CLEAN_PATH = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: installs a package with dpkg"),
    pytest.mark.skipif(
        shutil.which("dpkg-deb") is None or not Path("/usr/bin/python3").exists(),
        reason="not Debian (no dpkg-deb or /usr/bin/python3)",
    ),
]


def run(*args: str, timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command; never raises on a non-zero exit."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        list(args), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def dpkg(*args: str) -> subprocess.CompletedProcess[str]:
    """dpkg, waiting (up to 2 min) while apt or another dpkg holds its lock."""
    deadline = time.monotonic() + 120
    while True:
        result = run("dpkg", *args, env={**CLEAN_PATH, "DEBIAN_FRONTEND": "noninteractive"})
        if "lock" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(2)


def installed() -> bool:
    """Is any version of votemesh installed (or half-installed) here?"""
    result = run("dpkg-query", "-W", "-f=${Status}", "votemesh")
    return result.returncode == 0 and "not-installed" not in result.stdout


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """One run of this test per machine at a time (another worktree's or CI's)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a") as handle:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"another run held {LOCK} for {LOCK_WAIT:.0f} s")
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def group_exists() -> bool:
    try:
        grp.getgrnam("votemesh")
    except KeyError:
        return False
    return True


def one_node_config(tmp_path: Path, run_dir: Path) -> Path:
    """A one-node cluster on 127.0.0.1 whose control socket is in `run_dir` (like
    /run/votemesh under the unit)."""
    key = tmp_path / "cluster.key"
    keygen(key)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "agent.toml"
    config.write_text(
        'cluster_name = "deb"\nnode_id = 1\nnode_name = "node1"\n'
        f'key_files = ["{key}"]\nstate_dir = "{tmp_path / "state"}"\n'
        f'control_socket = "{run_dir / "agent.sock"}"\ndiscovery = false\n'
        f'[[link]]\nindex = 0\naddress = "127.0.0.1"\nport = {port}\n'
    )
    return config


def check_group_access(tmp_path: Path) -> None:
    """The installed agent run as the unit runs it (root, group votemesh, its runtime directory
    root:votemesh 0750): a member of the group gets `votemesh status`, anybody else a one-line
    permission error."""
    gid = grp.getgrnam("votemesh").gr_gid
    run_dir = Path(f"/run/votemesh-debtest-{secrets.token_hex(4)}")
    run_dir.mkdir(mode=0o750)
    os.chown(run_dir, 0, gid)
    config = one_node_config(tmp_path, run_dir)

    log = (tmp_path / "agent.log").open("w")
    agent = subprocess.Popen(
        ["/usr/bin/votemesh-agent", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        group=gid,  # as the unit's Group=votemesh
        extra_groups=[],
        env=CLEAN_PATH,
    )
    sock = run_dir / "agent.sock"
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sock.exists(), (tmp_path / "agent.log").read_text()
        assert (sock.stat().st_gid, sock.stat().st_mode & 0o777) == (gid, 0o660)
        nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup"]
        status = ["votemesh", "status", "--json", "--socket", str(sock)]
        member = run(*nobody, f"--groups={gid}", *status, env=CLEAN_PATH)
        assert member.returncode == 0, member.stderr
        assert json.loads(member.stdout)["quorate"] is True
        stranger = run(*nobody, "--clear-groups", *status, env=CLEAN_PATH)
        assert stranger.returncode == 1
        assert stranger.stderr == (
            f"votemesh: {sock}: permission denied; run as root or the votemesh group\n"
        )
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(timeout=10)
        log.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    assert agent.returncode == 0


@pytest.mark.timeout(600)
def test_deb_builds_installs_runs_and_purges(tmp_path: Path) -> None:
    """Build (timed), `dpkg -i`, run the three commands from PATH, check the group, units,
    /etc/votemesh and group access to the control socket, then `dpkg --purge`: every file, the
    units, /etc/votemesh and the group (made by the install) are gone."""
    with machine_lock():
        if installed():
            pytest.skip("votemesh is installed on this machine (dpkg -s votemesh); left alone")
        taken = [p for p in PLACES if os.path.lexists(p)]
        if taken:
            pytest.skip(f"{', '.join(taken)} exist(s) on this machine; left alone")
        had_group = group_exists()
        started = time.monotonic()
        # --no-print-directory: under `make test` (MAKELEVEL > 0) make would print
        # "Entering directory" lines around the path
        build = run(
            "make",
            "--no-print-directory",
            "deb",
            f"DEB_OUT={tmp_path / 'out'}",
            cwd=ROOT,
            timeout=300,
        )
        build_s = time.monotonic() - started
        assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-3000:]
        deb = Path(build.stdout.strip().splitlines()[-1])
        assert deb.name.startswith("votemesh_"), build.stdout
        assert deb.suffix == ".deb", build.stdout
        print(f"make deb: {build_s:.1f} s, {deb.stat().st_size / 1e6:.1f} MB")
        try:
            install = dpkg("-i", str(deb))
            assert install.returncode == 0, install.stdout + install.stderr
            check_installed(tmp_path)
        finally:
            purge = dpkg("--purge", "votemesh")
        assert purge.returncode == 0, purge.stdout + purge.stderr
        assert not installed()
        left = [p for p in [*PLACES, *UNITS, "/usr/bin/votemesh-agent"] if os.path.lexists(p)]
        assert left == []
        assert group_exists() == had_group


def check_installed(tmp_path: Path) -> None:
    """What `dpkg -i` must have given."""
    from importlib.metadata import version

    expected = version("votemesh")
    for program in ("votemesh", "votemesh-agent", "votemesh-qnetd", "votemesh-lab"):
        result = run(program, "--version", env=CLEAN_PATH)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{program} {expected}\n"
    helped = run("votemesh-agent", "--help", env=CLEAN_PATH)
    assert helped.returncode == 0
    assert "--config" in helped.stdout
    assert os.path.realpath("/usr/bin/votemesh") == "/opt/votemesh/bin/votemesh"
    assert group_exists()
    assert Path("/etc/votemesh").is_dir()
    analyze = shutil.which("systemd-analyze")
    for unit in UNITS:
        assert Path(unit).is_file()
        if analyze is not None:  # the installed units as they are: their programs now exist
            verified = run(analyze, "verify", "--man=no", unit)
            assert (verified.returncode, verified.stderr) == (0, ""), verified.stderr
    # No file of the package names the staging root it was built in.
    listed = run("dpkg-query", "-L", "votemesh").stdout.split()
    assert all("votemesh-deb." not in path for path in listed)
    check_group_access(tmp_path)
