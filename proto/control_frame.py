"""Control-socket framing, shared by the agent and the qnetd (sans-IO).

One request per unix-stream connection: the client sends one text line (at most MAX_REQUEST
bytes with its newline); the server answers `OK` or `Error` on the first line, then the body,
and closes the connection. corosync-qnetd-tool speaks the same framing to our qnetd.
"""

from __future__ import annotations

MAX_REQUEST = 4096
"""Longest request line, newline included; a longer one is refused in one line."""
MAX_REPLY = 16 * 1024 * 1024
"""A client stops reading past this (a status of a 1,000-node cluster is well under 1 MiB)."""


class FrameError(ValueError):
    """A request or reply that does not follow the framing."""


def encode_request(line: str) -> bytes:
    """One request line as sent; FrameError when it holds a newline or is too long."""
    if "\n" in line or "\r" in line:
        raise FrameError("a control request is one line")
    data = line.encode() + b"\n"
    if len(data) > MAX_REQUEST:
        raise FrameError(f"a control request is at most {MAX_REQUEST} bytes")
    return data


def decode_request(raw: bytes) -> str:
    """The request line the server received (undecodable bytes replaced, whitespace trimmed)."""
    return raw[:MAX_REQUEST].decode("utf-8", "replace").strip()


def encode_reply(ok: bool, body: str) -> bytes:
    """The server's answer: `OK`/`Error` line, then the body."""
    return (("OK" if ok else "Error") + "\n" + body).encode()


def decode_reply(data: bytes) -> tuple[bool, str]:
    """(ok, body) of a whole answer."""
    head, _, body = data.decode("utf-8", "replace").partition("\n")
    return head == "OK", body
