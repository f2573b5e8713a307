"""Persisted agent state: the per-boot incarnation and the highest ring sequence seen.

Adapter ring: files in `config.state_dir`, each one decimal number, replaced atomically (write a
temporary file, fsync, rename, fsync the directory) so a crash leaves the old or the new value.

* `incarnation`: strictly larger on every start, even when the wall clock went back:
  max(last + 1, wall-clock microseconds). It goes into every datagram nonce, so a (key, nonce)
  pair is never reused across restarts (shared/ref/platform-facts.md).
* `max_seq`: the highest ring sequence this node has seen or made, so a restarted node never
  proposes one sequence for two member sets (docs/design.md §3.1).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from agent.config import ConfigError
from proto.datagram_seal import INCARNATION_MAX
from proto.mesh_messages import SEQ_MAX

MAX_U64 = 0xFFFFFFFFFFFFFFFF
INCARNATION_FILE = "incarnation"
MAX_SEQ_FILE = "max_seq"


def wall_clock_us() -> int:
    """Microseconds since the epoch (the time-based lower bound of an incarnation)."""
    return time.time_ns() // 1000


class StateDir:
    """The agent's state directory (created 0700 when missing)."""

    def __init__(self, path: Path, clock_us: Callable[[], int] = wall_clock_us) -> None:
        self.path = path
        self._clock_us = clock_us
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except PermissionError:
            raise ConfigError(
                f"state_dir {path}: permission denied; run as root or set state_dir"
            ) from None
        except OSError as exc:
            raise ConfigError(f"state_dir {path}: {exc.strerror or exc}") from None

    def next_incarnation(self) -> int:
        """A fresh incarnation, persisted before it is returned (never handed out twice)."""
        last = self._read(INCARNATION_FILE)
        value = max(last + 1, self._clock_us(), 1)
        if value > INCARNATION_MAX:
            raise ConfigError(
                f"{self.path / INCARNATION_FILE} is exhausted; remove it to restart from the clock"
            )
        self._write(INCARNATION_FILE, value)
        return value

    def load_max_seq(self) -> int:
        """The persisted highest ring sequence (0 on a first start). A value that leaves no room
        for a new ring id (above SEQ_MAX - 1) is a one-line ConfigError saying what to do."""
        value = self._read(MAX_SEQ_FILE)
        if value >= SEQ_MAX:
            raise ConfigError(
                f"{self.path / MAX_SEQ_FILE} holds {value}, above the highest ring sequence "
                f"{SEQ_MAX - 1} (written by an older version from a hostile datagram, or by "
                "hand): write into it the highest ring sequence your cluster uses (ring_id in "
                "`votemesh status` on another node) plus 1000, then start again"
            )
        return value

    def boot_max_seq(self, promised: int) -> int:
        """The max_seq a start begins from: the persisted one, raised to the sequence of the
        ring the configuration replica last took part in (`promised`, stored with the cluster
        configuration). A max_seq write that failed, or a lost max_seq file, must not give a
        boot view below that ring: the replica would take no part in views until the rings
        rose past it (design §3.1, "Ring ids rise per node")."""
        return max(self.load_max_seq(), min(promised, SEQ_MAX - 1))

    def store_max_seq(self, value: int) -> None:
        """Persist a higher ring sequence (lower values are ignored)."""
        if value > self._read(MAX_SEQ_FILE):
            self._write(MAX_SEQ_FILE, value)

    def _read(self, name: str) -> int:
        path = self.path / name
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        if not text.isdigit() or int(text) > MAX_U64:
            raise ConfigError(f"{path} is corrupt ({text[:20]!r}); remove it and start again")
        return int(text)

    def _write(self, name: str, value: int) -> None:
        write_durable(self.path / name, f"{value}\n".encode())


def write_durable(target: Path, data: bytes) -> None:
    """Write `data` to `target` (mode 0600) so a crash leaves the old or the new content: a
    temporary file beside it, fsync, rename, fsync the directory. ConfigError naming the file
    if the disk refuses (the node's state files and the cluster configuration store)."""
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(target)
        _fsync_dir(target.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
