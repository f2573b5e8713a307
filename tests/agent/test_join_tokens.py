"""agent/runtime/join_tokens.py: one-time join tokens, stored hashed, expiring."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.runtime.join_tokens import JoinTokens, TokenRefusedError
from proto.join import make_token, token_secret


def test_a_token_is_used_once_and_never_stored(tmp_path: Path) -> None:
    """Mint -> check ok -> spend -> check says `used`; the file (0600) holds no secret."""
    tokens = JoinTokens(tmp_path)
    text = tokens.mint(ttl=3600, now=1000.0)
    assert tokens.check(text, now=1001.0).expires_at == 4600.0
    tokens.spend(text, now=1002.0)
    with pytest.raises(TokenRefusedError) as err:
        tokens.check(text, now=1003.0)
    assert err.value.reason == "used"
    raw = tokens.path.read_bytes()
    assert text.encode() not in raw
    assert token_secret(text).hex().encode() not in raw
    assert stat.S_IMODE(tokens.path.stat().st_mode) == 0o600


def test_expired_unknown_and_malformed(tmp_path: Path) -> None:
    """After its TTL a token is `expired`; a token never minted is `unknown`; garbage is
    `malformed_token`."""
    tokens = JoinTokens(tmp_path)
    text = tokens.mint(ttl=60, now=0.0)
    for candidate, now, reason in [
        (text, 60.0, "expired"),
        (make_token(b"x" * 32), 1.0, "unknown_token"),
        ("hello", 1.0, "malformed_token"),
    ]:
        with pytest.raises(TokenRefusedError) as err:
            tokens.check(candidate, now=now)
        assert err.value.reason == reason


def test_ttl_bounds_and_expired_records_are_dropped(tmp_path: Path) -> None:
    """A TTL outside 60 s..7 d is refused; minting forgets records that expired."""
    tokens = JoinTokens(tmp_path)
    for ttl in (59, 8 * 86400):
        with pytest.raises(ValueError, match="lives"):
            tokens.mint(ttl=ttl, now=0.0)
    tokens.mint(ttl=60, now=0.0)
    tokens.mint(ttl=60, now=100.0)
    assert len(tokens.records()) == 1


def test_a_corrupt_file_is_one_line(tmp_path: Path) -> None:
    """A corrupt token file is a ConfigError that says what to do, not a traceback."""
    tokens = JoinTokens(tmp_path)
    tokens.path.write_text("{not json")
    with pytest.raises(ValueError, match="move it away"):
        tokens.check(make_token(b"x" * 32), now=0.0)
