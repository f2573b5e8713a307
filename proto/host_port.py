"""The one rule for a `HOST[:PORT]` the user types (qnetd's --enroll-listen and --http-listen,
its --listen, the node's `enroll --server` and its config file's addresses).

    HOST            name or IPv4 address, the default port
    HOST:PORT       one colon: the port after it
    [IPV6]          an IPv6 address in brackets, the default port
    [IPV6]:PORT     the port after the bracket
    IPV6            a bare IPv6 address (two or more colons) is an address only: the default port.
                    `::1:9403` is the address ::1:9403; to give a port, use brackets.

A port is ASCII digits only (no sign, no `_`, no other script's digits, all of which `int()`
reads) and 1-65535. Mistakes raise `ValueError` with a message that does not name the option:
the caller prefixes the option or config key. Pure: strings in, values out.
"""

from __future__ import annotations

import ipaddress

MAX_PORT = 65535


def parse_port(text: str) -> int:
    """A TCP port: ASCII digits, 1-65535."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_PORT:
        raise ValueError(f"port {text!r} is not a number from 1 to {MAX_PORT}")
    return int(text)


def _ipv6(text: str) -> str:
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv6 address") from None


def _name(text: str) -> str:
    if not text or not text.isprintable() or any(c.isspace() or c in "[]/" for c in text):
        raise ValueError(f"{text!r} is not a host name or address")
    return text


def parse_host(text: str) -> str:
    """A host without a port: NAME, IPv4, IPV6 or [IPV6] (brackets dropped)."""
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError(f"{text!r}: no closing ']'")
        return _ipv6(text[1:-1])
    if text.count(":") >= 2:
        return _ipv6(text)
    if ":" in text:
        raise ValueError(f"{text!r} has a port; give the address only")
    return _name(text)


def parse_host_port(
    text: str, default_port: int, default_host: str | None = None
) -> tuple[str, int]:
    """(host, port) from HOST, HOST:PORT, [IPV6], [IPV6]:PORT or a bare IPv6 address.

    An empty host (`:9403`) is `default_host`, or a mistake when there is none.
    """
    if text.startswith("["):
        inside, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: no closing ']'")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: write [IPV6]:PORT")
        return _ipv6(inside), parse_port(rest[1:]) if rest else default_port
    if text.count(":") >= 2:
        try:
            return _ipv6(text), default_port
        except ValueError:
            raise ValueError(
                f"{text!r}: an IPv6 address with a port needs brackets, [IPV6]:PORT"
            ) from None
    host, sep, port = text.partition(":")
    if not host and default_host is not None:
        host = default_host
    return _name(host), parse_port(port) if sep else default_port
