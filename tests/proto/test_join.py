"""proto/join.py: the join string, the token and the frames of the join port."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proto.errors import DecodeError
from proto.join import (
    HEADER,
    MAX_REQUEST_FRAME,
    JoinGrant,
    JoinRequest,
    JoinString,
    decode_body,
    encode_frame,
    frame_length,
    make_token,
    request_op,
    token_hash,
    token_secret,
)

TOKEN = make_token(bytes(range(32)))
FP = bytes(range(100, 132))

names = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
hosts = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), st.just("node1.example")
)


@given(
    cluster=names,
    addresses=st.lists(st.tuples(hosts, st.integers(1, 65535)), min_size=1, max_size=8),
    secret=st.binary(min_size=16, max_size=64),
    fp=st.binary(min_size=32, max_size=32),
)
def test_a_join_string_round_trips(
    cluster: str, addresses: list[tuple[str, int]], secret: bytes, fp: bytes
) -> None:
    """Whatever a member puts in a join string comes back unchanged."""
    js = JoinString(cluster, tuple(addresses), fp, make_token(secret))
    text = js.encode()
    assert text.startswith("vmjoin1:")
    assert not set(text) & set("+/= \n")  # copy-paste safe
    assert JoinString.parse(text) == js


def test_a_wrapped_paste_is_accepted_and_a_truncated_one_refused() -> None:
    """A terminal's line breaks do not matter; a cut string is one clear error, not garbage."""
    text = JoinString("prod", (("10.0.0.1", 5408),), FP, TOKEN).encode()
    wrapped = "  " + "\n".join(text[i : i + 20] for i in range(0, len(text), 20)) + "\n"
    assert JoinString.parse(wrapped).cluster == "prod"
    with pytest.raises(DecodeError) as err:
        JoinString.parse(text[:-7])
    assert err.value.reason == "bad_join_string"


@given(st.text(max_size=300))
def test_garbage_join_strings_raise_decode_error_only(text: str) -> None:
    """Anything pasted either parses or raises DecodeError(bad_join_string)."""
    for candidate in (text, "vmjoin1:" + text):
        reason = None
        try:
            JoinString.parse(candidate)
        except DecodeError as exc:
            reason = exc.reason
        assert reason in (None, "bad_join_string")


@pytest.mark.parametrize(
    "body",
    [
        {"c": "bad name", "a": ["10.0.0.1:5408"], "f": FP.hex(), "t": TOKEN},
        {"c": "prod", "a": [], "f": FP.hex(), "t": TOKEN},
        {"c": "prod", "a": ["10.0.0.1:99999"], "f": FP.hex(), "t": TOKEN},
        {"c": "prod", "a": ["10.0.0.1"], "f": "ab", "t": TOKEN},
        {"c": "prod", "a": ["10.0.0.1"], "f": FP.hex(), "t": "vmjt1.short"},
        {"c": "prod", "a": ["10.0.0.1"], "f": FP.hex()},
        ["not", "an", "object"],
    ],
)
def test_an_altered_join_string_is_refused(body: object) -> None:
    """Each field is range-checked: a bad name, no address, a bad port, a short fingerprint,
    a short token, a missing field."""
    from proto.enrollment import b64url

    with pytest.raises(DecodeError):
        JoinString.parse("vmjoin1:" + b64url(json.dumps(body).encode()))


def test_token_text_and_hash() -> None:
    """The token carries its secret; the member stores SHA-256 of it; garbage is malformed."""
    assert token_secret(TOKEN) == bytes(range(32))
    assert len(token_hash(TOKEN)) == 64
    for bad in ("", "vmq1.x", "vmjt1.", "vmjt1.!!!!", "vmjt1." + "A" * 10):
        with pytest.raises(DecodeError) as err:
            token_secret(bad)
        assert err.value.reason == "malformed_token"


def test_frames_are_length_prefixed_and_bounded() -> None:
    """A frame round-trips; a zero or oversized length and a non-object body are bad_frame."""
    frame = encode_frame({"v": 1, "op": "ca"})
    length = frame_length(frame[: HEADER.size], MAX_REQUEST_FRAME)
    assert request_op(decode_body(frame[HEADER.size : HEADER.size + length])) == "ca"
    for header in (HEADER.pack(0), HEADER.pack(MAX_REQUEST_FRAME + 1), b"\xff\xff\xff\xff"):
        with pytest.raises(DecodeError, match="bad_frame"):
            frame_length(header, MAX_REQUEST_FRAME)
    for body in (b"[1]", b"\xff\xfe", b"{", b"null"):
        with pytest.raises(DecodeError, match="bad_frame"):
            decode_body(body)
    with pytest.raises(DecodeError, match="version"):
        request_op({"v": 2, "op": "ca"})
    with pytest.raises(DecodeError, match="bad_request"):
        request_op({"v": 1, "op": "rm -rf"})


def test_join_request_round_trips_and_checks_ranges() -> None:
    """The request's fields come back; wrong types and ranges are bad_request naming the field."""
    req = JoinRequest(TOKEN, "b", ((0, "10.0.0.2", 0), (1, "fd00::2", 5)), "PEM", 4, 2, True)
    assert JoinRequest.from_message(json.loads(json.dumps(req.to_message()))) == req
    good = req.to_message()
    for key, value in [
        ("links", []),
        ("links", [[8, "10.0.0.2", 0]]),
        ("links", [[0, "10.0.0.2", 256]]),
        ("links", [[True, "10.0.0.2", 0]]),
        ("node_id", 0),
        ("node_id", 2**32),
        ("votes", 256),
        ("votes", "1"),
        ("force", 1),
        ("token", ""),
        ("name", None),
    ]:
        with pytest.raises(DecodeError) as err:
            JoinRequest.from_message({**good, key: value})
        assert err.value.reason == "bad_request", (key, value)


def test_grant_round_trips_and_refuses_a_malformed_answer() -> None:
    """The member's grant comes back; a malformed one is bad_reply."""
    grant = JoinGrant(3, b"cfg", (b"k" * 32, b"o" * 32), "CA", "CAKEY", "CERT")
    assert JoinGrant.from_message(json.loads(json.dumps(grant.to_message()))) == grant
    broken_fields: list[dict[str, object]] = [
        {"node_id": 0}, {"keys": []}, {"config": "%%%"}, {"ca": 5},
    ]  # fmt: skip
    for broken in broken_fields:
        with pytest.raises(DecodeError, match="bad_reply"):
            JoinGrant.from_message({**grant.to_message(), **broken})
