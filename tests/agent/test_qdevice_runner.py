"""`agent.runtime.qdevice.QdeviceRunner` on 127.0.0.1 with real TCP and TLS (no root).

Against our qnetd: connect, STARTTLS, vote reported to the main loop, withdrawn when the qnetd
stops. Against a one-shot impostor whose certificate the CA signed but which is not named
`Qnetd Server`: refused after the handshake. Plus the server-name rule, heuristics commands and
unusable PEM files.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from agent.config import ConfigError, QdeviceConfig
from agent.qdevice_protocol import RECONNECT_CAP
from agent.runtime.qdevice import QdeviceRunner, RefusalLog, server_name_problem
from proto import qnetd_messages as qm
from proto.qnetd_enums import TlsSupported
from proto.tlv import MESSAGE_HEADER_SIZE, unpack_header
from tests.qnetd.our_qnetd import OurQnetd, running_our_qnetd

CLUSTER = "runner"
Report = tuple[bool, bool, str, tuple[int, int] | None]


@pytest.fixture
def qnetd(tmp_path: Path) -> Iterator[OurQnetd]:
    """Our qnetd on 127.0.0.1, TLS on, client certificates required."""
    with running_our_qnetd(tmp_path / "qnetd") as server:
        yield server


def config_for(server: OurQnetd, **changes: object) -> QdeviceConfig:
    """ffsplit, TLS on, the cluster certificate from the server's CA, 1 s heartbeat."""
    creds = server.client_credentials(CLUSTER)
    fields: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port,
        "ca_pem": str(creds.ca_pem),
        "cert_pem": str(creds.cert_pem),
        "key_pem": str(creds.key_pem),
        "heartbeat_interval": 1.0,
        **changes,
    }
    return QdeviceConfig(**fields)  # type: ignore[arg-type]


async def wait_until(reports: list[Report], want: Report | None, timeout: float = 10.0) -> None:
    """Until the last report's (vote, connected) is `want`'s (reason not compared)."""
    async with asyncio.timeout(timeout):
        while not reports or want is None or reports[-1][:2] != want[:2]:
            await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_runner_votes_and_withdraws_when_qnetd_stops(qnetd: OurQnetd) -> None:
    """The runner connects over TLS, reports connected then the ACK vote for the ring it was
    given; when the qnetd process stops it reports (no vote, disconnected) with the reason."""
    reports: list[Report] = []
    runner = QdeviceRunner(config_for(qnetd), 1, CLUSTER, lambda *args: reports.append(args))
    runner.set_config((1, 2))
    runner.update((1, 5), (1,), quorate=False)  # before run(): kept and executed at start
    task = asyncio.create_task(runner.run(), name="qdevice")
    try:
        await wait_until(reports, (True, True, "", None))
        assert reports[0][:2] == (False, True)
        assert reports[-1][2] == "ACK from qnetd for ring 1.5"
        status = runner.status()
        assert (status["state"], status["connects"]) == ("connected", 1)
        assert status["tls"].startswith("TLSv1.")

        await asyncio.to_thread(qnetd.stop)
        await wait_until(reports, (False, False, "", None))
        # the reports carry why; `last_close` may already be a refused reconnect by now. The
        # revocation (held ring None) is reported at once, before the disconnect (design §3.4)
        lost = "qnetd connection lost: qnetd closed the connection"
        assert (False, True, lost, None) in reports
        assert reports[-1][:2] == (False, False)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.asyncio
async def test_cancelled_runner_has_closed_its_tls_socket_when_run_returns(
    qnetd: OurQnetd,
) -> None:
    """Regression (CI, stop 17: an unclosed TLS transport of a cancelled runner was found by the
    garbage collector during a later test): when `run()` is cancelled over a TLS session, the
    socket under the TLS transport is closed by the time `run()` has returned, not left to a
    TLS shutdown the loop may never finish (a stopping agent's loop closes right after)."""
    reports: list[Report] = []
    runner = QdeviceRunner(config_for(qnetd), 1, CLUSTER, lambda *args: reports.append(args))
    runner.set_config((1, 2))
    runner.update((1, 5), (1,), quorate=False)
    task = asyncio.create_task(runner.run(), name="qdevice")
    try:
        await wait_until(reports, (True, True, "", None))
        writer = runner._writer
        assert writer is not None
        raw = writer.transport.get_extra_info("socket")
        assert raw.fileno() >= 0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert raw.fileno() == -1, "the socket under the TLS transport is still open"
    assert runner.status()["connects"] == 1


# ---------------------------------------------------------------- a qnetd without TLS
async def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll `condition()` every 20 ms until it holds (TimeoutError after `timeout`)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_runner_refuses_a_qnetd_without_tls_by_default(tmp_path: Path) -> None:
    """Issue 7 item 3 (regression: main fell back to plain text and counted the vote): our
    qnetd with `--tls off` on 127.0.0.1 and the default client config (tls on, no downgrade)
    -> no session, no vote, the session gives up, and the reason is in status and an error log
    line."""
    with running_our_qnetd(tmp_path / "qnetd", "off", False) as server:
        reports: list[Report] = []
        runner = QdeviceRunner(config_for(server), 1, CLUSTER, lambda *a: reports.append(a))
        runner.set_config((1, 2))
        runner.update((1, 5), (1,), quorate=False)
        with capture_logs() as logs:
            task = asyncio.create_task(runner.run(), name="qdevice")
            try:
                await wait_for(lambda: "offers no TLS" in runner.last_close)
                await asyncio.sleep(0.5)  # a fallback would have connected by now
                status = runner.status()
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        assert (status["state"], status["connects"], status["tls"]) == ("disconnected", 0, "")
        assert "allow_tls_downgrade" in status["last_close"]
        assert not any(vote or connected for vote, connected, _, _ in reports)
        assert runner.session.next_deadline() is None  # gave up, like qdevice's `required`
        gave_up = [e for e in logs if e["event"].startswith("qdevice gave up")]
        assert [e["log_level"] for e in gave_up] == ["error"]
        assert "offers no TLS" in gave_up[0]["reason"]
        assert server.status()["clusters"] == []  # no INIT reached the qnetd


@pytest.mark.asyncio
async def test_lms_runner_warns_about_a_qnetd_without_tls_once_not_on_every_retry(
    tmp_path: Path,
) -> None:
    """With `algorithm = "lms"` the runner keeps retrying a qnetd without TLS (qdevice always
    reconnects with lms). The refusal is a warning (it was an info line on every retry, every
    1.5-3 s): logged once, then rate-limited; the status and the session keep the reason."""
    with running_our_qnetd(tmp_path / "qnetd", "off", False) as server:
        reports: list[Report] = []
        cfg = config_for(server, algorithm="lms", tie_breaker="1")
        runner = QdeviceRunner(cfg, 1, CLUSTER, lambda *a: reports.append(a))
        runner.set_config((1, 2))
        runner.update((1, 5), (1,), quorate=False)
        with capture_logs() as logs:
            task = asyncio.create_task(runner.run(), name="qdevice")
            try:
                await wait_for(lambda: runner.session._failures >= 4, timeout=30)
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        assert not any(vote or connected for vote, connected, _, _ in reports)
        refusals = [e for e in logs if "offers no TLS" in str(e.get("reason", ""))]
        assert len(refusals) == 1, refusals  # 4+ refused connects, one line
        assert refusals[0]["log_level"] == "warning"
        assert refusals[0]["event"] == "qdevice refused by qnetd"
        assert refusals[0]["reconnect_in_s"] > 0
        assert "allow_tls_downgrade" in runner.status()["last_close"]


@pytest.mark.asyncio
async def test_runner_downgrades_only_when_allowed_and_warns_on_every_connect(
    tmp_path: Path,
) -> None:
    """The same qnetd with `allow_tls_downgrade = true`: the runner votes in plain text
    (status tls "plain") with one warning per connect: once at start, once more after the
    qnetd restarts."""
    with running_our_qnetd(tmp_path / "qnetd", "off", False) as server:
        reports: list[Report] = []
        cfg = config_for(server, allow_tls_downgrade=True)
        runner = QdeviceRunner(cfg, 1, CLUSTER, lambda *args: reports.append(args))
        runner.set_config((1, 2))
        runner.update((1, 5), (1,), quorate=False)
        with capture_logs() as logs:
            task = asyncio.create_task(runner.run(), name="qdevice")
            try:
                await wait_until(reports, (True, True, "", None), timeout=20)
                assert runner.status()["tls"] == "plain"
                await asyncio.to_thread(server.stop)
                await wait_until(reports, (False, False, "", None), timeout=20)
                await asyncio.to_thread(server.start)
                await wait_until(reports, (True, True, "", None), timeout=20)
                status = runner.status()
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        assert (status["state"], status["connects"], status["tls"]) == ("connected", 2, "plain")
        warnings = [e for e in logs if e["event"].startswith("qdevice connection without TLS")]
        assert [e["log_level"] for e in warnings] == ["warning", "warning"]
        assert "allow_tls_downgrade" in warnings[0]["reason"]


# ---------------------------------------------------------------- reconnect after a restart
@pytest.mark.asyncio
async def test_runner_reconnects_within_a_second_or_two_of_a_qnetd_restart(
    qnetd: OurQnetd,
) -> None:
    """Issue 7 item 7 (regression: main retried a refused connect only when the 8 s connect
    timer expired): default heartbeat (8 s); the qnetd stops; after the runner's first refused
    connect the qnetd stays down 2 s more, in which the runner starts at least 3 more connects
    (the backoff sums to at most 1.6 s over its first 4 steps; main: none), each scheduled at
    most RECONNECT_CAP s ahead. Then the qnetd starts again on the same port and the vote comes
    back from the next connect or the one after (counted, not timed: a loaded machine slows
    each step, not their number); the wall-clock bound is only a backstop, the cap plus a
    generous margin. The figure itself: `python -m tests.bench qdevice_reconnect`."""
    reports: list[Report] = []
    runner = QdeviceRunner(config_for(qnetd, heartbeat_interval=8.0), 1, CLUSTER,
                           lambda *args: reports.append(args))  # fmt: skip
    runner.set_config((1, 2))
    runner.update((1, 5), (1,), quorate=False)
    task = asyncio.create_task(runner.run(), name="qdevice")
    try:
        await wait_until(reports, (True, True, "", None), timeout=20)
        await asyncio.to_thread(qnetd.stop)
        await wait_until(reports, (False, False, "", None), timeout=20)
        await wait_for(lambda: runner.last_close.startswith("connect to"), timeout=20)
        down_from = runner.attempts
        with capture_logs() as logs:
            await asyncio.sleep(2.0)
        retries = runner.attempts - down_from
        await asyncio.to_thread(qnetd.start)  # returns once the port accepts connections
        up_from = runner.attempts
        await wait_until(reports, (True, True, "", None), timeout=RECONNECT_CAP + 20.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert retries >= 3, f"{retries} connects in the 2 s the qnetd was down"
    delays = [e["reconnect_in_s"] for e in logs if "reconnect_in_s" in e]
    assert delays, logs
    assert all(0 < d <= RECONNECT_CAP for d in delays), delays
    assert runner.attempts - up_from <= 2, (
        "the vote needed more than two connects after the restart"
    )
    assert runner.status()["connects"] == 2


def test_refusal_log_rate_limit() -> None:
    """The first refusal of a reason is logged, repeats within the interval are counted, the
    next one after it is logged with that count; reasons are limited separately."""
    limiter = RefusalLog(60.0)
    assert limiter.due("a", 0.0) == 0
    assert limiter.due("a", 2.0) is None
    assert limiter.due("a", 59.0) is None
    assert limiter.due("b", 59.5) == 0
    assert limiter.due("a", 60.5) == 2
    assert limiter.due("a", 61.0) is None


# ---------------------------------------------------------------- an impostor qnetd
@dataclass
class Pki:
    """A CA, a server certificate signed by it (named as asked) and a client certificate."""

    ca_pem: Path
    server_pem: Path
    server_key: Path
    client_pem: Path
    client_key: Path


def make_pki(out: Path, server_name: str, san: bool) -> Pki:
    """Certificates for one test (EC keys: fast)."""
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])

    def issue(name: str, key: ec.EllipticCurvePrivateKey, ca: bool, dns: str | None) -> bytes:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
            )
        if dns is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), False)
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    pki = Pki(*(out / n for n in ("ca.pem", "server.pem", "server.key", "c.pem", "c.key")))
    server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    pki.ca_pem.write_bytes(issue("Test CA", ca_key, True, None))
    pki.server_pem.write_bytes(issue(server_name, server_key, False, server_name if san else None))
    pki.server_key.write_bytes(key_bytes(server_key))
    pki.client_pem.write_bytes(issue(CLUSTER, client_key, False, None))
    pki.client_key.write_bytes(key_bytes(client_key))
    return pki


def _read_message(sock: socket.socket) -> qm.QnetdMessage:
    """Exactly one message off a blocking socket (no byte of a following TLS hello)."""
    header = sock.recv(MESSAGE_HEADER_SIZE, socket.MSG_WAITALL)
    msg_type, length = unpack_header(header)
    payload = sock.recv(length, socket.MSG_WAITALL) if length else b""
    return qm.decode_payload(msg_type, payload)


def impostor(listener: socket.socket, pki: Pki, seen: list[str]) -> None:
    """Answer one client: PREINIT_REPLY (TLS supported), STARTTLS, handshake, wait for EOF."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_pem, pki.server_key)
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(10)
        preinit = _read_message(conn)
        conn.sendall(
            qm.encode(
                qm.PreinitReply(
                    seq=preinit.seq,
                    tls_supported=TlsSupported.SUPPORTED,
                    tls_client_cert_required=True,
                )
            )
        )
        seen.append(type(_read_message(conn)).__name__)
        with ctx.wrap_socket(conn, server_side=True) as tls:
            seen.append(tls.version() or "")
            seen.append(repr(tls.recv(1)))  # b'' once the client hangs up


@pytest.mark.asyncio
async def test_runner_refuses_a_server_not_named_qnetd_server(tmp_path: Path) -> None:
    """A server whose certificate the CA signed but which is named 'impostor' gets STARTTLS and a
    completed handshake, then the runner hangs up before INIT, with the name in the reason."""
    pki = make_pki(tmp_path / "pki", "impostor", san=True)
    seen: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=impostor, args=(listener, pki, seen), daemon=True)
        thread.start()
        cfg = QdeviceConfig(
            host="127.0.0.1",
            port=listener.getsockname()[1],
            ca_pem=str(pki.ca_pem),
            cert_pem=str(pki.client_pem),
            key_pem=str(pki.client_key),
            heartbeat_interval=5.0,
        )
        runner = QdeviceRunner(cfg, 1, CLUSTER, lambda *_: None)
        runner.set_config((1, 2))
        runner.update((1, 1), (1,), quorate=False)
        task = asyncio.create_task(runner.run(), name="qdevice")
        try:
            async with asyncio.timeout(10):
                while not runner.status()["last_close"]:
                    await asyncio.sleep(0.02)
            await asyncio.to_thread(thread.join, 10)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert runner.status()["last_close"] == (
        "TLS: server certificate is named ['impostor'], not 'Qnetd Server'"
    )
    assert seen[0] == "StartTls"
    assert seen[1].startswith("TLSv1.")
    assert runner.status()["connects"] == 0


def tolerant_impostor(listener: socket.socket, pki: Pki, seen: list[str]) -> None:
    """`impostor`, but a handshake the client aborts is recorded instead of raised."""
    try:
        impostor(listener, pki, seen)
    except (OSError, ssl.SSLError) as exc:
        seen.append(f"server: {type(exc).__name__}")


@pytest.mark.asyncio
async def test_runner_refuses_a_qnetd_server_certificate_from_another_ca(tmp_path: Path) -> None:
    """The CA half of the check: a server certificate correctly named 'Qnetd Server' but signed
    by a CA other than `ca_pem` fails the handshake; no INIT, no connect, the reason says why."""
    theirs = make_pki(tmp_path / "theirs", "Qnetd Server", san=True)
    ours = make_pki(tmp_path / "ours", "Qnetd Server", san=True)
    seen: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(
            target=tolerant_impostor, args=(listener, theirs, seen), daemon=True
        )
        thread.start()
        cfg = QdeviceConfig(
            host="127.0.0.1",
            port=listener.getsockname()[1],
            ca_pem=str(ours.ca_pem),
            cert_pem=str(ours.client_pem),
            key_pem=str(ours.client_key),
            heartbeat_interval=5.0,
        )
        runner = QdeviceRunner(cfg, 1, CLUSTER, lambda *_: None)
        runner.set_config((1, 2))
        runner.update((1, 1), (1,), quorate=False)
        task = asyncio.create_task(runner.run(), name="qdevice")
        try:
            await wait_for(lambda: runner.last_close.startswith("TLS handshake"), timeout=10)
            await asyncio.to_thread(thread.join, 10)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert "certificate verify failed" in runner.last_close
    assert seen[0] == "StartTls"
    assert runner.status()["connects"] == 0


@pytest.mark.parametrize(
    ("name", "san", "problem"),
    [
        ("Qnetd Server", True, None),
        ("qnetd server", False, None),  # CN only, case-insensitive
        ("impostor", False, "server certificate is named ['impostor'], not 'Qnetd Server'"),
    ],
)
def test_server_name_rule(tmp_path: Path, name: str, san: bool, problem: str | None) -> None:
    """`Qnetd Server` is matched case-insensitively on the SAN DNS names, else on the CN."""
    pki = make_pki(tmp_path, name, san)
    der = x509.load_pem_x509_certificate(pki.server_pem.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    assert server_name_problem(der) == problem
    assert server_name_problem(None) == "server sent no certificate"


@pytest.mark.asyncio
async def test_heuristics_commands(tmp_path: Path) -> None:
    """A command passes when it exits 0 within heuristics_timeout; non-zero, a missing program
    or a timeout (the process is killed) fail."""
    pki = make_pki(tmp_path, "Qnetd Server", san=True)
    cfg = QdeviceConfig(
        host="127.0.0.1",
        ca_pem=str(pki.ca_pem),
        cert_pem=str(pki.client_pem),
        key_pem=str(pki.client_key),
        heuristics_timeout=0.3,
    )
    runner = QdeviceRunner(cfg, 1, CLUSTER, lambda *_: None)
    results = await asyncio.gather(
        *(
            runner._run_check(command)
            for command in ("true", "sh -c 'exit 0'", "false", "/nonexistent/check", "sleep 5")
        )
    )
    assert results == [True, True, False, False, False]


def test_unusable_pem_files_are_a_one_line_config_error(tmp_path: Path) -> None:
    """Missing TLS files stop the agent at start with a ConfigError naming the keys to fix."""
    missing = str(tmp_path / "nope.pem")
    cfg = QdeviceConfig(host="127.0.0.1", ca_pem=missing, cert_pem=missing, key_pem=missing)
    with pytest.raises(ConfigError, match=r"check qdevice\.ca_pem, cert_pem and key_pem"):
        QdeviceRunner(cfg, 1, CLUSTER, lambda *_: None)
