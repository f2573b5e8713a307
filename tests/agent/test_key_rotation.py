"""Key rotation (design §3.12): the record's phases, the wrap, its place in the configuration's
canonical encoding, the opener's keyring swap, and the runtime's key files across a restart."""

from __future__ import annotations

import asyncio
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives import serialization

from agent import cluster_config, key_rotation
from agent.config import ConfigError
from agent.key_rotation import KeyRotation, Phase
from agent.runtime.join_files import new_key
from agent.runtime.key_rotation import KeyRing
from agent.runtime.replication import ChangeOutcome
from proto import certificates
from proto.datagram_seal import ClusterKey, Opener, Sealer
from proto.errors import DecodeError
from tests.agent.cluster_fixtures import cluster

OLD = ClusterKey(b"o" * 32)
NEW = ClusterKey(b"n" * 32)
CA = b"ca private key DER"
NONCE = b"\1" * 12


def _record(phase: Phase = Phase.DISTRIBUTE, confirmed: tuple[int, ...] = ()) -> KeyRotation:
    wrapped = key_rotation.wrap(OLD, CA, "prod", NEW, NONCE)
    return KeyRotation(phase, NEW.key_id, OLD.key_id, wrapped, confirmed)


def test_the_wrap_opens_only_with_the_old_key_and_the_ca_key() -> None:
    """The new key comes back with both secrets; the old cluster key alone (a leaked
    cluster.key), another CA key, another cluster or a flipped byte do not open it."""
    record = _record()
    assert key_rotation.unwrap(OLD, CA, "prod", record) == NEW
    w = record.wrapped
    tampered = replace(record, wrapped=w[:20] + bytes([w[20] ^ 1]) + w[21:])
    cases = [
        (OLD, b"", "prod", record),
        (OLD, b"another CA", "prod", record),
        (NEW, CA, "prod", record),
        (OLD, CA, "other", record),
        (OLD, CA, "prod", tampered),
    ]  # fmt: skip
    for old, ca, name, rec in cases:
        with pytest.raises(ConfigError, match="does not open"):
            key_rotation.unwrap(old, ca, name, rec)


def test_phases_advance_when_every_member_confirmed() -> None:
    """distribute -> switch -> done, each once every member of the configuration confirmed; a
    second confirmation is refused; a member removed meanwhile no longer counts."""
    members = {1, 2, 3}
    r = _record()
    r = key_rotation.confirmed(r, members, 2)
    assert (r.phase, r.confirmed) == (Phase.DISTRIBUTE, (2,))
    with pytest.raises(ConfigError, match="already confirmed"):
        key_rotation.confirmed(r, members, 2)
    r = key_rotation.confirmed(r, members, 1)
    assert key_rotation.waiting_for(r, members) == [3]
    r = key_rotation.confirmed(r, members, 3)
    assert (r.phase, r.confirmed) == (Phase.SWITCH, ())
    r = key_rotation.confirmed(r, members, 1)
    r = key_rotation.confirmed(r, {1, 2}, 2)  # node 3 deleted: the advance is due
    assert r == KeyRotation(Phase.DONE, NEW.key_id, OLD.key_id, b"", ())
    with pytest.raises(ConfigError, match="no key rotation in progress"):
        key_rotation.confirmed(r, members, 3)
    assert key_rotation.waiting_for(r, members) == []


def test_a_rotation_under_way_refuses_another() -> None:
    """`started` refuses during distribute and switch, and accepts after done."""
    for phase in (Phase.DISTRIBUTE, Phase.SWITCH):
        with pytest.raises(ConfigError, match="a key rotation is in progress"):
            key_rotation.started(_record(phase), _record())
    done = KeyRotation(Phase.DONE, OLD.key_id, NEW.key_id)
    assert key_rotation.started(done, _record()) == _record()
    assert key_rotation.started(None, _record()) == _record()


def test_the_record_is_in_the_canonical_encoding_only_when_present() -> None:
    """A configuration without a rotation encodes as before (7 items: old digests hold); with
    one it round-trips and changes the digest; an invalid record is refused at decode."""
    plain = cluster([1, 2, 3])
    assert len(msgpack.unpackb(cluster_config.encode(plain))) == 7
    rotated = replace(plain, key_rotation=_record(Phase.SWITCH, (1, 3)))
    data = cluster_config.encode(rotated)
    assert cluster_config.decode(data) == rotated
    assert cluster_config.digest(rotated) != cluster_config.digest(plain)
    bad = [
        replace(_record(), key_id=b"abc"),
        replace(_record(), old_key_id=NEW.key_id),
        replace(_record(Phase.DONE), confirmed=()),  # done keeps no wrapped key
        replace(_record(), wrapped=b"short"),
        replace(_record(), confirmed=(3, 1)),
    ]
    for record in bad:
        with pytest.raises(ConfigError, match="key_rotation"):
            cluster_config.decode(cluster_config.encode(replace(plain, key_rotation=record)))
    body = msgpack.unpackb(data)
    body.append([1])
    with pytest.raises(ConfigError, match="corrupt"):
        cluster_config.decode(msgpack.packb(body, use_bin_type=True))


def test_the_opener_swaps_keys_and_the_sealer_must_continue_its_counter() -> None:
    """After set_keys([new]) a datagram under the old key is `unknown_key`; the replay window
    survives the swap, so a new sealer of the same incarnation continues the counter (one that
    restarted at 1 would be `replayed`: why KeyRing copies the counter)."""
    opener = Opener("prod", [OLD])
    old_sealer = Sealer("prod", OLD, 2, 7)
    for _ in range(3):
        opener.open(old_sealer.seal(1, b"hb"))
    opener.set_keys([OLD, NEW])
    assert sorted(opener.key_ids()) == sorted([OLD.key_id, NEW.key_id])
    restarted = Sealer("prod", NEW, 2, 7)
    with pytest.raises(DecodeError) as caught:
        opener.open(restarted.seal(1, b"hb"))
    assert caught.value.reason == "replayed"
    continued = Sealer("prod", NEW, 2, 7)
    continued.counter = old_sealer.counter
    opener.open(continued.seal(1, b"hb"))
    opener.set_keys([NEW])
    with pytest.raises(DecodeError) as caught:
        opener.open(old_sealer.seal(1, b"hb"))
    assert caught.value.reason == "unknown_key"


# ---------------------------------------------------------------- the runtime's key files
@dataclass
class _Runtime:
    """What KeyRing reads of AgentRuntime (a stand-in: the layer below is real files)."""

    etc: Path
    cluster_config: Any
    join: Any = None
    mesh: Any = field(default=None)
    outcome: ChangeOutcome = field(default_factory=lambda: ChangeOutcome(True, "applied", 2))
    asked: list[Any] = field(default_factory=list)

    async def change_config(self, mutate: Any) -> ChangeOutcome:
        """The replication's answer (set by the test); the asked config is kept."""
        self.asked.append(mutate(self.cluster_config))
        return self.outcome

    def __post_init__(self) -> None:
        self.config = SimpleNamespace(
            key_files=(str(self.etc / "cluster.key"),), cluster_name="prod"
        )
        self.startup = SimpleNamespace(path=self.etc / "node.toml")
        self.local = SimpleNamespace(node_id=2)
        sealer = Sealer("prod", OLD, 2, 7)
        sealer.counter = 40
        self.mesh = SimpleNamespace(sealer=sealer, opener=Opener("prod", [OLD]))


def _ring(tmp_path: Path, record: KeyRotation | None, ca: bytes | None) -> tuple[KeyRing, _Runtime]:
    (tmp_path / "cluster.key").write_bytes(OLD.secret)
    (tmp_path / "cluster.key").chmod(0o600)
    ca_der = b""
    if ca is not None:
        key = new_key()
        (tmp_path / "cluster-ca.key").write_bytes(certificates.key_pem(key))
        ca_der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # fmt: skip
    if record is not None and record.wrapped:
        record = replace(record, wrapped=key_rotation.wrap(OLD, ca_der, "prod", NEW, NONCE))
    runtime = _Runtime(tmp_path, replace(cluster([1, 2, 3]), key_rotation=record))
    ring = KeyRing(runtime, [OLD])  # type: ignore[arg-type]
    return ring, runtime


def test_distribute_writes_the_key_0600_before_opening_with_it_and_seals_with_the_old(
    tmp_path: Path,
) -> None:
    """Applying `distribute`: the key is unwrapped, written to cluster.key.new (0600), opened
    with beside the old one; the old key still seals; the node may now confirm."""
    ring, runtime = _ring(tmp_path, _record(), ca=b"yes")
    ring.apply(runtime.cluster_config)
    new_file = tmp_path / "cluster.key.new"
    assert new_file.read_bytes() == NEW.secret
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
    assert ring.as_dict() == {
        "seals": OLD.key_id.hex(),
        "opens": [OLD.key_id.hex(), NEW.key_id.hex()],
    }
    assert runtime.mesh.sealer.counter == 40
    assert ring.should_confirm(runtime.cluster_config)


def test_a_restart_in_switch_seals_with_the_new_key_and_done_retires_the_old_file(
    tmp_path: Path,
) -> None:
    """A node that restarts with cluster.key (old) and cluster.key.new: in `switch` it seals
    with the new key (counter kept) and opens both; `done` writes the new key into
    cluster.key (0600), removes .new and opens with the new key only."""
    ring, runtime = _ring(tmp_path, _record(Phase.SWITCH), ca=b"yes")
    (tmp_path / "cluster.key.new").write_bytes(NEW.secret)
    (tmp_path / "cluster.key.new").chmod(0o600)
    ring.load_pending()
    ring.apply(runtime.cluster_config)
    assert ring.as_dict()["seals"] == NEW.key_id.hex()
    assert runtime.mesh.sealer.counter == 40
    done = KeyRotation(Phase.DONE, NEW.key_id, OLD.key_id)
    ring.apply(replace(runtime.cluster_config, key_rotation=done))
    assert (tmp_path / "cluster.key").read_bytes() == NEW.secret
    assert stat.S_IMODE((tmp_path / "cluster.key").stat().st_mode) == 0o600
    assert not (tmp_path / "cluster.key.new").exists()
    assert ring.as_dict() == {"seals": NEW.key_id.hex(), "opens": [NEW.key_id.hex()]}


def test_a_node_without_the_ca_key_does_not_confirm(tmp_path: Path) -> None:
    """Without cluster-ca.key the key cannot be unwrapped: nothing is written, the old key
    stays, the node does not confirm (the rotation waits; the log says why)."""
    ring, runtime = _ring(tmp_path, _record(), ca=None)
    ring.apply(runtime.cluster_config)
    assert ring.problem is not None
    assert "cluster-ca.key" in ring.problem
    assert not (tmp_path / "cluster.key.new").exists()
    assert ring.as_dict() == {"seals": OLD.key_id.hex(), "opens": [OLD.key_id.hex()]}
    assert not ring.should_confirm(runtime.cluster_config)


def test_rotate_key_writes_the_new_key_0600_first_and_a_refusal_leaves_nothing(
    tmp_path: Path,
) -> None:
    """`rotate-key`: the new key is on disk (0600) before the change is asked, the change
    carries a `distribute` record that unwraps to that key; a refused change (not quorate)
    removes the file and the key and says why in one line; a key file that cannot be written
    is one line and asks nothing."""
    ring, runtime = _ring(tmp_path, None, ca=b"yes")
    ok, body = asyncio.run(ring.rotate())
    assert ok, body
    record = runtime.asked[-1].key_rotation
    assert record.phase is Phase.DISTRIBUTE
    new_file = tmp_path / "cluster.key.new"
    assert ClusterKey(new_file.read_bytes()).key_id == record.key_id
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600

    new_file.unlink()
    runtime.outcome = ChangeOutcome(False, "not quorate: 1 of 3 votes", 1)
    ok, body = asyncio.run(ring.rotate())
    assert not ok
    assert body == "key not rotated: not quorate: 1 of 3 votes\n"
    assert not new_file.exists()
    assert runtime.asked[-1].key_rotation.key_id not in ring.keys

    (tmp_path / "blocked").write_text("a file, not a directory")
    ring.files = (tmp_path / "blocked" / "cluster.key",)
    asked = len(runtime.asked)
    ok, body = asyncio.run(ring.rotate())
    assert not ok
    assert body.startswith("cannot write ")
    assert len(body.strip().splitlines()) == 1
    assert len(runtime.asked) == asked


def test_a_node_holding_only_the_new_key_seals_and_opens_with_it(tmp_path: Path) -> None:
    """A node whose old key file is gone but that holds the distributed key (cluster.key
    holds the new key) seals and opens with the new key instead of failing on the old one."""
    ring, runtime = _ring(tmp_path, _record(), ca=b"yes")
    ring.keys = {NEW.key_id: NEW}
    ring.apply(runtime.cluster_config)
    assert ring.problem is None
    assert ring.as_dict() == {"seals": NEW.key_id.hex(), "opens": [NEW.key_id.hex()]}
