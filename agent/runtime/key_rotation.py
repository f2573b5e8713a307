"""The running agent's cluster keys during a rotation (design §3.12; `votemesh rotate-key`).

Adapter ring. `KeyRing` holds every key this node has (by id; each one is on disk before it is
used), installs the sealing key and the opening keys in the mesh as the committed
configuration's `key_rotation` record says, writes and retires key files, confirms phases with
configuration changes (its `keys` task), hands the join server the current keys, and answers
the control request `rotate-key`. The phases and the wrap are agent/key_rotation.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from cryptography.hazmat.primitives import serialization

from agent import key_rotation
from agent.cluster_config import ClusterConfig
from agent.config import ConfigError
from agent.key_rotation import KeyRotation, Phase
from agent.runtime.keys import KEY_BYTES, load_key
from agent.runtime.state import write_durable
from proto.datagram_seal import ClusterKey, Sealer

if TYPE_CHECKING:
    from agent.runtime.main import AgentRuntime

NEW_SUFFIX = ".new"
CA_KEY_NAME = "cluster-ca.key"
RETRY_EVERY = 1.0
"""Seconds between checks (and confirmation attempts) while a rotation is under way."""
log = structlog.get_logger("votemesh.agent.keys")


def members(config: ClusterConfig) -> set[int]:
    """The node ids of a configuration."""
    return {n.node_id for n in config.nodes}


class KeyRing:
    """This node's cluster keys and its part in a rotation."""

    def __init__(self, runtime: AgentRuntime, keys: list[ClusterKey]) -> None:
        self.runtime = runtime
        self.files = tuple(Path(p) for p in runtime.config.key_files)
        self.keys: dict[bytes, ClusterKey] = {k.key_id: k for k in keys}
        self.seal_id = keys[0].key_id
        self.open_ids = [k.key_id for k in keys]
        self.wake = asyncio.Event()
        self.problem: str | None = None
        """Why this node cannot take its part (logged once per distinct reason)."""

    @property
    def new_path(self) -> Path:
        """Where a distributed key waits until the rotation is done."""
        return self.files[0].with_name(self.files[0].name + NEW_SUFFIX)

    def ca_secret(self) -> bytes:
        """The cluster CA's private key (DER): half of the wrap's key; ConfigError if absent."""
        path = self.runtime.startup.path.parent / CA_KEY_NAME
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise ConfigError(
                f"cannot read {path} ({exc.strerror or exc}): a key rotation needs the cluster "
                "CA key every member of a `votemesh create` cluster holds"
            ) from None
        except ValueError:
            raise ConfigError(f"{path} is not a PEM private key") from None
        return key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    # ------------------------------------------------------------ applying the record
    def load_pending(self) -> None:
        """At start: a key distributed before a restart (`<key_files[0]>.new`)."""
        if self.new_path.exists():
            try:
                key = load_key(self.new_path)
            except ConfigError as exc:
                log.error("distributed cluster key refused", reason=str(exc))  # noqa: TRY400
                return
            self.keys.setdefault(key.key_id, key)

    def apply(self, config: ClusterConfig) -> None:
        """Install what the committed record says (at start and on every committed version)."""
        record = config.key_rotation
        if record is None:
            return
        try:
            if record.phase is Phase.DONE:
                self._done(record)
            else:
                self._under_way(record, config.cluster_name)
        except (ConfigError, ValueError) as exc:  # ValueError: a key of the wrong size
            self._trouble(str(exc), record)
            return
        self.problem = None
        self.wake.set()

    def _under_way(self, record: KeyRotation, cluster: str) -> None:
        if record.key_id not in self.keys:
            old = self.keys.get(record.old_key_id)
            if old is None:
                raise ConfigError(
                    f"this node does not hold the key {record.old_key_id.hex()} the new key is "
                    "wrapped under; join again with `votemesh add --force`"
                )
            new = key_rotation.unwrap(old, self.ca_secret(), cluster, record)
            write_durable(self.new_path, new.secret)  # on disk before it is used
            self.keys[new.key_id] = new
            log.info("cluster key received", key_id=new.key_id.hex(), file=str(self.new_path))
        if record.old_key_id not in self.keys:  # only the new key (its old key file was lost)
            self._install(record.key_id, [record.key_id])
            return
        seal = record.key_id if record.phase is Phase.SWITCH else record.old_key_id
        self._install(seal, [record.old_key_id, record.key_id])

    def _done(self, record: KeyRotation) -> None:
        new = self.keys.get(record.key_id)
        if new is None:
            raise ConfigError(
                f"this node does not hold the cluster key {record.key_id.hex()}; join again "
                "with `votemesh add --force`"
            )
        self._install(record.key_id, [record.key_id])
        self._retire_files(new)

    def _retire_files(self, new: ClusterKey) -> None:
        """Every key file holds the new key (atomic, 0600); `.new` goes. Idempotent."""
        for path in self.files:
            try:
                current = load_key(path).key_id
            except ConfigError:
                current = b""
            if current != new.key_id:
                write_durable(path, new.secret)
                log.info("cluster key file replaced", file=str(path), key_id=new.key_id.hex())
        if self.new_path.exists():
            try:
                self.new_path.unlink()
            except OSError as exc:
                raise ConfigError(f"cannot remove {self.new_path}: {exc.strerror}") from None
        self.keys = {new.key_id: new}

    def _install(self, seal_id: bytes, open_ids: list[bytes]) -> None:
        """The mesh seals with `seal_id` and opens with `open_ids`; the join server follows."""
        mesh = self.runtime.mesh
        if open_ids != self.open_ids:
            mesh.opener.set_keys([self.keys[i] for i in open_ids])
            self.open_ids = list(open_ids)
            log.info("cluster keys open", key_ids=[i.hex() for i in open_ids])
        if seal_id != self.seal_id:
            old = mesh.sealer
            sealer = Sealer(
                self.runtime.config.cluster_name,
                self.keys[seal_id],
                old.node_id,
                old.incarnation,
            )
            sealer.counter = old.counter  # the receivers' replay windows are per incarnation
            mesh.sealer = sealer
            self.seal_id = seal_id
            log.info("cluster key seals", key_id=seal_id.hex())
        self.publish()

    def publish(self) -> None:
        """The join server hands joiners the keys this node opens with, sealing key first."""
        join = self.runtime.join
        if join is not None:
            ordered = [self.seal_id, *(i for i in self.open_ids if i != self.seal_id)]
            join.keys = tuple(self.keys[i].secret for i in ordered if i in self.keys)

    def _trouble(self, reason: str, record: KeyRotation) -> None:
        if reason != self.problem:
            log.error(
                "key rotation: this node cannot take its part",
                reason=reason,
                phase=record.phase.name.lower(),
                effect="the rotation waits for this node; fix it and restart the agent",
            )
        self.problem = reason

    # ------------------------------------------------------------ confirming
    def should_confirm(self, config: ClusterConfig) -> bool:
        """This node holds what the phase asks and is not counted yet, or every member has
        confirmed and the advance is due (a member was removed)."""
        record, me = config.key_rotation, self.runtime.local.node_id
        if record is None or not record.in_progress or self.problem is not None:
            return False
        if members(config) <= set(record.confirmed):
            return True
        if me in record.confirmed or me not in members(config):
            return False
        if record.phase is Phase.DISTRIBUTE:
            return record.key_id in self.open_ids
        return self.seal_id == record.key_id

    async def run(self) -> None:
        """The `keys` task: confirm phases until the agent stops. It sleeps until a record is
        applied, then checks every RETRY_EVERY while a rotation is under way (no idle wake-up)."""
        self.publish()
        while True:
            record = self.runtime.cluster_config.key_rotation
            under_way = record is not None and record.in_progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), RETRY_EVERY if under_way else None)
            self.wake.clear()
            config = self.runtime.cluster_config
            if not self.should_confirm(config):
                continue
            outcome = await self.runtime.change_config(self._confirm)
            if not outcome.ok:  # another change won: retry after a random pause
                await asyncio.sleep(random.uniform(0.05, 0.4))
                self.wake.set()

    def _confirm(self, config: ClusterConfig) -> ClusterConfig:
        me = self.runtime.local.node_id
        record = key_rotation.confirmed(config.key_rotation, members(config), me)
        return replace(config, key_rotation=record)

    # ------------------------------------------------------------ rotate-key
    async def rotate(self) -> tuple[bool, str]:
        """Control request `rotate-key`: a new key, distributed by a configuration change."""
        committed = self.runtime.cluster_config
        if committed.version == 0:
            return False, "this node holds no agreed cluster configuration (version 0)\n"
        try:
            key_rotation.check_idle(committed.key_rotation)
            old = self.keys[self.seal_id]
            new = ClusterKey(secrets.token_bytes(KEY_BYTES))
            wrapped = key_rotation.wrap(
                old, self.ca_secret(), committed.cluster_name, new, secrets.token_bytes(12)
            )
            record = KeyRotation(Phase.DISTRIBUTE, new.key_id, old.key_id, wrapped)
            write_durable(self.new_path, new.secret)
        except ConfigError as exc:
            return False, f"{exc}\n"
        self.keys[new.key_id] = new
        outcome = await self.runtime.change_config(
            lambda c: replace(c, key_rotation=key_rotation.started(c.key_rotation, record))
        )
        if not outcome.ok:
            if self.runtime.cluster_config.key_rotation != record:
                self.keys.pop(new.key_id, None)
                with contextlib.suppress(OSError):
                    self.new_path.unlink()
            return False, f"key not rotated: {outcome.text}\n"
        log.info("key rotation started", key_id=new.key_id.hex(), version=outcome.version)
        body = {"ok": True, "key_id": new.key_id.hex(), "version": outcome.version}
        return True, json.dumps(body, sort_keys=True) + "\n"

    def as_dict(self) -> dict[str, object]:
        """For the status: what seals and what opens."""
        return {"seals": self.seal_id.hex(), "opens": [i.hex() for i in self.open_ids]}
