"""The state directory's files without any certificate parsing: paths, modes, atomic writes,
the directory's locks, and whether a server is using it.

Split from qnetd/certs.py so that a server whose CA and certificate already exist starts without
importing `cryptography` (about 10 MB of resident memory): `votemesh-qnetd run` needs only these
helpers and the ssl module (qnetd/runtime/app.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from proto.errors import CertificateError

PUBLIC_MODE = 0o644
PRIVATE_MODE = 0o600
DIR_MODE = 0o700


CertError = CertificateError
"""A certificate problem the operator can fix; one line that says how (shared with proto)."""


@dataclass(frozen=True)
class StatePaths:
    """Where the certificate files of a state directory live (docs/design.md 2.1)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        """CA certificate, PEM, 0644."""
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """CA private key, PEM PKCS#8, 0600."""
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        """Server certificate `CN=Qnetd Server`, PEM, 0644."""
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        """Server private key, PEM PKCS#8, 0600."""
        return self.root / "server.key"

    @property
    def serial(self) -> Path:
        """The last serial number handed out, as decimal text."""
        return self.root / "serial"

    @property
    def tokens(self) -> Path:
        """Enrollment tokens (qnetd/enrollment.py)."""
        return self.root / "tokens.json"

    @property
    def issued(self) -> Path:
        """A copy of every certificate signed."""
        return self.root / "issued"

    @property
    def lock(self) -> Path:
        """flock target shared by every writer of this directory."""
        return self.root / ".lock"

    @property
    def server_lock(self) -> Path:
        """Held (shared flock) by every running server that uses this directory's CA."""
        return self.root / ".server.lock"


# --- files -------------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a temp file in the same directory, fsync, chmod, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(paths: StatePaths) -> Iterator[None]:
    """Hold the state directory's exclusive flock (the CLI and the server both write it)."""
    make_dir(paths.root)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def server_using(paths: StatePaths) -> Iterator[None]:
    """Mark this state directory as used by a running server while inside: a shared flock on
    `server_lock` (released by the kernel if the process dies), seen by `server_running()`."""
    make_dir(paths.root)
    fd = os.open(paths.server_lock, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def server_running(paths: StatePaths) -> bool:
    """True when a live server is inside `server_using` for this state directory."""
    try:
        fd = os.open(paths.server_lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def make_dir(path: Path) -> None:
    """Create `path` (and parents) as 0700 if it is missing; leave an existing one alone."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def pair_complete(cert: Path, key: Path) -> bool:
    """True when the pair exists; False when the certificate is missing (create it).

    A key without its certificate is what a crash between the two writes leaves (the key is
    written first), so it is replaced; a certificate without its key cannot be repaired.
    """
    if cert.exists() and not key.exists():
        raise CertError(
            f"{cert} exists but {key} is missing; restore it or run 'certs init --force'"
        )
    return cert.exists()
