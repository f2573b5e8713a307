"""Throughput of the wire layer: sealed mesh datagrams and the qnetd codec. Prints figures only."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from proto.datagram_seal import ClusterKey, Opener, Sealer
from proto.mesh_messages import Echo, Heartbeat, View, open_message, seal_message
from proto.qnetd_enums import NodeListType
from proto.qnetd_messages import NodeList, decode, encode
from proto.qnetd_options import NodeInfo, RingId
from proto.qnetd_stream import StreamDecoder


def rate(label: str, count: int, body: Callable[[], object], unit: str = "ops") -> float:
    """Run `body` (which performs `count` operations), print and return operations per second."""
    start = time.perf_counter()
    body()
    elapsed = time.perf_counter() - start
    per_second = count / elapsed
    print(f"  {label:<52} {per_second:>12,.0f} {unit}/s  ({elapsed * 1e6 / count:6.2f} us each)")
    return per_second


def heartbeat(nodes: int) -> Heartbeat:
    members = tuple(range(1, nodes + 1))
    return Heartbeat(
        link=0,
        stamp_us=123_456_789,
        wall_ms=1_764_000_000_000,
        heard=members,
        view=View(1, 42, members),
        proposal=View(1, 43, members),
        echoes=tuple(Echo(n, 123_456_000 + n, 150) for n in members[1:]),
        expected_votes=nodes,
        node_name="node-01",
    )


def bench_seal(rounds: int = 100_000) -> None:
    """seal + unseal round trips of a 5-node heartbeat, and of an empty payload."""
    key = ClusterKey(os.urandom(32))
    for label, nodes in (("5-node heartbeat", 5), ("20-node heartbeat", 20)):
        sealer, opener = Sealer("bench", key, 1, 1), Opener("bench", [key])
        msg = heartbeat(nodes)

        def run(sealer: Sealer = sealer, opener: Opener = opener, msg: Heartbeat = msg) -> None:
            for _ in range(rounds):
                open_message(opener, seal_message(sealer, msg))

        size = len(seal_message(Sealer("bench", key, 2, 1), msg))
        rate(f"seal+open+codec {label} ({size} B)", rounds, run, "datagrams")
    sealer, opener = Sealer("bench", key, 1, 2), Opener("bench", [key])

    def raw() -> None:
        for _ in range(rounds):
            opener.open(sealer.seal(1, b"x" * 64))

    rate("seal+open only, 64 B payload", rounds, raw, "datagrams")


def bench_qnetd(rounds: int = 50_000) -> None:
    """encode/decode of a 16-node membership NODE_LIST, and a stream of them."""
    msg = NodeList(
        seq=6,
        node_list_type=NodeListType.MEMBERSHIP,
        ring_id=RingId(1, 16),
        nodes=tuple(NodeInfo(n) for n in range(1, 17)),
    )
    raw = encode(msg)
    rate("qnetd encode NODE_LIST (16 nodes)", rounds, lambda: [encode(msg) for _ in range(rounds)])
    rate("qnetd decode NODE_LIST (16 nodes)", rounds, lambda: [decode(raw) for _ in range(rounds)])
    stream = raw * rounds

    def chunks() -> None:
        decoder = StreamDecoder()
        for i in range(0, len(stream), 4096):
            decoder.feed(stream[i : i + 4096])
            while decoder.next_message() is not None:
                pass

    rate("qnetd stream decode, 4 KiB chunks", rounds, chunks, "msgs")


def main() -> None:
    print("proto: sealed mesh datagrams (ChaCha20-Poly1305, msgpack payload)")
    bench_seal()
    print("proto: qnetd wire codec")
    bench_qnetd()


if __name__ == "__main__":
    main()
