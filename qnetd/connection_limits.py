"""Moved to `proto/connection_limits.py` (shared with the agent's join listener); re-exported so
qnetd's imports keep working."""

from proto.connection_limits import (
    REASONS,
    AttemptLimiter,
    ConnectionGuard,
    ConnectionLimits,
    LogLimiter,
    Verdict,
    source_key,
)

__all__ = [
    "REASONS",
    "AttemptLimiter",
    "ConnectionGuard",
    "ConnectionLimits",
    "LogLimiter",
    "Verdict",
    "source_key",
]
