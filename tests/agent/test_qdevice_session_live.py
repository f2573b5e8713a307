"""QdeviceSession over real TCP/TLS on 127.0.0.1 against our qnetd and Debian's corosync-qnetd.

Two sessions of a 2-node ffsplit cluster, each run by the test driver (tests/agent/
qdevice_driver.py): both vote with membership {1,2}; after a 1/1 split only node 1 (tie-breaker
lowest) votes; stopping the qnetd process withdraws every vote.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from agent.config import QdeviceConfig
from agent.qdevice_session import QdeviceSession, SessionEvent, VoteChanged
from proto.qnetd_enums import Vote
from proto.qnetd_messages import EchoReply, VoteInfo
from proto.qnetd_options import RingId
from tests.agent.qdevice_driver import QdeviceDriver
from tests.interop.debian_qnetd import DebianQnetd, missing_reason, running_qnetd
from tests.qnetd.our_qnetd import OurQnetd, running_our_qnetd

CLUSTER = "livecluster"
Server = DebianQnetd | OurQnetd
SERVERS = [
    "votemesh",
    pytest.param(
        "debian",
        marks=[
            pytest.mark.root,
            pytest.mark.interop,
            pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
        ],
    ),
]


@pytest.fixture(params=SERVERS)
def qnetd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A running qnetd (TLS on, client certificates required), stopped after the test."""
    if request.param == "debian":
        with running_qnetd(tmp_path / "debian") as debian:
            yield debian
    else:
        with running_our_qnetd(tmp_path / "ours") as ours:
            yield ours


def node_config(server: Server) -> QdeviceConfig:
    """ffsplit, tie-breaker lowest, TLS on with a cluster certificate from `server`'s CA."""
    creds = server.client_credentials(CLUSTER)
    return QdeviceConfig(
        host="127.0.0.1",
        port=server.port,
        ca_pem=str(creds.ca_pem),
        cert_pem=str(creds.cert_pem),
        key_pem=str(creds.key_pem),
        heartbeat_interval=2.0,
    )


def report(driver: QdeviceDriver, ring: tuple[int, int], members: tuple[int, ...]) -> None:
    """What votequorum would tell the node: configured nodes, ring and members, quorum."""
    session = driver.session
    driver.call(lambda now: session.set_config((1, 2), 1, now))
    driver.call(lambda now: session.set_membership(ring, members, now))
    driver.call(lambda now: session.set_quorum(len(members) == 2, members, now))


def votes_for(driver: QdeviceDriver, ring: RingId) -> list[Vote]:
    """The VOTE_INFO votes the driver received for `ring`."""
    return [
        Vote(m.vote)
        for m in driver.received
        if isinstance(m, VoteInfo) and m.ring_id == ring and m.vote is not None
    ]


@pytest.mark.asyncio
async def test_two_node_ffsplit_votes_split_and_qnetd_loss(qnetd: Server) -> None:
    """Both nodes vote with {1,2}; after a 1/1 split only node 1 does; echoes are answered;
    qnetd gone: nobody votes."""
    cfg = node_config(qnetd)
    async with AsyncExitStack() as stack:
        n1, n2 = [
            await stack.enter_async_context(
                QdeviceDriver(QdeviceSession(n, CLUSTER, cfg, rng=random.Random(n)), cfg)
            )
            for n in (1, 2)
        ]
        for driver in (n1, n2):
            report(driver, (1, 8), (1, 2))
        await n1.wait_for(lambda: n1.session.vote and n2.session.vote)
        await n2.settled()
        assert [e.name for e in n1.events + n2.events] == ["connected", "connected"]
        assert n1.tls_versions[0].startswith("TLSv1.")
        assert n2.tls_versions[0].startswith("TLSv1.")

        report(n1, (1, 12), (1,))
        report(n2, (2, 12), (2,))
        await n1.wait_for(lambda: n1.session.vote and Vote.NACK in votes_for(n2, RingId(2, 12)))
        await n2.settled()
        assert not n2.session.vote
        assert votes_for(n1, RingId(1, 12)) == [Vote.ACK]
        assert n2.votes[-2] == VoteChanged(False, "membership change to ring 2.c", (1, 8))
        assert n2.votes[-1].ring is None  # the NACK revoked the ACK held for the old ring

        await n1.wait_for(lambda: any(isinstance(m, EchoReply) for m in n1.received))
        assert n1.session.state == "connected"  # echoes answered, connection kept

        await asyncio.to_thread(qnetd.stop)
        await n1.wait_for(lambda: "connected" not in {n1.session.state, n2.session.state})
        await n2.settled()
        assert not n1.session.vote
        assert not n2.session.vote
        assert n1.votes[-1].vote is False
        assert n1.votes[-1].reason.startswith("qnetd connection lost")
        lost = [e for e in n1.events + n2.events if e.name == "disconnected"]
        assert len(lost) == 2
        assert all(isinstance(e, SessionEvent) for e in lost)
