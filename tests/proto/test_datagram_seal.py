"""Sealed mesh datagrams: forged, truncated, foreign, wrong-key and replayed input is rejected."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto.datagram_seal import (
    HEADER_SIZE,
    INCARNATION_MAX,
    INCARNATIONS_KEPT,
    OVERHEAD,
    REPLAY_WINDOW,
    RESYNC_AFTER,
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


def test_each_incarnation_has_its_own_window_and_the_agent_picks_the_life() -> None:
    """A restart (new incarnation) opens from counter 1 in a window of its own; a reordered
    datagram of the old life still opens (the agent, not the opener, decides which life is
    current: design §3.3), and replays of either life are refused."""
    before, opener = pair(incarnation=1000)
    old = [before.seal(1, b"a"), before.seal(1, b"b")]
    opener.open(old[0])
    after = Sealer("alpha", KEY, 7, 2000)
    new = after.seal(1, b"c")
    assert opener.open(new)[0].counter == 1
    assert opener.open(old[1])[0].incarnation == 1000
    assert reason(opener, old[0]) == "replayed"
    assert reason(opener, new) == "replayed"


def test_a_sender_keeps_a_bounded_number_of_lives() -> None:
    """Windows of at most INCARNATIONS_KEPT incarnations per sender, least recently used out."""
    opener = Opener("alpha", [KEY])
    for incarnation in range(1, 50):
        opener.open(Sealer("alpha", KEY, 7, incarnation).seal(1, b"x"))
    assert len(opener._windows[7]) == INCARNATIONS_KEPT
    assert sorted(opener._windows[7]) == list(range(50 - INCARNATIONS_KEPT, 50))
    assert {s[2] for s in opener._ciphers} == set(range(50 - INCARNATIONS_KEPT, 50))


def test_unknown_senders_hold_no_state() -> None:
    """With `admit`, a sender it refuses is `unknown_peer` before the AEAD and leaves no window
    or cipher behind: 20,000 forged node ids cost nothing (regression: memory grew 42 -> 69 MB)."""
    opener = Opener("alpha", [KEY], admit=lambda sender: sender in {1, 2})
    for sender in range(3, 20_003):
        assert reason(opener, Sealer("alpha", KEY, sender, 1).seal(1, b"x")) == "unknown_peer"
    opener.open(Sealer("alpha", KEY, 2, 1).seal(1, b"x"))
    assert (opener.senders(), len(opener._ciphers)) == (1, 1)


def test_incarnation_above_the_bound_is_a_bad_header() -> None:
    """An incarnation above 2**62 (2**64 - 1 from a hostile member) never gets a window."""
    sealer, opener = pair()
    datagram = bytearray(sealer.seal(1, b"x"))
    datagram[20:28] = (2**64 - 1).to_bytes(8, "big")
    assert reason(opener, bytes(datagram)) == "bad_header"
    assert opener.senders() == 0
    with pytest.raises(LocalProtocolError):
        Sealer("alpha", KEY, 7, INCARNATION_MAX + 1)


def test_counter_jump_to_the_top_costs_no_memory_and_the_sender_comes_back() -> None:
    """A keyed sender's counter 2**64 - 1 is one datagram (regression: MemoryError from a
        2**64-bit shift). The real sender, far behind it, is refused while the jumped window is
        live, and re-anchors it once the window accepted nothing for RESYNC_AFTER seconds; after
    that the old window is gone (a replay of the re-anchoring datagram is refused)."""
    real = Sealer("alpha", KEY, 7, 1000)
    opener = Opener("alpha", [KEY])
    opener.open(real.seal(1, b"a"), now=0.0)
    hostile = Sealer("alpha", KEY, 7, 1000)
    hostile.counter = 2**64 - 2
    assert opener.open(hostile.seal(1, b"jump"), now=0.5)[0].counter == 2**64 - 1
    assert opener._windows[7][1000].bitmap == 1
    late = real.seal(1, b"b")
    with pytest.raises(DecodeError, match="replayed"):
        opener.open(late, now=0.5 + RESYNC_AFTER / 2)
    assert opener.open(late, now=0.5 + RESYNC_AFTER)[1] == b"b"
    assert opener.open(real.seal(1, b"c"), now=0.6 + RESYNC_AFTER)[1] == b"c"
    with pytest.raises(DecodeError, match="replayed"):
        opener.open(late, now=3.0)


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
