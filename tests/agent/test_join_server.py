"""The join server and `votemesh add` over real TLS on 127.0.0.1 (design §3.11).

The member's files come from a real `votemesh create`; the server is the real
`agent.runtime.join.JoinServer`; the joiner is the real `votemesh add` (in a thread). Only the
agent runtime above the server is a stand-in (`FakeHost`: commits every change as the next
version, or refuses like a node that is not quorate): the replication has its own tests.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509
from structlog.testing import capture_logs

from agent.cli import main as cli
from agent.cluster_config import ClusterConfig
from agent.runtime import cluster_store, join_client, join_files
from agent.runtime.join import JoinServer
from agent.runtime.join_files import ClusterFiles
from agent.runtime.join_tokens import TokenRefusedError
from proto import certificates
from proto.join import HEADER, JoinString, encode_frame, make_token

pytestmark = pytest.mark.asyncio


@dataclass(frozen=True)
class Outcome:
    ok: bool
    text: str
    version: int


class FakeHost:
    """The runtime above the join server: a change commits as the next version, unless not
    quorate (then the replication's refusal text)."""

    def __init__(self, config: ClusterConfig) -> None:
        self.cluster_config = config
        self.quorate = True
        self.changes = 0

    async def change_config(self, mutate: Callable[[ClusterConfig], ClusterConfig]) -> Outcome:
        version = self.cluster_config.version
        if not self.quorate:
            return Outcome(False, "not quorate: 1 of 3 votes; use `votemesh expected 1`", version)
        self.cluster_config = mutate(self.cluster_config).with_version(version + 1)
        self.changes += 1
        return Outcome(True, "", version + 1)


@dataclass
class Member:
    files: ClusterFiles
    host: FakeHost
    server: JoinServer
    clock: list[float]

    def join_string(self, ttl: float = 3600) -> str:
        return self.server.mint(ttl)


def _create(root: Path, name: str = "a", address: str = "127.0.0.1") -> ClusterFiles:
    files = ClusterFiles(root / name / "etc", root / name / "state")
    argv = ["create", "prod", "--name", name, "--link0", address]
    argv += ["--config-dir", str(files.config_dir), "--state-dir", str(files.state_dir)]
    assert cli(argv) == 0
    return files


@pytest_asyncio.fixture
async def member(tmp_path: Path) -> AsyncIterator[Member]:
    files = _create(tmp_path)
    stored = cluster_store.load(files.state_dir)
    assert stored is not None
    host = FakeHost(stored.committed)
    clock = [1000.0]
    server = JoinServer(
        host, files, [files.cluster_key.read_bytes()], "127.0.0.1", 0, wall=lambda: clock[0]
    )
    await server.start()
    task = asyncio.create_task(server.run())
    yield Member(files, host, server, clock)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _add(root: Path, js: str, name: str, address: str, *extra: str) -> tuple[int, Path]:
    where = root / f"joiner-{name}"
    argv = ["add", js, "--name", name, "--link0", address, *extra]
    argv += ["--config-dir", str(where / "etc"), "--state-dir", str(where / "state")]
    code = await asyncio.to_thread(cli, argv)
    return code, where


async def test_add_joins_through_tls_and_writes_every_file(
    member: Member, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A join string from the member admits node b: version 2 with both nodes on both sides,
    b's certificate signed by the cluster CA for b's own key, the same cluster key, the modes
    of design §3.11, and the command that starts the agent."""
    code, where = await _add(tmp_path, member.join_string(), "b", "127.0.0.2")
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "joined cluster 'prod' as node 'b' (id 2)" in out.out
    assert "votemesh-agent --config" in out.out
    b = ClusterFiles(where / "etc", where / "state")
    stored = cluster_store.load(b.state_dir)
    assert stored is not None
    assert stored.committed == member.host.cluster_config
    assert [(n.node_id, n.name) for n in stored.committed.nodes] == [(1, "a"), (2, "b")]
    assert stored.committed.version == 2
    assert b.cluster_key.read_bytes() == member.files.cluster_key.read_bytes()
    ca = x509.load_pem_x509_certificate(b.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(b.node_cert.read_bytes())
    assert certificates.issued_by(cert, ca, cert.not_valid_before_utc)
    assert certificates.common_name(cert.subject) == "b"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in b.config_dir.iterdir()}
    assert modes == {
        "cluster.key": 0o600, "cluster-ca.key": 0o600, "node.key": 0o600,
        "cluster-ca.pem": 0o644, "node.pem": 0o644, "node.toml": 0o644,
    }  # fmt: skip
    assert "node_id = 2" in b.node_toml.read_text()
    assert member.server.stats.admitted == 1


async def _refused(member: Member, root: Path, js: str, name: str, address: str, *extra: str,
                   capsys: pytest.CaptureFixture[str]) -> str:  # fmt: skip
    before = member.host.cluster_config
    code, where = await _add(root, js, name, address, *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert not (where / "etc" / "node.toml").exists()
    assert not (where / "state").exists()
    assert member.host.cluster_config == before
    assert err[-1].startswith("votemesh: ")
    return err[-1]


async def test_a_token_is_spent_by_its_join(
    member: Member, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second node with the same string is refused `used`; nothing changes."""
    js = member.join_string()
    assert (await _add(tmp_path, js, "b", "127.0.0.2"))[0] == 0
    line = await _refused(member, tmp_path, js, "c", "127.0.0.3", capsys=capsys)
    assert "join token already used; ask a member for a new one: votemesh join-info" in line


async def test_an_expired_or_unknown_token_is_refused(
    member: Member, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Past its TTL the token is `expired`; a token this member never minted is `unknown`."""
    js = member.join_string(ttl=60)
    member.clock[0] += 61
    line = await _refused(member, tmp_path, js, "b", "127.0.0.2", capsys=capsys)
    assert "join token expired" in line
    forged = replace(JoinString.parse(js), token=make_token(b"y" * 32)).encode()
    line = await _refused(member, tmp_path, forged, "b", "127.0.0.2", capsys=capsys)
    assert "unknown join token" in line


async def test_a_wrong_ca_fingerprint_sends_no_token(
    member: Member, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """J1: a join string pinning another CA stops the joiner before it sends the token: the
    server saw a CA request and no join at all, and the token still works afterwards."""
    js = JoinString.parse(member.join_string())
    wrong = replace(js, ca_sha256=bytes(32)).encode()
    line = await _refused(member, tmp_path, wrong, "b", "127.0.0.2", capsys=capsys)
    assert "does not match the join string's" in line
    assert "token not sent" in line
    assert member.server.stats.ca_served == 1
    assert set(member.server.stats.refused) <= {"disconnected"}  # the joiner hung up after `ca`
    assert (await _add(tmp_path, js.encode(), "b", "127.0.0.2"))[0] == 0


@pytest.mark.parametrize(
    "case",
    [
        ("a", "127.0.0.2", (), "node name 'a' is already in cluster 'prod'"),
        ("b", "127.0.0.1", (), "address 127.0.0.1 already used on link0 by node 'a'"),
        ("b", "127.0.0.2", ("--nodeid", "1"), "node id 1 is already used by node 'a'"),
        ("b", "127.0.0.2", ("--link1", "127.0.1.2"), "link 1 is not a link of this cluster"),
    ],
)
async def test_duplicates_are_refused_and_the_token_kept(
    member: Member,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, str, tuple[str, ...], str],
) -> None:
    """A duplicate name, address or id, or a link set unlike the cluster's: one line, nothing
    changed, and the token (which was right) admits the corrected node afterwards."""
    name, address, extra, says = case
    js = member.join_string()
    line = await _refused(member, tmp_path, js, name, address, *extra, capsys=capsys)
    assert says in line
    assert (await _add(tmp_path, js, "d", "127.0.0.4"))[0] == 0


async def test_not_quorate_passes_the_reason_through(
    member: Member, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The replication's refusal reaches the joiner's terminal as is."""
    member.host.quorate = False
    line = await _refused(member, tmp_path, member.join_string(), "b", "127.0.0.2", capsys=capsys)
    assert "not quorate: 1 of 3 votes" in line


async def test_a_member_is_refused_unless_forced(
    member: Member, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`add` on a node that already belongs to a cluster refuses before contacting anyone;
    `create` likewise."""
    js = member.join_string()
    files = member.files
    dirs = ["--config-dir", str(files.config_dir), "--state-dir", str(files.state_dir)]
    argv = ["add", js, "--name", "a", "--link0", "127.0.0.9", *dirs]
    assert await asyncio.to_thread(cli, argv) == 1
    assert "already belongs to a cluster" in capsys.readouterr().err
    assert member.server.stats.ca_served == 0
    assert cli(["create", "other", "--name", "a", "--link0", "127.0.0.9", *dirs]) == 1
    assert "use --force to replace it" in capsys.readouterr().err


# ---------------------------------------------------------------- hostile input
def _tls(port: int, source: str = "127.0.0.1") -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), 5, source_address=(source, 0))
    return context.wrap_socket(raw)


def _exchange(port: int, frames: list[bytes], source: str = "127.0.0.1") -> list[dict[str, Any]]:
    answers = []
    with _tls(port, source) as tls:
        for frame in frames:
            tls.sendall(frame)
            header = tls.recv(4)
            if len(header) < HEADER.size:
                break
            size = HEADER.unpack(header)[0]
            body = b""
            while len(body) < size:
                body += tls.recv(size - len(body))
            answers.append(json.loads(body))
    return answers


async def test_garbage_on_the_join_port_is_dropped_and_counted(member: Member) -> None:
    """Not TLS, a bad length, not JSON, an unknown op, a bad request: each is counted by reason
    and the server still admits a real joiner afterwards."""
    port = member.server.bound_port()

    def hostile() -> list[list[dict[str, Any]]]:
        with socket.create_connection(("127.0.0.1", port), 5) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)))
            raw.settimeout(5)
            raw.recv(100)
        return [
            _exchange(port, [HEADER.pack(2**31) + b"x"]),
            _exchange(port, [HEADER.pack(5) + b"\xff\xfe{[x"]),
            _exchange(port, [encode_frame({"v": 1, "op": "delete"})]),
            _exchange(port, [encode_frame({"v": 9, "op": "ca"})]),
            _exchange(port, [encode_frame({"v": 1, "op": "join", "links": "x"})]),
        ]

    answers = await asyncio.to_thread(hostile)
    assert [a[0]["error"] for a in answers] == [
        "bad_frame", "bad_frame", "bad_request", "version", "bad_request",
    ]  # fmt: skip
    assert member.server.stats.refused == {
        "tls_failed": 1, "bad_frame": 2, "bad_request": 2, "version": 1,
    }  # fmt: skip
    assert member.server.stats.admitted == 0


async def test_a_thousand_wrong_tokens_are_rate_limited_and_logged_briefly(
    member: Member, tmp_path: Path
) -> None:
    """1,000 guesses from one source: ten are looked at, the rest refused `rate_limited` before
    the token is read; the log has a handful of lines, not a thousand; another source with the
    right token still joins."""
    port = member.server.bound_port()
    js = JoinString.parse(member.join_string())
    base = {"v": 1, "op": "join", "name": "x", "links": [[0, "127.0.0.5", 0]], "csr": "PEM",
            "node_id": None, "votes": None, "force": False}  # fmt: skip

    def guess(count: int) -> list[str]:
        return [
            _exchange(port, [encode_frame({**base, "token": make_token(i.to_bytes(16, "big"))})])[
                0
            ]["error"]
            for i in range(count)
        ]

    with capture_logs() as logs:
        errors = await asyncio.to_thread(guess, 1000)
    assert errors[:10] == ["unknown_token"] * 10
    assert set(errors[10:]) == {"rate_limited"}
    assert member.server.stats.refused == {"unknown_token": 10, "rate_limited": 990}
    warnings = [e for e in logs if e["event"] == "join refused"]
    assert 1 <= len(warnings) <= 4
    assert member.host.changes == 0
    code, _ = await _add(tmp_path, js.encode(), "b", "127.0.0.2")
    assert code == 1  # the same source is still locked out, even with the right token
    # ... but not another source
    key = join_files.new_key()
    joined = await asyncio.to_thread(
        lambda: join_client.join(
            js, "b", ((0, "127.0.0.2", 0),), node_id=None, votes=None, force=False,
            node_key=key, source="127.0.0.2",
        )
    )  # fmt: skip
    assert joined.grant.node_id == 2


async def test_a_connection_cut_during_the_change_still_spends_the_token(member: Member) -> None:
    """J2: when the joiner's connection task is cancelled (evicted, or the agent stopping) while
    the configuration change runs, the change still completes and the token is spent, so it
    cannot admit a second node. (Before the join was shielded, the cancel left the node added
    and the token usable.)"""
    started, release = asyncio.Event(), asyncio.Event()
    change = member.host.change_config

    async def slow(mutate: Callable[[ClusterConfig], ClusterConfig]) -> Outcome:
        started.set()
        await release.wait()
        return await change(mutate)

    member.host.change_config = slow  # type: ignore[method-assign]
    text = member.join_string()
    js = JoinString.parse(text)
    key = join_files.new_key()
    joiner = asyncio.create_task(
        asyncio.to_thread(
            join_client.join, js, "b", ((0, "127.0.0.2", 0),), node_id=None, votes=None,
            force=False, node_key=key,
        )
    )  # fmt: skip
    await asyncio.wait_for(started.wait(), 10)
    for task in list(member.server.tasks.values()):
        task.cancel()
    release.set()
    with pytest.raises(join_client.JoinError):
        await joiner
    for _ in range(100):
        if member.host.changes:
            break
        await asyncio.sleep(0.05)
    assert member.host.changes == 1
    with pytest.raises(TokenRefusedError, match="already used"):
        member.server.tokens.check(js.token, now=member.clock[0])
