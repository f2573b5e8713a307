"""One-time enrollment tokens: create, store hashed, expire, redeem once.

Owns `tokens.json` in the state directory and nothing else (no sockets, no logging, no clock:
every call takes `now`, wall-clock seconds since the epoch because expiry must survive restarts).
The token text format lives in `proto/enrollment.py`: `vmq1.<cluster>.<secret>.<ca sha256>`,
base64url fields. Only SHA-256(secret) is stored, with the cluster, the creation and expiry times
and, once redeemed, the time of use; the plaintext secret is printed once and never written.

File format (0600; rewritten atomically under an exclusive flock on `tokens.json.lock`, because
the CLI and the server process both write it):

    {"version": 1, "tokens": [{"sha256": hex, "cluster": str, "created_at": float,
                               "expires_at": float, "used_at": float | null}, ...]}

Redeeming compares hashes with `hmac.compare_digest` against every record. A used record is kept
until it expires so that a second attempt is refused as `used`, not `unknown`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from proto.enrollment import Token
from proto.errors import DecodeError
from qnetd.state_files import write_atomic

SECRET_BYTES = 32
FILE_MODE = 0o600
FILE_VERSION = 1
DEFAULT_TTL = 3600.0  # `token create` without --ttl: one hour


class TokenRejectedError(Exception):
    """A token that cannot be redeemed; `reason` is one of `REASONS` (a counter label)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


REASONS = ("malformed", "unknown", "expired", "used", "wrong_cluster")


@dataclass(frozen=True)
class TokenRecord:
    """One stored token: never the secret, only its SHA-256."""

    sha256: str
    cluster: str
    created_at: float
    expires_at: float
    used_at: float | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TokenRecord:
        """A record from its JSON object (fields checked by type)."""
        used = raw.get("used_at")
        return cls(
            sha256=str(raw["sha256"]),
            cluster=str(raw["cluster"]),
            created_at=float(raw["created_at"]),
            expires_at=float(raw["expires_at"]),
            used_at=None if used is None else float(used),
        )


def secret_hash(secret: bytes) -> str:
    """What the store keeps of a secret."""
    return hashlib.sha256(secret).hexdigest()


class TokenStore:
    """The token file of one state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[TokenRecord]]:
        """Hold the lock, yield the records; the caller mutates the list and it is written back."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            records = self._read()
            before = list(records)
            yield records
            if records != before:
                self._write(records)
        finally:
            os.close(fd)

    def _read(self) -> list[TokenRecord]:
        try:
            raw = json.loads(self.path.read_text())
            return [TokenRecord.from_dict(r) for r in raw["tokens"]]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.path} is corrupt; move it away to start afresh") from exc

    def _write(self, records: list[TokenRecord]) -> None:
        body = {"version": FILE_VERSION, "tokens": [asdict(r) for r in records]}
        write_atomic(self.path, json.dumps(body, indent=1).encode(), FILE_MODE)

    def create(
        self,
        cluster: str,
        ca_sha256: bytes,
        *,
        ttl: float,
        now: float,
        secret: bytes | None = None,
    ) -> str:
        """Store a new token for `cluster` valid `ttl` seconds from `now`; return its text."""
        if ttl <= 0:
            raise ValueError("a token's lifetime must be positive")
        token = Token(cluster, secret or secrets.token_bytes(SECRET_BYTES), ca_sha256)
        text = token.encode()  # validates lengths before anything is stored
        record = TokenRecord(secret_hash(token.secret), cluster, now, now + ttl)
        with self._locked() as records:
            records[:] = [r for r in records if r.expires_at > now]
            records.append(record)
        return text

    def redeem(self, text: str, *, now: float, cluster: str | None = None) -> TokenRecord:
        """Use a token once; `cluster`, if given, must be the token's. Raises TokenRejectedError."""
        try:
            token = Token.parse(text)
        except DecodeError as exc:
            raise TokenRejectedError("malformed", f"malformed token: {exc.detail}") from exc
        digest = secret_hash(token.secret)
        with self._locked() as records:
            index = _find(records, digest)
            if index is None:
                raise TokenRejectedError("unknown", "unknown token; create one with 'token create'")
            record = records[index]
            _check(record, token, now, cluster)
            records[index] = replace(record, used_at=now)
        return records[index]

    def purge_expired(self, *, now: float) -> int:
        """Forget tokens whose expiry has passed; return how many."""
        with self._locked() as records:
            kept = [r for r in records if r.expires_at > now]
            dropped = len(records) - len(kept)
            records[:] = kept
        return dropped

    def list(self) -> list[TokenRecord]:
        """Every stored record (hashes only)."""
        with self._locked() as records:
            return list(records)


def _find(records: list[TokenRecord], digest: str) -> int | None:
    """Index of the record with this hash; compares every record in constant time."""
    found = None
    for i, record in enumerate(records):
        if hmac.compare_digest(record.sha256, digest):
            found = i
    return found


def _check(record: TokenRecord, token: Token, now: float, cluster: str | None) -> None:
    if record.used_at is not None:
        raise TokenRejectedError("used", "token already used; create a new one")
    if now >= record.expires_at:
        raise TokenRejectedError("expired", "token expired; create a new one")
    asked = token.cluster if token.cluster != record.cluster else cluster
    if asked is not None and asked != record.cluster:
        raise TokenRejectedError(
            "wrong_cluster", f"token is for cluster {record.cluster!r}, not {asked!r}"
        )
