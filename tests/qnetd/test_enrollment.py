"""Enrollment: token text, the hashed single-use store, and the TLS endpoint with a real node."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import ssl
import stat
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from agent.runtime import enroll as node
from proto.enrollment import EnrollRequest, EnrollResponse, ErrorResponse, Token
from proto.errors import DecodeError
from qnetd import certs
from qnetd.cli import main
from qnetd.connection_limits import ConnectionLimits
from qnetd.enrollment import TokenRejectedError, TokenStore
from qnetd.runtime import enroll_server
from qnetd.runtime.enroll_server import EnrollmentStats, start_enrollment_server

CLUSTER = "testcluster"
FP = bytes(range(32))
T0 = 1_800_000_000.0


# --- token text (proto) ------------------------------------------------------------------------


def test_token_round_trip() -> None:
    """encode/parse are inverse, whatever the cluster name's characters (dots included)."""
    token = Token("my.cluster-ü", b"s" * 32, FP)
    text = token.encode()
    assert text.startswith("vmq1.")
    assert text.count(".") == 3
    assert Token.parse(text) == token


@given(
    cluster=st.text(min_size=1, max_size=60).filter(
        lambda c: len(c.encode("utf-8", "replace")) < 256
    ),
    secret=st.binary(min_size=16, max_size=64),
    fp=st.binary(min_size=32, max_size=32),
)
def test_token_round_trip_property(cluster: str, secret: bytes, fp: bytes) -> None:
    """Any valid cluster name, secret and fingerprint survive encode -> parse unchanged."""
    try:
        cluster.encode()
    except UnicodeEncodeError:
        return  # lone surrogates are not cluster names
    token = Token(cluster, secret, fp)
    assert Token.parse(token.encode()) == token


@given(st.text(max_size=200))
def test_token_parse_garbage(text: str) -> None:
    """Random text either parses or raises DecodeError('malformed'), nothing else."""
    reasons = []
    try:
        Token.parse(text)
    except DecodeError as exc:
        reasons.append(exc.reason)
    assert set(reasons) <= {"malformed"}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "vmq1.YQ.YQ",
        "vmq2.YQ.c3Nzc3Nzc3Nzc3Nzc3Nzc3Nz.AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "vmq1.YQ.c3Nz.AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",  # secret too short
        "vmq1.YQ.c3Nzc3Nzc3Nzc3Nzc3Nzc3Nz.AAEC",  # fingerprint not 32 bytes
        "vmq1.Y+Q.c3Nzc3Nzc3Nzc3Nzc3Nzc3Nz.AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "vmq1..c3Nzc3Nzc3Nzc3Nzc3Nzc3Nz.AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "vmq1.__8.c3Nzc3Nzc3Nzc3Nzc3Nzc3Nz.AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
    ],
)
def test_malformed_token_text(text: str) -> None:
    """Wrong prefix, field count, base64, lengths or UTF-8 raise DecodeError('malformed')."""
    with pytest.raises(DecodeError) as info:
        Token.parse(text)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize("body", [b"", b"[]", b"{", b'{"token": 1, "csr": "x"}', b'{"csr": "x"}'])
def test_enroll_request_shape(body: bytes) -> None:
    """A request body that is not {token: str, csr: str} raises DecodeError('bad_request')."""
    with pytest.raises(DecodeError) as info:
        EnrollRequest.from_json(body)
    assert info.value.reason == "bad_request"


def test_response_shapes_round_trip() -> None:
    """Response and error bodies parse back to what was encoded."""
    response = EnrollResponse("CERT", "CA", CLUSTER)
    assert EnrollResponse.from_json(response.to_json()) == response
    error = ErrorResponse("used", "token already used")
    assert ErrorResponse.from_json(error.to_json()) == error


# --- the store ---------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "tokens.json")


def _reason(store: TokenStore, text: str, now: float, cluster: str | None = None) -> str:
    with pytest.raises(TokenRejectedError) as info:
        store.redeem(text, now=now, cluster=cluster)
    return info.value.reason


def test_stored_hashed_never_plaintext(store: TokenStore) -> None:
    """tokens.json (0600) holds SHA-256(secret) and no form of the secret itself."""
    text = store.create(CLUSTER, FP, ttl=60, now=T0)
    secret = Token.parse(text).secret
    raw = store.path.read_bytes()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    for form in (secret, secret.hex().encode(), base64.urlsafe_b64encode(secret).rstrip(b"=")):
        assert form not in raw
    assert text.encode() not in raw
    (record,) = json.loads(raw)["tokens"]
    assert record["sha256"] == hashlib.sha256(secret).hexdigest()


def test_single_use(store: TokenStore) -> None:
    """The first redeem returns the cluster; the second is refused as 'used'."""
    text = store.create(CLUSTER, FP, ttl=60, now=T0)
    assert store.redeem(text, now=T0 + 1).cluster == CLUSTER
    assert _reason(store, text, T0 + 2) == "used"


def test_expiry_boundary(store: TokenStore) -> None:
    """Valid strictly before created + ttl, 'expired' from then on."""
    text = store.create(CLUSTER, FP, ttl=60, now=T0)
    assert _reason(store, text, T0 + 60) == "expired"
    other = store.create(CLUSTER, FP, ttl=60, now=T0)
    assert store.redeem(other, now=T0 + 59.9).cluster == CLUSTER


def test_unknown_malformed_and_wrong_cluster(store: TokenStore) -> None:
    """Each refusal has its own reason; a wrong-cluster attempt does not use the token up."""
    text = store.create(CLUSTER, FP, ttl=60, now=T0)
    forged = Token(CLUSTER, b"x" * 32, FP).encode()
    assert _reason(store, forged, T0) == "unknown"
    assert _reason(store, "not-a-token", T0) == "malformed"
    assert _reason(store, text, T0, cluster="other") == "wrong_cluster"
    relabelled = Token("other", Token.parse(text).secret, FP).encode()
    assert _reason(store, relabelled, T0) == "wrong_cluster"
    assert store.redeem(text, now=T0, cluster=CLUSTER).cluster == CLUSTER


def test_purge_expired(store: TokenStore) -> None:
    """purge_expired drops exactly the records whose expiry has passed."""
    store.create(CLUSTER, FP, ttl=10, now=T0)
    keep = store.create(CLUSTER, FP, ttl=100, now=T0)
    assert store.purge_expired(now=T0 + 50) == 1
    assert len(store.list()) == 1
    assert store.redeem(keep, now=T0 + 50).cluster == CLUSTER


def test_concurrent_writers_lose_nothing(store: TokenStore) -> None:
    """Writers serialised by flock: 8 threads x 10 creates leave exactly 80 records."""

    def work() -> None:
        for _ in range(10):
            store.create(CLUSTER, FP, ttl=60, now=T0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.list()) == 80


def test_cli_token_create_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`token create` prints a token carrying the state CA's fingerprint; `token list` shows it."""
    sd = str(tmp_path / "s")
    assert main(["token", "create", "--cluster", CLUSTER, "--ttl", "15m", "--state-dir", sd]) == 0
    token = Token.parse(capsys.readouterr().out.strip())
    assert token.cluster == CLUSTER
    assert token.ca_sha256 == certs.state_ca_fingerprint(tmp_path / "s")
    assert main(["token", "list", "--state-dir", sd]) == 0
    assert f"{CLUSTER}  " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["token", "create", "--cluster", CLUSTER, "--ttl", "soon", "--state-dir", sd])
    for bad in ("", "a/b", "x" * 256, "tab\there"):
        with pytest.raises(SystemExit):
            main(["token", "create", "--cluster", bad, "--state-dir", sd])


# --- the TLS endpoint with a real node ---------------------------------------------------------


@dataclass
class Endpoint:
    state: Path
    port: int
    stats: EnrollmentStats
    clock: list[float]

    def token(self, ttl: float = 600, cluster: str = CLUSTER) -> str:
        fp = certs.state_ca_fingerprint(self.state)
        return TokenStore(self.state / "tokens.json").create(
            cluster, fp, ttl=ttl, now=self.clock[0]
        )


@pytest_asyncio.fixture
async def endpoint(tmp_path: Path) -> AsyncIterator[Endpoint]:
    clock = [T0]
    server, stats = await start_enrollment_server(
        tmp_path / "state", "127.0.0.1", 0, now=lambda: clock[0]
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield Endpoint(tmp_path / "state", port, stats, clock)
    finally:
        server.close()
        await server.wait_closed()


async def _enroll(ep: Endpoint, token: str, out: Path) -> node.EnrolledFiles:
    return await asyncio.to_thread(node.enroll, "127.0.0.1", ep.port, token, out)


def _insecure() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _raw(ep: Endpoint, data: bytes) -> tuple[int, bytes]:
    """Send raw bytes over TLS (no verification) and parse the status line and body."""
    return await _raw_to(ep.port, data)


async def _raw_to(port: int, data: bytes, source: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send raw bytes over TLS from `source` and parse the status line and body."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=_insecure(), local_addr=(source, 0)
    )
    writer.write(data)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.mark.asyncio
async def test_enroll_writes_working_client_files(endpoint: Endpoint, tmp_path: Path) -> None:
    """A node enrolls: client cert for CN=cluster signed by the CA, key 0600, p12 `Cluster Cert`."""
    with structlog.testing.capture_logs() as logs:
        files = await _enroll(endpoint, endpoint.token(), tmp_path / "node")
    ca = certs.load_cert(endpoint.state / "ca.pem")
    cert = certs.load_cert(files.client_pem)
    cert.verify_directly_issued_by(ca)
    assert certs.common_name(cert.subject) == CLUSTER
    assert cert.public_key() == certs.load_key(files.client_key).public_key()
    assert files.ca_pem.read_bytes() == (endpoint.state / "ca.pem").read_bytes()
    for private in (files.client_key, files.client_p12):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    p12 = pkcs12.load_pkcs12(files.client_p12.read_bytes(), None)
    assert p12.cert is not None
    assert p12.cert.friendly_name == b"Cluster Cert"
    assert endpoint.stats.issued == 1
    assert [e["event"] for e in logs if e["log_level"] == "info"] == ["enrollment issued"]


@pytest.mark.asyncio
async def test_token_is_single_use_over_the_wire(endpoint: Endpoint, tmp_path: Path) -> None:
    """The second enrollment with the same token is refused as 'used' and counted."""
    token = endpoint.token()
    await _enroll(endpoint, token, tmp_path / "a")
    with pytest.raises(node.EnrollError, match=r"\(used\)"):
        await _enroll(endpoint, token, tmp_path / "b")
    assert endpoint.stats.rejected == {"used": 1}
    assert not (tmp_path / "b" / "client.key").exists()


@pytest.mark.asyncio
async def test_expired_token_refused(endpoint: Endpoint, tmp_path: Path) -> None:
    """With the server's clock past the expiry the token is refused as 'expired'."""
    token = endpoint.token(ttl=60)
    endpoint.clock[0] = T0 + 61
    with pytest.raises(node.EnrollError, match=r"\(expired\)"):
        await _enroll(endpoint, token, tmp_path / "n")
    assert endpoint.stats.rejected == {"expired": 1}


@pytest.mark.asyncio
async def test_wrong_fingerprint_sends_nothing_secret(endpoint: Endpoint, tmp_path: Path) -> None:
    """A token pinning another CA makes the node stop after GET /v1/ca: no POST, token unused."""
    good = Token.parse(endpoint.token())
    bad = Token(good.cluster, good.secret, bytes(32)).encode()
    with pytest.raises(node.EnrollError, match="fingerprint"):
        await _enroll(endpoint, bad, tmp_path / "n")
    assert endpoint.stats.ca_served == 1
    assert endpoint.stats.issued == 0
    assert endpoint.stats.rejected == {}
    assert not (tmp_path / "n").exists()
    await _enroll(endpoint, good.encode(), tmp_path / "n")  # the secret was never spent


def test_node_refuses_server_not_named_qnetd_server(tmp_path: Path) -> None:
    """The node's own name check refuses a CA-signed server certificate with another name."""
    state = certs.ensure_state(tmp_path / "s")
    key = certs.new_key()
    cert = certs.sign_request(
        state.root,
        certs.make_request(key, "impostor").public_bytes(Encoding.DER),
        "impostor",
    )
    with pytest.raises(node.EnrollError, match="not 'Qnetd Server'"):
        node.check_server_name(cert.public_bytes(Encoding.DER))
    node.check_server_name(certs.load_cert(state.server_cert).public_bytes(Encoding.DER))


@pytest.mark.asyncio
async def test_node_refuses_to_overwrite(endpoint: Endpoint, tmp_path: Path) -> None:
    """Existing client files are kept unless force; the token is not spent by the refusal."""
    out = tmp_path / "n"
    out.mkdir()
    (out / "client.key").write_text("keep")
    token = endpoint.token()
    with pytest.raises(node.EnrollError, match="--force"):
        await _enroll(endpoint, token, out)
    assert (out / "client.key").read_text() == "keep"
    await asyncio.to_thread(node.enroll, "127.0.0.1", endpoint.port, token, out, True)
    assert (out / "client.key").read_text() != "keep"


@pytest.mark.asyncio
async def test_csr_for_another_cluster_refused_token_kept(endpoint: Endpoint) -> None:
    """A request whose CN is not the token's cluster is 'wrong_cluster' and spends nothing."""
    token = endpoint.token()
    csr = certs.make_request(certs.new_key(), "other").public_bytes(Encoding.PEM)
    body = EnrollRequest(token, csr.decode()).to_json()
    status, answer = await _raw(endpoint, _post(body))
    assert (status, ErrorResponse.from_json(answer).error) == (403, "wrong_cluster")
    assert TokenStore(endpoint.state / "tokens.json").redeem(token, now=T0).cluster == CLUSTER


def _post(body: bytes, path: str = "/v1/enroll") -> bytes:
    return f"POST {path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (_post(b"{not json"), 400, "bad_request"),
        (_post(b'{"token": "x", "csr": "y"}'), 400, "bad_csr"),
        (_post(b"x" * 20000), 413, "too_large"),
        (b"GET /v1/secrets HTTP/1.1\r\n\r\n", 404, "not_found"),
        (b"GET /v1/enroll HTTP/1.1\r\n\r\n", 405, "bad_method"),
        (b"BREW\r\n\r\n", 400, "bad_http"),
        (b"GET /v1/ca HTTP/1.1\r\n" + b"X: y\r\n" * 2000 + b"\r\n", 431, "too_large"),
        (b"POST /v1/enroll HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "bad_http"),
        (b"POST /v1/enroll HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411, "bad_http"),
    ],
)
async def test_bad_requests_answered_4xx_and_counted(
    endpoint: Endpoint, request_bytes: bytes, status: int, reason: str
) -> None:
    """Garbage gets a 4xx with a JSON reason, is counted, and the server keeps serving."""
    with structlog.testing.capture_logs() as logs:
        got, body = await _raw(endpoint, request_bytes)
    assert (got, ErrorResponse.from_json(body).error) == (status, reason)
    assert endpoint.stats.rejected == {reason: 1}
    assert any(e["event"] == "enrollment refused" and e["reason"] == reason for e in logs)
    got, body = await _raw(endpoint, b"GET /v1/ca HTTP/1.1\r\n\r\n")
    assert got == 200
    assert x509.load_pem_x509_certificate(body).fingerprint(hashes.SHA256()) == (
        certs.state_ca_fingerprint(endpoint.state)
    )


@pytest.mark.asyncio
async def test_connection_flood_refused_per_source(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the per-source limit, a source's new connections are closed at once (before any
    TLS work) and counted 'per_source'; once its slot is free it is served again."""
    monkeypatch.setattr(enroll_server, "LIMITS", ConnectionLimits(per_source=1, total=4))
    server, stats = await start_enrollment_server(endpoint.state, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, holder = await asyncio.open_connection("127.0.0.1", port, ssl=_insecure())
        holder.write(b"GET /v1/ca HTTP/1.1\r\n")  # holds its slot: the head never completes
        await holder.drain()
        await asyncio.sleep(0.1)
        with pytest.raises((ConnectionError, ssl.SSLError)):
            await asyncio.open_connection("127.0.0.1", port, ssl=_insecure())
        assert stats.rejected == {"per_source": 1}
        holder.close()
        await asyncio.sleep(0.1)
        got, _ = await _raw_to(port, b"GET /v1/ca HTTP/1.1\r\n\r\n")
        assert got == 200
    finally:
        server.close()


@pytest.mark.asyncio
async def test_slow_and_plaintext_peers_do_not_hurt(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A silent TLS peer gets 408 after the request timeout; plaintext garbage is dropped."""
    monkeypatch.setattr(enroll_server, "REQUEST_TIMEOUT", 0.3)
    got, _ = await _raw(endpoint, b"GET /v1/ca HTTP/1.1\r\n")  # head never completes
    assert got == 408
    reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
    writer.write(b"GET /v1/ca HTTP/1.1\r\n\r\n")  # no TLS at all
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert endpoint.stats.rejected == {"timeout": 1, "tls_failed": 1}
    got, _ = await _raw(endpoint, b"GET /v1/ca HTTP/1.1\r\n\r\n")
    assert got == 200


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("qnetd.example", ("qnetd.example", 5404)),
        ("10.0.0.1:6000", ("10.0.0.1", 6000)),
        ("[::1]", ("::1", 5404)),
        ("[::1]:6000", ("::1", 6000)),
        ("fe80::1", ("fe80::1", 5404)),
    ],
)
def test_node_server_argument(text: str, expected: tuple[str, int]) -> None:
    """--server takes HOST, HOST:PORT and bracketed IPv6; the port defaults to 5404."""
    assert node.split_server(text) == expected


def _no_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return True
    return False


@pytest.mark.skipif(_no_ipv6(), reason="no IPv6 loopback (::1) here")
@pytest.mark.asyncio
async def test_enroll_over_ipv6_loopback(tmp_path: Path) -> None:
    """The endpoint and the node work on ::1 too."""
    server, stats = await start_enrollment_server(tmp_path / "s", "::1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        fp = certs.state_ca_fingerprint(tmp_path / "s")
        token = TokenStore(tmp_path / "s" / "tokens.json").create(
            CLUSTER, fp, ttl=60, now=time.time()
        )
        await asyncio.to_thread(node.enroll, "::1", port, token, tmp_path / "n")
    finally:
        server.close()
        await server.wait_closed()
    assert stats.issued == 1


def test_init_force_drops_tokens_of_the_old_ca(tmp_path: Path) -> None:
    """`certs init --force` forgets every token: they pin the replaced CA's fingerprint."""
    sd = str(tmp_path / "s")
    assert main(["token", "create", "--cluster", CLUSTER, "--state-dir", sd]) == 0
    assert main(["certs", "init", "--force", "--state-dir", sd]) == 0
    assert TokenStore(tmp_path / "s" / "tokens.json").list() == []


# --- under abuse (issue 7 item 6) ---------------------------------------------------------------


async def _idle_tls(port: int, source: str) -> asyncio.StreamWriter | None:
    """A TLS connection that completes its handshake and then says nothing (None if refused)."""
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=_insecure(), local_addr=(source, 0)
        )
    except (ConnectionError, ssl.SSLError, OSError):
        return None
    return writer


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("sources", [1, 16])
async def test_idle_tls_connections_do_not_block_an_enrollment(
    endpoint: Endpoint, tmp_path: Path, sources: int
) -> None:
    """64 idle TLS connections (from one source, or 4 each from 16) no longer lock a node out:
    a source beyond its limit is refused at once, and when the server is full the oldest idle
    connection makes room for the new one. Was: 'busy' for everyone until they timed out."""
    idle = await asyncio.gather(
        *(_idle_tls(endpoint.port, f"127.0.2.{1 + i % sources}") for i in range(64))
    )
    try:
        await asyncio.sleep(1.2)  # older than the eviction age, younger than the deadline
        files = await _enroll(endpoint, endpoint.token(), tmp_path / "n")
        assert files.client_pem.exists()
        assert endpoint.stats.issued == 1
        refused = endpoint.stats.rejected
        assert refused.get("per_source", 0) + refused.get("evicted", 0) >= 1
    finally:
        for writer in idle:
            if writer is not None:
                writer.close()


@pytest.mark.asyncio
async def test_request_with_an_unsigned_key_type_keeps_the_token(endpoint: Endpoint) -> None:
    """An EC request is refused as bad_csr before the token is redeemed: the same token then
    enrolls an RSA request. Was: the token was spent and the node locked out."""
    token = endpoint.token()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CLUSTER)]))
        .sign(ec_key, hashes.SHA256())
        .public_bytes(Encoding.PEM)
    )
    status, answer = await _raw(endpoint, _post(EnrollRequest(token, csr.decode()).to_json()))
    assert (status, ErrorResponse.from_json(answer).error) == (400, "bad_csr")
    assert "RSA" in ErrorResponse.from_json(answer).message
    assert TokenStore(endpoint.state / "tokens.json").redeem(token, now=T0).cluster == CLUSTER


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_wrong_tokens_are_rate_limited_per_source(endpoint: Endpoint, tmp_path: Path) -> None:
    """A source guessing tokens gets 10 answers, then 429 before its token is looked at, with one
    log line; another source still enrolls. Was: 1,000 guesses at 275/s, all answered 403."""
    fp = certs.state_ca_fingerprint(endpoint.state)
    csr = certs.make_request(certs.new_key(), CLUSTER).public_bytes(Encoding.PEM).decode()
    answers = []
    with structlog.testing.capture_logs() as logs:
        for i in range(15):
            guess = Token(CLUSTER, bytes([i]) * 32, fp).encode()
            status, body = await _raw_to(
                endpoint.port, _post(EnrollRequest(guess, csr).to_json()), "127.0.0.2"
            )
            answers.append((status, ErrorResponse.from_json(body).error))
    assert answers[:10] == [(403, "unknown")] * 10
    assert answers[10:] == [(429, "rate_limited")] * 5
    assert endpoint.stats.rejected == {"unknown": 10, "rate_limited": 5}
    assert sum(1 for e in logs if e.get("reason") == "rate_limited") == 1  # rate-limited too
    files = await _enroll(endpoint, endpoint.token(), tmp_path / "n")  # from 127.0.0.1
    assert files.client_pem.exists()
