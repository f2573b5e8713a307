"""`--shaper tc` (votemesh_lab.tc): a Matrix -> one host's tc and iptables commands, readback.

This kernel has no sch_netem, so the tc half is pinned by golden command lists for several
matrices (what a host with netem would run), and the readback by `tc -j qdisc` documents. The
iptables half runs live in lab namespaces: the generated `iptables-restore` input makes blocks
that lab-netem's prober sees exactly as asked (a one-way cut stays one-way), replacing the chain
heals, and the readback catches a rule slipped in behind the plan's back. Without sch_netem,
`--shaper tc` is refused with one line.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from votemesh_lab import tc
from votemesh_lab.grudge import Matrix, Rule
from votemesh_lab.netem import Impairment
from votemesh_lab.netns import Lab
from votemesh_lab.probe import Prober
from votemesh_lab.remote import chain_name, tc_major

LAB = "a1b2c3"
M = f"{tc_major(LAB):x}"  # b406
HOSTS = ("n1", "n2", "n3")
ADDRESSES = {"n1": ("198.18.0.2",), "n2": ("198.18.0.3",), "n3": ("198.18.0.4",)}


def _rule(src: str | None, dst: str | None, *, one_way: bool = True, **words: str) -> Rule:
    return Rule(
        None if src is None else frozenset({src}),
        None if dst is None else frozenset({dst}),
        one_way,
        Impairment.parse(words),
    )


def _lines(plan: tc.HostPlan, device: str = "eth0") -> list[str]:
    return [" ".join(argv) for argv in plan.tc_commands(device)]


# -- golden command lists ----------------------------------------------------------------


def test_empty_matrix_only_clears_the_chain_and_the_labs_qdisc() -> None:
    """Nothing asked: the chain is declared (iptables-restore flushes it) with no rule, and the
    only tc command deletes the lab's own root qdisc (by handle: never a foreign one)."""
    plan = tc.HostPlan.build(LAB, "n1", Matrix(hosts=HOSTS), ADDRESSES)
    assert plan.iptables_restore() == "*filter\n:VML-a1b2c3 - [0:0]\nCOMMIT\n"
    assert _lines(plan) == [f"tc qdisc del dev eth0 root handle {M}:"]
    assert M == "b406"


def test_one_way_cut_is_one_rule_on_the_receiver_only() -> None:
    """cut n1->n2: n2 drops n1's address; n1 and n3 hold no rule (nothing on the sender)."""
    matrix = Matrix(hosts=HOSTS).with_blocks({("n1", "n2")})
    plans = {h: tc.HostPlan.build(LAB, h, matrix, ADDRESSES) for h in HOSTS}
    assert plans["n2"].iptables_restore() == (
        "*filter\n:VML-a1b2c3 - [0:0]\n-A VML-a1b2c3 -s 198.18.0.2/32 -j DROP\nCOMMIT\n"
    )
    for host in ("n1", "n3"):
        assert "-j DROP" not in plans[host].iptables_restore()


def test_partition_two_links_drops_every_address_of_the_other_side() -> None:
    """groups [n1] | [n2, n3] with two links per host: each receiver drops both of each
    sender's addresses (sorted by host, then address)."""
    addresses = {h: (a[0], a[0].replace("198.18.0.", "198.18.1.")) for h, a in ADDRESSES.items()}
    blocks = {("n1", "n2"), ("n2", "n1"), ("n1", "n3"), ("n3", "n1")}
    matrix = Matrix(hosts=HOSTS).with_blocks(blocks)
    n1 = tc.HostPlan.build(LAB, "n1", matrix, addresses).iptables_restore().splitlines()
    assert n1[2:-1] == [
        "-A VML-a1b2c3 -s 198.18.0.3/32 -j DROP",
        "-A VML-a1b2c3 -s 198.18.1.3/32 -j DROP",
        "-A VML-a1b2c3 -s 198.18.0.4/32 -j DROP",
        "-A VML-a1b2c3 -s 198.18.1.4/32 -j DROP",
    ]
    n3 = tc.HostPlan.build(LAB, "n3", matrix, addresses).iptables_restore().splitlines()
    assert n3[2:-1] == [
        "-A VML-a1b2c3 -s 198.18.0.2/32 -j DROP",
        "-A VML-a1b2c3 -s 198.18.1.2/32 -j DROP",
    ]


def test_one_way_shape_is_a_class_a_netem_leaf_and_a_filter_on_the_sender() -> None:
    """shape n1->n2 delay 20ms ±5ms 25% normal, loss 5% 25%, seeded: n1 gets the htb root, the
    default class, a class for n2 (minor 0x10 + n2's index) with netem in tc's words and the
    pair's seed, and a u32 filter on n2's address; n2 and n3 shape nothing."""
    words = {"delay": "20ms", "jitter": "5ms", "delay_corr": "25%", "distribution": "normal",
             "loss": "5%", "loss_corr": "25%"}  # fmt: skip
    matrix = Matrix(hosts=HOSTS).shape(
        Rule(frozenset({"n1"}), frozenset({"n2"}), True, Impairment.parse(words))
    )
    plan = tc.HostPlan.build(LAB, "n1", matrix, ADDRESSES, seed=7)
    seed = tc.pair_seed(7, "n1", "n2", matrix.generation)
    assert _lines(plan) == [
        f"tc qdisc del dev eth0 root handle {M}:",
        f"tc qdisc add dev eth0 root handle {M}: htb default 1",
        f"tc class add dev eth0 parent {M}: classid {M}:1 htb rate 10gbit",
        f"tc class add dev eth0 parent {M}: classid {M}:11 htb rate 10gbit",
        (
            f"tc qdisc add dev eth0 parent {M}:11 netem delay 20ms 5ms 25% distribution normal "
            f"loss random 5% 25% seed {seed}"
        ),
        (
            f"tc filter add dev eth0 parent {M}: protocol ip prio 1 u32 match ip dst 198.18.0.3/32 "
            f"classid {M}:11"
        ),
    ]
    for host in ("n2", "n3"):
        other = tc.HostPlan.build(LAB, host, matrix, ADDRESSES, seed=7)
        assert _lines(other) == [f"tc qdisc del dev eth0 root handle {M}:"]


def test_all_pairs_rule_fills_the_default_class_and_every_destination() -> None:
    """An all-pairs loss 1% plus n1->n3 delay 50ms: n1's default class carries loss 1% (for
    broadcast and unmatched traffic), n2 gets loss 1%, n3 the overlay delay 50ms + loss 1%;
    without a seed no `seed` word is written (a host whose tc lacks the word)."""
    matrix = Matrix(hosts=HOSTS).shape(_rule(None, None, loss="1%"))
    matrix = matrix.shape(_rule("n1", "n3", delay="50ms"))
    plan = tc.HostPlan.build(LAB, "n1", matrix, ADDRESSES)
    assert _lines(plan)[1:] == [
        f"tc qdisc add dev eth0 root handle {M}: htb default 1",
        f"tc class add dev eth0 parent {M}: classid {M}:1 htb rate 10gbit",
        f"tc qdisc add dev eth0 parent {M}:1 netem loss random 1%",
        f"tc class add dev eth0 parent {M}: classid {M}:11 htb rate 10gbit",
        f"tc qdisc add dev eth0 parent {M}:11 netem loss random 1%",
        (
            f"tc filter add dev eth0 parent {M}: protocol ip prio 1 u32 match ip dst 198.18.0.3/32 "
            f"classid {M}:11"
        ),
        f"tc class add dev eth0 parent {M}: classid {M}:12 htb rate 10gbit",
        f"tc qdisc add dev eth0 parent {M}:12 netem delay 50ms loss random 1%",
        (
            f"tc filter add dev eth0 parent {M}: protocol ip prio 1 u32 match ip dst 198.18.0.4/32 "
            f"classid {M}:12"
        ),
    ]


def test_every_netem_word_in_tcs_order() -> None:
    """limit, delay/jitter (uniform: no table word), gemodel, duplicate and corrupt with
    correlations, reorder with gap, rate with overhead: netem's own words and units."""
    words = {"limit": "500", "delay": "10ms", "jitter": "2ms", "distribution": "uniform",
             "gemodel": "1%,10%,70%,0.1%", "duplicate": "1%", "duplicate_corr": "10%",
             "corrupt": "0.5%", "reorder": "25%", "reorder_corr": "50%", "gap": "5",
             "rate": "1mbit", "packet_overhead": "-4"}  # fmt: skip
    fields = Impairment.parse(words).to_dict()
    assert " ".join(tc.netem_words(fields)) == (
        "limit 500 delay 10ms 2ms loss gemodel 1% 10% 70% 0.1% duplicate 1% 10% corrupt 0.5% "
        "reorder 25% 50% gap 5 rate 1mbit -4"
    )
    state = Impairment.parse({"loss_state": "1%,80%,5%,2%,0.5%"}).to_dict()
    assert tc.netem_words(state, seed=3) == [
        "loss", "state", "1%", "80%", "5%", "2%", "0.5%", "seed", "3",
    ]  # fmt: skip


def test_pair_seeds_differ_per_pair_and_generation_and_repeat() -> None:
    """The netem seed of a pair follows the switch's rule: same inputs, same seed; another
    pair, direction or generation, another seed; it fits netem's unsigned 64 bits."""
    base = tc.pair_seed(7, "n1", "n2", 1)
    assert base == tc.pair_seed(7, "n1", "n2", 1)
    others = {tc.pair_seed(7, "n2", "n1", 1), tc.pair_seed(7, "n1", "n2", 2),
              tc.pair_seed(8, "n1", "n2", 1)}  # fmt: skip
    assert base not in others
    assert len(others) == 3
    assert 0 <= base < 2**64


# -- readback ------------------------------------------------------------------------------


def test_qdisc_readback_names_a_missing_leaf_and_a_foreign_root() -> None:
    """`tc -j qdisc` as iproute2 prints it: the full tree reads back clean; a missing netem
    leaf names the destination; a root that is not the lab's htb is named; after unshape a
    leftover lab root is named too."""
    matrix = Matrix(hosts=HOSTS).shape(_rule("n1", "n2", delay="20ms"))
    plan = tc.HostPlan.build(LAB, "n1", matrix, ADDRESSES)
    root = {"kind": "htb", "handle": f"{M}:", "root": True, "refcnt": 2, "options": {}}
    leaf = {"kind": "netem", "handle": "8001:", "parent": f"{M}:11", "options": {}}
    assert plan.compare_qdiscs("eth0", json.dumps([root, leaf])) == []
    assert plan.compare_qdiscs("eth0", json.dumps([root])) == [
        f"n1 eth0: no netem for n2 (class {M}:11)"
    ]
    foreign = {"kind": "fq_codel", "handle": "0:", "root": True}
    assert plan.compare_qdiscs("eth0", json.dumps([foreign])) == [
        f"n1 eth0: root qdisc fq_codel 0:, asked htb {M}:"
    ]
    healed = tc.HostPlan.build(LAB, "n1", matrix.unshape(), ADDRESSES)
    assert healed.compare_qdiscs("eth0", json.dumps([root, leaf])) == [
        f"n1 eth0: root qdisc htb {M}:, asked none of the lab's"
    ]
    assert healed.compare_qdiscs("eth0", json.dumps([foreign])) == []


def test_iptables_readback_names_missing_and_extra_drops() -> None:
    """`iptables -S VML-<id>`: the asked DROP missing, and one nobody asked for, each a line."""
    matrix = Matrix(hosts=HOSTS).with_blocks({("n1", "n2")})
    plan = tc.HostPlan.build(LAB, "n2", matrix, ADDRESSES)
    good = "-N VML-a1b2c3\n-A VML-a1b2c3 -s 198.18.0.2/32 -j DROP\n"
    assert plan.compare_blocks(good) == []
    assert plan.compare_blocks("-N VML-a1b2c3\n") == [
        "n2 lacks the DROP of n1 (198.18.0.2) in VML-a1b2c3"
    ]
    extra = good + "-A VML-a1b2c3 -s 198.18.0.4/32 -j DROP\n"
    assert plan.compare_blocks(extra) == ["n2 drops 198.18.0.4 in VML-a1b2c3, not asked"]


# -- the refusal -----------------------------------------------------------------------------


def test_refusal_is_one_line_naming_the_host_and_the_way_out() -> None:
    """A failed netem probe is one line: which host, tc's own error, what to do instead."""
    line = tc.netem_refusal("n2", 2, "Error: Specified qdisc kind is unknown.\n")
    assert line == (
        "--shaper tc: host n2 has no sch_netem (Error: Specified qdisc kind is unknown.); "
        "load it (modprobe sch_netem) or use the tap switch (--shaper tap)"
    )
    assert tc.netem_refusal("n2", 0, "") is None


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the probe makes a network namespace")
@pytest.mark.skipif(
    shutil.which("tc") is None, reason="tc not installed (apt-get install iproute2)"
)
def test_this_machine_is_probed_in_a_scratch_namespace() -> None:
    """The probe's verdict matches whether this kernel has sch_netem (modules listed or built
    in), and without it `--shaper tc` is refused with one line saying so."""
    refusal = tc.local_netem_refusal()
    has_netem = _kernel_has_netem()
    if has_netem is None:
        pytest.skip("cannot tell from /proc or /lib/modules whether this kernel has sch_netem")
    assert (refusal is None) == has_netem
    if refusal is not None:
        assert "\n" not in refusal
        assert refusal.startswith("--shaper tc: this machine has no sch_netem")


def _kernel_has_netem() -> bool | None:
    """From the kernel's own config (/proc/config.gz, /boot) or its loaded modules."""
    modules = Path("/proc/modules")
    if modules.exists() and "sch_netem " in modules.read_text():
        return True
    proc_config = Path("/proc/config.gz")
    boot_config = Path("/boot") / f"config-{os.uname().release}"
    if proc_config.exists():
        text = gzip.decompress(proc_config.read_bytes()).decode(errors="replace")
    elif boot_config.exists():
        text = boot_config.read_text(errors="replace")
    else:
        return None
    return "CONFIG_NET_SCH_NETEM=y" in text or "CONFIG_NET_SCH_NETEM=m" in text


# -- the iptables half, live -------------------------------------------------------------------

needs_lab = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("iptables-restore") is None,
    reason="needs root and iptables: network namespaces",
)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Three hosts on a kernel bridge, each with the lab chain jumped to from INPUT."""
    with Lab(tmp_path / "lab", HOSTS) as built:
        for host in built.hosts.values():
            host.run(tc.chain_setup(LAB))
        yield built
    for tracked in built.processes:  # the probe responders' pipes (Lab.close stops them)
        for pipe in (tracked.process.stdin, tracked.process.stdout):
            if pipe is not None:
                pipe.close()


def _apply(lab: Lab, matrix: Matrix) -> list[str]:
    """Install every host's plan, read it back: the control-plane differences."""
    addresses = {name: (host.address,) for name, host in lab.hosts.items()}
    lines = []
    for name, host in lab.hosts.items():
        plan = tc.HostPlan.build(LAB, name, matrix, addresses)
        host.run(["iptables-restore", "-w", "--noflush"], input_text=plan.iptables_restore())
        lines += plan.compare_blocks(host.run(["iptables", "-w", "-S", chain_name(LAB)]).stdout)
    return lines


@pytest.mark.root
@pytest.mark.timeout(60)
@needs_lab
def test_generated_blocks_hold_one_way_and_heal_live(lab: Lab) -> None:
    """In namespaces: a one-way cut n1->n2 from the generated rules is seen by the probes as
    exactly that (n2->n1 still open); a partition n3 | n1,n2 replaces it whole (the cut is
    gone); heal empties every chain; each readback is clean."""
    prober = Prober(lab)
    cut = Matrix(hosts=HOSTS).with_blocks({("n1", "n2")})
    assert _apply(lab, cut) == []
    verification = prober.verify(cut, ())
    assert verification.ok, str(verification)
    assert verification.pairs == 6

    split = cut.with_blocks({("n3", "n1"), ("n1", "n3"), ("n3", "n2"), ("n2", "n3")})
    assert _apply(lab, split) == []
    assert prober.verify(split, ()).ok
    assert "198.18.0.2" not in lab["n2"].run(["iptables", "-S", chain_name(LAB)]).stdout

    healed = split.heal()
    assert _apply(lab, healed) == []
    assert prober.verify(healed, ()).ok
    for host in lab.hosts.values():
        assert "-j DROP" not in host.run(["iptables", "-S", chain_name(LAB)]).stdout


@pytest.mark.root
@pytest.mark.timeout(60)
@needs_lab
def test_a_cut_that_became_two_way_is_caught_live(lab: Lab) -> None:
    """A DROP added behind the plan's back (n1 also dropping n2: the one-way cut became
    two-way) shows twice: in the readback of n1's chain and as the probe's n2->n1 mismatch."""
    cut = Matrix(hosts=HOSTS).with_blocks({("n1", "n2")})
    assert _apply(lab, cut) == []
    lab["n1"].run(["iptables", "-w", "-A", chain_name(LAB), "-s", "198.18.0.3", "-j", "DROP"])
    plan = tc.HostPlan.build(LAB, "n1", cut, {n: (h.address,) for n, h in lab.hosts.items()})
    listing = lab["n1"].run(["iptables", "-S", chain_name(LAB)]).stdout
    assert plan.compare_blocks(listing) == ["n1 drops 198.18.0.3 in VML-a1b2c3, not asked"]
    verification = Prober(lab).verify(cut, ())
    assert not verification.ok
    assert [str(m) for m in verification.mismatches] == [
        "n2->n1 expected open, seen cut (0/3 probes)"
    ]


# -- the tc tree without its netem leaves, live --------------------------------------------------

SEND = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for address, count in zip(sys.argv[1::2], sys.argv[2::2]):\n"
    "    for _ in range(int(count)):\n"
    "        s.sendto(b'x' * 64, (address, 9))\n"
)


@pytest.mark.root
@pytest.mark.timeout(60)
@needs_lab
def test_the_class_tree_classifies_by_destination_live(lab: Lab) -> None:
    """On a kernel without sch_netem the generated htb root, classes and u32 filters still
    install (everything but the netem leaves): datagrams n1 sends to n2 and to n3 are counted
    in exactly their destinations' classes, and the readback names each missing netem leaf."""
    matrix = Matrix(hosts=HOSTS).shape(_rule("n1", "n2", delay="20ms"))
    matrix = matrix.shape(_rule("n1", "n3", loss="5%"))
    addresses = {name: (host.address,) for name, host in lab.hosts.items()}
    plan = tc.HostPlan.build(LAB, "n1", matrix, addresses)
    n1 = lab["n1"]
    delete, *build = plan.tc_commands("eth0")
    assert n1.run(delete, check=False).returncode != 0  # nothing of the lab's there yet
    for argv in build:
        if "netem" not in argv:
            n1.run(argv)
    n1.run(["python3", "-c", SEND, "198.18.0.3", "7", "198.18.0.4", "11"])
    packets = _class_packets(n1.run(["tc", "-s", "class", "show", "dev", "eth0"]).stdout)
    assert packets[f"{M}:11"] == 7
    assert packets[f"{M}:12"] == 11
    listing = n1.run(["tc", "-j", "qdisc", "show", "dev", "eth0"]).stdout
    assert plan.compare_qdiscs("eth0", listing) == [
        f"n1 eth0: no netem for n2 (class {M}:11)",
        f"n1 eth0: no netem for n3 (class {M}:12)",
    ]
    n1.run(delete)  # the lab's own root goes by its handle
    assert f'"handle":"{M}:"' not in n1.run(["tc", "-j", "qdisc", "show", "dev", "eth0"]).stdout


def _class_packets(text: str) -> dict[str, int]:
    """class handle -> packets sent, from `tc -s class show` (iproute2 6.1 prints no JSON for
    htb classes): a "class htb H ..." line, then " Sent B bytes P pkt ..."."""
    packets, handle = {}, None
    for line in text.splitlines():
        words = line.split()
        if words[:2] == ["class", "htb"]:
            handle = words[2]
        elif words[:1] == ["Sent"] and handle is not None:
            packets[handle] = int(words[3])
    return packets


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the probe makes a network namespace")
def test_netns_backend_refuses_shaper_tc_in_one_line_without_netem(tmp_path: Path) -> None:
    """`shaper = "tc"` on a machine without sch_netem stops `up` before anything is built, with
    the probe's one line (the NetnsBackend asks `tc.local_netem_refusal()`)."""
    from votemesh_lab.backends import BackendError, LabPlan, NetnsBackend

    if tc.local_netem_refusal() is None:
        pytest.skip("this kernel has sch_netem: nothing to refuse")
    backend = NetnsBackend()
    with pytest.raises(BackendError) as caught:
        backend.up(LabPlan(nodes=3, shaper="tc", workdir=tmp_path))
    assert str(caught.value).startswith("--shaper tc: this machine has no sch_netem (")
    assert "\n" not in str(caught.value)
    assert backend.lab is None


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: votemesh-lab run's preflight")
def test_votemesh_lab_run_shaper_tc_is_one_line_exit_1_without_netem(tmp_path: Path) -> None:
    """`votemesh-lab run kill-restart --shaper tc` on a kernel without sch_netem: one line on
    stderr naming the missing sch_netem and what to do, exit 1, no lab built."""
    import subprocess
    import sys

    if tc.local_netem_refusal() is None:
        pytest.skip("this kernel has sch_netem: nothing to refuse")
    result = subprocess.run(
        [sys.executable, "-m", "votemesh_lab.cli", "run", "kill-restart", "--shaper", "tc",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--shaper tc: this machine has no sch_netem (" in lines[0]
    assert "use the tap switch (--shaper tap)" in lines[0]
    assert not (tmp_path / "out").exists()
