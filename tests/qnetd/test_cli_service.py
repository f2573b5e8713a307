"""`votemesh-qnetd` command-line and service details (issue 7 item 9).

Ports outside 1-65535 are refused everywhere, a bad --ca-cert is one line, a second server never
takes over a live control socket (a stale one is replaced), and `token create` says which state
dir and CA a token is for, warning when no running server uses that state dir.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agent.runtime.enroll import main as enroll_main
from agent.runtime.enroll import split_server
from proto.qnetd_options import RingId
from proto.runtime.control_client import request
from qnetd import certs, cli
from qnetd.runtime import app
from qnetd.runtime.control import ControlSocketInUseError, refuse_live_control_socket
from qnetd.settings import QnetdSettings
from tests.interop.debian_qnetd import free_port
from tests.qnetd.async_client import AsyncQdevice
from tests.qnetd.our_qnetd import OurQnetd, running_our_qnetd


def qnetd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qnetd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--port", "99999"], "not a number from 1 to 65535"),
        (["--port", "0"], "not a number from 1 to 65535"),
        (["--port=-5"], "not a number from 1 to 65535"),
        (["--http-listen", "127.0.0.1:70000"], "--http-listen '127.0.0.1:70000'"),
        (["--enroll-listen", "127.0.0.1:0"], "--enroll-listen '127.0.0.1:0'"),
        (["--http-listen", "127.0.0.1:\u00b2"], "--http-listen '127.0.0.1:\u00b2'"),  # isdigit()
        (["--enroll-listen", "127.0.0.1:\uff11"], "--enroll-listen '127.0.0.1:\uff11'"),
        (["--port", "\uff15\uff14\uff10\uff13"], "not a number from 1 to 65535"),
        (["--http-listen", "fd00::zz"], "an IPv6 address with a port needs brackets"),
        (["--enroll-listen", "[qnetd]:5404"], "--enroll-listen '[qnetd]:5404'"),
        (["--listen", "127.0.0.1:5403"], "--listen '127.0.0.1:5403': "),
        (["--listen", "no such host"], "--listen 'no such host': "),
        (
            ["--ca-cert", "/nonexistent.pem", "--server-cert", "/x.pem", "--server-key", "/y.pem"],
            "cannot read certificate /nonexistent.pem",
        ),
    ],
)
def test_run_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    """Each mistake: exit 2, one line saying what is wrong, no traceback, nothing listening."""
    base = ["run", "--state-dir", str(tmp_path / "s"), "--listen", "127.0.0.1"]
    base += ["--control-socket", str(tmp_path / "c.sock"), "--http-listen", "off"]
    if not any(a.startswith("--port") for a in args):
        base += ["--port", str(free_port())]
    result = qnetd(*base, *args)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("::1", ("::1", 9403)),  # was read as host ':' port 1
        ("[::1]", ("::1", 9403)),
        ("[::1]:9500", ("::1", 9500)),
        ("127.0.0.1:9500", ("127.0.0.1", 9500)),
        (":9500", ("127.0.0.1", 9500)),
        ("off", None),
    ],
)
def test_listen_options_read_ipv6_addresses(text: str, expected: tuple[str, int] | None) -> None:
    """--http-listen / --enroll-listen: a bare IPv6 address means that address on the default
    port; [IPV6]:PORT gives a port (proto/host_port.py)."""
    assert cli._http_listen(text) == expected


@pytest.mark.parametrize("option", ["--listen", "--http-listen"])
def test_an_address_in_use_names_its_option(tmp_path: Path, option: str) -> None:
    """A --listen or --http-listen address that cannot be bound says which option it came from
    (it used to be 'cannot start: cannot listen on ...' or a bare errno)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        used = taken.getsockname()[1]
        ports = {"--listen": free_port(), "--http-listen": free_port()} | {option: used}
        http = f"127.0.0.1:{ports['--http-listen']}"
        result = qnetd(
            "run", "--state-dir", str(tmp_path / "s"), "--listen", "127.0.0.1",
            "--port", str(ports["--listen"]), "--http-listen", http,
            "--control-socket", str(tmp_path / "c.sock"),
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"{option}: cannot listen on 127.0.0.1:{used}" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_http_listen_on_ipv6_loopback_serves_healthz(tmp_path: Path) -> None:
    """`--http-listen [::1]:PORT` serves /healthz on IPv6 loopback."""
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    with running_our_qnetd(tmp_path / "q", None, None, "--http-listen", f"[::1]:{port}"):
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("::1", port), timeout=2) as http:
                    http.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                    answer = http.makefile("rb").read()
                break
            except OSError:
                assert time.monotonic() < deadline, "nothing answers on [::1]"
                time.sleep(0.1)
    assert answer.startswith(b"HTTP/1.")
    assert b'"status": "ok"' in answer


def test_second_server_does_not_take_over_a_live_control_socket(tmp_path: Path) -> None:
    """A second `run` with the same --control-socket exits 2 and the first stays reachable; after
    the first dies without cleaning up (SIGKILL), its stale socket is replaced by a new server."""
    with running_our_qnetd(tmp_path / "first") as first:
        second = [
            "run", "--state-dir", str(tmp_path / "second"), "--listen", "127.0.0.1",
            "--port", str(free_port()), "--http-listen", "off",
            "--control-socket", str(first.control_socket),
        ]  # fmt: skip
        result = qnetd(*second)
        assert result.returncode == 2
        assert "another votemesh-qnetd is running" in result.stderr
        assert "Traceback" not in result.stderr
        assert first.status()["connected_clients"] == 0  # still answers on its socket
        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
    assert first.control_socket.is_socket()  # left behind
    third = OurQnetd(tmp_path / "third")
    third.control_socket = first.control_socket
    try:
        third.start()
        assert third.status()["connected_clients"] == 0
    finally:
        third.stop()


def test_token_names_state_dir_and_ca_and_warns_without_a_server(tmp_path: Path) -> None:
    """With the running server's state dir: the token line names that dir and its CA
    fingerprint, no warning. With another dir (a forgotten --state-dir): a warning saying so."""
    with running_our_qnetd(tmp_path / "q") as server:
        used = qnetd("token", "create", "--cluster", "alpha", "--state-dir", str(server.state_dir))
        assert used.returncode == 0, used.stderr
        fingerprint = certs.state_ca_fingerprint(server.state_dir).hex(":")
        assert f"state dir {server.state_dir}" in used.stderr
        assert f"CA SHA-256 {fingerprint}" in used.stderr
        assert "warning" not in used.stderr
        other = tmp_path / "other"
        unused = qnetd("token", "create", "--cluster", "alpha", "--state-dir", str(other))
        assert unused.returncode == 0, unused.stderr
        assert f"warning: no votemesh-qnetd is running with --state-dir {other}" in unused.stderr
        assert f"created a new CA in {other}" in unused.stderr
        assert "created a new CA" not in used.stderr
    after = qnetd("token", "create", "--cluster", "alpha", "--state-dir", str(server.state_dir))
    assert "warning: no votemesh-qnetd is running" in after.stderr  # the server has stopped


@pytest.mark.parametrize(
    "text",
    ["qnetd:99999", "qnetd:0", "[::1]:65536", "qnetd:+80", "qnetd:1_000", "qnetd:\uff18\uff10"],
)
def test_enroll_server_port_must_be_a_tcp_port(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The node's --server HOST:PORT takes ASCII digits 1-65535 only (int() also read '+80',
    '1_000' and fullwidth digits): a one-line error and exit 2, nothing sent."""
    with pytest.raises(ValueError, match="1 to 65535"):
        split_server(text)
    argv = ["--server", text, "--token", "vmq1.x", "--out", str(tmp_path / "out")]
    assert enroll_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"enroll: bad --server {text!r}: port ")
    assert len(err.strip().splitlines()) == 1, err


def test_metrics_on_a_unix_socket_only_the_group_can_read(tmp_path: Path) -> None:
    """`--http-listen unix:PATH` serves /metrics and /healthz on a 0660 socket (not TCP)."""
    path = tmp_path / "http" / "metrics.sock"
    with running_our_qnetd(tmp_path / "q", None, None, "--http-listen", f"unix:{path}") as server:
        deadline = time.monotonic() + 20  # the HTTP socket comes up after the control socket
        while not (path.is_socket() and path.stat().st_mode & 0o777 == 0o660):
            assert time.monotonic() < deadline, "no 0660 socket at --http-listen unix:PATH"
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK")
        assert b"votemesh_qnetd_connections " in data
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", server.http_port), 1),
        ):
            pass  # the TCP endpoint is not there


def test_run_imports_neither_cryptography_nor_prometheus() -> None:
    """What `run` loads before serving: no cryptography (~10 MB resident) and no
    prometheus_client (~4 MB, loaded at the first /metrics scrape)."""
    probe = (
        "import sys, qnetd.cli, qnetd.runtime.app\n"
        "print(sorted(m for m in ('cryptography', 'prometheus_client') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


IDLE_PROBE = """
import socket, sys, threading, time, os, signal
from qnetd.cli import main

def report(port):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(0.5)
    loaded = sorted(m for m in ("cryptography", "prometheus_client") if m in sys.modules)
    print("LOADED", loaded, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=report, args=(int(sys.argv[1]),), daemon=True).start()
sys.exit(main(sys.argv[2:]))
"""


def test_idle_run_with_the_systemd_units_options_imports_neither(tmp_path: Path) -> None:
    """`run` with the shipped unit's options (--http-listen on TCP and --enroll-listen, on
    127.0.0.1 here), state directory already made: idle, neither `cryptography` nor
    `prometheus_client` is loaded (the enrollment endpoint imported both at start: 42 MB idle
    instead of 28 MB). They come at the first enrollment request and the first scrape."""
    state = tmp_path / "s"
    assert qnetd("certs", "init", "--state-dir", str(state)).returncode == 0
    http = free_port()
    argv = [
        "run", "--state-dir", str(state), "--control-socket", str(tmp_path / "c.sock"),
        "--listen", "127.0.0.1", "--port", str(free_port()),
        "--http-listen", f"127.0.0.1:{http}", "--enroll-listen", f"127.0.0.1:{free_port()}",
    ]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", IDLE_PROBE, str(http), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "LOADED []\n" in out.stdout, out.stdout[-2000:] + out.stderr


@pytest.mark.asyncio
async def test_tls_clients_are_served_without_cryptography(tmp_path: Path) -> None:
    """An existing state directory is checked with the ssl module and a client certificate's names
    come from the handshake: after a TLS client joined, cryptography's library is not mapped."""
    with running_our_qnetd(tmp_path / "q") as server:
        creds = server.client_credentials("alpha")  # the CA exists before the restart
        server.stop()
        server.start()
        client = AsyncQdevice(server.port, b"alpha", 1, creds)
        await client.start(RingId(1, 1), (1,), (1,))
        try:
            assert server.status()["connected_clients"] == 1
            assert server.process is not None
            maps = Path(f"/proc/{server.process.pid}/maps").read_text()
            assert "cryptography" not in maps
        finally:
            await client.close()


@pytest.mark.parametrize("option", ["--control-socket", "--http-listen"])
def test_a_socket_path_naming_a_regular_file_is_refused_and_the_file_kept(
    tmp_path: Path, option: str
) -> None:
    """A typo such as `--http-listen unix:/var/lib/votemesh-qnetd/ca.key` must not delete the
    file: only a leftover socket is replaced. Exit 2, one line, the file intact, nothing served.
    (Regression: main unlinked whatever was there and put its socket in its place.)"""
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    args = ["run", "--state-dir", str(tmp_path / "s"), "--listen", "127.0.0.1"]
    args += ["--port", str(free_port()), "--control-socket", str(tmp_path / "c.sock")]
    args += ["--http-listen", "off"]
    args += [option, str(precious) if option == "--control-socket" else f"unix:{precious}"]
    try:
        result = qnetd(*args, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server started with {option} naming a regular file")
    finally:
        assert precious.is_file()
        assert precious.read_text() == "keep me\n"
    assert result.returncode == 2, result.stderr
    assert "is not a socket" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.asyncio
async def test_two_servers_starting_together_never_share_a_control_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `run`s with the same --control-socket started at the same moment: exactly one serves,
    the other is refused. The liveness probe alone cannot promise that (both can probe before
    either binds; the second then unlinks the first's socket, leaving it unreachable): the window
    between probe and bind (a first start's key generation) is widened to 0.5 s here to make the
    race certain. (Regression: on main both servers ran.)"""
    probe = refuse_live_control_socket

    async def slow_start(path: Path) -> None:
        await probe(path)
        await asyncio.sleep(0.5)

    monkeypatch.setattr(app, "refuse_live_control_socket", slow_start)
    control = tmp_path / "c.sock"
    for name in ("a", "b"):
        certs.ensure_state(tmp_path / name)
    options = [
        app.RunOptions(QnetdSettings(), tmp_path / name, "127.0.0.1", free_port())
        for name in ("a", "b")
    ]
    tasks = [
        asyncio.create_task(app.run_server(replace(o, control_socket=control, http_listen=None)))
        for o in options
    ]
    try:
        done, _ = await asyncio.wait(tasks, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1, "both servers started on one control socket"
        with pytest.raises(ControlSocketInUseError):
            done.pop().result()
        async with asyncio.timeout(20):
            while not control.is_socket():
                await asyncio.sleep(0.05)
        ok, _ = await asyncio.to_thread(
            request, control, "shutdown"
        )  # the one left answers on the socket
        assert ok
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_a_live_http_unix_socket_is_not_taken_over(tmp_path: Path) -> None:
    """A second server (its own control socket) given the same `--http-listen unix:PATH` exits 2
    with one line, and the first still serves /metrics there. (Regression: main unlinked the
    live socket and bound its own, so scrapes silently went to the second server.)"""
    path = tmp_path / "http.sock"
    with running_our_qnetd(tmp_path / "q", None, None, "--http-listen", f"unix:{path}"):
        deadline = time.monotonic() + 20
        while not path.is_socket():
            assert time.monotonic() < deadline, "no socket at --http-listen unix:PATH"
            time.sleep(0.05)
        second = ["run", "--state-dir", str(tmp_path / "s2"), "--listen", "127.0.0.1"]
        second += ["--port", str(free_port()), "--control-socket", str(tmp_path / "c2.sock")]
        second += ["--http-listen", f"unix:{path}"]
        try:
            result = qnetd(*second, timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("the second server started on a live --http-listen socket")
        assert result.returncode == 2, result.stderr
        assert "answers on this --http-listen socket" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
