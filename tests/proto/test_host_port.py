"""proto/host_port.py: the one HOST[:PORT] rule of qnetd's options, `enroll --server` and the
node's config file (issue 7 follow-up: `--http-listen ::1` was read as host ':' port 1)."""

from __future__ import annotations

import pytest

from proto.host_port import parse_host, parse_host_port, parse_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("qnetd.example", ("qnetd.example", 9403)),
        ("127.0.0.1:6000", ("127.0.0.1", 6000)),
        ("[::1]", ("::1", 9403)),
        ("[::1]:6000", ("::1", 6000)),
        ("::1", ("::1", 9403)),  # a bare IPv6 address is an address only
        ("fd00::1:9403", ("fd00::1:9403", 9403)),  # ... even when it ends like a port
        ("[fd00:0::1]:1", ("fd00::1", 1)),
        ("fe80::1%lo", ("fe80::1%lo", 9403)),
    ],
)
def test_accepted(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, 9403) == expected


@pytest.mark.parametrize(
    "text",
    [
        "qnetd:0",
        "qnetd:65536",
        "qnetd:+80",  # int() takes a sign ...
        "qnetd:1_000",  # ... underscores ...
        "qnetd:\uff18\uff10",  # ... and fullwidth digits
        "qnetd:\u00b2",  # isdigit() takes superscripts
        "qnetd: 80",
        "qnetd:",
        "[::1]:",
        "[::1]x",
        "[::1",
        "[qnetd]:80",  # brackets are for IPv6 addresses
        "[]:80",
        "fd00::zz",
        "a:b:c",
        ":80",  # no host and no default
        "two words:80",
        "",
    ],
)
def test_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the message is checked by the CLI tests)
        parse_host_port(text, 9403)


def test_empty_host_takes_the_default_when_there_is_one() -> None:
    assert parse_host_port(":80", 9403, default_host="127.0.0.1") == ("127.0.0.1", 80)


@pytest.mark.parametrize(("text", "expected"), [("::1", "::1"), ("[::1]", "::1"), ("h", "h")])
def test_host_only(text: str, expected: str) -> None:
    assert parse_host(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:5403", "[::1", "[h]", "fd00::zz", "", "a b"])
def test_host_only_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_host(text)


@pytest.mark.parametrize("text", ["+80", "1_000", "\uff18\uff10", "0", "65536", "-1", ""])
def test_port_refused(text: str) -> None:
    with pytest.raises(ValueError, match="1 to 65535"):
        parse_port(text)
