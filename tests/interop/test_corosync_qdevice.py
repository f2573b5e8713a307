"""Real corosync clusters use a qnetd: Debian's corosync + corosync-qdevice in a namespace lab.

Each scenario runs once against Debian's corosync-qnetd and once against ours (skipped until
`votemesh-qnetd run` exists). Every node and the qnetd get their own network namespace on a
bridge the test creates, with no route out; certificates come from the qnetd's own tooling.
Splits are iptables DROP rules between nodes only, so both halves keep reaching the qnetd.

The parser of `corosync-quorumtool -s` is pinned on captured output (no root needed).

What is asserted, and how: quorumtool snapshots must show each side's membership (one agreed ring
id per side), the winners Quorate with the device vote, the losers inquorate without it, and that
picture must hold for a while; corosync's own log must show that the winners never left the
primary component during the split and that every loser did.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from votemesh_lab import corosync, netns
from votemesh_lab.corosync import (
    COROSYNC_PRIVATE_DIRS,
    CorosyncCluster,
    Expectation,
    QdeviceConfig,
    QuorumtoolParseError,
    all_of,
    inquorate_without_device,
    parse_quorumtool,
    quorate_with_device,
    sides,
    votes,
)
from votemesh_lab.netns import Lab, LabFactory
from votemesh_lab.qnetd import IMPLEMENTATIONS, DebianQnetdInNetns, QnetdUnderTest

RecordProperty = Callable[[str, object], None]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network and mount namespaces, iptables inside them"
    return netns.missing_reason() or corosync.missing_reason()


needs_lab = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))

#: Every check must hold this long once met: more than one qdevice vote cast (every 2.5 s with
#: the lab's 5 s device timeout) and one qnetd decision round, so a flapping vote shows up.
SPLIT_HOLD = 4.0
HEAL_HOLD = 3.0
#: Deadlines: a lab split settles in about 2.5 s (token 1 s + consensus 1.2 s + a vote round).
SETTLE_TIMEOUT = 30.0


@pytest.fixture(params=IMPLEMENTATIONS, ids=[impl.name for impl in IMPLEMENTATIONS])
def qnetd_impl(request: pytest.FixtureRequest) -> type[QnetdUnderTest]:
    """The qnetd implementation under test; skipped when it cannot run here."""
    impl: type[QnetdUnderTest] = request.param
    reason = impl.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return impl


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[LabFactory]:
    """Labs for one test; every namespace and process is gone after it, pass or fail."""
    with LabFactory(tmp_path) as factory:
        yield factory


@dataclass
class QuorumLab:
    """A running qnetd and cluster in one lab, with the timings measured so far."""

    lab: Lab
    qnetd: QnetdUnderTest
    cluster: CorosyncCluster
    timings: dict[str, float] = field(default_factory=dict)
    quorate_side: list[int] = field(default_factory=list)
    """Node ids that kept quorum in the last split."""

    def node_names(self, nodeids: Sequence[int]) -> list[str]:
        """Host names of node ids."""
        return [self.cluster.name_of(i) for i in nodeids]

    def healthy(self) -> Expectation:
        """One membership of every node, all quorate with the device, every vote counted."""
        ids = sorted(self.cluster.nodeids.values())
        assert self.cluster.qdevice is not None
        device_votes = 1 if self.cluster.qdevice.algorithm == "ffsplit" else len(ids) - 1
        every_vote = len(ids) + device_votes
        return all_of(
            sides(self.cluster, [ids]),
            quorate_with_device(self.cluster, ids),
            votes(self.cluster, ids, total=every_vote, expected=every_vote),
        )

    def wait_healthy(self, phase: str) -> None:
        """Wait until healthy and record how long it took under `phase`."""
        self.timings[phase], _ = self.cluster.wait_for(
            self.healthy(), timeout=SETTLE_TIMEOUT, what=f"{phase}: healthy", hold=HEAL_HOLD
        )

    def split(self, phase: str, groups: Sequence[Sequence[int]], winners: Sequence[int]) -> None:
        """Partition the nodes into `groups`; only `winners` keep quorum, and never lose it."""
        losers = [i for group in groups for i in group if i not in winners]
        self.quorate_side = list(winners)
        marks = self.cluster.log_marks()
        self.lab.partition(*[self.node_names(group) for group in groups])
        self.timings[phase], _ = self.cluster.wait_for(
            all_of(
                sides(self.cluster, groups),
                quorate_with_device(self.cluster, winners),
                inquorate_without_device(self.cluster, losers),
            ),
            timeout=SETTLE_TIMEOUT,
            what=f"{phase}: {groups}, quorate {list(winners)}",
            hold=SPLIT_HOLD,
        )
        assert sorted(self.cluster.lost_quorum_since(marks)) == sorted(self.node_names(losers))

    def heal(self, phase: str) -> None:
        """Remove the partition; everyone is quorate again, the quorate side never lost it."""
        marks = self.cluster.log_marks()
        self.lab.heal()
        self.wait_healthy(phase)
        keeping = set(self.node_names(self.quorate_side))
        assert keeping.isdisjoint(self.cluster.lost_quorum_since(marks))

    def report(self, record_property: RecordProperty) -> None:
        """Timings into the junit properties and stdout (shown with -s or -rP)."""
        for phase, seconds in self.timings.items():
            record_property(f"{self.qnetd.name}:{phase}", round(seconds, 2))
        print(
            f"\n[{self.qnetd.name} {self.cluster.cluster_name}] "
            + ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in self.timings.items())
        )


def start_quorum_lab(
    lab_factory: LabFactory,
    impl: type[QnetdUnderTest],
    workdir: Path,
    *,
    cluster_name: str,
    nodes: int,
    algorithm: str,
) -> QuorumLab:
    """A lab with a qnetd host and `nodes` corosync nodes using it; waits until healthy."""
    started = time.monotonic()
    names = [f"n{i}" for i in range(1, nodes + 1)]
    lab = lab_factory(["qnetd", *names], private_dirs=COROSYNC_PRIVATE_DIRS)
    qnetd = impl(workdir / f"qnetd-{impl.name}")
    qnetd.start(lab["qnetd"])
    credentials = qnetd.client_credentials(cluster_name)
    device = QdeviceConfig(lab["qnetd"].address, qnetd.port, algorithm, tie_breaker="lowest")
    cluster = CorosyncCluster([lab[name] for name in names], cluster_name, device)
    cluster.configure(credentials)
    setup = time.monotonic() - started
    cluster.start()
    running = QuorumLab(lab, qnetd, cluster, {"setup": setup})
    running.wait_healthy("start")
    return running


@pytest.mark.interop
@pytest.mark.root
@needs_lab
@pytest.mark.timeout(120)
def test_two_nodes_ffsplit_tie_breaker_side_keeps_quorum(
    lab_factory: LabFactory,
    qnetd_impl: type[QnetdUnderTest],
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    """2 nodes + qnetd (ffsplit, lowest): both Quorate with the Qdevice vote (3/3 votes); split
    1|1 with both reaching qnetd: node 1 stays quorate, node 2 loses quorum; heal: both again."""
    run = start_quorum_lab(
        lab_factory, qnetd_impl, tmp_path, cluster_name="vmlab2", nodes=2, algorithm="ffsplit"
    )
    run.split("split 1|1", [[1], [2]], winners=[1])
    run.heal("heal")
    run.report(record_property)


@pytest.mark.interop
@pytest.mark.root
@needs_lab
@pytest.mark.timeout(150)
def test_four_nodes_ffsplit_half_with_lowest_node_keeps_quorum(
    lab_factory: LabFactory,
    qnetd_impl: type[QnetdUnderTest],
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    """4 nodes + qnetd (ffsplit, lowest): all Quorate with the Qdevice vote (5/5 votes); split
    2|2: {1,2} stays quorate, {3,4} lose quorum; heal: all quorate again."""
    run = start_quorum_lab(
        lab_factory, qnetd_impl, tmp_path, cluster_name="vmlab4", nodes=4, algorithm="ffsplit"
    )
    run.split("split 2|2", [[1, 2], [3, 4]], winners=[1, 2])
    run.heal("heal")
    run.report(record_property)


@pytest.mark.interop
@pytest.mark.root
@needs_lab
@pytest.mark.timeout(150)
def test_three_nodes_lms_majority_keeps_quorum_and_last_man_stands(
    lab_factory: LabFactory,
    qnetd_impl: type[QnetdUnderTest],
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    """3 nodes + qnetd (lms, 2 device votes): all Quorate (5/5 votes); isolating node 3 keeps
    {1,2} quorate and node 3 not; after healing, a 1|1|1 split leaves node 1 (the tie-breaker)
    quorate on its own thanks to the device's 2 votes, nodes 2 and 3 not; heal: all again."""
    run = start_quorum_lab(
        lab_factory, qnetd_impl, tmp_path, cluster_name="vmlab3", nodes=3, algorithm="lms"
    )
    run.split("split 2|1", [[1, 2], [3]], winners=[1, 2])
    run.heal("heal 2|1")
    run.split("split 1|1|1", [[1], [2], [3]], winners=[1])
    run.heal("heal 1|1|1")
    run.report(record_property)


# Captured from Debian's corosync-quorumtool 3.1.7 -s in the lab (2 nodes + ffsplit qnetd).
HEALTHY_NODE_1 = """\
Quorum information
------------------
Date:             Wed Nov 25 03:11:09 2026
Quorum provider:  corosync_votequorum
Nodes:            2
Node ID:          1
Ring ID:          1.9
Quorate:          Yes

Votequorum information
----------------------
Expected votes:   3
Highest expected: 3
Total votes:      3
Quorum:           2  
Flags:            Quorate Qdevice 

Membership information
----------------------
    Nodeid      Votes    Qdevice Name
         1          1    A,V,NMW n1 (local)
         2          1    A,V,NMW n2
         0          1            Qdevice
"""  # noqa: W291 - the tool's trailing blanks, verbatim

SPLIT_LOSER_NODE_2 = """\
Quorum information
------------------
Date:             Wed Nov 25 03:11:18 2026
Quorum provider:  corosync_votequorum
Nodes:            1
Node ID:          2
Ring ID:          2.d
Quorate:          No

Votequorum information
----------------------
Expected votes:   3
Highest expected: 3
Total votes:      1
Quorum:           2 Activity blocked
Flags:            Qdevice 

Membership information
----------------------
    Nodeid      Votes    Qdevice Name
         2          1   A,NV,NMW n2 (local)
         0          0            Qdevice (votes 1)
"""  # noqa: W291


class DebianQnetdTlsOff(DebianQnetdInNetns):
    """Debian's corosync-qnetd with `-s off`: it answers PREINIT with TLS_SUPPORTED = 0."""

    name = "debian-tls-off"

    def _command(self) -> list[str]:
        return [*super()._command(), "-s", "off"]


@pytest.mark.interop
@pytest.mark.root
@needs_lab
@pytest.mark.timeout(120)
def test_debian_qdevice_with_tls_on_falls_back_to_plain_text(
    lab_factory: LabFactory, tmp_path: Path, record_property: RecordProperty
) -> None:
    """The reference behaviour our agent deliberately does not copy (issue 7 item 3, docs/agent.md
    "qdevice TLS"): Debian's corosync-qdevice with `tls: on` (its default) and a qnetd that
    offers no TLS connects in plain text and counts that qnetd's vote: both nodes Quorate with
    the device vote (3 of 3), and the qnetd lists both clients with TLS inactive and an ACK."""
    if (reason := DebianQnetdTlsOff.unavailable_reason()) is not None:
        pytest.skip(reason)
    run = start_quorum_lab(
        lab_factory, DebianQnetdTlsOff, tmp_path, cluster_name="vmplain", nodes=2,
        algorithm="ffsplit",
    )  # fmt: skip
    assert run.cluster.qdevice is not None
    assert run.cluster.qdevice.tls == "on"
    listing = run.lab["qnetd"].run(["corosync-qnetd-tool", "-l", "-v"]).stdout
    record_property("corosync-qnetd-tool -l -v", listing)
    assert len(re.findall(r"TLS active:\s+No\n", listing)) == 2, listing
    assert len(re.findall(r"Vote:\s+.*\(ACK\)\n", listing)) == 2, listing
    run.report(record_property)


def test_quorumtool_parser_reads_a_quorate_node_with_the_device_vote() -> None:
    """A healthy node: quorate, 3/3 votes, both members with A,V,NMW, device row voting 1."""
    status = parse_quorumtool(HEALTHY_NODE_1)
    assert (status.node_id, status.ring_id, status.quorate) == (1, "1.9", True)
    assert (status.total_votes, status.expected_votes, status.quorum) == (3, 3, 2)
    assert status.flags == {"Quorate", "Qdevice"}
    assert status.member_ids == {1, 2}
    assert [m.qdevice_flags for m in status.members] == [{"A", "V", "NMW"}] * 2
    assert [(m.name, m.local) for m in status.members] == [("n1", True), ("n2", False)]
    assert status.qdevice_votes == 1
    assert status.has_qdevice_vote


def test_quorumtool_parser_reads_an_inquorate_node_the_device_refuses() -> None:
    """The losing side of a split: not quorate, 1/3 votes, NV, device row 0 ("votes 1")."""
    status = parse_quorumtool(SPLIT_LOSER_NODE_2)
    assert (status.node_id, status.quorate, status.quorum) == (2, False, 2)
    assert status.member_ids == {2}
    assert status.qdevice_votes == 0
    assert not status.has_qdevice_vote


def test_quorumtool_parser_rejects_output_without_the_quorum_fields() -> None:
    """Anything but quorumtool's report (e.g. "Cannot initialize QUORUM service") is an error."""
    with pytest.raises(QuorumtoolParseError):
        parse_quorumtool("Cannot initialize QUORUM service\n")
