"""Sealed mesh datagrams: forged, truncated, foreign, wrong-key and replayed input is rejected."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto.datagram_seal import (
    HEADER_SIZE,
    OVERHEAD,
    REPLAY_WINDOW,
    ClusterKey,
    Opener,
    Sealer,
)
from proto.errors import DecodeError, LocalProtocolError

KEY = ClusterKey(bytes(range(32)))
OTHER_KEY = ClusterKey(bytes(range(1, 33)))


def pair(
    node: int = 7, incarnation: int = 1000, keys: list[ClusterKey] | None = None
) -> tuple[Sealer, Opener]:
    return Sealer("alpha", KEY, node, incarnation), Opener("alpha", keys or [KEY])


def reason(opener: Opener, datagram: bytes) -> str:
    with pytest.raises(DecodeError) as err:
        opener.open(datagram)
    return err.value.reason


def test_round_trip_carries_payload_and_header() -> None:
    """An authentic datagram opens to the sender's id, incarnation, counter and payload."""
    sealer, opener = pair()
    header, payload = opener.open(sealer.seal(3, b"hello"))
    assert (header.kind, header.sender, header.incarnation, header.counter) == (3, 7, 1000, 1)
    assert payload == b"hello"
    assert len(sealer.seal(3, b"hello")) == OVERHEAD + 5


# Byte ranges of the header and the reason a change there must produce.
REGIONS = [
    (range(2), {"bad_magic"}),
    (range(2, 3), {"bad_version"}),
    (range(3, 4), {"forged"}),  # kind: authenticated as associated data
    (range(4, 12), {"foreign_cluster"}),
    (range(12, 16), {"unknown_key"}),
    (range(16, 36), {"forged", "bad_header"}),  # sender, incarnation, counter
]


def test_tampering_with_any_byte_is_rejected() -> None:
    """Flipping any single bit of any byte is rejected, with the reason of that byte's field."""
    sealer, _ = pair()
    datagram = sealer.seal(1, b"a payload of some length")
    for pos in range(len(datagram)):
        for bit in (0x01, 0x80):
            bad = bytearray(datagram)
            bad[pos] ^= bit
            expected = next((r for rng, r in REGIONS if pos in rng), {"forged"})
            assert reason(Opener("alpha", [KEY]), bytes(bad)) in expected, pos


def test_truncated_datagram_is_rejected() -> None:
    """Every prefix shorter than header + tag is 'truncated'; longer prefixes fail the tag."""
    sealer, opener = pair()
    datagram = sealer.seal(1, b"payload")
    for n in range(OVERHEAD):
        assert reason(opener, datagram[:n]) == "truncated"
    for n in range(OVERHEAD, len(datagram)):
        assert reason(opener, datagram[:n]) == "forged"


def test_wrong_key_and_foreign_cluster_are_distinct_reasons() -> None:
    """Another key is 'unknown_key'; another cluster name is 'foreign_cluster'."""
    datagram = Sealer("alpha", OTHER_KEY, 1, 1).seal(1, b"x")
    assert reason(Opener("alpha", [KEY]), datagram) == "unknown_key"
    assert reason(Opener("beta", [KEY]), Sealer("alpha", KEY, 1, 1).seal(1, b"x")) == (
        "foreign_cluster"
    )


def test_forged_ciphertext_with_a_valid_header_is_rejected() -> None:
    """A copied header with a made-up body fails authentication."""
    sealer, opener = pair()
    datagram = sealer.seal(1, b"payload")
    assert reason(opener, datagram[:HEADER_SIZE] + os.urandom(len(datagram) - HEADER_SIZE)) == (
        "forged"
    )
    assert opener.open(datagram)[1] == b"payload"  # the forgery did not poison the window


def test_replay_is_rejected_and_reordering_within_window_accepted() -> None:
    """A repeat is 'replayed'; late but unseen counters inside the window still open."""
    sealer, opener = pair()
    grams = [sealer.seal(1, bytes([i])) for i in range(10)]
    for i in (0, 5, 2, 9, 1):
        opener.open(grams[i])
    for i in (0, 5, 2, 9, 1):
        assert reason(opener, grams[i]) == "replayed"
    for i in (3, 4, 6, 7, 8):
        assert opener.open(grams[i])[1] == bytes([i])


def test_counter_older_than_window_is_rejected() -> None:
    """A never-seen counter more than REPLAY_WINDOW behind the highest is 'replayed'."""
    sealer, opener = pair()
    old = sealer.seal(1, b"old")
    for _ in range(REPLAY_WINDOW):
        sealer.seal(1, b"skip")
    opener.open(sealer.seal(1, b"new"))
    assert reason(opener, old) == "replayed"


def test_new_incarnation_resets_window_and_old_one_is_stale() -> None:
    """A restart (higher incarnation) is accepted from counter 1; the old one is then stale."""
    before, opener = pair(incarnation=1000)
    old = [before.seal(1, b"a"), before.seal(1, b"b")]
    opener.open(old[0])
    after = Sealer("alpha", KEY, 7, 2000)
    assert opener.open(after.seal(1, b"c"))[0].counter == 1
    assert reason(opener, old[1]) == "stale_incarnation"


def test_senders_have_independent_windows() -> None:
    """Counter 1 from two different senders both open."""
    opener = Opener("alpha", [KEY])
    opener.open(Sealer("alpha", KEY, 1, 5).seal(1, b"x"))
    opener.open(Sealer("alpha", KEY, 2, 5).seal(1, b"x"))


def test_keyring_accepts_old_and_new_key_during_rotation() -> None:
    """With both keys in the ring, datagrams under either open."""
    opener = Opener("alpha", [KEY, OTHER_KEY])
    assert opener.open(Sealer("alpha", KEY, 1, 1).seal(1, b"old"))[1] == b"old"
    assert opener.open(Sealer("alpha", OTHER_KEY, 2, 1).seal(1, b"new"))[1] == b"new"


def test_same_counter_different_senders_use_different_keystreams() -> None:
    """Two senders with equal incarnation and counter never share a (key, nonce)."""
    a = Sealer("alpha", KEY, 1, 5).seal(1, b"\0" * 32)
    b = Sealer("alpha", KEY, 2, 5).seal(1, b"\0" * 32)
    assert a[HEADER_SIZE:] != b[HEADER_SIZE:]


def test_short_key_and_bad_ids_are_refused() -> None:
    """A key under 32 bytes is a ValueError saying what to do; node id 0 is our own bug."""
    with pytest.raises(ValueError, match="at least 32"):
        ClusterKey(b"short")
    with pytest.raises(LocalProtocolError):
        Sealer("alpha", KEY, 0, 1)
    with pytest.raises(LocalProtocolError):
        Sealer("alpha", KEY, 1, 0)


def test_zero_counter_header_is_rejected() -> None:
    """A header with counter 0 never reaches the AEAD."""
    sealer, opener = pair()
    datagram = bytearray(sealer.seal(1, b"x"))
    datagram[28:36] = bytes(8)
    assert reason(opener, bytes(datagram)) == "bad_header"


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_garbage_only_raises_decode_error(data: bytes) -> None:
    """Random bytes, with or without a valid-looking header prefix, raise DecodeError only."""
    sealer, opener = pair()
    prefix = sealer.seal(1, b"")[:HEADER_SIZE]
    for candidate in (data, prefix + data):
        with pytest.raises(DecodeError):
            opener.open(candidate)
