"""The network a running lab was asked for, changed one command at a time (design §4.8).

`votemesh-lab partition`, `cut`, `heal`, `shape` and `unshape` change one requested network:
directed blocks (s, d) = d drops what s sends, and shaping rules (source hosts or all,
destination hosts or all, one way or both, netem keys with tc units), later rules overlaying
earlier ones. Every change bumps the generation and applies the WHOLE network again, so what is
in the switch is always exactly the request, and returns the line the command prints:
`applied g3: 1,2 | 3,4,5; ...` with the verification (or why there is none).

Hosts are names ("n1".."nN", "qnetd", "broker"); on the command line nodes are ids or names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from votemesh_lab.backends import NetnsBackend


class NetworkError(ValueError):
    """A request that names no such host, or a value the switch cannot take (one line)."""


@dataclass(frozen=True)
class Shape:
    """One shaping rule: None = every host."""

    src: frozenset[str] | None
    dst: frozenset[str] | None
    one_way: bool
    params: tuple[tuple[str, str], ...]

    def covers(self, src: str, dst: str) -> bool:
        forward = (self.src is None or src in self.src) and (self.dst is None or dst in self.dst)
        if forward or self.one_way:
            return forward
        return (self.src is None or dst in self.src) and (self.dst is None or src in self.dst)


_UNIT = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-z%]*)$")
_TIME = {"": 1e-3, "ms": 1e-3, "msec": 1e-3, "s": 1.0, "sec": 1.0, "us": 1e-6, "usec": 1e-6}
_RATE = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 8, "kbps": 8e3, "mbps": 8e6}
#: What the tap switch of this build takes, and the keyword of `Lab.impair` each becomes.
_SWITCH_KEYS = {"delay": "delay_ms", "jitter": "jitter_ms", "loss": "loss",
                "duplicate": "duplicate", "rate": "rate_kbit"}  # fmt: skip


def _number(key: str, text: str, units: Mapping[str, float]) -> float:
    match = _UNIT.match(text.strip().lower())
    if match is None or match.group(2) not in units:
        raise NetworkError(f"{key}={text}: use a number with one of {', '.join(units)}")
    return float(match.group(1)) * units[match.group(2)]


def switch_keywords(params: Mapping[str, str]) -> dict[str, float]:
    """netem keys with tc units -> `Lab.impair` keywords; NetworkError naming a bad key."""
    out: dict[str, float] = {}
    for key, text in params.items():
        if key not in _SWITCH_KEYS:
            raise NetworkError(f"shape key {key!r}: use {', '.join(_SWITCH_KEYS)}")
        if key in ("delay", "jitter"):
            out[_SWITCH_KEYS[key]] = _number(key, text, _TIME) * 1e3
        elif key == "rate":
            out[_SWITCH_KEYS[key]] = _number(key, text, _RATE) / 1e3
        else:
            value = _number(key, text, {"%": 0.01, "": 1.0})
            if not 0.0 <= value <= 1.0:
                raise NetworkError(f"{key}={text}: use 0% to 100%")
            out[_SWITCH_KEYS[key]] = value
    return out


def group_text(names: Sequence[str]) -> str:
    """`1,2,qnetd`: node hosts by id, others by name."""
    return ",".join(n[1:] if n[:1] == "n" and n[1:].isdigit() else n for n in names)


class NetworkPlan:
    """Blocks + shapes of one lab, applied whole after each change."""

    def __init__(self, backend: NetnsBackend, hosts: Sequence[str]) -> None:
        self.backend = backend
        self.hosts = tuple(hosts)
        self.generation = 0
        self.blocks: frozenset[tuple[str, str]] = frozenset()
        self.shapes: tuple[Shape, ...] = ()
        self.text = "open"
        self.line = ""

    def _check(self, names: Sequence[str]) -> None:
        for name in names:
            if name not in self.hosts:
                raise NetworkError(f"no host {name!r}: this lab has {', '.join(self.hosts)}")

    # -- changes ----------------------------------------------------------------------------
    def partition(self, groups: Sequence[Sequence[str]]) -> str:
        """Hosts in different groups stop hearing each other (replaces every block)."""
        seen: set[str] = set()
        for group in groups:
            self._check(group)
            if seen & set(group) or not group:
                raise NetworkError("each host may be in one group only, and no group empty")
            seen |= set(group)
        if len(groups) < 2:
            raise NetworkError("a partition needs at least two groups, e.g. 1,2 3,4,5")
        blocks = {
            (a, b) for i, g in enumerate(groups) for h in groups[i + 1 :] for a in g for b in h
        }
        self.blocks = frozenset(blocks | {(b, a) for a, b in blocks})
        return self._apply(" | ".join(group_text(g) for g in groups))

    def cut(self, pairs: Sequence[tuple[str, str]]) -> str:
        """One way each: the second host drops what the first sends (added to the blocks)."""
        for src, dst in pairs:
            self._check([src, dst])
            if src == dst:
                raise NetworkError(f"cut {src}->{dst}: name two different hosts")
        self.blocks = self.blocks | frozenset(pairs)
        cuts = " ".join(f"{group_text([a])}->{group_text([b])}" for a, b in sorted(self.blocks))
        return self._apply(f"cut {cuts}")

    def heal(self) -> str:
        """Lift every block (shapes stay: `unshape` clears them)."""
        self.blocks = frozenset()
        return self._apply("healed")

    def shape(
        self, src: Sequence[str] | None, dst: Sequence[str] | None, one_way: bool,
        params: Mapping[str, Any],
    ) -> str:  # fmt: skip
        """Add a shaping rule (tc units: delay=20ms loss=5% rate=1mbit)."""
        for names in (src, dst):
            self._check(names or ())
        text = {str(k): str(v) for k, v in params.items()}
        switch_keywords(text)  # refuse a bad key or value before anything changes
        rule = Shape(_set(src), _set(dst), one_way, tuple(sorted(text.items())))
        self.shapes = (*self.shapes, rule)
        what = " ".join(f"{k}={v}" for k, v in rule.params)
        return self._apply(f"shape {_scope(rule)} {what}")

    def unshape(self, src: Sequence[str] | None, dst: Sequence[str] | None) -> str:
        """Remove the rules between exactly these hosts; with neither, every rule."""
        if src is None and dst is None:
            self.shapes = ()
        else:
            for names in (src, dst):
                self._check(names or ())
            keep = [s for s in self.shapes if (s.src, s.dst) != (_set(src), _set(dst))]
            if len(keep) == len(self.shapes):
                raise NetworkError("no shape between those hosts: `status` lists the network")
            self.shapes = tuple(keep)
        return self._apply("unshaped")

    def apply_current(self) -> str:
        """Apply the network as it stands (the first, empty matrix of `up`)."""
        return self._apply("open")

    # -- applying ---------------------------------------------------------------------------
    def effective(self, src: str, dst: str) -> dict[str, float]:
        """The switch keywords for frames src -> dst: later rules overlay earlier ones."""
        params: dict[str, str] = {}
        for rule in self.shapes:
            if rule.covers(src, dst):
                params.update(rule.params)
        return switch_keywords(params)

    def _apply(self, text: str) -> str:
        self.generation += 1
        self.text = text
        lab = self.backend.lab
        if lab is None:
            raise NetworkError("the lab is not up")
        lab.heal()
        hosts = lab.hosts
        if self.blocks:
            lab.block_many([(hosts[a], hosts[b]) for a, b in sorted(self.blocks)])
        self.backend._block_extra_networks(self.blocks)  # networks 1.. (kernel bridges)
        lab.impair_all()
        for src in self.hosts:
            for dst in self.hosts:
                keywords = self.effective(src, dst) if src != dst else {}
                if keywords:
                    lab.impair(src, dst, **keywords)
        shaped = f", {len(self.shapes)} shape rule(s)" if self.shapes else ""
        self.line = (
            f"applied g{self.generation}: {text}{shaped}; "
            "not verified (this build has no pair prober yet)"
        )
        return self.line


def _set(names: Sequence[str] | None) -> frozenset[str] | None:
    return None if names is None else frozenset(names)


def _scope(rule: Shape) -> str:
    src = group_text(sorted(rule.src)) if rule.src is not None else "*"
    dst = group_text(sorted(rule.dst)) if rule.dst is not None else "*"
    return f"{src}{'->' if rule.one_way else '<->'}{dst}"
