"""Zeroconf discovery: TXT encoding and validation, the peer decisions, and real multicast.

The first half is pure (no sockets): `encode_txt` / `peer_from_txt` round trips and garbage, and
`Discovery.handle_announcement` / `handle_goodbye` driven directly. The second half runs one
`tests.agent.discovery_probe` process per network namespace on a lab bridge (root only) and
reads the JSON lines they print.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs
from votemesh_lab.netns import (
    Host,
    LabError,
    LabFactory,
    NotYetError,
    TrackedProcess,
    missing_reason,
    wait_until,
)
from zeroconf import ServiceStateChange, Zeroconf

from agent.config import AgentConfig, LinkConfig
from agent.runtime.discovery import (
    MAX_PEERS,
    SERVICE_TYPE,
    DiscoveredPeer,
    Discovery,
    DiscoveryError,
    encode_txt,
    instance_name,
    parse_links,
    parse_txt,
    peer_from_txt,
)
from proto.errors import DecodeError

LINK0 = (LinkConfig(0, "10.0.0.1", 5407),)
ANY_V4 = "0.0.0.0"  # noqa: S104 (a link address under test, never bound)


def txt(**fields: str) -> bytes:
    """TXT rdata from key=value strings, in order."""
    out = b""
    for key, value in fields.items():
        item = f"{key}={value}".encode()
        out += bytes([len(item)]) + item
    return out


def good(**overrides: str) -> bytes:
    """A valid announcement of node 2 in cluster "alpha", with some fields replaced."""
    fields = {"v": "1", "cluster": "alpha", "node_id": "2", "name": "n2"}
    fields["links"] = "0=10.0.0.2:5407,1=[fd00::2]:5408"
    return txt(**{**fields, **overrides})


def config(node_id: int = 1, cluster: str = "alpha") -> AgentConfig:
    """A node of `cluster` with one link."""
    return AgentConfig(cluster_name=cluster, node_id=node_id, node_name=f"n{node_id}", links=LINK0)


class Recorder:
    """A Discovery with its callbacks recorded."""

    def __init__(self, cfg: AgentConfig | None = None) -> None:
        self.peers: list[DiscoveredPeer] = []
        self.gone: list[int] = []
        self.discovery = Discovery(cfg or config(), self.peers.append, self.gone.append)


# ---------------------------------------------------------------- TXT encode / parse
def test_valid_announcement_parses() -> None:
    """A well-formed TXT yields cluster, node id, name and addresses sorted by link index."""
    peer = peer_from_txt(good(links="1=[FD00:0::2]:5408,0=10.0.0.2:5407"))
    assert peer == DiscoveredPeer("alpha", 2, "n2", ((0, "10.0.0.2", 5407), (1, "fd00::2", 5408)))


def test_encode_is_what_the_brief_names() -> None:
    """Our own TXT has exactly the keys v, cluster, node_id, name, links, and no secret."""
    links = (LinkConfig(1, "fd00::1", 5408), LinkConfig(0, "10.0.0.1", 5407))
    raw = encode_txt("alpha", 7, "node-seven", links)
    assert parse_txt(raw) == {
        "v": "1",
        "cluster": "alpha",
        "node_id": "7",
        "name": "node-seven",
        "links": "0=10.0.0.1:5407,1=[fd00::1]:5408",
    }


links_strategy = st.lists(
    st.tuples(
        st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).filter(
            lambda ip: not (ip.is_unspecified or ip.is_multicast)
        ),
        st.integers(1, 65535),
    ),
    min_size=1,
    max_size=4,
)


@given(
    cluster=st.text(st.characters(codec="utf-8"), min_size=1, max_size=60),
    node_id=st.integers(1, 0xFFFFFFFF),
    name=st.text(st.characters(codec="utf-8"), max_size=30),
    links=links_strategy,
)
def test_encode_parse_round_trip(
    cluster: str, node_id: int, name: str, links: list[tuple[Any, int]]
) -> None:
    """Any cluster name the config accepts round-trips exactly (or, beyond 255 bytes of UTF-8,
    is refused at start with DiscoveryError); the name comes back printable."""
    configs = tuple(LinkConfig(i, str(ip), port) for i, (ip, port) in enumerate(links))
    if len(f"cluster={cluster}".encode()) > 255:
        with pytest.raises(DiscoveryError):
            encode_txt(cluster, node_id, name, configs)
        return
    peer = peer_from_txt(encode_txt(cluster, node_id, name, configs))
    expected = tuple((i, str(ip), port) for i, (ip, port) in enumerate(links))
    shown = "".join(c if c.isprintable() else "?" for c in name)
    assert peer == DiscoveredPeer(cluster, node_id, shown, expected)


def test_encode_leaves_out_links_peers_cannot_use() -> None:
    """Unspecified addresses and port 0 are not announced (they are useless to a peer)."""
    links = (LinkConfig(0, ANY_V4), LinkConfig(1, "10.0.0.1", 0), LinkConfig(2, "10.0.0.1"))
    assert parse_txt(encode_txt("alpha", 1, "", links))["links"] == "2=10.0.0.1:5407"


def test_encode_cuts_long_names_at_a_character_boundary() -> None:
    """A node name over 64 bytes is shortened, never split inside a UTF-8 character."""
    peer = peer_from_txt(encode_txt("alpha", 1, "é" * 40, LINK0))
    assert peer.node_name == "é" * 32


def test_encode_refuses_what_does_not_fit_a_txt_string() -> None:
    """Links that overflow one 255-byte TXT string raise DiscoveryError saying what to do."""
    links = tuple(LinkConfig(i, f"fd00:1111:2222:3333:4444:5555:6666:{i + 1}") for i in range(8))
    with pytest.raises(DiscoveryError, match="discovery = false"):
        encode_txt("alpha", 1, "", links)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x10v=1", "bad_txt"),  # length beyond the end
        (good()[:-3] + b"\xff\xfe\xfd", "bad_txt"),  # value not UTF-8
        (txt(v="1", cluster="alpha", node_id="2", name="n2"), "bad_txt"),  # no links
        (txt(cluster="alpha", node_id="2", name="n2", links="0=10.0.0.2:5407"), "bad_txt"),
        (good(v="2"), "bad_version"),
        (b"", "bad_txt"),
        (b"\x07node_id" + good(), "bad_txt"),  # first node_id has no value: it wins
        (good(cluster=""), "bad_txt"),
        (good(cluster="a" * 65), "bad_txt"),
        (good(name="n" * 65), "bad_txt"),
        (good(name="line\nbreak"), "bad_txt"),
        (good(node_id="0"), "bad_txt"),
        (good(node_id="02"), "bad_txt"),
        (good(node_id="+2"), "bad_txt"),
        (good(node_id=" 2"), "bad_txt"),
        (good(node_id="2_0"), "bad_txt"),
        (good(node_id="4294967296"), "bad_txt"),
        (good(node_id="٣"), "bad_txt"),  # an Arabic-Indic digit: int() would take it
        (good(links=""), "bad_txt"),
        (good(links="0=10.0.0.2"), "bad_txt"),
        (good(links="0=10.0.0.2:0"), "bad_txt"),
        (good(links="0=10.0.0.2:65536"), "bad_txt"),
        (good(links="0=10.0.0.2:05407"), "bad_txt"),
        (good(links="8=10.0.0.2:5407"), "bad_txt"),
        (good(links="0=10.0.0.2:5407,0=10.0.0.3:5407"), "bad_txt"),
        (good(links="0=fd00::2:5407"), "bad_txt"),  # IPv6 without brackets
        (good(links="0=[10.0.0.2]:5407"), "bad_txt"),  # IPv4 in brackets
        (good(links="0=[fe80::1%eth0]:5407"), "bad_txt"),  # scoped: useless to a peer
        (good(links="0=0.0.0.0:5407"), "bad_txt"),
        (good(links="0=224.0.0.251:5353"), "bad_txt"),
        (good(links="0=010.0.0.2:5407"), "bad_txt"),
        (good(links="0=example.com:5407"), "bad_txt"),
        (good(links=",".join(f"{i}=10.0.0.{i}:1" for i in range(9))), "bad_txt"),
    ],
)
def test_bad_announcements_raise_decode_error(raw: bytes, reason: str) -> None:
    """Every malformed, missing, overlong or out-of-range field is a DecodeError with a reason."""
    with pytest.raises(DecodeError) as caught:
        peer_from_txt(raw)
    assert caught.value.reason == reason


def test_txt_keys_are_case_insensitive_and_extra_keys_ignored() -> None:
    """RFC 6763 §6: keys compare case-insensitively, the first wins, unknown keys are ignored."""
    raw = txt(V="1", CLUSTER="alpha", Node_Id="2", name="n2", links="0=10.0.0.2:1", extra="x")
    assert peer_from_txt(raw + txt(node_id="3")).node_id == 2


@given(st.binary(max_size=600))
def test_garbage_txt_only_ever_raises_decode_error(raw: bytes) -> None:
    """Random bytes either parse to a peer or raise DecodeError; nothing else escapes."""
    reason = None
    try:
        peer_from_txt(raw)
    except DecodeError as exc:
        reason = exc.reason
    assert reason in {None, "bad_txt", "bad_version"}


@given(
    st.dictionaries(
        st.sampled_from(["v", "cluster", "node_id", "name", "links", "V", "x"]),
        st.one_of(st.text(max_size=80), st.sampled_from(["1", "alpha", "2", "0=10.0.0.2:1"])),
    )
)
def test_garbage_fields_never_raise_out_of_the_callback_path(fields: dict[str, str]) -> None:
    """Near-valid TXT fed to handle_announcement either reports a peer or is counted: no raise."""
    rec = Recorder()
    raw = b"".join(
        bytes([len(i)]) + i for i in (f"{k}={v}".encode()[:255] for k, v in fields.items())
    )
    rec.discovery.handle_announcement("x._votemesh._udp.local.", raw)
    assert len(rec.peers) + sum(rec.discovery.counters.values()) == 1


@given(st.binary(max_size=300))
def test_handle_announcement_never_raises_on_bytes(raw: bytes) -> None:
    """Arbitrary TXT bytes into the decision path: counted or reported, never raised."""
    rec = Recorder()
    rec.discovery.handle_announcement("x._votemesh._udp.local.", raw)
    assert len(rec.peers) + sum(rec.discovery.counters.values()) == 1


def test_links_parser_is_the_config_shape() -> None:
    """parse_links gives (link index, address, port) tuples, as PeerConfig.addresses holds."""
    assert parse_links("2=[::1]:9,0=127.0.0.1:1") == ((0, "127.0.0.1", 1), (2, "::1", 9))


def test_instance_names_are_valid_labels_unique_per_node() -> None:
    """Simple names read `<cluster>-<id>`; awkward or long ones get a digest and stay <= 63."""
    assert instance_name("alpha", 3) == f"alpha-3.{SERVICE_TYPE}"
    long_a, long_b = "x" * 60 + "a", "x" * 60 + "b"
    names = {instance_name(c, 4294967295) for c in (long_a, long_b, "a.b c", "a_b_c")}
    assert len(names) == 4
    assert all(len(n.removesuffix(f".{SERVICE_TYPE}").encode()) <= 63 for n in names)


# ---------------------------------------------------------------- decisions
def test_member_of_our_cluster_is_reported_once_until_it_changes() -> None:
    """on_peer fires for a new member and for changed addresses, not for repeats."""
    rec = Recorder()
    rec.discovery.handle_announcement("alpha-2._votemesh._udp.local.", good())
    rec.discovery.handle_announcement("alpha-2._votemesh._udp.local.", good())
    rec.discovery.handle_announcement("alpha-2._votemesh._udp.local.", good(links="0=10.0.0.9:1"))
    assert [p.addresses for p in rec.peers] == [
        ((0, "10.0.0.2", 5407), (1, "fd00::2", 5408)),
        ((0, "10.0.0.9", 1),),
    ]


def test_foreign_cluster_self_and_duplicate_id_are_dropped_and_counted() -> None:
    """Other clusters, our own service and a second node claiming our id are never reported."""
    rec = Recorder(config(node_id=2))
    rec.discovery.handle_announcement("beta-2._votemesh._udp.local.", good(cluster="beta"))
    rec.discovery.handle_announcement(rec.discovery.instance, good())
    rec.discovery.handle_announcement("impostor._votemesh._udp.local.", good())
    assert rec.peers == []
    assert rec.discovery.counters == {"foreign_cluster": 1, "self": 1, "duplicate_node_id": 1}


def test_goodbye_reports_gone_only_for_members_we_reported() -> None:
    """on_gone(node id) after the instance that announced it unregisters; unknown ones: nothing."""
    rec = Recorder()
    rec.discovery.handle_goodbye("alpha-2._votemesh._udp.local.")
    rec.discovery.handle_announcement("alpha-2._votemesh._udp.local.", good())
    rec.discovery.handle_announcement("beta-2._votemesh._udp.local.", good(cluster="beta"))
    rec.discovery.handle_goodbye("beta-2._votemesh._udp.local.")
    rec.discovery.handle_goodbye("alpha-2._votemesh._udp.local.")
    rec.discovery.handle_goodbye("alpha-2._votemesh._udp.local.")
    assert rec.gone == [2]


def test_goodbye_of_one_instance_keeps_a_node_another_instance_announces() -> None:
    """If two instances announce the same node id, only the last goodbye reports it gone."""
    rec = Recorder()
    rec.discovery.handle_announcement("a._votemesh._udp.local.", good())
    rec.discovery.handle_announcement("b._votemesh._udp.local.", good(links="0=10.0.0.7:1"))
    rec.discovery.handle_goodbye("a._votemesh._udp.local.")
    assert rec.gone == []
    rec.discovery.handle_goodbye("b._votemesh._udp.local.")
    assert rec.gone == [2]


def test_failing_callbacks_are_counted_not_raised() -> None:
    """An exception in on_peer/on_gone is counted as callback_error and never reaches zeroconf."""

    def boom(_: object) -> None:
        raise RuntimeError("caller bug")

    discovery = Discovery(config(), boom, boom)
    with capture_logs():
        discovery.handle_announcement("alpha-2._votemesh._udp.local.", good())
        discovery.handle_goodbye("alpha-2._votemesh._udp.local.")
    assert discovery.counters == {"callback_error": 2}


def test_zeroconf_callback_never_raises() -> None:
    """Whatever goes wrong inside the browser callback is counted; zeroconf never sees it."""
    rec = Recorder()
    broken = cast(Zeroconf, object())  # every cache read fails
    with capture_logs():
        for change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            rec.discovery._on_service_state_change(
                zeroconf=broken,
                service_type=SERVICE_TYPE,
                name="x." + SERVICE_TYPE,
                state_change=change,
            )
        rec.discovery._on_service_state_change(
            zeroconf=broken,
            service_type=SERVICE_TYPE,
            name="x." + SERVICE_TYPE,
            state_change=ServiceStateChange.Removed,
        )
    assert rec.discovery.counters == {"callback_error": 2}


def test_remembered_instances_are_bounded() -> None:
    """Beyond MAX_PEERS instances of our cluster, new ones are dropped as too_many_peers."""
    rec = Recorder()
    with capture_logs():
        for node in range(2, MAX_PEERS + 3):
            raw = good(node_id=str(node))
            rec.discovery.handle_announcement(f"alpha-{node}.{SERVICE_TYPE}", raw)
    assert len(rec.peers) == MAX_PEERS
    assert rec.discovery.counters == {"too_many_peers": 1}


def test_drops_are_debug_logged_once_per_reason_per_minute() -> None:
    """Each drop reason logs one debug line, then stays quiet for 60 s; counting never stops."""
    rec = Recorder()
    now = [100.0]
    rec.discovery.clock = lambda: now[0]
    with capture_logs() as logs:
        for step in (0.0, 1.0, 59.0, 60.5):
            now[0] = 100.0 + step
            rec.discovery.handle_announcement("x._votemesh._udp.local.", b"\x05garbage")
            rec.discovery.handle_announcement("y._votemesh._udp.local.", good(cluster="beta"))
    lines = [(e["reason"], e["total"]) for e in logs if e["event"] == "announcement dropped"]
    assert lines == [("bad_txt", 1), ("foreign_cluster", 1), ("bad_txt", 4), ("foreign_cluster", 4)]
    assert all(e["log_level"] == "debug" for e in logs)


@pytest.mark.asyncio
async def test_start_without_an_announceable_link_says_what_to_do() -> None:
    """A node whose links have no concrete address cannot be announced: one-line DiscoveryError."""
    cfg = AgentConfig(cluster_name="alpha", node_id=1, links=(LinkConfig(0, ANY_V4),))
    with pytest.raises(DiscoveryError, match="set discovery = false"):
        await Discovery(cfg, lambda _: None).start()


# ---------------------------------------------------------------- real multicast (root)
REPO = Path(__file__).resolve().parents[2]
DEADLINE = 15.0  # seconds: discovery takes ~1.2 s (probing); generous for a loaded CI machine
needs_lab = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[LabFactory]:
    """Labs under tmp_path, all closed (and checked for leftover namespaces) afterwards."""
    with LabFactory(tmp_path) as factory:
        yield factory


def start_probe(
    host: Host, cluster: str, node_id: int, links: list[str], label: str = "probe"
) -> TrackedProcess:
    """Run a discovery probe in `host`; its JSON lines land in <host root>/<label>.log."""
    # nsenter -m starts the process in "/": PYTHONPATH makes `-m tests...` importable there.
    # -W error: a warning from zeroconf inside the probe fails the test, as in this process.
    args = ["env", f"PYTHONPATH={REPO}", sys.executable, "-W", "error", "-m"]
    args += ["tests.agent.discovery_probe"]
    args += ["--cluster", cluster]
    args += ["--node-id", str(node_id), "--name", host.name]
    for link in links:
        args += ["--link", link]
    return host.start(args, label=label)


def events(probe: TrackedProcess, kind: str | None = None) -> list[dict[str, Any]]:
    """The probe's JSON lines so far (a line still being written is skipped)."""
    if not probe.log_path.exists():
        return []
    out = []
    for line in probe.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if kind is None or event["event"] == kind:
                out.append(event)
    return out


def latest_peers(probe: TrackedProcess) -> dict[int, list[list[Any]]]:
    """node id -> the addresses the probe last reported for it."""
    if not probe.alive():
        raise LabError(f"probe in {probe.host} exited:\n{probe.log_tail()}")
    return {e["node_id"]: e["addresses"] for e in events(probe, "peer")}


def knows(probe: TrackedProcess, expected: dict[int, list[list[Any]]]) -> bool:
    """Wait probe: the probe's latest view of its peers is exactly `expected`."""
    seen = latest_peers(probe)
    if seen != expected:
        raise NotYetError(f"{probe.host} knows {seen}")
    return True


def counter(probe: TrackedProcess, reason: str) -> int:
    """The probe's last printed count for `reason`."""
    printed = events(probe, "counters")
    return int(printed[-1]["counters"].get(reason, 0)) if printed else 0


def said_goodbye(probe: TrackedProcess, node_id: int) -> list[dict[str, Any]] | None:
    """Wait probe: the probe's `gone` lines for `node_id`, or None while there are none."""
    return [e for e in events(probe, "gone") if e["node_id"] == node_id] or None


def counted(probe: TrackedProcess, reason: str, at_least: int) -> bool | None:
    """Wait probe: the probe counted `reason` at least `at_least` times."""
    return counter(probe, reason) >= at_least or None


def has_peer(probe: TrackedProcess, node_id: int) -> bool | None:
    """Wait probe: the probe reported `node_id`."""
    return node_id in latest_peers(probe) or None


def link0(host: Host) -> list[Any]:
    """How a probe reports link 0 of `host`."""
    return [0, host.address, 5407]


@pytest.mark.root
@needs_lab
def test_three_namespaces_discover_each_other_and_hear_goodbyes(lab_factory: LabFactory) -> None:
    """With no static peers each node learns the other two's node ids and link addresses over
    multicast; one that shuts down cleanly (SIGTERM -> close) is reported gone by the others."""
    lab = lab_factory(["n1", "n2", "n3"])
    hosts = [lab["n1"], lab["n2"], lab["n3"]]
    probes = [start_probe(h, "alpha", i, [f"0={h.address}:5407"]) for i, h in enumerate(hosts, 1)]
    for i, probe in enumerate(probes, 1):
        others = {j: [link0(h)] for j, h in enumerate(hosts, 1) if j != i}
        wait_until(partial(knows, probe, others), timeout=DEADLINE, what="discovery")
    for i, probe in enumerate(probes, 1):
        start = events(probe, "starting")[0]["t"]
        delays = {e["node_id"]: round(e["t"] - start, 3) for e in events(probe, "peer")}
        print(f"n{i}: seconds from its start to each peer: {delays}")
        wait_until(partial(counted, probe, "self", 1), timeout=DEADLINE, what="own service seen")
    stopped = time.time()
    probes[2].process.terminate()
    for probe in probes[:2]:
        gone = wait_until(
            partial(said_goodbye, probe, 3),
            timeout=DEADLINE,
            what="goodbye of node 3",
        )
        print(f"{probe.host}: goodbye heard {gone[0]['t'] - stopped:.3f} s after SIGTERM")
    probes[2].process.wait(timeout=DEADLINE)
    assert events(probes[2], "closed")


@pytest.mark.root
@needs_lab
def test_another_cluster_on_the_bridge_is_ignored_and_counted(lab_factory: LabFactory) -> None:
    """A node announcing another cluster name is never reported, and each side counts the other
    as foreign_cluster."""
    lab = lab_factory(["n1", "n2", "n3"])
    n1, n2, n3 = lab["n1"], lab["n2"], lab["n3"]
    alpha = [start_probe(h, "alpha", i, [f"0={h.address}:5407"]) for i, h in ((1, n1), (2, n2))]
    beta = start_probe(n3, "beta", 3, [f"0={n3.address}:5407"])
    wait_until(lambda: knows(alpha[0], {2: [link0(n2)]}), timeout=DEADLINE, what="n1 sees n2")
    wait_until(lambda: knows(alpha[1], {1: [link0(n1)]}), timeout=DEADLINE, what="n2 sees n1")
    for probe, foreign in ((alpha[0], 1), (alpha[1], 1), (beta, 2)):
        wait_until(
            partial(counted, probe, "foreign_cluster", foreign),
            timeout=DEADLINE,
            what=f"{probe.host} counts foreign announcements",
        )
    assert latest_peers(beta) == {}
    assert 3 not in latest_peers(alpha[0])
    assert 3 not in latest_peers(alpha[1])


@pytest.mark.root
@needs_lab
def test_peer_restarted_with_new_addresses_is_reported_again(lab_factory: LabFactory) -> None:
    """A peer killed outright (no goodbye) that comes back with more links (IPv4 and IPv6) is
    reported again with the new addresses; the mixed-family node sees the others too."""
    lab = lab_factory(["n1", "n2", "n3"])
    n1, n2, n3 = lab["n1"], lab["n2"], lab["n3"]
    first = [start_probe(h, "alpha", i, [f"0={h.address}:5407"]) for i, h in ((1, n1), (2, n2))]
    old = start_probe(n3, "alpha", 3, [f"0={n3.address}:5407"])
    for probe in first:
        wait_until(partial(has_peer, probe, 3), timeout=DEADLINE, what="n3")
    old.process.kill()
    old.process.wait(timeout=DEADLINE)
    n3.run(["ip", "addr", "add", "fd00:1::4/64", "dev", "eth0", "nodad"])  # no DAD: usable now
    n3.run(["ip", "addr", "add", "198.18.1.4/24", "dev", "eth0"])
    links = [f"0={n3.address}:5407", "1=[fd00:1::4]:5408", "2=198.18.1.4:5409"]
    new = start_probe(n3, "alpha", 3, links, label="probe-restarted")
    expected = [link0(n3), [1, "fd00:1::4", 5408], [2, "198.18.1.4", 5409]]
    for probe, other in ((first[0], {2: [link0(n2)]}), (first[1], {1: [link0(n1)]})):
        wanted = {**other, 3: expected}
        wait_until(partial(knows, probe, wanted), timeout=DEADLINE, what="new addresses")
    wait_until(
        lambda: knows(new, {1: [link0(n1)], 2: [link0(n2)]}), timeout=DEADLINE, what="n3 again"
    )
    started = events(new, "starting")[0]["t"]
    for probe in (*first, new):
        last = {e["node_id"]: round(e["t"] - started, 3) for e in events(probe, "peer")}
        print(f"{probe.host}: seconds from the restart to its latest news of each peer: {last}")
