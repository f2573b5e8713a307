"""The switch speaks netem, measured live (design §4.3's tolerances), and the verifier catches a
rule that was not applied.

Three hosts on one seeded tap switch, shared by the module; every test applies a whole Matrix
(which replaces whatever the previous test left). n1 -> n2: 2,000 timestamped datagrams at
200/s, one way; the hosts share one kernel clock, so each datagram's one-way delay is measured
directly. Expected values come from the asked words through the pure core for the same schedule.
"""

from __future__ import annotations

import json
import random
import socket
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest
from votemesh_lab.grudge import Matrix, Rule, blocks_for
from votemesh_lab.netem import Impairment
from votemesh_lab.netns import Lab, LabError, lab_namespaces, missing_reason
from votemesh_lab.probe import Mismatch

from tests.lab import traffic

REASON = missing_reason("tap")
HOSTS = ("n1", "n2", "n3")
COUNT, INTERVAL = 2000, 0.005

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(60),
    pytest.mark.skipif(REASON is not None, reason=str(REASON)),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Three hosts on a tap switch seeded 11."""
    with Lab(tmp_path_factory.mktemp("netem"), list(HOSTS), switch="tap", switch_seed=11) as lab:
        yield lab


def one_way_rule(**words: str) -> Matrix:
    """n1 -> n2 shaped with these words, nothing else."""
    rule = Rule(frozenset({"n1"}), frozenset({"n2"}), True, Impairment.parse(words))
    return Matrix(HOSTS).shape(rule)


@pytest.fixture(scope="module")
def baseline_ms(lab: Lab) -> float:
    """Median one-way delay n1 -> n2 with no impairment (the switch's and kernels' own)."""
    assert lab.apply(Matrix(HOSTS)).ok
    arrivals = traffic.one_way(lab["n1"], lab["n2"], 200, INTERVAL)
    assert len(arrivals) == 200
    return statistics.median(a.delay_ms for a in arrivals)


def test_loss_and_delay_distribution_as_asked(lab: Lab, baseline_ms: float) -> None:
    """loss 10 %, delay 20ms jitter 5ms normal: loss within 4 sigma + 0.5 points; delay p10, p50,
    p90 within 1 ms + 5 % of the asked distribution plus the zero-impairment baseline."""
    words = {"delay": "20ms", "jitter": "5ms", "distribution": "normal", "loss": "10%"}
    verification = lab.apply(one_way_rule(**words))
    assert verification.ok, verification
    measured = traffic.measure(traffic.one_way(lab["n1"], lab["n2"], COUNT, INTERVAL), COUNT)
    asked = traffic.predicted(words, 100_000, INTERVAL)
    assert abs(measured.loss - 0.10) <= traffic.share_tolerance(0.10, COUNT, 0.005), measured.loss
    for q in (0.1, 0.5, 0.9):
        want = asked.quantile(q) + baseline_ms
        assert abs(measured.quantile(q) - want) <= 1 + 0.05 * want, (q, measured.quantile(q), want)


def test_duplicates_and_reorders_as_asked(lab: Lab) -> None:
    """duplicate 5 %, delay 10ms, reorder 25 % (gap 1): duplicated datagrams, and datagrams sent
    at once (under half the delay: netem's reordered ones), within 4 sigma + 1 point of the
    asked shares; and they overtake: out-of-order arrivals are at least what the core predicts
    for the sender's own send times (a late switch timer only makes more)."""
    words = {"delay": "10ms", "reorder": "25%", "duplicate": "5%"}
    assert lab.apply(one_way_rule(**words)).ok
    arrivals = traffic.one_way(lab["n1"], lab["n2"], COUNT, INTERVAL)
    measured = traffic.measure(arrivals, COUNT)
    assert measured.unique == COUNT
    dup = measured.duplicates / COUNT
    assert abs(dup - 0.05) <= traffic.share_tolerance(0.05, COUNT, 0.01), dup
    at_once = sum(1 for d in measured.delays_ms if d < 5) / COUNT
    assert abs(at_once - 0.25) <= traffic.share_tolerance(0.25, COUNT, 0.01), at_once
    sent = sorted({a.seq: a.sent_ns / 1e9 for a in arrivals}.items())
    asked = traffic.predicted_at(words, [t for _, t in sent], repeat=10)
    share = asked.out_of_order / asked.sent
    floor = share - traffic.share_tolerance(share, COUNT, 0.01)
    assert measured.out_of_order / COUNT >= floor, (measured.out_of_order, share)


def test_rate_goodput_as_asked(lab: Lab) -> None:
    """rate 2mbit, 500 datagrams of 1000 bytes offered at 8 Mbit/s: all arrive, and the goodput
    between the first and the last is within 5 % of 2 Mbit/s times payload / frame."""
    size, count = 1000, 500
    assert lab.apply(one_way_rule(rate="2mbit")).ok
    arrivals = traffic.one_way(lab["n1"], lab["n2"], count, 0.001, size)
    assert len(arrivals) == count
    seconds = (arrivals[-1].recv_ns - arrivals[0].recv_ns) / 1e9
    goodput = (count - 1) * size * 8 / seconds
    want = 2e6 * size / (size + traffic.FRAME_OVERHEAD)
    assert goodput == pytest.approx(want, rel=0.05)


def test_partition_shapes_are_verified_both_ways(lab: Lab) -> None:
    """A majorities ring, then groups [[1], [2, 3]]: each applied matrix verifies (every ordered
    pair probed, blocked pairs seen cut and the others open)."""
    ring = Matrix(HOSTS).with_blocks(blocks_for("majorities-ring", HOSTS, random.Random(5)))
    first = lab.apply(ring)
    assert first.ok, first
    assert first.pairs == 6
    split = ring.with_blocks(blocks_for("groups", HOSTS, random.Random(5), groups=[[1], [2, 3]]))
    assert lab.apply(split).ok
    assert lab.apply(split.heal()).ok


def control(lab: Lab, request: dict[str, object]) -> dict[str, object]:
    """One request straight to the switch's control socket, behind the Lab's back."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(lab._switch_socket))
        sock.sendall(json.dumps(request).encode() + b"\n")
        reply: dict[str, object] = json.loads(sock.makefile().readline())
    return reply


def test_verifier_catches_a_one_way_cut_that_became_two_way(lab: Lab) -> None:
    """Apply a one-way cut n1 -> n2 (verified); then a block n2 -> n1 slips in through the
    switch's control socket; verifying the one-way matrix reports n2->n1 as expected open, seen
    cut, in the design's words, besides the readback difference."""
    matrix = Matrix(HOSTS).with_blocks({("n1", "n2")})
    assert lab.apply(matrix).ok
    assert control(lab, {"op": "block", "pairs": [[2, 1]]}) == {"ok": True}
    verification = lab.verify(matrix)
    assert not verification.ok
    assert verification.mismatches == (Mismatch("n2", "n1", "open", "cut", 3, 0),)
    assert str(verification.mismatches[0]) == "n2->n1 expected open, seen cut (0/3 probes)"
    assert verification.control == ("switch blocks n2->n1, not asked",)
    assert lab.apply(matrix).ok  # applying the matrix again repairs it


def test_probe_processes_stop_with_the_lab(tmp_path: Path) -> None:
    """The probe process apply() starts in each host is stopped by close(), with the lab's
    namespaces; a matrix for other hosts is refused before anything is sent."""
    lab = Lab(tmp_path, ["x", "y"], switch="tap")
    try:
        with pytest.raises(LabError, match="not this lab's"):
            lab.apply(Matrix(("n1", "n2")))
        assert lab.apply(Matrix(("x", "y"))).ok
        probes = [t.pid for t in lab.processes if t.label == "probe"]
        assert len(probes) == 2
    finally:
        lab.close()
    assert [pid for pid in probes if Path(f"/proc/{pid}").exists()] == []
    assert lab_namespaces(lab.lab_id) == []
