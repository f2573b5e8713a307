"""netem's vocabulary and its per-frame decision, as a pure core (design §4.3).

Owns: `Impairment` (what one directed pair of hosts does to frames, in netem's words and tc's
units), its parser and printer, and `decide()`, which judges one frame on one pair in the order
of the kernel's `netem_enqueue()` (net/sched/sch_netem.c). It must not touch sockets, clocks,
processes or module-level randomness: the switch passes `now` and owns one seeded
`random.Random` per pair (`pair_rng`).

Units inside an `Impairment`: times in float seconds, percents as percent values (5.0 = 5 %),
`rate` in bits per second, `packet_overhead` in bytes, `limit` and `gap` in frames. Every field is
Optional: None means "not set here", so rules overlay field by field (`overlay`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from statistics import NormalDist
from typing import Any

DISTRIBUTIONS = ("uniform", "normal", "pareto", "paretonormal")
#: netem's default queue length (frames), `limit` in tc.
DEFAULT_LIMIT = 1000
#: iproute2's distribution tables hold values scaled by NETEM_DIST_SCALE, 4096 entries each.
DIST_SCALE = 8192
TABLE_SIZE = 4096
INT16_MAX = 32767
MAX_TIME = 60.0
"""Delays and jitters above a minute would only fill the switch's memory."""
MAX_RATE = 100e9
MAX_LIMIT = 1_000_000
MAX_GAP = 1_000_000
MAX_OVERHEAD = 65535
#: The loss model is one slot: a later rule's loss of any kind replaces an earlier one's.
LOSS_FIELDS = ("loss", "loss_corr", "gemodel", "loss_state")

#: Per second (a time is value / this: the same operation format_time checks, so it is exact).
_TIME_UNITS = {"s": 1.0, "sec": 1.0, "ms": 1e3, "msec": 1e3, "us": 1e6, "usec": 1e6}
_RATE_UNITS = {
    "bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9,
    "bps": 8.0, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9,
}  # fmt: skip
_NUMBER = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([a-zA-Z%]*)\s*")


class ImpairmentError(ValueError):
    """A value netem would refuse; the message is one line naming the key."""


# -- parsing and printing of single values ----------------------------------------------------


def _split(key: str, raw: object) -> tuple[float, str]:
    if isinstance(raw, bool):
        raise ImpairmentError(f"{key}: {raw!r} is not a number")
    if isinstance(raw, int | float):
        return float(raw), ""
    if not isinstance(raw, str) or (match := _NUMBER.fullmatch(raw)) is None:
        raise ImpairmentError(f"{key}: {raw!r} is not a value like those of tc (20ms, 5%, 1mbit)")
    return float(match.group(1)), match.group(2).lower()


def parse_time(key: str, raw: object) -> float:
    """`20ms`, `1.5s`, `300us` -> seconds, within 0 .. 60 s; a unit is required."""
    value, unit = _split(key, raw)
    if unit not in _TIME_UNITS:
        raise ImpairmentError(f"{key}: give a time with a unit (s, ms, us), e.g. {key}=20ms")
    seconds = value / _TIME_UNITS[unit]
    if not 0 <= seconds <= MAX_TIME:
        raise ImpairmentError(f"{key}: {raw!r} is out of range 0 .. {MAX_TIME:g}s")
    return seconds


def parse_percent(key: str, raw: object) -> float:
    """`5%` or `5` (tc reads a bare number as percent) -> 5.0, within 0 .. 100."""
    value, unit = _split(key, raw)
    if unit not in ("", "%"):
        raise ImpairmentError(f"{key}: give a percentage, e.g. {key}=5%")
    if not 0 <= value <= 100:
        raise ImpairmentError(f"{key}: {raw!r} is out of range 0 .. 100%")
    return value


def parse_rate(key: str, raw: object) -> float:
    """`1mbit`, `64kbit`, `1000bit`, `125kbps` (bytes) -> bits per second."""
    value, unit = _split(key, raw)
    if unit not in _RATE_UNITS:
        raise ImpairmentError(
            f"{key}: give a rate with a unit (bit, kbit, mbit, gbit, bps), e.g. 1mbit"
        )
    bits = value * _RATE_UNITS[unit]
    if not 1 <= bits <= MAX_RATE:
        raise ImpairmentError(f"{key}: {raw!r} is out of range 1bit .. 100gbit")
    return bits


def parse_int(key: str, raw: object, low: int, high: int) -> int:
    """An integer within low .. high (a string of digits is accepted too)."""
    value, unit = _split(key, raw)
    if unit or not value.is_integer() or not low <= value <= high:
        raise ImpairmentError(f"{key}: {raw!r} must be a whole number in {low} .. {high}")
    return int(value)


def parse_percents(
    key: str, raw: object, count: int, defaults: Callable[[list[float]], list[float]]
) -> tuple[float, ...]:
    """`p,r,...` (a comma list or a sequence) of 1..count percents; `defaults` fills the rest."""
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not 1 <= len(items) <= count:
        raise ImpairmentError(f"{key}: give 1 to {count} percentages separated by commas")
    given = [parse_percent(key, item) for item in items]
    return tuple(defaults(given))


def _gemodel_defaults(given: list[float]) -> list[float]:
    """netem's defaults: r = 100 - p, 1-h = 100 %, 1-k = 0 %."""
    return given + [100.0 - given[0], 100.0, 0.0][len(given) - 1 :]


def _loss_state_defaults(given: list[float]) -> list[float]:
    """tc's defaults: p31 = 100 - p13, p32 = 0, p23 = 100 %, p14 = 0."""
    return given + [100.0 - given[0], 0.0, 100.0, 0.0][len(given) - 1 :]


def format_time(seconds: float) -> str:
    """Seconds in tc's words, exact: parse_time(format_time(x)) == x."""
    for unit, scale in (("ms", 1e3), ("us", 1e6)):
        whole = round(seconds * scale)
        if whole / scale == seconds:
            return f"{whole}{unit}"
    return f"{seconds!r}s"


def format_number(value: float) -> str:
    """A float without a trailing `.0`, exact under float()."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def format_percents(values: tuple[float, ...]) -> str:
    """`1%,30%,100%,0%`."""
    return ",".join(f"{format_number(x)}%" for x in values)


def format_rate(bits: float) -> str:
    """Bits per second in the largest tc unit that keeps it exact."""
    if bits.is_integer():
        for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
            if bits % scale == 0:
                return f"{int(bits // scale)}{unit}"
    return f"{format_number(bits)}bit"


# -- the impairment ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Impairment:
    """What one directed pair does to its frames, in netem's words; None = not set here."""

    delay: float | None = None
    """Added one-way delay, seconds."""
    jitter: float | None = None
    """Spread of the delay, seconds (uniform: ±jitter; tables: one `sigma`)."""
    delay_corr: float | None = None
    """Correlation of successive delay draws, percent."""
    distribution: str | None = None
    """uniform (default: the kernel's path without a table) | normal | pareto | paretonormal."""
    loss: float | None = None
    """Random loss, percent."""
    loss_corr: float | None = None
    """Correlation of successive loss draws, percent."""
    gemodel: tuple[float, ...] | None = None
    """Gilbert-Elliott (p, r, 1-h, 1-k), percents."""
    loss_state: tuple[float, ...] | None = None
    """4-state Markov loss (p13, p31, p32, p23, p14), percents."""
    duplicate: float | None = None
    duplicate_corr: float | None = None
    corrupt: float | None = None
    corrupt_corr: float | None = None
    reorder: float | None = None
    """Percent of frames sent at once (ahead of the delayed ones), after `gap` delayed frames."""
    reorder_corr: float | None = None
    gap: int | None = None
    rate: float | None = None
    """Bits per second on the pair's wire."""
    packet_overhead: int | None = None
    """Bytes added to (or, negative, taken from) each frame's length for the rate."""
    limit: int | None = None
    """Frames the pair may hold queued; beyond it a frame is dropped (netem's `limit`)."""

    @classmethod
    def parse(cls, mapping: Mapping[str, object]) -> Impairment:
        """tc's words and units -> Impairment; ImpairmentError (one line) on any mistake."""
        values: dict[str, Any] = {}
        for key, raw in mapping.items():
            parser = _PARSERS.get(key)
            if parser is None:
                raise ImpairmentError(f"unknown key {key!r}: use one of {', '.join(_PARSERS)}")
            values[key] = parser(key, raw)
        given_losses = [k for k in ("loss", "gemodel", "loss_state") if k in values]
        if len(given_losses) > 1:
            raise ImpairmentError(f"{' and '.join(given_losses)}: give at most one loss model")
        if "loss_corr" in values and "loss" not in values:
            raise ImpairmentError("loss_corr: needs loss (random loss) in the same rule")
        if "reorder" in values and "delay" not in values:
            raise ImpairmentError("reorder: needs delay in the same rule, as tc refuses it without")
        if "reorder" in values and "gap" not in values:
            values["gap"] = 1
        return cls(**values)

    def overlay(self, later: Impairment) -> Impairment:
        """This impairment with every field `later` sets replaced (the loss model as one slot)."""
        changes = {
            f.name: getattr(later, f.name)
            for f in fields(self)
            if getattr(later, f.name) is not None
        }
        base = self
        if any(name in changes for name in LOSS_FIELDS):
            base = replace(self, **dict.fromkeys(LOSS_FIELDS))
        return replace(base, **changes)

    def to_dict(self) -> dict[str, str]:
        """tc's words and units, unset fields omitted; `parse(x.to_dict()) == x`."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = _PRINTERS[f.name](value)
        return out

    def is_none(self) -> bool:
        """No field set."""
        return self == NO_IMPAIRMENT

    def is_passthrough(self) -> bool:
        """Nothing would change a frame: forward it at once (the switch's fast path)."""
        return self._passthrough

    @functools.cached_property
    def _passthrough(self) -> bool:  # once per impairment, not per frame (frozen: never stale)
        return not any(getattr(self, name) for name in _EFFECTIVE)

    def loss_fraction(self) -> float:
        """The long-run share of frames lost or corrupted (for choosing the probe count)."""
        if self.gemodel is not None:
            p, r, bad, good = (x / 100 for x in self.gemodel)
            in_bad = p / (p + r) if p + r else 0.0
            lost = in_bad * bad + (1 - in_bad) * good
        elif self.loss_state is not None:
            lost = _loss_state_stationary(self.loss_state)
        else:
            lost = (self.loss or 0.0) / 100
        return 1 - (1 - lost) * (1 - (self.corrupt or 0.0) / 100)


NO_IMPAIRMENT = Impairment()
_EFFECTIVE = (
    "delay",
    "jitter",
    "loss",
    "gemodel",
    "loss_state",
    "duplicate",
    "corrupt",
    "reorder",
    "rate",
)


def _loss_state_stationary(probs: tuple[float, ...]) -> float:
    """Share of frames lost by the 4-state model, by iterating its chain (pure, bounded)."""
    p13, p31, p32, p23, p14 = (x / 100 for x in probs)
    dist = [1.0, 0.0, 0.0, 0.0]
    for _ in range(2000):
        s1, s2, s3, s4 = dist
        dist = [
            s1 * (1 - p13 - p14) + s3 * p31 + s4,
            s2 * (1 - p23) + s3 * p32,
            s1 * p13 + s2 * p23 + s3 * (1 - p31 - p32),
            s1 * p14,
        ]
    return dist[2] + dist[3]


def _enum(key: str, raw: object) -> str:
    if raw not in DISTRIBUTIONS:
        raise ImpairmentError(f"{key}: {raw!r} is not one of {', '.join(DISTRIBUTIONS)}")
    return str(raw)


_PARSERS: dict[str, Callable[[str, object], Any]] = {
    "delay": parse_time,
    "jitter": parse_time,
    "delay_corr": parse_percent,
    "distribution": _enum,
    "loss": parse_percent,
    "loss_corr": parse_percent,
    "gemodel": lambda k, v: parse_percents(k, v, 4, _gemodel_defaults),
    "loss_state": lambda k, v: parse_percents(k, v, 5, _loss_state_defaults),
    "duplicate": parse_percent,
    "duplicate_corr": parse_percent,
    "corrupt": parse_percent,
    "corrupt_corr": parse_percent,
    "reorder": parse_percent,
    "reorder_corr": parse_percent,
    "gap": lambda k, v: parse_int(k, v, 1, MAX_GAP),
    "rate": parse_rate,
    "packet_overhead": lambda k, v: parse_int(k, v, -MAX_OVERHEAD, MAX_OVERHEAD),
    "limit": lambda k, v: parse_int(k, v, 1, MAX_LIMIT),
}
_PRINTERS: dict[str, Callable[[Any], str]] = {
    name: (
        format_time if name in ("delay", "jitter")
        else format_rate if name == "rate"
        else format_percents if name in ("gemodel", "loss_state")
        else str if name in ("distribution", "gap", "packet_overhead", "limit")
        else (lambda v: f"{format_number(v)}%")
    )
    for name in _PARSERS
}  # fmt: skip


# -- distribution tables (iproute2's netem/*.c, rebuilt from their definitions) ---------------


def _clamp(value: float) -> int:
    return max(-INT16_MAX - 1, min(INT16_MAX, round(value)))


def _quantiles() -> list[float]:
    return [(i + 0.5) / TABLE_SIZE for i in range(TABLE_SIZE)]


def _normal_table() -> tuple[int, ...]:
    """Standard normal quantiles in DIST_SCALE units (iproute2 normal.c)."""
    unit = NormalDist()
    return tuple(_clamp(unit.inv_cdf(q) * DIST_SCALE) for q in _quantiles())


def _pareto_value(q: float) -> float:
    """Pareto with a = 3, shifted by its mean 1.5 and scaled by 4/3 (iproute2 pareto.c)."""
    return (1.0 / math.pow(1.0 - q, 1 / 3.0) - 1.5) * (4.0 / 3.0)


def _pareto_table() -> tuple[int, ...]:
    return tuple(_clamp(_pareto_value(q) * DIST_SCALE) for q in _quantiles())


def _paretonormal_table() -> tuple[int, ...]:
    """A quarter pareto, three quarters normal, at the same quantile (iproute2 paretonormal.c's
    mix), sorted like the others."""
    unit = NormalDist()
    return tuple(
        sorted(
            _clamp((0.25 * _pareto_value(q) + 0.75 * unit.inv_cdf(q)) * DIST_SCALE)
            for q in _quantiles()
        )
    )


TABLES: dict[str, tuple[int, ...]] = {
    "normal": _normal_table(),
    "pareto": _pareto_table(),
    "paretonormal": _paretonormal_table(),
}


def table_moments(distribution: str) -> tuple[float, float]:
    """(mean, standard deviation) of one table entry in units of sigma; uniform: of U(-1, 1)."""
    if distribution == "uniform":
        return 0.0, 1 / math.sqrt(3)
    table = TABLES[distribution]
    mean = sum(table) / len(table)
    var = sum((t - mean) ** 2 for t in table) / len(table)
    return mean / DIST_SCALE, math.sqrt(var) / DIST_SCALE


# -- per-pair state and the decision ----------------------------------------------------------

GOOD, BAD = 1, 3  # Gilbert-Elliott states, numbered like the 4-state model's 1 and 3


def pair_rng(seed: int | str, src: str, dst: str, generation: int) -> random.Random:
    """The pair's own stream: adding a pair or a rule never shifts another pair's draws."""
    digest = hashlib.blake2b(f"{seed}:{src}:{dst}:{generation}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


@dataclass
class PairState:
    """What netem keeps per qdisc, kept here per directed pair."""

    rng: random.Random
    last: dict[str, float] = field(default_factory=dict)
    """Last correlated draw per parameter (netem's crndstate)."""
    loss_state: int = GOOD
    counter: int = 0
    """Frames delayed since the last reordered one (netem's `counter`)."""
    last_due: float | None = None
    """When the pair's wire is free (the time_to_send of its last rate-limited frame)."""
    queued: int = 0
    """Copies waiting in the switch for this pair; the switch decrements on sending."""


@dataclass(frozen=True)
class Copy:
    """One copy of the frame to send at `due_at`; `corrupt_at` = (byte offset, bit) to flip."""

    due_at: float
    corrupt_at: tuple[int, int] | None = None
    reordered: bool = False


@dataclass(frozen=True)
class Decision:
    """The copies to send and why others were dropped (`loss`, `limit`)."""

    copies: tuple[Copy, ...]
    dropped: tuple[str, ...] = ()
    duplicated: bool = False


def _crandom(state: PairState, name: str, corr: float | None) -> float:
    """netem's get_crandom: v = (1-rho)*u + rho*last, per parameter."""
    u = state.rng.random()
    rho = (corr or 0.0) / 100
    if not rho:
        return u
    value = (1 - rho) * u + rho * state.last.get(name, u)
    state.last[name] = value
    return value


def _gilbert_elliott(state: PairState, model: tuple[float, ...]) -> bool:
    """netem's loss_gilb_ell: transition first, loss by the state the step started in."""
    p, r, bad_loss, good_loss = (x / 100 for x in model)
    rng = state.rng
    if state.loss_state == GOOD:
        if rng.random() < p:
            state.loss_state = BAD
        return rng.random() < good_loss
    if rng.random() < r:
        state.loss_state = GOOD
    return rng.random() < bad_loss


def _four_state(state: PairState, model: tuple[float, ...]) -> bool:
    """netem's loss_4state (states 1 gap-rx, 2 burst-rx, 3 burst-loss, 4 gap-loss)."""
    p13, p31, p32, p23, p14 = (x / 100 for x in model)
    rnd = state.rng.random()
    current = state.loss_state
    if current == 1:
        if rnd < p14:
            state.loss_state = 4
            return True
        if rnd < p14 + p13:
            state.loss_state = 3
            return True
    elif current == 2:
        if rnd < p23:
            state.loss_state = 3
            return True
    elif current == 3:
        if rnd < p32:
            state.loss_state = 2
        elif rnd < p32 + p31:
            state.loss_state = 1
        else:
            return True
    else:
        state.loss_state = 1
    return False


def _loss_event(state: PairState, imp: Impairment) -> bool:
    if imp.gemodel is not None:
        return _gilbert_elliott(state, imp.gemodel)
    if imp.loss_state is not None:
        return _four_state(state, imp.loss_state)
    return bool(imp.loss) and _crandom(state, "loss", imp.loss_corr) < (imp.loss or 0.0) / 100


def tabledist(state: PairState, imp: Impairment) -> float:
    """Delay of one frame: mu + sigma * table[u] (uniform: mu ± sigma), clamped at 0."""
    mu, sigma = imp.delay or 0.0, imp.jitter or 0.0
    if not sigma:
        return mu
    u = _crandom(state, "delay", imp.delay_corr)
    table = TABLES.get(imp.distribution or "uniform")
    if table is None:
        return max(0.0, mu + (2 * u - 1) * sigma)
    entry = table[min(int(u * len(table)), len(table) - 1)]
    return max(0.0, mu + sigma * entry / DIST_SCALE)


def _one_copy(state: PairState, imp: Impairment, frame_len: int, now: float) -> Copy:
    """Corrupt, reorder, delay, rate for one copy that survived loss (limit checked before)."""
    corrupt_at = None
    if imp.corrupt and _crandom(state, "corrupt", imp.corrupt_corr) < imp.corrupt / 100:
        corrupt_at = (state.rng.randrange(frame_len), state.rng.randrange(8))
    gap = imp.gap or 0
    if (
        gap
        and state.counter >= gap - 1
        and _crandom(state, "reorder", imp.reorder_corr) < (imp.reorder or 0.0) / 100
    ):
        state.counter = 0
        return Copy(now, corrupt_at, reordered=True)
    delay = tabledist(state, imp)
    start = now
    if imp.rate:
        if state.last_due is not None and state.last_due > now:
            delay = max(0.0, delay - (state.last_due - now))
            start = state.last_due
        delay += max(0, frame_len + (imp.packet_overhead or 0)) * 8 / imp.rate
    due = start + delay
    if imp.rate:
        state.last_due = due
    state.counter += 1
    return Copy(due, corrupt_at)


def decide(state: PairState, imp: Impairment, frame_len: int, now: float) -> Decision:
    """Judge one frame on one pair, in sch_netem's order; updates `state` (queued included).

    duplicate decided -> loss removes one copy -> corrupt -> limit -> reorder -> delay -> rate;
    a duplicate then takes the whole path again on its own with duplication off.
    """
    count = 1
    if imp.duplicate and _crandom(state, "duplicate", imp.duplicate_corr) < imp.duplicate / 100:
        count += 1
    if _loss_event(state, imp):
        count -= 1
    if count == 0:
        return Decision((), ("loss",))
    if state.queued >= (imp.limit or DEFAULT_LIMIT):
        return Decision((), ("limit",) * count)
    copies = [_one_copy(state, imp, frame_len, now)]
    state.queued += 1
    dropped: tuple[str, ...] = ()
    if count == 2:
        again = decide(state, replace(imp, duplicate=None), frame_len, now)
        copies += again.copies
        dropped = again.dropped
    return Decision(tuple(copies), dropped, duplicated=count == 2)
