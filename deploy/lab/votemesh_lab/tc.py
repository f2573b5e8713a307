"""`--shaper tc`: one host's share of a `grudge.Matrix` as tc and iptables commands (design §4.3).

For a host s (the sender), on each device that holds one of its lab addresses:

    tc qdisc del dev D root handle M:                            M = remote.tc_major(lab id)
    tc qdisc add dev D root handle M: htb default 1
    tc class add dev D parent M: classid M:1 htb rate 10gbit     the default class: broadcast,
    tc qdisc add dev D parent M:1 netem <all-pairs rule>          multicast, anything unmatched
    tc class add dev D parent M: classid M:<10+i> htb rate 10gbit     one per destination d
    tc qdisc add dev D parent M:<10+i> netem <s->d impairment>        (index i in matrix.hosts)
    tc filter add dev D parent M: protocol ip prio 1 u32 match ip dst <d>/32 classid M:<10+i>

The filter is u32, not flower (design §4.3 named flower): u32 is built into kernels that lack
cls_flower, this one among them, and does the same exact match on the destination address.
Only pairs whose effective impairment is not empty get a class; with nothing to shape only the
`del` is left. The netem words are tc's own
(`Impairment.to_dict()` already holds tc units): `delay D J C distribution X`, `loss random P C`
| `loss gemodel ...` | `loss state ...`, `duplicate`, `corrupt`, `reorder P C gap N`, `rate R
OVERHEAD`, `limit N`, and `seed S` (a per-pair seed from the run seed, as the switch's) where
the host's tc knows the word (iproute2 >= 6.3). `distribution uniform` is netem without a table,
so only the other distributions are written.

Blocks are iptables DROP rules in the lab's chain `VML-<id>` on the **receiver** (a block (s, d)
is a rule in d dropping s's addresses): a one-way cut is one rule on one host. The whole chain is
replaced at once with `iptables-restore --noflush` (declaring the chain flushes it).

Readback: `iptables -S VML-<id>` must list exactly the requested DROP rules; `tc -j qdisc` must
show the lab's htb root and one netem leaf per shaped destination. Field values of the leaves are
checked by the data plane (the probes), not parsed back here.

Builds argv lists and compares text; `ssh.py` (and a namespace lab) run them. The one I/O here
is `local_netem_refusal()`, the probe on this machine before `--shaper tc` is accepted.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from votemesh_lab.remote import chain_name, tc_major

if TYPE_CHECKING:
    from votemesh_lab.grudge import Matrix

HTB_RATE = "10gbit"  # htb only classifies here; netem's own `rate` shapes
DEFAULT_CLASS = 1
FIRST_CLASS = 0x10
#: Runs on a host; exit 0 when sch_netem loads in a scratch namespace (nothing else touched).
NETEM_PROBE = [
    "unshare", "--net", "--", "sh", "-c",
    "ip link set lo up && tc qdisc add dev lo root netem delay 1ms",
]  # fmt: skip
#: Runs on a host; exit 0 when its tc knows netem's `seed` word.
SEED_PROBE = ["sh", "-c", "tc qdisc add dev lo root netem help 2>&1 | grep -qw seed"]


def netem_refusal(host: str, returncode: int, stderr: str) -> str | None:
    """None when the probe worked, else the one-line refusal of `--shaper tc` for `host`."""
    if returncode == 0:
        return None
    why = stderr.strip().splitlines()
    where = host if host == "this machine" else f"host {host}"
    return (
        f"--shaper tc: {where} has no sch_netem ({why[-1] if why else 'tc failed'}); "
        "load it (modprobe sch_netem) or use the tap switch (--shaper tap)"
    )


def local_netem_refusal() -> str | None:
    """`--shaper tc` on this machine: None when sch_netem works in a scratch namespace, else
    the one-line refusal (the probe creates and drops its own network namespace)."""
    try:
        result = subprocess.run(
            NETEM_PROBE, capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return netem_refusal("here", 1, str(exc))
    return netem_refusal("this machine", result.returncode, result.stderr)


def chain_setup(lab_id: str) -> list[str]:
    """argv (for a host's shell) creating the lab's chain and jumping to it from INPUT."""
    chain = chain_name(lab_id)
    return ["sh", "-c", f"iptables -w -N {chain} && iptables -w -I INPUT -j {chain}"]


def pair_seed(seed: int, src: str, dst: str, generation: int) -> int:
    """The pair's netem seed, as the switch seeds a pair (design §4.3): 63 bits of blake2b."""
    digest = hashlib.blake2b(f"{seed}:{src}:{dst}:{generation}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") >> 1


def netem_words(fields: Mapping[str, str], seed: int | None = None) -> list[str]:
    """netem's arguments for an impairment given as `Impairment.to_dict()` (tc units)."""
    words: list[str] = []
    if "limit" in fields:
        words += ["limit", fields["limit"]]
    words += _delay_words(fields)
    if "loss" in fields:
        words += ["loss", "random", fields["loss"], *_given(fields, "loss_corr")]
    elif "gemodel" in fields:
        words += ["loss", "gemodel", *fields["gemodel"].split(",")]
    elif "loss_state" in fields:
        words += ["loss", "state", *fields["loss_state"].split(",")]
    for key in ("duplicate", "corrupt"):
        if key in fields:
            words += [key, fields[key], *_given(fields, f"{key}_corr")]
    if "reorder" in fields:
        words += ["reorder", fields["reorder"], *_given(fields, "reorder_corr")]
        words += ["gap", fields.get("gap", "1")]
    if "rate" in fields:
        words += ["rate", fields["rate"], *_given(fields, "packet_overhead")]
    if seed is not None:
        words += ["seed", str(seed)]
    return words


def _delay_words(fields: Mapping[str, str]) -> list[str]:
    """`delay D [J [C]] [distribution X]`: tc takes a correlation and a table only with J."""
    if "delay" not in fields and "jitter" not in fields:
        return []
    words = ["delay", fields.get("delay", "0ms")]
    if "jitter" in fields:
        words += [fields["jitter"], *_given(fields, "delay_corr")]
        if fields.get("distribution", "uniform") != "uniform":
            words += ["distribution", fields["distribution"]]
    return words


def _given(fields: Mapping[str, str], key: str) -> list[str]:
    return [fields[key]] if key in fields else []


@dataclass(frozen=True)
class Shape:
    """One destination's class on the sender: its class minor, addresses and netem words."""

    dst: str
    minor: int
    addresses: tuple[str, ...]
    words: tuple[str, ...]


@dataclass(frozen=True)
class HostPlan:
    """What one host must hold for a matrix: its DROP sources, its shapes, its default class."""

    lab_id: str
    host: str
    generation: int
    drops: tuple[tuple[str, str], ...]
    """(source host, source address) this host drops, sorted."""
    shapes: tuple[Shape, ...]
    default: tuple[str, ...] | None
    """netem words of the all-pairs rule (broadcast and unmatched traffic), None when empty."""

    @property
    def chain(self) -> str:
        """The lab's iptables chain on this host."""
        return chain_name(self.lab_id)

    @property
    def major(self) -> str:
        """The hex handle major of the lab's root qdisc."""
        return f"{tc_major(self.lab_id):x}"

    @classmethod
    def build(
        cls,
        lab_id: str,
        host: str,
        matrix: Matrix,
        addresses: Mapping[str, Sequence[str]],
        *,
        seed: int | None = None,
    ) -> HostPlan:
        """This host's part of `matrix`; `seed` (the run's) adds netem `seed` words per pair."""
        drops = sorted(
            (src, address)
            for src, dst in matrix.blocks
            if dst == host and src in addresses
            for address in addresses[src]
        )
        shapes = []
        for index, dst in enumerate(matrix.hosts):
            if dst == host or dst not in addresses:
                continue
            impairment = matrix.effective(host, dst)
            if impairment.is_none():
                continue
            pair = None if seed is None else pair_seed(seed, host, dst, matrix.generation)
            words = netem_words(impairment.to_dict(), pair)
            shapes.append(Shape(dst, FIRST_CLASS + index, tuple(addresses[dst]), tuple(words)))
        everyone = matrix.default()
        default = None
        if not everyone.is_none():
            pair = None if seed is None else pair_seed(seed, host, "*", matrix.generation)
            default = tuple(netem_words(everyone.to_dict(), pair))
        return cls(lab_id, host, matrix.generation, tuple(drops), tuple(shapes), default)

    # -- iptables ----------------------------------------------------------------------------

    def iptables_restore(self) -> str:
        """`iptables-restore --noflush` input: the chain declared (so flushed), then its DROPs."""
        lines = ["*filter", f":{self.chain} - [0:0]"]
        lines += [f"-A {self.chain} -s {address}/32 -j DROP" for _, address in self.drops]
        return "\n".join([*lines, "COMMIT", ""])

    def compare_blocks(self, listing: str) -> list[str]:
        """Differences between `iptables -S VML-<id>` on this host and the plan, one line each."""
        seen = set()
        for line in listing.splitlines():
            words = line.split()
            if words[:2] == ["-A", self.chain] and words[-2:] == ["-j", "DROP"] and "-s" in words:
                seen.add(words[words.index("-s") + 1].removesuffix("/32"))
        wanted = {address: src for src, address in self.drops}
        lines = [
            f"{self.host} lacks the DROP of {src} ({address}) in {self.chain}"
            for address, src in sorted(wanted.items())
            if address not in seen
        ]
        lines += [
            f"{self.host} drops {address} in {self.chain}, not asked"
            for address in sorted(seen - set(wanted))
        ]
        return lines

    # -- tc ----------------------------------------------------------------------------------

    def tc_commands(self, device: str) -> list[list[str]]:
        """The tc argv lists for one device, in order.

        The first deletes the lab's root qdisc (`handle M:`: the kernel refuses to delete any
        other, so a host's own shaping is never removed; it fails harmlessly when there is none);
        the rest build the plan's tree (`add`: refused where the host has its own root qdisc).
        """
        m, dev = self.major, ["dev", device]
        commands = [["tc", "qdisc", "del", *dev, "root", "handle", f"{m}:"]]
        if not self.shapes and self.default is None:
            return commands
        htb = ["htb", "rate", HTB_RATE]
        default = f"{m}:{DEFAULT_CLASS:x}"
        commands += [
            ["tc", "qdisc", "add", *dev, "root", "handle", f"{m}:", "htb", "default",
             f"{DEFAULT_CLASS:x}"],
            ["tc", "class", "add", *dev, "parent", f"{m}:", "classid", default, *htb],
        ]  # fmt: skip
        if self.default is not None:
            commands.append(["tc", "qdisc", "add", *dev, "parent", default, "netem", *self.default])
        for shape in self.shapes:
            classid = f"{m}:{shape.minor:x}"
            commands.append(["tc", "class", "add", *dev, "parent", f"{m}:", "classid", classid,
                             *htb])  # fmt: skip
            commands.append(["tc", "qdisc", "add", *dev, "parent", classid, "netem",
                             *shape.words])  # fmt: skip
            commands += [
                ["tc", "filter", "add", *dev, "parent", f"{m}:", "protocol", "ip", "prio", "1",
                 "u32", "match", "ip", "dst", f"{address}/32", "classid", classid]
                for address in shape.addresses
            ]  # fmt: skip
        return commands

    def compare_qdiscs(self, device: str, listing: str) -> list[str]:
        """Differences between `tc -j qdisc show dev D` and the plan: the lab's htb root and one
        netem leaf per shaped class, nothing else (values are the probes' to check)."""
        try:
            qdiscs = json.loads(listing or "[]")
        except ValueError:
            return [f"{self.host} {device}: tc -j qdisc gave no JSON"]
        where = f"{self.host} {device}"
        root = [q for q in qdiscs if q.get("root")]
        ours = bool(root) and root[0].get("handle") == f"{self.major}:"
        wanted = bool(self.shapes) or self.default is not None
        if ours != wanted or (ours and root[0].get("kind") != "htb"):
            seen = f"{root[0].get('kind')} {root[0].get('handle')}" if root else "none"
            asked = f"htb {self.major}:" if wanted else "none of the lab's"
            return [f"{where}: root qdisc {seen}, asked {asked}"]
        if not wanted:
            return []
        leaves = {q.get("parent") for q in qdiscs if q.get("kind") == "netem"}
        expected = {f"{self.major}:{s.minor:x}": s.dst for s in self.shapes}
        if self.default is not None:
            expected[f"{self.major}:{DEFAULT_CLASS:x}"] = "every host (default class)"
        lines = [
            f"{where}: no netem for {dst} (class {parent})"
            for parent, dst in sorted(expected.items())
            if parent not in leaves
        ]
        lines += [
            f"{where}: netem under {parent}, not asked"
            for parent in sorted(str(p) for p in leaves - set(expected))
        ]
        return lines
