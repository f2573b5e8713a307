"""The replication core's durable state on disk: `<state_dir>/cluster-config`.

Adapter ring. Holds what `config_replication.Persist` carries — the committed cluster
configuration in its canonical bytes (the digest covers exactly these), the staged proposal and
the highest ring taken part in — as one msgpack array, replaced atomically (temporary file,
fsync, rename, fsync the directory) so a crash leaves the old or the new state, never a mix.
It is the agents' file: nobody edits it (design §3.9; `votemesh` will print it as TOML).
A corrupt or truncated file is refused with one line (ConfigError); the node then starts at
version 0 without the right to bootstrap and takes the cluster's configuration from the first
view (design §3.9). To find the cluster then, every save also leaves a second copy,
`cluster-config.prev` (written after the main file, so one of the two is always whole); only its
member addresses are used, never its version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack

from agent import cluster_config
from agent.cluster_config import ClusterConfig
from agent.config import ConfigError
from agent.config_replication import Persist, Ring, Staged
from agent.runtime.state import write_durable

FILE_NAME = "cluster-config"
BACKUP_NAME = "cluster-config.prev"
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
    data = msgpack.packb(body, use_bin_type=True)
    write_durable(state_dir / FILE_NAME, data)
    write_durable(state_dir / BACKUP_NAME, data)


def load_backup(state_dir: Path) -> ClusterConfig | None:
    """The committed configuration of the second copy (to find the members when the main file
    is refused), None when it is missing or unreadable too."""
    try:
        data = (state_dir / BACKUP_NAME).read_bytes()[: MAX_FILE + 1]
        return _parse(data).committed
    except (OSError, ConfigError, ValueError, TypeError, IndexError, msgpack.UnpackException):
        return None


def remove(state_dir: Path) -> None:
    """Forget the cluster configuration (`votemesh leave`): both copies."""
    for name in (FILE_NAME, BACKUP_NAME):
        (state_dir / name).unlink(missing_ok=True)


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
    except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException) as exc:
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
