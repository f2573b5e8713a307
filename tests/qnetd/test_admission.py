"""Who may join which cluster (issue 7 items 1 and 2): the core's admission rules.

A connection belongs to the one cluster its first PREINIT names; a certificate is checked against
that name, and a second PREINIT is refused (SERVER_ERROR 8) so the name cannot be swapped after
the check. The default settings require TLS and a certificate naming the cluster. The same
sequences through a real TLS server, and against Debian's corosync-qnetd, are in
tests/qnetd/test_admission_live.py.
"""

from __future__ import annotations

import pytest

from proto.qnetd_enums import ReplyErrorCode, TlsSupported
from proto.qnetd_messages import (
    EchoRequest,
    InitReply,
    Preinit,
    PreinitReply,
    ServerError,
    StartTls,
)
from qnetd.algorithms.registry import ALGORITHMS
from qnetd.core_events import Log
from qnetd.settings import QnetdSettings
from tests.qnetd.core_helpers import Driver, init_msg

E = ReplyErrorCode
CERT_SETTINGS = [
    QnetdSettings(),
    QnetdSettings(tls=TlsSupported.REQUIRED, client_cert_required=True),
    QnetdSettings(tls=TlsSupported.SUPPORTED, client_cert_required=True),
]


@pytest.mark.parametrize("settings", CERT_SETTINGS, ids=["defaults", "required", "on"])
def test_certificate_for_alpha_does_not_admit_into_beta(settings: QnetdSettings) -> None:
    """PREINIT(alpha), STARTTLS with alpha's certificate, a checked message, PREINIT(beta), INIT:
    the second PREINIT gets SERVER_ERROR 8 and the client can only ever be listed in alpha."""
    d = Driver.make(ALGORITHMS, settings)
    d.connect(1)
    d.send(1, Preinit(seq=1, cluster_name=b"alpha"))
    d.send(1, StartTls(seq=2))
    d.tls_up(1, "alpha")
    assert d.replies(1, EchoRequest(seq=3)) == [
        ServerError(seq=3, reply_error_code=E.INIT_REQUIRED)
    ]
    assert d.replies(1, Preinit(seq=4, cluster_name=b"beta")) == [
        ServerError(seq=4, reply_error_code=E.UNEXPECTED_MESSAGE)
    ]
    (reply,) = d.replies(1, init_msg(1))
    assert isinstance(reply, InitReply)
    assert b"beta" not in d.core.clusters
    assert [c.node_id for c in d.core.clusters[b"alpha"].clients] == [1]


MODES = {
    "defaults": QnetdSettings(),
    "on-no-cert": QnetdSettings(tls=TlsSupported.SUPPORTED, client_cert_required=False),
    "off": QnetdSettings(tls=TlsSupported.UNSUPPORTED, client_cert_required=False),
}


PHASES = [
    (mode, phase)
    for mode in MODES
    for phase in ("preinit", "starttls", "tls_up", "init")
    if MODES[mode].tls is not TlsSupported.UNSUPPORTED or phase in {"preinit", "init"}
]


@pytest.mark.parametrize(("mode", "phase"), PHASES)
def test_second_preinit_is_refused_in_every_phase_and_logged(mode: str, phase: str) -> None:
    """A repeated PREINIT (after PREINIT, after STARTTLS, after the handshake, after INIT; each
    TLS mode that has the phase) is error 8 and one warning line; the connection keeps its first
    cluster name and stays open."""
    settings = MODES[mode]
    tls = settings.tls is not TlsSupported.UNSUPPORTED
    d = Driver.make(ALGORITHMS, settings)
    d.connect(1)
    d.send(1, Preinit(seq=1, cluster_name=b"alpha"))
    if phase != "preinit" and tls:
        d.send(1, StartTls(seq=2))
        if phase != "starttls":
            d.tls_up(1, "alpha")
    if phase == "init":
        (reply,) = d.replies(1, init_msg(1, seq=3))
        assert isinstance(reply, InitReply)
        assert reply.reply_error_code == E.NO_ERROR
    assert d.replies(1, Preinit(seq=9, cluster_name=b"beta")) == [
        ServerError(seq=9, reply_error_code=E.UNEXPECTED_MESSAGE)
    ]
    assert d.core.connections[1].cluster_name == b"alpha"
    assert d.disconnected() == []
    logs = [e for e in d.effects if isinstance(e, Log)]
    assert [(log.event, log.fields["reason"]) for log in logs] == [
        ("preinit refused", "preinit_repeated")
    ]
    assert b"beta" not in d.core.clusters


def test_defaults_require_tls_and_a_certificate_naming_the_cluster() -> None:
    """Default settings: PREINIT_REPLY says TLS required + certificate; a plain-text INIT gets
    SERVER_ERROR 3 and joins nothing; a certificate for another cluster is dropped."""
    d = Driver.make(ALGORITHMS, QnetdSettings())
    d.connect(1)
    assert d.replies(1, Preinit(seq=1, cluster_name=b"c1")) == [
        PreinitReply(seq=1, tls_supported=TlsSupported.REQUIRED, tls_client_cert_required=True)
    ]
    assert d.replies(1, init_msg(1)) == [ServerError(seq=2, reply_error_code=E.TLS_REQUIRED)]
    assert d.core.clusters == {}
    d.connect(2)
    d.send(2, Preinit(seq=1, cluster_name=b"c1"))
    d.send(2, StartTls(seq=2))
    d.tls_up(2, "other")
    assert d.replies(2, init_msg(2)) == []
    assert d.disconnected() == [2]
    assert d.core.clusters == {}


@pytest.mark.parametrize(
    ("settings", "warning"),
    [
        (QnetdSettings(), None),
        (QnetdSettings(tls=TlsSupported.SUPPORTED), "plain-text clients may join any cluster"),
        (QnetdSettings(tls=TlsSupported.UNSUPPORTED), "plain-text clients may join any cluster"),
        (QnetdSettings(client_cert_required=False), "any TLS client may join any cluster"),
    ],
)
def test_weaker_settings_say_what_they_let_in(settings: QnetdSettings, warning: str | None) -> None:
    """Only the default admits nobody without a certificate; every other mode names its risk."""
    got = settings.admission_warning()
    assert got == warning if warning is None else warning in (got or "")


@pytest.mark.parametrize(
    ("cluster", "cert_name", "admitted"),
    [
        (b"kube", "KUBE", True),  # ASCII letters: case-insensitive, as NSS
        (b"kube", "\u212aube", False),  # KELVIN SIGN: str.lower() makes it 'k', NSS does not
        (b"x\xff", "x\ufffd", False),  # an undecodable byte must not match U+FFFD
        (b"x\xfe", "x\ufffd", False),
        (b"caf\xc3\xa9", "CAF\u00c9", False),  # non-ASCII letters compare exactly (as NSS)
        (b"caf\xc3\xa9", "CAF\u00e9", True),
    ],
)
def test_certificate_names_compare_as_nss_does(
    cluster: bytes, cert_name: str, admitted: bool
) -> None:
    """The certificate's name and the PREINIT cluster name are compared as UTF-8 bytes with only
    ASCII letters folded (NSS's PORT_Strcasecmp). Before, both were decoded and `str.lower()`ed:
    a certificate for the cluster '\u212aube' (KELVIN SIGN, which the CA tools accept as a
    printable name) was admitted into cluster 'kube', and one for 'x\ufffd' into every cluster
    'x' + an undecodable byte: cross-cluster admission (issue 7 item 1) by a look-alike name."""
    d = Driver.make(ALGORITHMS, QnetdSettings())
    d.connect(1)
    d.send(1, Preinit(seq=1, cluster_name=cluster))
    d.send(1, StartTls(seq=2))
    d.tls_up(1, cert_name)
    replies = d.replies(1, init_msg(1))
    if admitted:
        assert [type(r) for r in replies] == [InitReply]
        assert [c.node_id for c in d.core.clusters[cluster].clients] == [1]
    else:
        assert replies == []
        assert d.disconnected() == [1]
        assert d.core.clusters == {}
        assert d.core.stats.tls_failures["name_mismatch"] == 1
