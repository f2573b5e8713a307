"""Differential fuzzer: the same malformed sequences to corosync-qnetd 3.0.3 and to votemesh-qnetd.

Both servers run on 127.0.0.1 with the same explicit TLS settings (TLS required, client
certificate required), so the comparison never depends on either server's defaults. In CI a
fixed seed and FUZZ_CASES (default 400) cases; `make fuzz` runs more (FUZZ_CASES, FUZZ_SEED);
FUZZ_CASE_SEED=S replays one case. Generator and comparison: tests/interop/qnetd_fuzz.py.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from proto.qnetd_enums import MessageType, OptionType, ReplyErrorCode
from proto.qnetd_messages import EchoReply, QnetdMessage, ServerError
from proto.tlv import pack_header, pack_tlv
from tests.interop.debian_qnetd import ClientCredentials, DebianQnetd, missing_reason
from tests.interop.qnetd_fuzz import (
    CLUSTERS,
    CORRUPTING,
    EXPECTED_DIFFERENCES,
    SENTINEL_SEQ,
    TAIL,
    Case,
    Chunk,
    Difference,
    Observation,
    case_seed,
    explain,
    generate_case,
    run_case,
    triggers,
)
from tests.qnetd.our_qnetd import OurQnetd

pytestmark = [
    pytest.mark.interop,
    pytest.mark.root,
    pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
]
CI_CASES = 400
CI_SEED = 20261207


@dataclass
class Pair:
    """Both servers and, per server, client credentials for every fuzz cluster name."""

    debian: DebianQnetd
    ours: OurQnetd
    debian_creds: dict[str, ClientCredentials]
    our_creds: dict[str, ClientCredentials]
    debian_deaths: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def run(self, case: Case, cut: int | None = None) -> tuple[Observation, Observation]:
        """The case against both servers at once (one connection each)."""
        with ThreadPoolExecutor(2) as pool:
            ref = pool.submit(
                run_case, self.debian.port, self.debian_creds[case.cluster], case, cut
            )
            ours = pool.submit(run_case, self.ours.port, self.our_creds[case.cluster], case, cut)
            return ref.result(), ours.result()

    def compare(self, case: Case) -> Difference | None:
        """Run and compare; restart 3.0.3 when it died or the case may have corrupted it."""
        ref, ours = self.run(case)
        self.outcomes[outcome(ref.events)] += 1
        died = not alive(self.debian.port)
        if died or set(triggers(case)) & set(CORRUPTING):
            log = self.debian.log_path.read_text(errors="replace")[-1500:]
            self.restart_debian()
            if died:
                self.debian_deaths.append(f"case {case.seed}: {log}")
                ref.events.append("corosync-qnetd stopped answering")  # a difference to explain
        return explain(case, ref, ours, self.run)

    def restart_debian(self) -> None:
        process = self.debian.process
        if process is not None and process.poll() is None:
            process.kill()  # its state is what we distrust: no graceful shutdown needed
            process.wait(timeout=10)
        self.debian.start()


def outcome(events: list[object]) -> str:
    """How a case ended on a server, for the summary line."""
    if TAIL in events:
        return "sentinel answered, tail half-closed"
    if events and isinstance(events[-1], QnetdMessage):
        return "sentinel answered"
    return str(events[-1]) if events else "set-up failed"


def alive(port: int) -> bool:
    """The server answers an ECHO_REQUEST on a new connection (it processed earlier closes)."""
    probe = Case(0, "fresh", CLUSTERS[0], 1, 1, ())
    try:
        obs = run_case(port, ClientCredentials(Path(), Path(), Path()), probe)
    except OSError:
        return False
    return bool(obs.events) and isinstance(obs.events[0], ServerError)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    debian = DebianQnetd(tmp_path_factory.mktemp("fuzz-debian"), tls="req")
    ours = OurQnetd(tmp_path_factory.mktemp("fuzz-ours"), "required", True)
    try:
        debian.init_ca()
        debian.start()
        ours.start()
        yield Pair(
            debian,
            ours,
            {c: debian.client_credentials(c) for c in CLUSTERS},
            {c: ours.client_credentials(c) for c in CLUSTERS},
        )
    finally:
        debian.stop()
        ours.stop()


def pinned(phase: str, label: str, data: bytes) -> Case:
    return Case(0, phase, CLUSTERS[0], 1, 1, (Chunk(label, data),))


SEQ7 = pack_tlv(OptionType.MSG_SEQ_NUMBER, b"\0\0\0\x07")


@pytest.mark.parametrize("phase", ["fresh", "init"])
def test_http_request_gets_no_reply(pair: Pair, phase: str) -> None:
    """Non-protocol bytes (an HTTP request: type 0x4745, 1.4 GB announced) get no reply from
    either server; the connection stays open until the client closes (issue 7 item 8)."""
    case = pinned(phase, "HTTP request", b"GET / HTTP/1.1\r\nHost: qnetd\r\n\r\n")
    for obs in pair.run(case):
        assert obs.setup_failed is None
        sentinel, tail = obs.events[0], obs.events[1:]
        assert isinstance(sentinel, ServerError | EchoReply)
        assert sentinel.seq == SENTINEL_SEQ
        assert tail == ["tail sent, half-closed", "closed"]  # nothing before the close


def test_message_cut_short_by_close_gets_no_reply(pair: Pair) -> None:
    """A header announcing 40,000 bytes, 100 sent, then the client closes: no SERVER_ERROR 5."""
    case = pinned("preinit", "cut short", pack_header(MessageType.INIT, 40000) + bytes(100))
    for obs in pair.run(case):
        assert obs.events[1:] == ["tail sent, half-closed", "closed"]


def test_undecodable_message_reply_echoes_its_seq(pair: Pair) -> None:
    """A seq, then a VOTE of 7: SERVER_ERROR 9 carries seq 7 from both servers."""
    bad = SEQ7 + pack_tlv(OptionType.VOTE, b"\x07")
    case = pinned("fresh", "bad vote", pack_header(MessageType.ECHO_REQUEST, len(bad)) + bad)
    for obs in pair.run(case):
        assert obs.events[0] == ServerError(
            seq=7, reply_error_code=ReplyErrorCode.ERROR_DECODING_MSG
        )


def test_whole_oversize_unknown_type_is_error_4(pair: Pair) -> None:
    """Type checked before size; the reply comes once the whole message is skipped."""
    case = pinned("preinit", "unknown oversize", pack_header(40, 40000) + bytes(40000))
    for obs in pair.run(case):
        assert obs.events[0] == ServerError(reply_error_code=ReplyErrorCode.UNSUPPORTED_MESSAGE)


@pytest.mark.timeout(3600)
def test_differential_fuzz(pair: Pair) -> None:
    """FUZZ_CASES generated cases: no difference but the documented deliberate ones."""
    replay = os.environ.get("FUZZ_CASE_SEED")
    if replay:
        seeds = [int(replay)]
    else:
        master = int(os.environ.get("FUZZ_SEED", CI_SEED))
        seeds = [case_seed(master, i) for i in range(int(os.environ.get("FUZZ_CASES", CI_CASES)))]
    started = time.monotonic()
    explained: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    failures: list[Difference] = []
    for seed in seeds:
        case = generate_case(seed)
        phases[case.phase] += 1
        diff = pair.compare(case)
        if diff is None:
            continue
        if diff.explained_by is not None:
            explained[diff.explained_by] += 1
        else:
            failures.append(diff)
            print(diff.report())
    elapsed = time.monotonic() - started
    print(
        f"differential fuzz: {len(seeds)} cases in {elapsed:.1f} s, phases {dict(phases)}, "
        f"endings on 3.0.3 {dict(pair.outcomes)}, deliberate differences {dict(explained)}, "
        f"3.0.3 stopped answering {len(pair.debian_deaths)} times (restarted), "
        f"undocumented {len(failures)}"
    )
    assert pair.ours.process is not None
    assert pair.ours.process.poll() is None, "votemesh-qnetd exited"
    assert alive(pair.ours.port), "votemesh-qnetd stopped answering"
    assert set(explained) <= {e.name for e in EXPECTED_DIFFERENCES}
    assert not failures, "\n\n".join(d.report() for d in failures[:5])
