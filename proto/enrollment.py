"""Enrollment wire shapes shared by the arbitrator and the node: token text, request, response.

Pure: no secrets are drawn, no files, no clock, no sockets. Garbage raises `DecodeError` with a
short `reason` for counters (`malformed` for a bad token text, `bad_request` for bad JSON).

Token text (what `votemesh-qnetd token create` prints and the node passes to `enroll`):

    vmq1.<cluster>.<secret>.<ca sha256>

four dot-separated fields, the last three unpadded base64url (RFC 4648 section 5): the UTF-8
cluster name, the random secret (16-64 bytes) and the SHA-256 of the CA certificate's DER. Dots
never occur in base64url, so the split is unambiguous. The server keeps only SHA-256(secret); the
fingerprint lets the node authenticate the server before it sends the secret.

HTTP over TLS (port 5404): `GET /v1/ca` answers the CA PEM; `POST /v1/enroll` takes
`{"token": str, "csr": PEM str}` and answers `{"certificate": PEM, "ca": PEM, "cluster": str}`,
or a 4xx with `{"error": reason, "message": text}`.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from proto.errors import DecodeError

TOKEN_PREFIX = "vmq1"  # noqa: S105 -- a format tag, not a secret
DEFAULT_ENROLL_PORT = 5404  # docs/design.md 2.2
CA_PATH = "/v1/ca"
ENROLL_PATH = "/v1/enroll"
MAX_BODY_BYTES = 16384  # a 2048-bit PEM request is ~1 KiB; a 4096-bit one below 2 KiB
SHA256_BYTES = 32
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 64
MAX_CLUSTER_BYTES = 255  # corosync's cluster_name limit is far below this


def b64url(data: bytes) -> str:
    """Unpadded base64url text."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """Inverse of `b64url`; DecodeError(malformed) on anything else."""
    if not text or not all(c.isalnum() or c in "-_" for c in text) or not text.isascii():
        raise DecodeError("malformed", "not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise DecodeError("malformed", "not base64url") from exc


@dataclass(frozen=True)
class Token:
    """A parsed enrollment token."""

    cluster: str
    secret: bytes
    ca_sha256: bytes

    def encode(self) -> str:
        """The token text `vmq1.<cluster>.<secret>.<ca sha256>`."""
        parts = (self.cluster.encode(), self.secret, self.ca_sha256)
        return ".".join([TOKEN_PREFIX, *(b64url(p) for p in parts)])

    @classmethod
    def parse(cls, text: str) -> Token:
        """Token text back into its fields; DecodeError(malformed) on anything else."""
        fields = text.strip().split(".")
        if len(fields) != 4 or fields[0] != TOKEN_PREFIX:
            raise DecodeError("malformed", f"a token has 4 fields and starts with {TOKEN_PREFIX}.")
        cluster_raw, secret, ca_sha256 = (unb64url(f) for f in fields[1:])
        try:
            cluster = cluster_raw.decode()
        except UnicodeDecodeError as exc:
            raise DecodeError("malformed", "cluster name is not UTF-8") from exc
        if not 0 < len(cluster_raw) <= MAX_CLUSTER_BYTES:
            raise DecodeError("malformed", "bad cluster name length")
        if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
            raise DecodeError("malformed", "bad secret length")
        if len(ca_sha256) != SHA256_BYTES:
            raise DecodeError("malformed", "CA fingerprint is not 32 bytes")
        return cls(cluster, secret, ca_sha256)


def _object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError("bad_request", "body is not JSON") from exc
    if not isinstance(value, dict):
        raise DecodeError("bad_request", "body is not a JSON object")
    return value


def _text(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise DecodeError("bad_request", f"field {key!r} missing or not a string")
    return value


@dataclass(frozen=True)
class EnrollRequest:
    """Node to server: the token text and a PEM PKCS#10 request."""

    token: str
    csr: str

    def to_json(self) -> bytes:
        """JSON body."""
        return json.dumps({"token": self.token, "csr": self.csr}).encode()

    @classmethod
    def from_json(cls, body: bytes) -> EnrollRequest:
        """Parse a request body; DecodeError(bad_request) on a wrong shape."""
        obj = _object(body)
        return cls(_text(obj, "token"), _text(obj, "csr"))


@dataclass(frozen=True)
class EnrollResponse:
    """Server to node: the signed certificate, the CA (both PEM) and the cluster name."""

    certificate: str
    ca: str
    cluster: str

    def to_json(self) -> bytes:
        """JSON body."""
        return json.dumps(
            {"certificate": self.certificate, "ca": self.ca, "cluster": self.cluster}
        ).encode()

    @classmethod
    def from_json(cls, body: bytes) -> EnrollResponse:
        """Parse a response body; DecodeError(bad_request) on a wrong shape."""
        obj = _object(body)
        return cls(_text(obj, "certificate"), _text(obj, "ca"), _text(obj, "cluster"))


@dataclass(frozen=True)
class ErrorResponse:
    """A refusal: a machine-readable reason and a one-line message for the operator."""

    error: str
    message: str

    def to_json(self) -> bytes:
        """JSON body."""
        return json.dumps({"error": self.error, "message": self.message}).encode()

    @classmethod
    def from_json(cls, body: bytes) -> ErrorResponse:
        """Parse an error body; DecodeError(bad_request) on a wrong shape."""
        obj = _object(body)
        return cls(_text(obj, "error"), _text(obj, "message"))
