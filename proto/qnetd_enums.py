"""Numeric ids of the qnetd wire protocol, exactly as corosync-qnetd 3.0.3 uses them.

Source: shared/ref/qnetd-protocol.md section 2. Values are append-only.
"""

from __future__ import annotations

from enum import IntEnum


class MessageType(IntEnum):
    """Message types (u16), reference section 2.1."""

    PREINIT = 0
    PREINIT_REPLY = 1
    STARTTLS = 2
    INIT = 3
    INIT_REPLY = 4
    SERVER_ERROR = 5
    SET_OPTION = 6
    SET_OPTION_REPLY = 7
    ECHO_REQUEST = 8
    ECHO_REPLY = 9
    NODE_LIST = 10
    NODE_LIST_REPLY = 11
    ASK_FOR_VOTE = 12
    ASK_FOR_VOTE_REPLY = 13
    VOTE_INFO = 14
    VOTE_INFO_REPLY = 15
    HEURISTICS_CHANGE = 16
    HEURISTICS_CHANGE_REPLY = 17


class OptionType(IntEnum):
    """TLV option types (u16), reference section 2.2."""

    MSG_SEQ_NUMBER = 0
    CLUSTER_NAME = 1
    TLS_SUPPORTED = 2
    TLS_CLIENT_CERT_REQUIRED = 3
    SUPPORTED_MESSAGES = 4
    SUPPORTED_OPTIONS = 5
    REPLY_ERROR_CODE = 6
    SERVER_MAXIMUM_REQUEST_SIZE = 7
    SERVER_MAXIMUM_REPLY_SIZE = 8
    NODE_ID = 9
    SUPPORTED_DECISION_ALGORITHMS = 10
    DECISION_ALGORITHM = 11
    HEARTBEAT_INTERVAL = 12
    RING_ID = 13
    CONFIG_VERSION = 14
    DATA_CENTER_ID = 15
    NODE_STATE = 16
    NODE_INFO = 17
    NODE_LIST_TYPE = 18
    VOTE = 19
    QUORATE = 20
    TIE_BREAKER = 21
    HEURISTICS = 22
    KEEP_ACTIVE_PARTITION_TIE_BREAKER = 23


class TlsSupported(IntEnum):
    """Server TLS mode / client TLS setting, reference section 2.3."""

    UNSUPPORTED = 0
    SUPPORTED = 1
    REQUIRED = 2


class DecisionAlgorithm(IntEnum):
    """Decision algorithms (u16), reference section 2.3."""

    TEST = 0
    FFSPLIT = 1
    TWO_NODE_LMS = 2
    LMS = 3


class Vote(IntEnum):
    """Votes (u8); 0 is never on the wire, reference section 2.3."""

    ACK = 1
    NACK = 2
    ASK_LATER = 3
    WAIT_FOR_REPLY = 4
    NO_CHANGE = 5


class NodeState(IntEnum):
    """Node state inside NODE_INFO (u8); 0 'not set' is expressed by omitting it."""

    MEMBER = 1
    DEAD = 2
    LEAVING = 3


class NodeListType(IntEnum):
    """NODE_LIST_TYPE (u8), reference section 2.3."""

    INITIAL_CONFIG = 0
    CHANGED_CONFIG = 1
    MEMBERSHIP = 2
    QUORUM = 3


class TieBreakerMode(IntEnum):
    """Tie-breaker mode, first byte of the TIE_BREAKER option."""

    LOWEST = 1
    HIGHEST = 2
    NODE_ID = 3


class Heuristics(IntEnum):
    """Heuristics result (u8); 0 'undefined' is expressed by omitting the TLV."""

    PASS = 1
    FAIL = 2


class ReplyErrorCode(IntEnum):
    """REPLY_ERROR_CODE values (u16), reference section 2.4."""

    NO_ERROR = 0
    UNSUPPORTED_NEEDED_MESSAGE = 1
    UNSUPPORTED_NEEDED_OPTION = 2
    TLS_REQUIRED = 3
    UNSUPPORTED_MESSAGE = 4
    MESSAGE_TOO_LONG = 5
    PREINIT_REQUIRED = 6
    DOESNT_CONTAIN_REQUIRED_OPTION = 7
    UNEXPECTED_MESSAGE = 8
    ERROR_DECODING_MSG = 9
    INTERNAL_ERROR = 10
    INIT_REQUIRED = 11
    UNSUPPORTED_DECISION_ALGORITHM = 12
    INVALID_HEARTBEAT_INTERVAL = 13
    UNSUPPORTED_DECISION_ALGORITHM_MESSAGE = 14
    TIE_BREAKER_DIFFERS_FROM_OTHER_NODES = 15
    ALGORITHM_DIFFERS_FROM_OTHER_NODES = 16
    DUPLICATE_NODE_ID = 17
    INVALID_CONFIG_NODE_LIST = 18
    INVALID_MEMBERSHIP_NODE_LIST = 19


# Server -> client message types; a server receiving one answers UNEXPECTED_MESSAGE (8).
SERVER_TO_CLIENT = frozenset(
    {
        MessageType.PREINIT_REPLY,
        MessageType.INIT_REPLY,
        MessageType.SERVER_ERROR,
        MessageType.SET_OPTION_REPLY,
        MessageType.ECHO_REPLY,
        MessageType.NODE_LIST_REPLY,
        MessageType.ASK_FOR_VOTE_REPLY,
        MessageType.VOTE_INFO,
        MessageType.HEURISTICS_CHANGE_REPLY,
    }
)
