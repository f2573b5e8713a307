"""`votemesh-qnetd certs ...` and `token ...` subcommands (placeholder until implemented)."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Register the certs and token subcommands."""
