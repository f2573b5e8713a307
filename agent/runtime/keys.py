"""Cluster key files: load them safely, and create new ones (`votemesh keygen FILE`).

Adapter ring: file I/O and `secrets`. A key file holds 32 or more random bytes, used as they
are (a corosync `authkey` of 128 or 256 bytes works too). A key that others on the host could
read is refused, with the command that fixes it.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from agent.config import ConfigError
from proto.datagram_seal import MIN_KEY_BYTES, ClusterKey

KEY_BYTES = 32  # 256 bits: the ChaCha20 key size; HKDF derives per-sender keys from it
MAX_KEY_BYTES = 4096


def load_key(path: Path) -> ClusterKey:
    """The key in `path`; ConfigError (one line with the fix) if missing, exposed or too short."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ConfigError(
            f"key file {path} does not exist; create it: votemesh keygen {path}"
        ) from None
    except PermissionError:
        raise ConfigError(f"key file {path}: permission denied; run as its owner or root") from None
    except OSError as exc:
        raise ConfigError(f"key file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"key file {path} is readable by group or others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); fix it: chmod 600 {path}"
            )
        secret = os.read(fd, MAX_KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(secret) > MAX_KEY_BYTES:
        raise ConfigError(f"key file {path} is larger than {MAX_KEY_BYTES} bytes; is it a key?")
    if len(secret) < MIN_KEY_BYTES:
        raise ConfigError(
            f"key file {path} has {len(secret)} bytes, needs {MIN_KEY_BYTES} or more random "
            f"bytes; create a new one: votemesh keygen FILE"
        )
    return ClusterKey(secret)


def load_keys(paths: tuple[str, ...]) -> list[ClusterKey]:
    """Every configured key, in order: the first seals, all of them open."""
    return [load_key(Path(p)) for p in paths]


def keygen(path: Path) -> None:
    """Write KEY_BYTES fresh random bytes to a new file, mode 0600; never overwrite."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"{path} already exists; refusing to overwrite a key (remove it first if you mean it)"
        ) from None
    except FileNotFoundError:
        raise ConfigError(f"{path.parent} does not exist; create the directory first") from None
    except PermissionError:
        raise ConfigError(
            f"{path}: permission denied; run as root or choose another path"
        ) from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, secrets.token_bytes(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
