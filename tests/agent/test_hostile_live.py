"""Issue 12 items 9-11 on real agent processes (127.0.0.x, static peers).

* A sender holding the cluster key sends the datagrams that crashed or wedged agents before
  (votes and ring seq 2**64 - 1, incarnation 2**64 - 1, counter 2**64 - 1, 20,000 node ids) and
  Hypothesis-drawn keyed garbage: the cluster keeps its view, nothing crashes, memory stays.
* A second process with node 3's id (a copied config) on another address: the real node 3
  keeps its place, nodes 1 and 2 log an error naming both addresses.
* Node 1's state directory turns read-only (a read-only bind mount in a private mount
  namespace): it stops forming views and says why; killed and restarted, it never reuses a ring
  id for another member set.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from proto.datagram_seal import ClusterKey, Sealer
from proto.mesh_messages import Heartbeat, MeshKind, seal_message
from tests.agent.hostile import heartbeat_map, keyed_garbage
from tests.agent.live_agents import BIN, LAB_TIMING, AgentCluster, LiveAgent, free_udp_port

SETTLE = 30.0
HOSTILE = "127.0.0.20"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def view_of(doc: dict[str, Any] | None) -> tuple[Any, ...] | None:
    return None if doc is None else (tuple(doc["ring_id"]), tuple(doc["members"]), doc["quorate"])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[AgentCluster]:
    c = AgentCluster(tmp_path, 3)
    try:
        c.start_all()
        c.wait_for(lambda: c.one_view([1, 2, 3]), SETTLE, "a view of 3")
        yield c
    finally:
        c.close()


def test_keyed_hostile_sender_cannot_crash_or_move_a_live_cluster(cluster: AgentCluster) -> None:
    """Regression (fails on main: node 2 is locked out of node 1 by the 2**64 - 1 incarnation,
    and the counter jump raises MemoryError): every hostile datagram is dropped and counted by
    reason, the three agents keep their view and quorum throughout, node 1's memory does not
    grow with 20,000 sender ids, and a restarted node 1 rejoins (its max_seq is not poisoned)."""
    one = cluster.agents[1]
    assert one.process is not None
    key = ClusterKey(cluster.key_path.read_bytes())
    before = one.status()
    assert before is not None
    view = view_of(before)
    life = next(p["incarnation"] for p in before["peers"] if p["node_id"] == 2)
    target = (one.address, one.port)
    hostile_view = {1: 1, 2: 2**64 - 1, 3: [1, 2, 3]}
    now_ms = int(time.time() * 1000)
    payload = heartbeat_map(link=0, stamp_us=2**40, wall_ms=now_ms, votes=2**64 - 1)
    seq_payload = heartbeat_map(link=0, stamp_us=2**40, wall_ms=now_ms, view=hostile_view)
    jumped = Sealer("live", key, 2, life)
    jumped.counter = 2**64 - 2
    grams = [
        Sealer("live", key, 2, 2**62).seal(MeshKind.HEARTBEAT, payload),  # bad_value
        Sealer("live", key, 2, 2**62).seal(MeshKind.HEARTBEAT, seq_payload),
        jumped.seal(MeshKind.HEARTBEAT, payload),  # counter 2**64 - 1 of node 2's own life
    ]
    top = Sealer("live", key, 2, 2**61)
    top_hb = Heartbeat(link=0, stamp_us=2**61, wall_ms=now_ms, heard=(1, 3))
    rss_before = rss_kib(one.process.pid)
    seen: set[Any] = set()

    def sample() -> None:
        seen.update(view_of(d) for d in cluster.statuses([1, 2, 3]).values())

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hostile:
        hostile.bind((HOSTILE, 0))
        for datagram in grams:
            hostile.sendto(datagram, target)
        # the raw 2**64 - 1 incarnation: sealed as 2**62, the header then rewritten
        raw = bytearray(top.seal(MeshKind.HEARTBEAT, payload))
        raw[20:28] = (2**64 - 1).to_bytes(8, "big")
        hostile.sendto(bytes(raw), target)
        for round_ in range(20):  # a second life of node 2 that keeps talking
            hostile.sendto(seal_message(top, top_hb), target)
            if round_ % 5 == 0:
                sample()
            time.sleep(0.1)
        for batch in range(40):  # 20,000 node ids nobody configured
            for sender in range(1000 + batch * 500, 1000 + (batch + 1) * 500):
                hostile.sendto(Sealer("live", key, sender, 1).seal(1, b"\x80"), target)
            time.sleep(0.05)
        sample()

        @settings(
            max_examples=150,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(garbage=keyed_garbage())
        def send(garbage: tuple[int, bytes]) -> None:
            kind, body = garbage
            hostile.sendto(Sealer("live", key, 3, 2**60).seal(kind, body), target)

        send()
    sample()
    time.sleep(2.0)
    sample()
    assert seen == {view}, seen
    assert all(a.running for a in cluster.agents.values())
    after = one.status()
    assert after is not None
    dropped = after["runtime"]["datagrams"]["dropped"]
    assert dropped.get("bad_header", 0) >= 1
    assert dropped.get("bad_value", 0) >= 1
    assert dropped.get("other_incarnation", 0) >= 20
    assert dropped.get("unknown_peer", 0) >= 15_000  # the rest may be kernel drops
    assert after["runtime"]["datagrams"]["core_errors"] == 0
    assert "internal_error" not in dropped
    assert rss_kib(one.process.pid) - rss_before < 4096
    records = one.log_records()
    assert not [r for r in records if "Traceback" in str(r) or r["event"] == "core failed"]
    warned = {r["reason"] for r in records if r["event"] == "datagram dropped"}
    assert {"unknown_peer", "bad_value"} <= warned
    assert int((one.workdir / "state" / "max_seq").read_text()) < 2**32
    cluster.stop(1)
    cluster.start(1)
    cluster.wait_for(lambda: cluster.one_view([1, 2, 3]), SETTLE, "node 1 back in the view")


def impostor_config(cluster: AgentCluster, impostor: LiveAgent) -> str:
    """Node 3's config copied to another machine: same node id and peers, its own address."""
    lines = [
        'cluster_name = "live"',
        "node_id = 3",
        'node_name = "node3"',
        f'key_files = ["{cluster.key_path}"]',
        'state_dir = "state"',
        'control_socket = "agent.sock"',
        "discovery = false",
        LAB_TIMING,
        f'[[link]]\nindex = 0\naddress = "{impostor.address}"\nport = {impostor.port}',
    ]
    lines += [cluster.peer_text(impostor, cluster.agents[i]) for i in (1, 2)]
    return "\n".join(lines) + "\n"


def test_a_second_process_with_one_node_id_is_reported_and_the_first_kept(
    cluster: AgentCluster,
) -> None:
    """Regression (fails on main: nodes 1 and 2 follow the copy's newer incarnation and drop
    the real node 3 as stale_incarnation). A copy of node 3 starts on 127.0.0.4: the view
    {1, 2, 3} with the real node 3 stays, nodes 1 and 2 each log an error naming both
    addresses (kept: the real one), and after the copy stops nothing else changes."""
    real = cluster.agents[3]
    before = view_of(cluster.agents[1].status())
    impostor = LiveAgent(3, "127.0.0.4", free_udp_port("127.0.0.4"), cluster.workdir / "copy")
    impostor.workdir.mkdir()
    impostor.config_path.write_text(impostor_config(cluster, impostor))
    args = [str(BIN / "votemesh-agent"), "--config", str(impostor.config_path)]
    seen: set[Any] = set()
    with impostor.log_path.open("ab") as log:
        impostor.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:

        def reported() -> bool:
            seen.update(view_of(d) for d in cluster.statuses([1, 2, 3]).values())
            return all(
                any(r["event"] == "duplicate_node" for r in cluster.agents[i].log_records())
                for i in (1, 2)
            )

        cluster.wait_for(reported, SETTLE, "nodes 1 and 2 to report the duplicate")
        for _ in range(30):
            seen.update(view_of(d) for d in cluster.statuses([1, 2, 3]).values())
            time.sleep(0.1)
    finally:
        impostor.process.terminate()
        impostor.process.wait(timeout=10)
    for i in (1, 2):
        dup = [r for r in cluster.agents[i].log_records() if r["event"] == "duplicate_node"]
        assert dup[0]["level"] == "error"
        assert dup[0]["kept_address"] == f"{real.address}:{real.port}"
        assert dup[0]["refused_address"] == f"{impostor.address}:{impostor.port}"
        assert "node_id" in dup[0]["reason"]
    time.sleep(3.0)
    seen.update(view_of(d) for d in cluster.statuses([1, 2, 3]).values())
    assert seen == {before}, seen
    assert cluster.one_view([1, 2, 3])


def _missing_root() -> str | None:
    if os.geteuid() != 0:
        return "needs root: a read-only bind mount in a private mount namespace"
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "needs unshare and nsenter (util-linux)"
    return None


def installs(agent: LiveAgent) -> list[tuple[tuple[int, int], tuple[int, ...]]]:
    return [
        (tuple(r["ring_id"]), tuple(r["members"]))
        for r in agent.log_records()
        if r["event"] == "view_installed"
    ]


@pytest.mark.root
@pytest.mark.skipif(_missing_root() is not None, reason=str(_missing_root()))
def test_unwritable_state_stops_view_forming_and_no_ring_id_is_reused(tmp_path: Path) -> None:
    """Regression (fails on main: node 1 kept installing views it could not persist, and after
    kill -9 and restart reported a ring id that had named another member set). Node 1's state
    directory becomes read-only; node 3 is killed, so node 1 (the representative of {1, 2})
    needs a new ring id: it says views_halted (error), status `views` says why, it announces
    no view, and node 2 forms without it. Killed and restarted (the directory writable again),
    node 1 rejoins, and over the whole run every ring id names one member set."""
    cluster = AgentCluster(tmp_path, 3)
    one = cluster.agents[1]
    state = one.workdir / "state"
    state.mkdir()
    try:
        args = [
            "unshare", "-m", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" "$0" && exec "$@"', str(state),
            str(BIN / "votemesh-agent"), "--config", str(one.config_path),
        ]  # fmt: skip
        with one.log_path.open("ab") as log:
            one.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        cluster.wait_for(lambda: one.status() is not None, SETTLE, "node 1 up")
        cluster.start(2)
        cluster.start(3)
        cluster.wait_for(lambda: cluster.one_view([1, 2, 3]), SETTLE, "a view of 3")
        ns = ["nsenter", "-t", str(one.process.pid), "-m"]
        # A read-only remount fails with "mount point is busy" while the agent has a state file
        # open for writing (it writes max_seq and the configuration atomically): try again.
        for _ in range(50):
            remount = subprocess.run(
                [*ns, "mount", "-o", "remount,bind,ro", str(state)],
                capture_output=True,
                text=True,
                check=False,
            )
            if remount.returncode == 0 or "busy" not in remount.stderr:
                break
            time.sleep(0.05)
        assert remount.returncode == 0, f"remount failed: {remount.stderr.strip()}"
        cluster.kill(3)

        def halted() -> bool:
            doc = one.status()
            return doc is not None and str(doc["views"]).startswith("halted")

        cluster.wait_for(halted, SETTLE, "node 1 to halt view forming")
        doc = one.status()
        assert doc is not None
        assert "Read-only file system" in doc["views"]
        assert not doc["quorate"]
        halt = [r for r in one.log_records() if r["event"] == "views_halted"]
        assert halt
        assert halt[0]["level"] == "error"
        cluster.wait_for(
            lambda: (d := cluster.agents[2].status()) is not None and d["members"] == [2],
            SETTLE,
            "node 2 to form without node 1",
        )
        time.sleep(1.0)
        durable = int((state / "max_seq").read_text())
        assert all(ring[1] <= durable for ring, _ in installs(cluster.agents[2]) if ring[0] == 1)
        one.process.send_signal(signal.SIGKILL)
        one.process.wait(timeout=10)
        cluster.start(1)
        cluster.wait_for(lambda: cluster.one_view([1, 2]), SETTLE, "node 1 back with node 2")
    finally:
        cluster.close()
    named: dict[tuple[int, int], set[tuple[int, ...]]] = {}
    for agent in cluster.agents.values():
        for ring, members in installs(agent):
            named.setdefault(ring, set()).add(members)
    assert all(len(sets) == 1 for sets in named.values()), named
