"""The differential fuzzer's own parts, without servers: generation, framing model, comparison.

These pin what the fuzz test relies on: a seed always makes the same case, the framing model
finds where 3.0.3 would see whole messages, and a difference is excused only by a named
deliberate difference whose triggering message starts it.
"""

from __future__ import annotations

from proto.qnetd_enums import MessageType, ReplyErrorCode
from proto.qnetd_messages import EchoRequest, Init, Preinit, ServerError, StartTls, encode
from proto.tlv import pack_header
from tests.interop.qnetd_fuzz import (
    TAIL,
    Case,
    Chunk,
    Observation,
    case_seed,
    explain,
    generate_case,
    model_framing,
    same,
    triggers,
)

ERR = ServerError(seq=1, reply_error_code=ReplyErrorCode.INIT_REQUIRED)


def case_of(phase: str, *data: bytes) -> Case:
    return Case(1, phase, "fuzz-a", 1, 1, tuple(Chunk(f"c{i}", d) for i, d in enumerate(data)))


def test_a_seed_always_makes_the_same_case() -> None:
    """Replaying FUZZ_CASE_SEED gives the bytes of the failing run."""
    seeds = [case_seed(7, i) for i in range(200)]
    assert [generate_case(s) for s in seeds] == [generate_case(s) for s in seeds]
    assert len({generate_case(s).data for s in seeds}) > 190
    assert {generate_case(s).phase for s in seeds} == {"fresh", "preinit", "tls", "init"}


def test_framing_model_finds_whole_messages_and_the_tail() -> None:
    """Boundaries as msgio_read frames them; an announced 1.4 GB leaves everything as tail."""
    echo = encode(EchoRequest(seq=1))
    frame = model_framing(case_of("fresh", echo, echo, pack_header(MessageType.INIT, 50)))
    assert frame.boundaries == (len(echo), 2 * len(echo))
    assert frame.in_frame_end == 2 * len(echo)
    assert model_framing(case_of("fresh", b"GET / HTTP/1.1\r\n\r\n")).in_frame_end == 0


def test_case_is_cut_at_an_accepted_starttls() -> None:
    """After a STARTTLS the server acts on, bytes are TLS: the model ends the case there."""
    starttls = encode(StartTls(seq=2))
    before_preinit = model_framing(case_of("fresh", starttls, starttls))
    assert before_preinit.starttls_end is None  # answered with error 6, stays plain
    preinit = encode(Preinit(seq=1, cluster_name=b"x"))
    after = model_framing(case_of("fresh", preinit, starttls, starttls))
    assert after.starttls_end == len(preinit) + len(starttls)


def test_prefix_rule_only_when_both_servers_closed_on_their_own() -> None:
    """Reference 4.8: a closing server may lose queued replies; nothing else is excused."""
    assert same([ERR, "closed"], [ERR, ERR, "closed"])
    assert not same([ERR, "closed"], [ERR, ERR, ERR])  # one server did not close
    assert not same([ERR, TAIL, "closed"], [ERR, ERR, TAIL, "closed"])  # we closed, not them
    assert not same([ERR, "closed"], [ServerError(seq=2, reply_error_code=3), "closed"])


def test_a_difference_is_excused_only_if_the_case_before_its_trigger_agrees() -> None:
    """A second INIT may make 3.0.3 differ from there on, but not earlier in the case."""
    init = encode(Init(seq=5, node_id=1))
    case = case_of("init", encode(EchoRequest(seq=1)), init)
    assert triggers(case) == ["second_init"]
    ref, ours = Observation([ERR, "closed"]), Observation([ERR, ERR])
    cuts: list[int] = []

    def rerun_agreeing(_case: Case, cut: int) -> tuple[Observation, Observation]:
        cuts.append(cut)
        return Observation([ERR]), Observation([ERR])

    agree = explain(case, ref, ours, rerun_agreeing)
    assert cuts == [len(encode(EchoRequest(seq=1)))]  # cut just before the second INIT
    assert agree is not None
    assert agree.explained_by == "second_init"
    disagree = explain(case, ref, ours, lambda _c, _cut: (Observation([ERR]), Observation([])))
    assert disagree is not None
    assert disagree.explained_by is None
    assert explain(case, ref, Observation([ERR, "closed"]), lambda _c, _cut: (ref, ref)) is None
