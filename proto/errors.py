"""The two error types of the wire layer.

`DecodeError` means the peer sent something we cannot accept; it carries the qnetd reply code a
server answers with, a short machine-readable reason for counters and, when the message's
sequence number could be read before the failure, that number (the server echoes it).
`LocalProtocolError` means our own code asked for something impossible: a bug, raised loudly.
"""

from __future__ import annotations

from proto.qnetd_enums import ReplyErrorCode


class DecodeError(Exception):
    """Bytes from a peer that do not form an acceptable message."""

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        code: ReplyErrorCode = ReplyErrorCode.ERROR_DECODING_MSG,
        seq: int | None = None,
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.code = code
        self.seq = seq
        """MSG_SEQ_NUMBER read before the failure (the last one in wire order), else None."""


class LocalProtocolError(Exception):
    """Our own misuse of the wire layer, e.g. a value too wide for its field."""


class CertificateError(Exception):
    """A certificate problem the operator can fix (a bad request, a wrong key type); the message
    is one line that says how. qnetd's `CertError` is this class."""
