"""votemesh_lab.netem: the vocabulary's parser and printer, and the per-frame decision's
statistics over 100,000 seeded decisions per case (design §4.3's tolerances)."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from votemesh_lab.netem import (
    Decision,
    Impairment,
    ImpairmentError,
    PairState,
    decide,
    pair_rng,
    table_moments,
)

N = 100_000
GAP = 0.005  # frames 5 ms apart


def run(
    words: Mapping[str, object], n: int = N, seed: int = 1, frame_len: int = 100
) -> list[Decision]:
    """n decisions on one pair, frames GAP apart, each copy considered sent at once."""
    imp = Impairment.parse(words)
    state = PairState(pair_rng(seed, "n1", "n2", 0))
    out = []
    for i in range(n):
        out.append(decide(state, imp, frame_len, i * GAP))
        state.queued = 0  # the switch sends every copy before the next frame in this test
    return out


def within(observed: int, p: float, n: int = N) -> bool:
    """A share within 4 standard deviations of a binomial's."""
    return abs(observed / n - p) <= 4 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.01, 0.05, 0.3])
def test_random_loss_share(p: float) -> None:
    """loss=P%: the share of frames dropped for loss is P within 4 sigma."""
    decisions = run({"loss": f"{p * 100}%"})
    lost = sum(1 for d in decisions if d.dropped == ("loss",))
    assert within(lost, p), lost


def test_loss_correlation_lengthens_runs() -> None:
    """loss=50% with 75 % correlation: runs of losses are longer than the uncorrelated 2."""

    def mean_run(decisions: list[Decision]) -> float:
        runs, current = [], 0
        for d in decisions:
            if d.dropped:
                current += 1
            elif current:
                runs.append(current)
                current = 0
        return statistics.mean(runs)

    assert mean_run(run({"loss": "50%"})) == pytest.approx(2, rel=0.05)
    assert mean_run(run({"loss": "50%", "loss_corr": "75%"})) > 3


@pytest.mark.parametrize("p", [0.02, 0.2])
def test_duplicate_share(p: float) -> None:
    """duplicate=P%: that share of frames leaves as two copies, each with its own delay."""
    decisions = run({"duplicate": f"{p * 100}%", "delay": "10ms", "jitter": "5ms"})
    doubled = [d for d in decisions if d.duplicated]
    assert within(len(doubled), p), len(doubled)
    assert all(len(d.copies) == 2 for d in doubled)
    assert len({d.copies[0].due_at for d in doubled} ^ {d.copies[1].due_at for d in doubled}) > 0


def test_duplicate_then_loss_removes_one_copy() -> None:
    """duplicate=100% loss=100%: netem's count is 2 - 1, so exactly one copy leaves and no
    duplicate is made; with loss alone, nothing leaves."""
    decisions = run({"duplicate": "100%", "loss": "100%"}, n=100)
    assert all(len(d.copies) == 1 and not d.dropped and not d.duplicated for d in decisions)
    assert all(d.copies == () for d in run({"loss": "100%"}, n=100))


@pytest.mark.parametrize("p", [0.05, 0.25])
def test_reorder_share_with_gap_one(p: float) -> None:
    """reorder=P% (gap 1, as tc sets it): that share of frames is sent at once, the rest wait."""
    decisions = run({"delay": "10ms", "reorder": f"{p * 100}%"})
    reordered = sum(1 for d in decisions if d.copies[0].reordered)
    assert within(reordered, p), reordered
    assert all(
        d.copies[0].due_at == pytest.approx(i * GAP)
        for i, d in enumerate(decisions)
        if d.copies[0].reordered
    )


def test_reorder_gap_keeps_gap_minus_one_frames_delayed() -> None:
    """gap=5: after every reordered frame, the next four are always delayed (netem's counter)."""
    decisions = run({"delay": "10ms", "reorder": "50%", "gap": "5"}, n=10_000)
    flags = [d.copies[0].reordered for d in decisions]
    assert not any(flags[:4])
    for i, flag in enumerate(flags):
        if flag:
            assert not any(flags[i + 1 : i + 5])
    assert sum(flags) > 1000


def test_corrupt_share_flips_one_bit_inside_the_frame() -> None:
    """corrupt=10%: that share of copies carries one (offset, bit) inside the frame."""
    decisions = run({"corrupt": "10%"}, frame_len=60)
    marks = [d.copies[0].corrupt_at for d in decisions if d.copies[0].corrupt_at is not None]
    assert within(len(marks), 0.1)
    assert all(0 <= offset < 60 and 0 <= bit < 8 for offset, bit in marks)


@pytest.mark.parametrize("distribution", ["uniform", "normal", "pareto", "paretonormal"])
def test_delay_mean_and_sd_match_the_distribution(distribution: str) -> None:
    """delay 100ms jitter 10ms: mean and standard deviation within 2 % of the table's."""
    decisions = run({"delay": "100ms", "jitter": "10ms", "distribution": distribution})
    delays = [d.copies[0].due_at - i * GAP for i, d in enumerate(decisions)]
    table_mean, table_sd = table_moments(distribution)
    assert statistics.mean(delays) == pytest.approx(0.1 + 0.01 * table_mean, rel=0.02)
    assert statistics.stdev(delays) == pytest.approx(0.01 * table_sd, rel=0.02)


def test_delay_correlation_correlates_successive_delays() -> None:
    """delay_corr=50%: successive delays correlate (lag-1 > 0.3); without it they do not."""

    def lag1(words: Mapping[str, object]) -> float:
        decisions = run(words, n=20_000)
        delays = [d.copies[0].due_at - i * GAP for i, d in enumerate(decisions)]
        return statistics.correlation(delays[:-1], delays[1:])

    assert lag1({"delay": "50ms", "jitter": "10ms", "delay_corr": "50%"}) > 0.3
    assert abs(lag1({"delay": "50ms", "jitter": "10ms"})) < 0.05


def test_jitter_is_clamped_at_zero() -> None:
    """delay 1ms jitter 10ms: no frame is due before it arrived."""
    decisions = run({"delay": "1ms", "jitter": "10ms", "distribution": "normal"}, n=10_000)
    assert all(d.copies[0].due_at >= i * GAP for i, d in enumerate(decisions))


def test_gilbert_elliott_mean_burst_is_one_over_r() -> None:
    """gemodel p=5% r=30%: losses come in bursts of mean length 1/r within 5 %, and the loss
    share is the bad state's p / (p + r)."""
    decisions = run({"gemodel": "5%,30%"})
    bursts, current = [], 0
    for d in decisions:
        if d.dropped:
            current += 1
        elif current:
            bursts.append(current)
            current = 0
    assert statistics.mean(bursts) == pytest.approx(1 / 0.3, rel=0.05)
    lost = sum(1 for d in decisions if d.dropped)
    assert lost / N == pytest.approx(0.05 / 0.35, rel=0.05)


def test_four_state_with_p13_alone_is_bernoulli() -> None:
    """loss_state p13=10% (tc's defaults for the rest): independent losses of 10 %."""
    decisions = run({"loss_state": "10%"})
    assert within(sum(1 for d in decisions if d.dropped), 0.1)


def test_four_state_with_independent_losses_matches_its_chain() -> None:
    """loss_state with every transition given: the loss share is the chain's stationary one."""
    imp = Impairment.parse({"loss_state": "2%,20%,10%,5%,1%"})
    decisions = run({"loss_state": "2%,20%,10%,5%,1%"})
    lost = sum(1 for d in decisions if d.dropped)
    assert lost / N == pytest.approx(imp.loss_fraction(), rel=0.1)


def test_rate_spaces_frames_by_serialisation_time_with_overhead() -> None:
    """rate 8mbit: 1000-byte frames all given at t=0 leave 1 ms apart; overhead -500 halves it;
    limit 10 drops the 11th onwards with reason 'limit'."""
    state = PairState(random.Random(1))
    imp = Impairment.parse({"rate": "8mbit"})
    dues = [decide(state, imp, 1000, 0.0).copies[0].due_at for _ in range(5)]
    assert dues == pytest.approx([0.001, 0.002, 0.003, 0.004, 0.005])
    state = PairState(random.Random(1))
    imp = Impairment.parse({"rate": "8mbit", "packet_overhead": "-500"})
    assert decide(state, imp, 1000, 0.0).copies[0].due_at == pytest.approx(0.0005)
    state = PairState(random.Random(1))
    imp = Impairment.parse({"rate": "8mbit", "limit": "10"})
    decisions = [decide(state, imp, 1000, 0.0) for _ in range(12)]
    assert [d.dropped for d in decisions[10:]] == [("limit",), ("limit",)]


def test_decisions_replay_from_the_pair_seed() -> None:
    """Same seed, pair and generation: the same decisions; another pair or generation: another
    stream."""
    words = {"loss": "20%", "delay": "10ms", "jitter": "5ms", "duplicate": "5%"}
    assert run(words, n=2000) == run(words, n=2000)
    a = pair_rng(7, "n1", "n2", 0).random()
    assert a == pair_rng(7, "n1", "n2", 0).random()
    assert a != pair_rng(7, "n2", "n1", 0).random()
    assert a != pair_rng(7, "n1", "n2", 1).random()


# -- the vocabulary ---------------------------------------------------------------------------


def test_parse_reads_tc_units() -> None:
    """Times, percents, rates, integers and the models' defaults, in tc's words."""
    imp = Impairment.parse(
        {"delay": "1.5s", "jitter": "300us", "loss": "5", "rate": "125kbps", "limit": 50,
         "packet_overhead": "-4", "reorder": "1%", "distribution": "pareto"}
    )  # fmt: skip
    assert (imp.delay, imp.jitter, imp.loss, imp.rate) == (1.5, 0.0003, 5.0, 1e6)
    assert (imp.limit, imp.packet_overhead, imp.gap, imp.distribution) == (50, -4, 1, "pareto")
    assert Impairment.parse({"gemodel": "1%"}).gemodel == (1.0, 99.0, 100.0, 0.0)
    assert Impairment.parse({"loss_state": "1%,2%"}).loss_state == (1.0, 2.0, 0.0, 100.0, 0.0)


@pytest.mark.parametrize(
    ("words", "key"),
    [
        ({"delay": "20"}, "delay"),
        ({"delay": "-1ms"}, "delay"),
        ({"delay": "2min"}, "delay"),
        ({"jitter": "61s"}, "jitter"),
        ({"loss": "101%"}, "loss"),
        ({"loss": "five"}, "loss"),
        ({"loss": True}, "loss"),
        ({"duplicate": "5ms"}, "duplicate"),
        ({"rate": "1"}, "rate"),
        ({"rate": "0kbit"}, "rate"),
        ({"limit": "0"}, "limit"),
        ({"gap": "1.5"}, "gap"),
        ({"distribution": "cauchy"}, "distribution"),
        ({"gemodel": "1%,2%,3%,4%,5%"}, "gemodel"),
        ({"loss_state": "200%"}, "loss_state"),
        ({"loss": "1%", "gemodel": "1%"}, "loss and gemodel"),
        ({"loss_corr": "25%"}, "loss_corr"),
        ({"reorder": "25%"}, "reorder"),
        ({"latency": "20ms"}, "latency"),
    ],
)
def test_parse_errors_are_one_line_naming_the_key(words: dict[str, object], key: str) -> None:
    """Every out-of-range or malformed value: ImpairmentError, one line, naming the key."""
    with pytest.raises(ImpairmentError) as caught:
        Impairment.parse(words)
    message = str(caught.value)
    assert "\n" not in message
    assert key in message


@example(delay=0.99999, loss=0.0, rate=1.0, gemodel=[0.0, 0.0, 0.0, 0.0])  # 999990us
@given(
    delay=st.floats(0, 60),
    loss=st.floats(0, 100),
    rate=st.floats(1, 1e11),
    gemodel=st.lists(st.floats(0, 100), min_size=4, max_size=4),
)
def test_to_dict_round_trips_exactly(
    delay: float, loss: float, rate: float, gemodel: list[float]
) -> None:
    """parse(to_dict(x)) == x for any in-range values (the switch's readback relies on it)."""
    imp = Impairment(delay=delay, loss=loss, rate=rate, jitter=0.02, duplicate=loss / 3)
    assert Impairment.parse(imp.to_dict()) == imp
    ge = Impairment(gemodel=tuple(gemodel))
    assert Impairment.parse(ge.to_dict()) == ge


def test_overlay_is_field_by_field_with_the_loss_model_as_one_slot() -> None:
    """A later loss keeps an earlier delay; a later gemodel replaces an earlier loss + corr."""
    first = Impairment.parse({"delay": "20ms", "loss": "5%", "loss_corr": "25%"})
    assert first.overlay(Impairment.parse({"loss": "10%"})).to_dict() == {
        "delay": "20ms",
        "loss": "10%",
    }
    swapped = first.overlay(Impairment.parse({"gemodel": "1%"}))
    assert (swapped.loss, swapped.loss_corr, swapped.delay) == (None, None, 0.02)
    assert Impairment().is_none()
    assert not first.is_none()
