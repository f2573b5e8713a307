"""docs/first-cluster.md, followed literally on three namespaced "hosts" and a qnetd host.

Each lab host (per-run random namespace names, removed after the test, pass or fail) gets its
own /run (a private bind mount) and its own /etc and /var/lib (an overlay inside the host's
mount namespace: the real host's files show through, nothing is written to them), so the
documented commands run with their defaults: `/etc/votemesh`, `/var/lib/votemesh`,
`/run/votemesh/agent.sock`, `/var/lib/votemesh-qnetd`. Every `votemesh` call runs in a UTS
namespace whose host name is the lab host's name (`create` and `add` name the node after it).
The agent is started as the documented command `votemesh-agent --config /etc/votemesh/node.toml`.
"""

from __future__ import annotations

import re
import shlex
import stat
import sys
from pathlib import Path

from votemesh_lab import netns
from votemesh_lab.netns import Host, LabFactory, NotYetError, TrackedProcess

from tests.agent.test_config_live import pytestmark  # noqa: F401 - root and netns marks

BIN = Path(sys.executable).parent
SETTLE = 30.0
OVERLAID = ("/etc", "/var/lib")


def _own_etc_and_var_lib(host: Host) -> None:
    """Overlay /etc and /var/lib inside the host's mount namespace (upper dirs in its /run)."""
    script = []
    for path in OVERLAID:
        base = f"/run/overlay{path.replace('/', '-')}"
        script.append(
            f"mkdir -p {base}/upper {base}/work && mount -t overlay overlay -o "
            f"lowerdir={path},upperdir={base}/upper,workdir={base}/work {path}"
        )
    host.run(["sh", "-c", " && ".join(script)])


def _sh(host: Host, command: str, *, check: bool = True) -> tuple[int, str, str]:
    """Run one documented command line on `host` (its host name set), as a user would."""
    line = f"hostname {host.name} && exec {command}"
    result = host.run(["unshare", "--uts", "--", "sh", "-c", line], check=check, timeout=90)
    return result.returncode, result.stdout, result.stderr


def _cmd(*words: str) -> str:
    """A command line with the venv's entry points (what `pip install .` puts on PATH)."""
    first, *rest = words
    return shlex.join([str(BIN / first), *rest])


def _start_agent(host: Host) -> TrackedProcess:
    """The documented start: `votemesh-agent --config /etc/votemesh/node.toml`."""
    return host.start([str(BIN / "votemesh-agent"), "--config", "/etc/votemesh/node.toml"],
                      label="agent")  # fmt: skip


def _status_shows(hosts: list[Host], fields: dict[str, str], what: str) -> None:
    """`votemesh status` on every host exits 0 and shows each `Field: value` of `fields`."""

    def probe() -> bool | None:
        for host in hosts:
            code, out, err = _sh(host, _cmd("votemesh", "status"), check=False)
            if code != 0:
                raise NotYetError(f"{host.name}: status exit {code}: {(err or out).strip()}")
            for field, value in fields.items():
                if re.search(rf"^{re.escape(field)}:\s+{re.escape(value)}$", out, re.M) is None:
                    raise NotYetError(f"{host.name}: no '{field}: {value}' in\n{out}")
        return True

    netns.wait_until(probe, timeout=SETTLE, what=what)


def _mode(host: Host, path: str) -> int:
    return stat.S_IMODE(host.host_path(f"/run/overlay-etc/upper{path[4:]}").stat().st_mode)


def test_first_cluster_in_five_minutes_as_documented(lab_factory: LabFactory) -> None:
    """create on alpha; join-info + add on beta and gamma, each agent started before the next
    add -> `votemesh status` shows prod, Config Version 3, 3 nodes, Quorate on every host;
    `nodes` and `explain` answer; qdevice setup with a qnetd token: ffsplit on 3 nodes refused
    with its reason and nothing changed, `--algorithm lms` applied as version 4 with the Qdevice
    flag on every node; `delnode gamma` -> version 5, 2 nodes on alpha and beta, gamma's agent
    stops (exit 3); `votemesh leave` on gamma, as its agent's last line says, clears it (its
    agent is not running) and `add` takes it back as version 6. The output lines the page quotes
    are the ones printed."""
    lab = lab_factory(["qnetd", "alpha", "beta", "gamma"], private_dirs=("/run",))
    alpha, beta, gamma, qnetd = lab["alpha"], lab["beta"], lab["gamma"], lab["qnetd"]
    for host in (alpha, beta, gamma, qnetd):
        _own_etc_and_var_lib(host)

    # 1. create
    code, out, err = _sh(alpha, _cmd("votemesh", "create", "prod", "--link0", alpha.address))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "created cluster 'prod': node 'alpha' (id 1), config version 1", out
    assert lines[1] == (
        "wrote /etc/votemesh/node.toml, cluster key, CA and node certificate in /etc/votemesh"
    ), out
    assert lines[2].startswith("start the agent: votemesh-agent --config /etc/votemesh/node.toml")
    for name in ("cluster.key", "cluster-ca.key", "node.key"):
        assert _mode(alpha, f"/etc/votemesh/{name}") == 0o600, name
    for name in ("node.toml", "cluster-ca.pem", "node.pem"):
        assert alpha.host_path(f"/run/overlay-etc/upper/votemesh/{name}").is_file(), name
    assert alpha.host_path("/run/overlay-var-lib/upper/votemesh/cluster-config").is_file()
    agents = {"alpha": _start_agent(alpha)}
    _status_shows([alpha], {"Name": "prod", "Config Version": "1", "Quorate": "Yes"}, "alpha")

    # 2. + 3. join-info on a member, add on the new host, start its agent; twice
    for count, host in ((2, beta), (3, gamma)):
        code, out, err = _sh(alpha, _cmd("votemesh", "join-info", "--ttl", "30m"))
        assert code == 0, err
        [join_string] = out.splitlines()
        assert join_string.startswith("vmjoin1:"), out
        code, out, err = _sh(host, _cmd("votemesh", "add", join_string, "--link0", host.address))
        assert code == 0, err
        assert err.splitlines()[0] == f"contacting {alpha.address}:5408 ...", err  # progress
        assert out.splitlines()[0] == (
            f"joined cluster 'prod' as node '{host.name}' (id {count}) through "
            f"{alpha.address}:5408; config version {count}, {count} nodes"
        ), out
        agents[host.name] = _start_agent(host)
        fields = {"Config Version": str(count), "Nodes": str(count), "Quorate": "Yes"}
        _status_shows([alpha, beta, gamma][:count], fields, f"{count} nodes")

    # 4. check
    _status_shows([alpha, beta, gamma], {"Name": "prod", "Config Version": "3"}, "status")
    for verb in ("nodes", "explain"):
        code, out, err = _sh(gamma, _cmd("votemesh", verb))
        assert code == 0, err
        assert out.strip(), verb

    # 5. a quorum device, enrolled with a token
    qnetd.start([str(BIN / "votemesh-qnetd"), "run", "--enroll-listen", "0.0.0.0:5404"],
                label="qnetd")  # fmt: skip

    def token() -> str | None:
        code, out, _ = _sh(qnetd, _cmd("votemesh-qnetd", "token", "create", "--cluster", "prod"),
                           check=False)  # fmt: skip
        return out.strip() if code == 0 and out.strip() else None

    def _wait_token() -> str:
        return netns.wait_until(token, timeout=SETTLE, what="a qnetd token")

    setup = ["votemesh", "qdevice", "setup", qnetd.address, "--token"]
    code, out, err = _sh(alpha, _cmd(*setup, _wait_token()), check=False)
    assert code == 1, out
    assert len(err.strip().splitlines()) == 1, err
    assert "--algorithm lms" in err, err
    assert "--force" in err, err
    _status_shows([alpha, beta, gamma], {"Config Version": "3"}, "nothing changed")
    code, out, err = _sh(alpha, _cmd(*setup, _wait_token(), "--algorithm", "lms"), check=False)
    assert code == 0, err
    assert out.splitlines()[0] == (
        f"qdevice {qnetd.address}:5403 set up (lms): cluster configuration version 4"
    ), out
    _status_shows([alpha, beta, gamma], {"Config Version": "4", "Quorate": "Yes"}, "qdevice")

    def device_flag() -> bool | None:
        for host in (alpha, beta, gamma):
            _, out, _ = _sh(host, _cmd("votemesh", "status"), check=False)
            if re.search(r"^Flags:.*\bQdevice\b", out, re.M) is None:
                raise NotYetError(f"{host.name}: no Qdevice flag in\n{out}")
        return True

    netns.wait_until(device_flag, timeout=SETTLE, what="the Qdevice flag everywhere")

    # 6. remove a node
    code, out, err = _sh(alpha, _cmd("votemesh", "delnode", "gamma"))
    assert code == 0, err
    assert out == "removed node gamma: applied as config_version 5\n", out
    _status_shows([alpha, beta], {"Config Version": "5", "Nodes": "2", "Quorate": "Yes"}, "2")
    netns.wait_until(
        lambda: None if agents["gamma"].alive() else True, timeout=SETTLE, what="gamma stops"
    )
    assert agents["gamma"].process.returncode == 3

    # the removed host: its agent said "run `votemesh leave` to clear it, then `votemesh add`"
    code, out, err = _sh(gamma, _cmd("votemesh", "leave"))
    assert code == 0, err
    assert "the cluster had removed this node already (config_version 5)" in out, out
    assert not gamma.host_path("/run/overlay-etc/upper/votemesh/cluster.key").exists()
    assert gamma.host_path("/run/overlay-etc/upper/votemesh/node.toml").is_file()
    code, out, err = _sh(alpha, _cmd("votemesh", "join-info"))
    assert code == 0, err
    code, out, err = _sh(gamma, _cmd("votemesh", "add", out.strip(), "--link0", gamma.address))
    assert code == 0, err
    assert "as node 'gamma' (id 3)" in out, out
    _start_agent(gamma)
    fields = {"Config Version": "6", "Nodes": "3", "Quorate": "Yes"}
    _status_shows([alpha, beta, gamma], fields, "gamma back")
