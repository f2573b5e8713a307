"""`votemesh status` / `nodes` / `explain` text: golden files built from corosync-quorumtool's
printf rules (docs/agent.md, "votemesh status"), for quorate, not quorate, qdevice voting and not
voting, wait_for_all, two_node and last_man_standing states.

The golden files were produced by the renderer and reviewed line by line against the rules
(test_printf_rules_hold_line_by_line checks the rules again, independently): labels padded to
column 19; `Quorum:` is `"%d %s"` with " " when quorate (two trailing spaces) or
"Activity blocked"; flags in corosync's fixed order, each followed by one space; membership cells
right-aligned to 10 columns plus one space, hex ids `0x%08x `; the qdevice pseudo-row is node id 0,
its votes (0 when this node's device does not vote), 11 spaces, `Qdevice`, and ` (votes N)` when
not voting. `VOTEMESH_WRITE_GOLDEN=1` rewrites them (then review the diff).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from agent.cli.render import explain_text, nodes_text, status_text
from agent.status import LinkInfo, NodeStatus, PeerInfo, QdeviceInfo, Transition

GOLDEN = Path(__file__).parent / "golden"
DATE = "Mon Dec  7 05:17:46 2026"


def peer(node_id: int, member: bool = True, votes: int = 1, **kw: object) -> PeerInfo:
    """A peer on 192.168.15.9<id>."""
    values: dict[str, object] = {
        "node_id": node_id,
        "name": f"hp{node_id}",
        "votes": votes,
        "member": member,
        "addresses": (f"192.168.15.9{node_id}:5407",),
        "incarnation": 3,
        "clock_skew_ms": 0,
        "last_heartbeat_s": 0.1 if member else 42.5,
        "missing_since_s": None if member else 40.0,
        "failure_timeout_s": 0.6,
        "active_link": 0 if member else None,
        "links": (LinkInfo(0, member, member, 0.2, 0.0, 0.1),),
    }
    values.update(kw)
    return PeerInfo(**values)  # type: ignore[arg-type]


def base(**kw: object) -> NodeStatus:
    """Node 2 of a 4-node cluster, all members, quorate (pvecm.adoc's sample)."""
    values: dict[str, object] = {
        "cluster": "prod-central",
        "node_id": 2,
        "node_name": "hp2",
        "config_version": 3,
        "transport": "udp",
        "secure_auth": True,
        "addresses": ("192.168.15.92:5407",),
        "incarnation": 5,
        "ring_id": (1, 0x1A8),
        "members": (1, 2, 3, 4),
        "proposal": (1, 2, 3, 4),
        "counted": (1, 2, 3, 4),
        "basis": "heard",
        "basis_why": "ring 1.1a8",
        "quorate": True,
        "expected_votes": 4,
        "highest_expected": 4,
        "total_votes": 4,
        "quorum": 3,
        "votes": 1,
        "flags": ("Quorate",),
        "why": "quorate: 4 of 4 expected votes present, quorum is 3",
        "views": "forming",
        "durable_max_seq": 0x1A8,
        "qdevice": QdeviceInfo(configured=False),
        "peers": (peer(1), peer(3), peer(4)),
        "transitions": (
            Transition(120.0, "view_installed", "nodes 1, 3, 4 joined", "1.1a7", False),
            Transition(119.9, "quorum_gained", "quorate: 4 of 4", "1.1a8", True),
        ),
    }
    values.update(kw)
    return NodeStatus(**values)  # type: ignore[arg-type]


QDEVICE_VOTING = QdeviceInfo(True, True, True, 1, "ffsplit", "10.0.0.9:5403", "connected")
QDEVICE_NACK = QdeviceInfo(True, True, False, 1, "ffsplit", "10.0.0.9:5403", "connected")

STATES = {
    "quorate": base(),
    "not_quorate": base(
        members=(2, 4),
        quorate=False,
        counted=(2, 4),
        total_votes=2,
        flags=(),
        why="not quorate: 2 of 4 expected votes present, quorum is 3",
        peers=(peer(1, member=False), peer(3, member=False), peer(4)),
    ),
    "qdevice_ack": base(
        config_version=7,
        members=(1, 2),
        counted=(1, 2),
        basis="settled",
        basis_why="device ACK for ring 1.1a8",
        expected_votes=3,
        highest_expected=3,
        total_votes=3,
        quorum=2,
        flags=("Qdevice", "Quorate"),
        qdevice=QDEVICE_VOTING,
        peers=(peer(1),),
    ),
    "qdevice_nack": base(
        config_version=7,
        members=(2,),
        counted=(2,),
        quorate=False,
        expected_votes=3,
        highest_expected=3,
        total_votes=1,
        quorum=2,
        flags=("Qdevice",),
        why="not quorate: 1 of 3 expected votes present, quorum is 2",
        qdevice=QDEVICE_NACK,
        peers=(peer(1, member=False),),
    ),
    "two_node_wait_for_all": base(
        config_version=None,
        members=(2,),
        counted=(2,),
        quorate=False,
        expected_votes=2,
        highest_expected=2,
        total_votes=1,
        quorum=1,
        flags=("TwoNode", "WaitForAll", "WaitForAllStatus"),
        why="wait_for_all: not all nodes seen together yet (missing: [1])",
        peers=(peer(1, member=False, missing_since_s=None, last_heartbeat_s=None),),
        transitions=(),
    ),
    "lms_atb": base(
        members=(1, 2),
        counted=(1, 2),
        expected_votes=2,
        highest_expected=4,
        total_votes=2,
        quorum=2,
        flags=("AutoTieBreaker", "LastManStanding", "Quorate", "WaitForAll"),
        peers=(peer(1), peer(3, member=False), peer(4, member=False)),
    ),
    "not_hearing": base(
        counted=(2, 4),
        quorate=False,
        total_votes=2,
        flags=(),
        why="not quorate: 2 of 4 expected votes present, quorum is 3",
        basis_why="not hearing [1, 3]",
        peers=(peer(1, last_heartbeat_s=9.5), peer(3, last_heartbeat_s=9.5), peer(4)),
    ),
}


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("VOTEMESH_WRITE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


@pytest.mark.parametrize("state", sorted(STATES))
def test_status_text_matches_golden(state: str) -> None:
    """`votemesh status` (hex ids, addresses) in every state matches its golden file."""
    check(f"status_{state}.txt", status_text(STATES[state], DATE))


def test_status_decimal_ids_and_nodes_golden() -> None:
    """`status --decimal` and `votemesh nodes` (decimal ids, names; corosync-quorumtool -l)."""
    check("status_qdevice_ack_decimal.txt", status_text(STATES["qdevice_ack"], DATE, False))
    check("nodes_quorate.txt", nodes_text(STATES["quorate"]))
    check("nodes_qdevice_nack.txt", nodes_text(STATES["qdevice_nack"]))


@pytest.mark.parametrize(
    "state", ["quorate", "not_quorate", "qdevice_nack", "two_node_wait_for_all", "not_hearing"]
)
def test_explain_golden(state: str) -> None:
    """`votemesh explain`: verdict, rule, what quorum counts and why (design §3.4: members of the
    view not heard are shown as uncounted), who is missing since when, history."""
    check(f"explain_{state}.txt", explain_text(STATES[state]))


def test_printf_rules_hold_line_by_line() -> None:
    """The rules themselves, independent of the golden files: value column 19, the Quorum line's
    endings, flag order and trailing space, 11-column cells, the pseudo-row."""
    quorate = status_text(STATES["quorate"], DATE).splitlines()
    assert "Quorum:           3  " in quorate
    assert "Flags:            Quorate " in quorate
    assert "Ring ID:          1.1a8" in quorate
    assert "Node ID:          0x00000002" in quorate
    assert "Config Version:   3" in quorate
    labels = [ln for ln in quorate if ":" in ln and not ln.startswith("0x")]
    assert all(ln[17] == " " and ln[18] != " " for ln in labels), labels
    assert "    Nodeid      Votes Name" in quorate
    assert "0x00000002          1 192.168.15.92 (local)" in quorate
    blocked = status_text(STATES["not_quorate"], DATE).splitlines()
    assert "Quorum:           3 Activity blocked" in blocked
    assert "Flags:            " in blocked
    wfa = status_text(STATES["two_node_wait_for_all"], DATE).splitlines()
    assert "Flags:            2Node WaitForAll " in wfa
    assert "Config Version:   -1" in wfa
    lms = status_text(STATES["lms_atb"], DATE).splitlines()
    assert "Flags:            Quorate WaitForAll LastManStanding AutoTieBreaker " in lms
    ack = status_text(STATES["qdevice_ack"], DATE).splitlines()
    assert "    Nodeid      Votes    Qdevice Name" in ack
    assert "0x00000002          1    A,V,NMW 192.168.15.92 (local)" in ack
    assert ack[-1] == "0x00000000          1            Qdevice"
    nack = status_text(STATES["qdevice_nack"], DATE).splitlines()
    assert "0x00000002          1   A,NV,NMW 192.168.15.92 (local)" in nack
    assert nack[-1] == "0x00000000          0            Qdevice (votes 1)"
    decimal = status_text(STATES["qdevice_ack"], DATE, hex_ids=False).splitlines()
    assert decimal[-1] == "         0          1            Qdevice"


def test_rows_follow_addresses_not_ids() -> None:
    """Rows are ordered by address (corosync's default `-o a`): 10.0.0.10 after 10.0.0.9."""
    st = base(
        members=(1, 2),
        addresses=("10.0.0.10:5407",),
        peers=(peer(1, addresses=("10.0.0.9:5407",)),),
    )
    rows = status_text(st, DATE).splitlines()[-2:]
    assert rows == ["0x00000001          1 10.0.0.9", "0x00000002          1 10.0.0.10 (local)"]
    assert replace(st, members=(2,)).members == (2,)
