"""The receive path's fast paths give what the slow paths give, on every input (design §3.14).

`Opener.open_fields` (a cached slot per authenticated sender life) against `Opener.open`, and
the decoder's reuse of the last equal view against a fresh decode: the same sequence of
datagrams, hostile ones included, to two openers (or decoders) must give the same results, the
same drop reasons and the same replay state."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto import tagged_map
from proto.datagram_seal import REPLAY_WINDOW, RESYNC_AFTER, ClusterKey, Opener, Sealer
from proto.errors import DecodeError
from proto.mesh_messages import Heartbeat, MeshKind, View, decode, encode

KEY = ClusterKey(bytes(range(32)))
OTHER_KEY = ClusterKey(bytes(range(1, 33)))


def slow(opener: Opener, datagram: bytes, now: float | None) -> Any:
    try:
        header, payload = opener.open(datagram, now)
    except DecodeError as exc:
        return exc.reason
    return header.kind, header.sender, header.incarnation, payload


def fast(opener: Opener, datagram: bytes, now: float | None) -> Any:
    try:
        return opener.open_fields(datagram, now)
    except DecodeError as exc:
        return exc.reason


def windows(opener: Opener) -> Any:
    """The replay state: per sender, its incarnations in LRU order and each window."""
    return {
        sender: [(inc, w.highest, w.bitmap, w.accepted_at) for inc, w in lives.items()]
        for sender, lives in opener._windows.items()
    }


def mutate(datagram: bytes, where: int, value: int) -> bytes:
    where %= len(datagram)
    return datagram[:where] + bytes([value]) + datagram[where + 1 :]


STEP = st.one_of(
    # (sender 2-3, incarnation 1-6, counter, kind, mutation or None, clock step)
    st.tuples(
        st.just("datagram"),
        st.integers(2, 3),
        st.integers(1, 6),
        st.one_of(
            st.integers(0, 40),
            st.integers(REPLAY_WINDOW - 2, REPLAY_WINDOW + 40),
            st.just(2**64 - 1),
        ),
        st.sampled_from([1, 2, 200]),
        st.none() | st.tuples(st.integers(0, 80), st.integers(0, 255)),
        st.sampled_from([0.0, 0.01, RESYNC_AFTER]),
    ),
    st.tuples(st.just("admit"), st.integers(2, 3)),
    st.tuples(st.just("forget"), st.integers(2, 3)),
    st.tuples(st.just("keys"), st.booleans()),
    st.tuples(st.just("truncate"), st.integers(0, 60)),
)


class Sealers:
    """Seals a datagram from any (sender, incarnation, key) with a chosen counter."""

    def __init__(self) -> None:
        self.sealers: dict[tuple[int, int, bytes], Sealer] = {}

    def seal(self, sender: int, inc: int, key: ClusterKey, counter: int, kind: int) -> bytes:
        sealer = self.sealers.setdefault(
            (sender, inc, key.secret), Sealer("alpha", key, sender, inc)
        )
        sealer.counter = counter - 1 if counter else 0
        datagram = sealer.seal(kind, b"payload %d" % counter)
        if counter == 0:  # a zero counter on the wire (the sealer never makes one)
            datagram = datagram[:28] + bytes(8) + datagram[36:]
        return datagram


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(STEP, max_size=60))
def test_open_fields_accepts_and_refuses_exactly_what_open_does(steps: list[Any]) -> None:
    """Replays, forgeries, tampered bytes (magic, version, kind, ids, counter), zero counters,
    jumps past the window and re-anchoring, a sender no longer admitted, forgotten senders, a
    key rotation, truncation: the fast path's answers and the replay state equal the slow one's."""
    admitted = {2: True, 3: True}
    openers = [
        Opener("alpha", [KEY], admit=lambda s: admitted.get(s, False)),
        Opener("alpha", [KEY], admit=lambda s: admitted.get(s, False)),
    ]
    sealers, now, last = Sealers(), 100.0, b""
    key = KEY
    for step in steps:
        if step[0] == "admit":
            admitted[step[1]] = not admitted[step[1]]
            continue
        if step[0] == "forget":
            for opener in openers:
                opener.forget(step[1])
            continue
        if step[0] == "keys":
            keys = [KEY, OTHER_KEY] if step[1] else [OTHER_KEY]
            for opener in openers:
                opener.set_keys(keys)
            key = OTHER_KEY if key is KEY else KEY
            continue
        if step[0] == "truncate":
            datagram = last[: step[1]]
        else:
            _, sender, inc, counter, kind, change, clock = step
            now += clock
            datagram = sealers.seal(sender, inc, key, counter, kind)
            if change is not None:
                datagram = mutate(datagram, *change)
        last = datagram
        assert fast(openers[1], datagram, now) == slow(openers[0], datagram, now)
        assert windows(openers[1]) == windows(openers[0])
        assert openers[1].senders() == openers[0].senders()


def test_a_cached_sender_life_still_has_every_check() -> None:
    """Once a sender life has a slot, a replay, a forged tag, a bad magic or version, a zero
    counter and a sender no longer admitted are each refused with the slow path's reason."""
    admitted = {7}
    opener = Opener("alpha", [KEY], admit=lambda s: s in admitted)
    sealer = Sealer("alpha", KEY, 7, 1000)
    first = sealer.seal(1, b"one")
    assert opener.open_fields(first) == (1, 7, 1000, b"one")
    second = sealer.seal(1, b"two")
    assert fast(opener, mutate(second, 40, second[40] ^ 1), None) == "forged"
    assert fast(opener, mutate(second, 0, ord("X")), None) == "bad_magic"
    assert fast(opener, mutate(second, 2, 9), None) == "bad_version"
    assert fast(opener, second[:28] + bytes(8) + second[36:], None) == "bad_header"
    assert fast(opener, first, None) == "replayed"
    admitted.clear()
    assert fast(opener, second, None) == "unknown_peer"
    admitted.add(7)
    assert opener.open_fields(second) == (1, 7, 1000, b"two")
    assert fast(opener, second, None) == "replayed"
    opener.set_keys([OTHER_KEY])
    assert fast(opener, sealer.seal(1, b"three"), None) == "unknown_key"


class CountingCipher:
    """A cipher that counts its decrypt calls (and passes them on)."""

    def __init__(self, cipher: Any) -> None:
        self.cipher, self.calls = cipher, 0

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        self.calls += 1
        result: bytes = self.cipher.decrypt(nonce, data, aad)
        return result


def test_a_forged_copy_of_a_live_header_costs_one_aead() -> None:
    """Regression (review of the second round): a datagram with a cached sender life's header
    and a bad tag (anyone who saw one live datagram can make it) was tried by the fast path,
    then again by `open`: two AEADs per forged datagram. Now `forged` after one."""
    opener = Opener("alpha", [KEY])
    sealer = Sealer("alpha", KEY, 7, 1000)
    assert opener.open_fields(sealer.seal(1, b"one")) == (1, 7, 1000, b"one")
    (key,) = opener._slots
    sender, incarnation, cipher, window, lives = opener._slots[key]
    counting = CountingCipher(cipher)
    opener._slots[key] = (sender, incarnation, counting, window, lives)  # type: ignore[assignment]
    for slot in opener._ciphers:
        opener._ciphers[slot] = counting  # type: ignore[assignment]
    second = sealer.seal(1, b"two")
    assert fast(opener, mutate(second, 40, second[40] ^ 1), None) == "forged"
    assert counting.calls == 1
    assert opener.open_fields(second) == (1, 7, 1000, b"two")  # the window did not move
    assert counting.calls == 2


def heartbeat_with_view(view: Any) -> bytes:
    """A heartbeat payload whose view map is `view` as given (hostile types included)."""
    plain = msgpack.unpackb(encode(Heartbeat(0, 1, 2)), strict_map_key=False)
    plain[5] = view
    return msgpack.packb(plain, use_bin_type=True)  # type: ignore[no-any-return]


def outcome(payload: bytes) -> Any:
    try:
        message = decode(MeshKind.HEARTBEAT, payload)
    except DecodeError as exc:
        return exc.reason
    assert isinstance(message, Heartbeat)
    return message.view


VIEW_VALUE = st.one_of(
    st.integers(0, 6),
    st.sampled_from([True, False, 1.0, 2.0, 2**64 - 1, 2**62 + 1, -1, "1", None]),
)
VIEW_MAP = st.fixed_dictionaries(
    {
        1: VIEW_VALUE,
        2: VIEW_VALUE,
        3: st.one_of(st.lists(VIEW_VALUE, max_size=4), VIEW_VALUE),
    }
)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [{1: 1, 2: 5, 3: [1, 2, 3]}, {1: 2, 2: 5, 3: [2, 3]}, {1: 3, 2: 5, 3: [3, 1]}]
        )
        | VIEW_MAP
    )
)
def test_the_last_equal_view_is_reused_only_when_a_fresh_decode_gives_it(views: list[Any]) -> None:
    """A view map equal to the last one decoded but with a bool or a float where an int goes
    ([True, 2, 3] == [1, 2, 3]) is refused like any other; an equal map of ints gives the
    same object; every outcome equals a fresh decoder's (no memory)."""
    fresh = tagged_map._decoder(View)
    for view in views:
        got = outcome(heartbeat_with_view(view))
        want: Any
        try:
            want = fresh(view)
        except DecodeError as exc:
            want = exc.reason
        if isinstance(want, View):  # then mesh_messages checks the members' order
            members = list(want.members)
            ordered = members == sorted(set(members)) and members[:1] == [want.representative]
            assert got == (want if ordered else "bad_value")
        else:
            assert got == want


@pytest.mark.parametrize(
    "hostile",
    [
        {1: True, 2: 5, 3: [1, 2, 3]},
        {1: 1, 2: 5.0, 3: [1, 2, 3]},
        {1: 1, 2: 5, 3: [True, 2, 3]},
        {1: 1, 2: 5, 3: [1, 2.0, 3]},
    ],
)
def test_an_equal_view_with_other_types_is_refused_after_a_good_one(hostile: Any) -> None:
    """The good view decodes (twice: the same object), then an equal map of another type is
    bad_payload, as it is for a decoder that never saw the good one."""
    good = outcome(heartbeat_with_view({1: 1, 2: 5, 3: [1, 2, 3]}))
    assert good == View(1, 5, (1, 2, 3))
    assert outcome(heartbeat_with_view({1: 1, 2: 5, 3: [1, 2, 3]})) is good
    assert outcome(heartbeat_with_view(hostile)) == "bad_payload"


# ------------------------------------------------------ objects without the frozen __init__
def tagged_classes() -> list[type]:
    """Every tagged dataclass of the mesh and join protocols, and the agent's MessageIn."""
    import dataclasses

    from agent.node_events import MessageIn
    from proto import join, mesh_messages

    found: set[type] = {MessageIn}
    for module in (mesh_messages, join):
        for value in vars(module).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value):
                found.add(value)
    return sorted(found, key=lambda c: c.__qualname__)


@pytest.mark.parametrize("cls", tagged_classes(), ids=lambda c: c.__qualname__)
def test_the_frozen_constructor_equals_the_class_call(cls: type) -> None:
    """`frozen_constructor(cls)(*values)` is what `cls(*values)` is: equal, same hash, same type,
    every field the same object, still frozen; classes it cannot build (not frozen, not slotted,
    a `__post_init__`) get the class itself."""
    import dataclasses

    fields = dataclasses.fields(cls)
    values = [object() for _ in fields]  # distinct sentinels: a swapped field would show
    make: Any = tagged_map.frozen_constructor(cls)
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    if not params.frozen or "__slots__" not in cls.__dict__ or hasattr(cls, "__post_init__"):
        assert make is cls
        return
    assert make is not cls
    built, called = make(*values), cls(*values)
    assert type(built) is cls
    assert all(getattr(built, f.name) is v for f, v in zip(fields, values, strict=True))
    assert built == called
    assert hash(built) == hash(called)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, fields[0].name, 1)


def test_a_post_init_class_is_built_by_calling_it() -> None:
    """A frozen slotted class with `__post_init__` (checks in it) is never built around it."""
    import dataclasses

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        value: int = tagged_map.tagged(1)

        def __post_init__(self) -> None:
            if self.value > 5:
                raise ValueError("too big")

    assert tagged_map.frozen_constructor(Checked) is Checked
    assert tagged_map.unpack(Checked, msgpack.packb({1: 3})) == Checked(3)
    with pytest.raises(ValueError, match="too big"):
        tagged_map.unpack(Checked, msgpack.packb({1: 9}))
