"""The network a running lab was asked for, changed one command at a time (design §4.8).

`votemesh-lab partition`, `cut`, `heal`, `shape` and `unshape` each make the next
`grudge.Matrix` (directed blocks (s, d) = d drops what s sends; shaping rules with netem's keys
and tc's units, later rules overlaying earlier ones), hand the WHOLE matrix to the backend
(`Lab.apply`: one switch request, then a probe over every ordered pair) and return the line the
command prints: `applied g3: 1 | 2,3; verified 12/12 pairs in 0.21 s`, or the first mismatch.
A bad request raises `grudge.GrudgeError` or `netem.ImpairmentError` (one line each).

Hosts are names ("n1".."nN", "qnetd", "broker"); the command line turns ids into names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from votemesh_lab.backends import NetnsBackend
from votemesh_lab.grudge import GrudgeError, Matrix, Rule, between
from votemesh_lab.netem import Impairment


def group_text(names: Sequence[str]) -> str:
    """`1,2,qnetd`: node hosts by id, others by name."""
    return ",".join(n[1:] if n[:1] == "n" and n[1:].isdigit() else n for n in names)


def _set(names: Sequence[str] | None) -> frozenset[str] | None:
    return None if names is None else frozenset(names)


class NetworkPlan:
    """The lab's current Matrix, applied whole and verified after each change."""

    def __init__(self, backend: NetnsBackend, hosts: Sequence[str]) -> None:
        self.backend = backend
        self.matrix = Matrix(tuple(hosts))
        self.line = ""
        self.verified = False

    def _check(self, names: Sequence[str] | None) -> None:
        for name in names or ():
            if name not in self.matrix.hosts:
                raise GrudgeError(f"no host {name!r}: this lab has {', '.join(self.matrix.hosts)}")

    # -- changes ----------------------------------------------------------------------------
    def partition(self, groups: Sequence[Sequence[str]]) -> str:
        """Hosts in different groups stop hearing each other (replaces every block)."""
        seen: set[str] = set()
        for group in groups:
            self._check(group)
            if seen & set(group) or not group:
                raise GrudgeError("each host may be in one group only, and no group empty")
            seen |= set(group)
        if len(groups) < 2:
            raise GrudgeError("a partition needs at least two groups, e.g. 1,2 3,4,5")
        self.matrix = self.matrix.with_blocks(between(groups))
        return self._apply(" | ".join(group_text(g) for g in groups))

    def cut(self, pairs: Sequence[tuple[str, str]]) -> str:
        """One way each: the second host drops what the first sends (added to the blocks)."""
        for src, dst in pairs:
            self._check([src, dst])
        self.matrix = self.matrix.with_blocks(self.matrix.blocks | frozenset(pairs))
        cuts = " ".join(f"{group_text([a])}->{group_text([b])}" for a, b in sorted(pairs))
        return self._apply(f"cut {cuts}")

    def heal(self) -> str:
        """Lift every block (shapes stay: `unshape` clears them)."""
        self.matrix = self.matrix.heal()
        return self._apply("healed")

    def shape(
        self, src: Sequence[str] | None, dst: Sequence[str] | None, one_way: bool,
        params: Mapping[str, Any],
    ) -> str:  # fmt: skip
        """Add a shaping rule (tc units: delay=20ms jitter=5ms loss=5% rate=1mbit ...)."""
        self._check(src)
        self._check(dst)
        impairment = Impairment.parse({str(k): str(v) for k, v in params.items()})
        rule = Rule(_set(src), _set(dst), one_way, impairment)
        self.matrix = self.matrix.shape(rule)
        what = " ".join(f"{k}={v}" for k, v in impairment.to_dict().items())
        return self._apply(f"shape {_scope(rule)} {what}")

    def unshape(self, src: Sequence[str] | None, dst: Sequence[str] | None) -> str:
        """Remove the rules given for exactly these hosts; with neither, every rule."""
        self._check(src)
        self._check(dst)
        before = len(self.matrix.rules)
        after = self.matrix.unshape(_set(src), _set(dst))
        if (src, dst) != (None, None) and len(after.rules) == before:
            raise GrudgeError("no shape between those hosts: `status` shows the network")
        self.matrix = after
        return self._apply("unshaped")

    def apply_current(self) -> str:
        """Apply the matrix as it stands (the first, open one of `up`)."""
        return self._apply("open")

    def describe(self) -> str:
        """The whole matrix in one line: `g9: blocks 1->2 2->1; shapes 2<->3 loss=1%`."""
        blocks = " ".join(
            f"{group_text([a])}->{group_text([b])}" for a, b in sorted(self.matrix.blocks)
        )
        shapes = "; ".join(
            f"{_scope(r)} " + " ".join(f"{k}={v}" for k, v in r.impairment.to_dict().items())
            for r in self.matrix.rules
        )
        return f"g{self.matrix.generation}: blocks {blocks or 'none'}; shapes {shapes or 'none'}"

    # -- applying ---------------------------------------------------------------------------
    def _apply(self, text: str) -> str:
        verification = self.backend.apply(self.matrix)
        self.verified = bool(verification.ok)
        if verification.ok:
            unverified = (
                f", {len(verification.unverified)} unverified" if verification.unverified else ""
            )
            how = (
                f"verified {verification.pairs}/{len(self.matrix.pairs())} pairs in "
                f"{verification.seconds:.2f} s{unverified}"
            )
        else:
            how = str(verification)
        rules = len(self.matrix.rules)
        shaped = f" (+{rules} shape rule{'s' if rules > 1 else ''})" if rules else ""
        self.line = f"applied g{self.matrix.generation}: {text}{shaped}; {how}"
        return self.line


def _scope(rule: Rule) -> str:
    src = group_text(sorted(rule.src)) if rule.src is not None else "*"
    dst = group_text(sorted(rule.dst)) if rule.dst is not None else "*"
    return f"{src}{'->' if rule.one_way else '<->'}{dst}"
