"""A `Discovery` in one process, for the namespace tests: prints what it learns as JSON lines.

    python -m tests.agent.discovery_probe --cluster alpha --node-id 1 --name n1 \
        --link 0=198.18.0.2:5407 [--link 1=[fd00::2]:5407]

Lines on stdout (one JSON object each, flushed; `t` is wall-clock seconds so the test can compare
processes): {"event": "starting"}, {"event": "started"}, {"event": "peer", "node_id", "node_name",
"addresses"}, {"event": "gone", "node_id"}, {"event": "counters", "counters"} whenever the
counters change, and {"event": "closed"} after SIGTERM made it `close()` (goodbye sent).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from agent.config import AgentConfig, LinkConfig
from agent.runtime.discovery import DiscoveredPeer, Discovery, parse_links

COUNTER_POLL = 0.1  # seconds between checks for changed counters


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout, flushed at once (the test reads the log file while we run)."""
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def build_config(args: argparse.Namespace) -> AgentConfig:
    """An AgentConfig with only what discovery reads: cluster, node, links; no static peers."""
    links = parse_links(",".join(args.link))
    return AgentConfig(
        cluster_name=args.cluster,
        node_id=args.node_id,
        node_name=args.name,
        links=tuple(LinkConfig(index, host, port) for index, host, port in links),
    )


def on_peer(peer: DiscoveredPeer) -> None:
    """Print a discovered (or changed) peer."""
    emit("peer", node_id=peer.node_id, node_name=peer.node_name, addresses=peer.addresses)


def on_gone(node_id: int) -> None:
    """Print a peer's goodbye."""
    emit("gone", node_id=node_id)


async def run(config: AgentConfig) -> None:
    """Discover until SIGTERM, then close (goodbye) and say so."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    discovery = Discovery(config, on_peer, on_gone)
    emit("starting")
    await discovery.start()
    emit("started")
    seen: dict[str, int] = {}
    try:
        while not stop.is_set():
            if dict(discovery.counters) != seen:
                seen = dict(discovery.counters)
                emit("counters", counters=seen)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), COUNTER_POLL)
    finally:
        await discovery.close()
    emit("closed")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(prog="discovery_probe")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--node-id", type=int, required=True)
    parser.add_argument("--name", default="")
    parser.add_argument("--link", action="append", required=True, help="INDEX=ADDRESS:PORT")
    config = build_config(parser.parse_args(argv))
    asyncio.run(run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
