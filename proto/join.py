"""Joining a cluster: the join string, the token, the frames and messages of the join port.

Pure (design §3.11): no secrets are drawn, no files, no clock, no sockets. Garbage raises
`DecodeError` with a short `reason` for counters (`bad_join_string`, `malformed_token`,
`bad_frame`, `bad_request`, `version`).

Join string (what `votemesh join-info` prints and `votemesh add` takes):

    vmjoin1:<base64url of {"c": cluster, "a": ["host:port", ...], "f": CA sha256 hex, "t": token}>

Token: `vmjt1.<base64url of 16-64 random bytes>`; the member keeps only its SHA-256.

Frames on the join port: 4-byte big-endian length, then a UTF-8 JSON object. The joiner asks
`{"v": 1, "op": "ca"}`, checks the CA against the string's fingerprint, then sends
`{"v": 1, "op": "join", ...}` (`JoinRequest`); the member answers each with `{"ok": true, ...}`
or `{"ok": false, "error": reason, "message": one line}` (`Refusal`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from proto.cert_names import node_name_problem
from proto.enrollment import b64url, unb64url
from proto.errors import DecodeError
from proto.host_port import parse_host_port

JOIN_PREFIX = "vmjoin1:"
TOKEN_PREFIX = "vmjt1."  # noqa: S105 -- a format tag, not a secret
PROTOCOL_VERSION = 1
DEFAULT_JOIN_PORT = 5408  # node.toml [join] port (design §3.11)
MAX_JOIN_STRING = 2048
MAX_ADDRESSES = 8  # one per link
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 64
SHA256_HEX = 64
HEADER = struct.Struct("!I")
MAX_REQUEST_FRAME = 16 * 1024  # a join request with a 2048-bit CSR is ~1.5 KiB
MAX_REPLY_FRAME = 4 * 1024 * 1024  # a 1,024-node configuration with keys and PEMs
MAX_LINKS = 8
MAX_NODE_ID = 2**32 - 1
MAX_VOTES = 255


# ---------------------------------------------------------------- token and join string
def make_token(secret: bytes) -> str:
    """The token text for `secret` (drawn by the adapter)."""
    if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
        raise ValueError("a join token secret has 16 to 64 bytes")
    return TOKEN_PREFIX + b64url(secret)


def token_secret(text: str) -> bytes:
    """The secret of a token text; DecodeError(malformed_token) otherwise."""
    if not isinstance(text, str) or not text.startswith(TOKEN_PREFIX):
        raise DecodeError("malformed_token", f"a join token starts with {TOKEN_PREFIX}")
    try:
        secret = unb64url(text[len(TOKEN_PREFIX) :])
    except DecodeError as exc:
        raise DecodeError("malformed_token", "token is not base64url") from exc
    if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
        raise DecodeError("malformed_token", "bad token length")
    return secret


def token_hash(text: str) -> str:
    """What a member stores of a token: SHA-256 of its secret, hex."""
    return hashlib.sha256(token_secret(text)).hexdigest()


@dataclass(frozen=True)
class JoinString:
    """Everything a joiner needs: where to go, whom to trust, what to show."""

    cluster: str
    addresses: tuple[tuple[str, int], ...]
    """The minting member's join address on each of its links, tried in order."""
    ca_sha256: bytes
    token: str

    def encode(self) -> str:
        """`vmjoin1:` + base64url(JSON)."""
        body = {
            "c": self.cluster,
            "a": [_host_port(h, p) for h, p in self.addresses],
            "f": self.ca_sha256.hex(),
            "t": self.token,
        }
        text = JOIN_PREFIX + b64url(json.dumps(body, separators=(",", ":")).encode())
        if len(text) > MAX_JOIN_STRING:
            raise ValueError("join string too long")
        return text

    @classmethod
    def parse(cls, text: str) -> JoinString:
        """A join string back; DecodeError(bad_join_string) for anything else."""
        text = "".join(text.split())  # a terminal may wrap a pasted line
        if not text.startswith(JOIN_PREFIX):
            raise DecodeError("bad_join_string", f"a join string starts with {JOIN_PREFIX}")
        if len(text) > MAX_JOIN_STRING:
            raise DecodeError("bad_join_string", "too long")
        try:
            raw = unb64url(text[len(JOIN_PREFIX) :])
            body = json.loads(raw)
        except (DecodeError, UnicodeDecodeError, ValueError) as exc:
            raise DecodeError("bad_join_string", "truncated or altered (not JSON)") from exc
        try:
            return cls._from_body(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError("bad_join_string", f"altered or another version ({exc})") from exc

    @classmethod
    def _from_body(cls, body: Any) -> JoinString:
        cluster, addresses, fingerprint, token = body["c"], body["a"], body["f"], body["t"]
        if not isinstance(cluster, str) or node_name_problem(cluster) is not None:
            raise ValueError("bad cluster name")
        if not isinstance(addresses, list) or not 1 <= len(addresses) <= MAX_ADDRESSES:
            raise ValueError("bad address list")
        parsed = tuple(parse_host_port(_text(a), DEFAULT_JOIN_PORT) for a in addresses)
        if not isinstance(fingerprint, str) or len(fingerprint) != SHA256_HEX:
            raise ValueError("bad CA fingerprint")
        token_secret(_text(token))
        return cls(cluster, parsed, bytes.fromhex(fingerprint), token)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------- frames
def encode_frame(message: dict[str, Any]) -> bytes:
    """Length-prefixed compact JSON."""
    body = json.dumps(message, separators=(",", ":"), sort_keys=True).encode()
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes, limit: int) -> int:
    """The body length a 4-byte header announces; DecodeError(bad_frame) past `limit` or zero."""
    length = int(HEADER.unpack(header)[0])
    if not 0 < length <= limit:
        raise DecodeError("bad_frame", f"frame of {length} bytes (limit {limit})")
    return length


def decode_body(body: bytes) -> dict[str, Any]:
    """A frame's JSON object; DecodeError(bad_frame) otherwise."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError("bad_frame", "not UTF-8 JSON") from exc
    if not isinstance(value, dict):
        raise DecodeError("bad_frame", "not a JSON object")
    return value


def request_op(message: dict[str, Any]) -> str:
    """The `op` of a joiner's request: `ca` or `join`; DecodeError(version / bad_request)."""
    if message.get("v") != PROTOCOL_VERSION:
        raise DecodeError(
            "version", f"join protocol version {message.get('v')!r}; this member speaks 1"
        )
    op = message.get("op")
    if op not in ("ca", "join"):
        raise DecodeError("bad_request", "op must be 'ca' or 'join'")
    return str(op)


# ---------------------------------------------------------------- messages
@dataclass(frozen=True)
class JoinRequest:
    """The joiner's request (design §3.11, step 3)."""

    token: str
    name: str
    links: tuple[tuple[int, str, int], ...]
    """(index, address, priority) per link, as the joiner gives them."""
    csr: str
    node_id: int | None = None
    votes: int | None = None
    force: bool = False

    def to_message(self) -> dict[str, Any]:
        """The frame's object."""
        return {
            "v": PROTOCOL_VERSION,
            "op": "join",
            "token": self.token,
            "name": self.name,
            "links": [list(k) for k in self.links],
            "csr": self.csr,
            "node_id": self.node_id,
            "votes": self.votes,
            "force": self.force,
        }

    @classmethod
    def from_message(cls, m: dict[str, Any]) -> JoinRequest:
        """Checked back; DecodeError(bad_request) naming the field for a wrong shape or range."""
        links = m.get("links")
        if not isinstance(links, list) or not 1 <= len(links) <= MAX_LINKS:
            raise DecodeError("bad_request", "links: 1 to 8 [index, address, priority]")
        return cls(
            token=_field(m, "token", str),
            name=_field(m, "name", str),
            links=tuple(_link(k) for k in links),
            csr=_field(m, "csr", str),
            node_id=_optional_int(m, "node_id", 1, MAX_NODE_ID),
            votes=_optional_int(m, "votes", 0, MAX_VOTES),
            force=_field(m, "force", bool),
        )


def _field(m: dict[str, Any], key: str, kind: type) -> Any:
    value = m.get(key)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise DecodeError("bad_request", f"field {key!r} missing or not a {kind.__name__}")
    if isinstance(value, str) and (not value or len(value) > MAX_REQUEST_FRAME):
        raise DecodeError("bad_request", f"field {key!r} empty or too long")
    return value


def _optional_int(m: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = m.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise DecodeError("bad_request", f"field {key!r} must be a whole number {low}..{high}")
    return value


def _link(raw: Any) -> tuple[int, str, int]:
    if not isinstance(raw, list) or len(raw) != 3:
        raise DecodeError("bad_request", "a link is [index, address, priority]")
    index, address, priority = raw
    if not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < MAX_LINKS):
        raise DecodeError("bad_request", "link index must be 0..7")
    if not isinstance(address, str) or not 0 < len(address) <= 64:
        raise DecodeError("bad_request", "link address must be text")
    if not (isinstance(priority, int) and not isinstance(priority, bool) and 0 <= priority < 256):
        raise DecodeError("bad_request", "link priority must be 0..255")
    return index, address, priority


@dataclass(frozen=True)
class JoinGrant:
    """The member's answer to an admitted join (design §3.11, step 4)."""

    node_id: int
    config: bytes
    """The committed cluster configuration, canonical bytes (agent/cluster_config.encode)."""
    keys: tuple[bytes, ...]
    """Cluster keys, the sealing key first."""
    ca: str
    ca_key: str
    cert: str

    def to_message(self) -> dict[str, Any]:
        """The frame's object."""
        return {
            "ok": True,
            "node_id": self.node_id,
            "config": base64.b64encode(self.config).decode(),
            "keys": [base64.b64encode(k).decode() for k in self.keys],
            "ca": self.ca,
            "ca_key": self.ca_key,
            "cert": self.cert,
        }

    @classmethod
    def from_message(cls, m: dict[str, Any]) -> JoinGrant:
        """Checked back; DecodeError(bad_reply) for a wrong shape."""
        try:
            return cls(
                node_id=_node_id(m["node_id"]),
                config=base64.b64decode(_text(m["config"]), validate=True),
                keys=tuple(base64.b64decode(_text(k), validate=True) for k in _keys(m["keys"])),
                ca=_text(m["ca"]),
                ca_key=_text(m["ca_key"]),
                cert=_text(m["cert"]),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise DecodeError("bad_reply", f"the member's answer is malformed ({exc})") from exc


def _keys(value: object) -> list[object]:
    if not isinstance(value, list) or not value:
        raise ValueError("keys")
    return value


def _node_id(value: object) -> int:
    if not isinstance(value, int) or not 1 <= value <= MAX_NODE_ID:
        raise ValueError("node_id")
    return value


@dataclass(frozen=True)
class Refusal:
    """A refused request: a counter label and one line for the user."""

    error: str
    message: str

    def to_message(self) -> dict[str, Any]:
        """The frame's object."""
        return {"ok": False, "error": self.error, "message": self.message}

    @classmethod
    def from_message(cls, m: dict[str, Any]) -> Refusal:
        """Checked back (unknown shapes become a generic refusal)."""
        error, message = m.get("error"), m.get("message")
        if not isinstance(error, str) or not isinstance(message, str):
            return cls("bad_reply", "the member refused without saying why")
        return cls(error[:40], " ".join(message.split())[:300])
