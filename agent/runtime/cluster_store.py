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

from pathlib import Path
from typing import Any

import msgpack

from agent import cluster_config
from agent.config import ConfigError
from agent.config_replication import Persist, Ring, Staged
from agent.runtime.state import write_durable

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
    write_durable(state_dir / FILE_NAME, msgpack.packb(body, use_bin_type=True))


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
