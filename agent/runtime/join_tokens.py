"""One-time join tokens of this member: mint, check, spend; only their SHA-256 on disk.

Adapter ring (design §3.11). Owns `<state_dir>/join-tokens.json` (0600, atomic durable replace):

    {"version": 1, "tokens": [{"sha256": hex, "created_at": float, "expires_at": float,
                               "used_at": float | null}, ...]}

Times are wall-clock seconds (expiry must survive a restart), passed in by the caller. Only the
agent process writes the file (the CLI asks the agent over the control socket), so no lock beyond
the join server's own. A record is kept until it expires, so a second use is refused as `used`,
not `unknown`. Lookups compare every record in constant time.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from agent.config import ConfigError
from agent.runtime.state import write_durable
from proto.errors import DecodeError
from proto.join import make_token, token_hash

FILE_NAME = "join-tokens.json"
FILE_VERSION = 1
SECRET_BYTES = 32
MIN_TTL = 60.0
MAX_TTL = 7 * 24 * 3600.0
DEFAULT_TTL = 3600.0
MAX_TOKENS = 1024  # live tokens kept; minting beyond this drops the oldest
TOKEN_FAILURES = ("malformed_token", "unknown_token", "expired", "used")
"""Refusals that charge the source a failed guess (`proto.connection_limits.AttemptLimiter`)."""


class TokenRefusedError(Exception):
    """A token that cannot be used; `reason` is one of TOKEN_FAILURES."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TokenRecord:
    """One minted token: never the secret."""

    sha256: str
    created_at: float
    expires_at: float
    used_at: float | None = None


class JoinTokens:
    """The token file of one state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME

    def _read(self) -> list[TokenRecord]:
        try:
            raw = json.loads(self.path.read_text())
            return [_record(r) for r in raw["tokens"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.path} is corrupt; move it away to start afresh") from exc

    def _write(self, records: list[TokenRecord]) -> None:
        body = {"version": FILE_VERSION, "tokens": [asdict(r) for r in records]}
        write_durable(self.path, json.dumps(body, indent=1).encode())

    def mint(self, *, ttl: float, now: float) -> str:
        """A new token valid `ttl` seconds from `now`; its text (shown once, stored hashed)."""
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise ValueError(f"a join token lives {MIN_TTL:.0f} s to {MAX_TTL:.0f} s")
        text = make_token(secrets.token_bytes(SECRET_BYTES))
        records = [r for r in self._read() if r.expires_at > now][-(MAX_TOKENS - 1) :]
        records.append(TokenRecord(token_hash(text), now, now + ttl))
        self._write(records)
        return text

    def check(self, text: str, *, now: float) -> TokenRecord:
        """The token's record if it may be used now; TokenRefusedError otherwise."""
        try:
            digest = token_hash(text)
        except DecodeError as exc:
            raise TokenRefusedError("malformed_token", f"bad join token: {exc.detail}") from exc
        record = _find(self._read(), digest)
        if record is None:
            raise TokenRefusedError(
                "unknown_token",
                "unknown join token; ask a member for a new one: votemesh join-info",
            )
        if record.used_at is not None:
            raise TokenRefusedError(
                "used", "join token already used; ask a member for a new one: votemesh join-info"
            )
        if now >= record.expires_at:
            raise TokenRefusedError(
                "expired", "join token expired; ask a member for a new one: votemesh join-info"
            )
        return record

    def spend(self, text: str, *, now: float) -> None:
        """Mark the token used (after `check`, under the join server's lock)."""
        digest = token_hash(text)
        records = self._read()
        self._write([replace(r, used_at=now) if r.sha256 == digest else r for r in records])

    def records(self) -> list[TokenRecord]:
        """Every stored record (hashes only)."""
        return self._read()


def _record(raw: dict[str, Any]) -> TokenRecord:
    used = raw.get("used_at")
    return TokenRecord(
        sha256=str(raw["sha256"]),
        created_at=float(raw["created_at"]),
        expires_at=float(raw["expires_at"]),
        used_at=None if used is None else float(used),
    )


def _find(records: list[TokenRecord], digest: str) -> TokenRecord | None:
    """The record with this hash; compares against every record in constant time."""
    found = None
    for record in records:
        if hmac.compare_digest(record.sha256, digest):
            found = record
    return found
