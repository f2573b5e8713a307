"""The replication core's durable state on disk: `<state_dir>/cluster-config`.

Adapter ring. Holds what `config_replication.Persist` carries — the committed cluster
configuration in its canonical bytes (the digest covers exactly these), the staged proposal and
the highest ring taken part in — as one msgpack array, replaced atomically (temporary file,
fsync, rename, fsync the directory) so a crash leaves the old or the new state, never a mix.
It is the agents' file: nobody edits it (design §3.9; `votemesh` will print it as TOML).
A corrupt or truncated file is refused with one line (ConfigError); the node then starts from
its bootstrap and takes the cluster's configuration from the first view (design §3.9).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import msgpack

from agent import cluster_config
from agent.config import ConfigError
from agent.config_replication import Persist, Ring, Staged

FILE_NAME = "cluster-config"
FORMAT = 1
MAX_FILE = 2 * 1024 * 1024


def save(state_dir: Path, state: Persist) -> None:
    """Write `state` atomically (ConfigError naming the file if the disk refuses)."""
    staged = state.staged
    body = [
        FORMAT,
        cluster_config.encode(state.committed),
        None
        if staged is None
        else [staged.ring.seq, staged.ring.representative, cluster_config.encode(staged.config)],
        None if state.promised is None else [state.promised.seq, state.promised.representative],
    ]
    target = state_dir / FILE_NAME
    tmp = target.with_name(f".{FILE_NAME}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, msgpack.packb(body, use_bin_type=True))
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(target)
        dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None


def load(state_dir: Path) -> Persist | None:
    """The stored state, None when there is none yet; ConfigError (one line) if corrupt."""
    path = state_dir / FILE_NAME
    try:
        data = path.read_bytes()[: MAX_FILE + 1]
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return _parse(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}; the node will take the cluster's copy") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ConfigError(
            f"{path} is corrupt ({type(exc).__name__}); the node will take the cluster's copy"
        ) from None


def _parse(data: bytes) -> Persist:
    if len(data) > MAX_FILE:
        raise ValueError("too large")
    body: Any = msgpack.unpackb(data, raw=False, use_list=True)
    fmt, committed, staged, promised = body
    if fmt != FORMAT:
        raise ValueError("format")
    return Persist(
        cluster_config.decode(committed),
        None
        if staged is None
        else Staged(Ring(int(staged[0]), int(staged[1])), cluster_config.decode(staged[2])),
        None if promised is None else Ring(int(promised[0]), int(promised[1])),
    )
