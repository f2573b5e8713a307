"""Cluster names that could pass as the arbitrator's identity are refused (issue 7 item 4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proto.cert_names import SERVER_NAME, is_server_name, reserved_cluster_name


@pytest.mark.parametrize(
    "name",
    [
        "Qnetd Server",
        "qnetd server",
        "QNETD SERVER",
        "  Qnetd   Server ",
        "Qnetd Server.",
        "QNet CA",
        "qnet ca",
        "QNetd Cert",
        "cluster cert",
        "*",
        "*.prod",
    ],
)
def test_names_mistakable_for_the_server_or_wildcards_are_reserved(name: str) -> None:
    """Case, blank and trailing-dot variants of the server's, the CA's and the NSS nicknames, and
    any wildcard, are refused with a reason that quotes the name."""
    problem = reserved_cluster_name(name)
    assert problem is not None
    assert repr(name) in problem


@pytest.mark.parametrize("name", ["mycluster", "Qnetd", "Qnetd Server 2", "prod-a", "QNet"])
def test_ordinary_cluster_names_are_fine(name: str) -> None:
    """Names that merely resemble a reserved one are allowed."""
    assert reserved_cluster_name(name) is None


def test_server_name_check_is_case_insensitive_like_nss() -> None:
    """The node's check accepts exactly the case variants of `Qnetd Server`."""
    assert is_server_name(SERVER_NAME)
    assert is_server_name("QNETD server")
    assert not is_server_name("Qnetd Server2")
    assert not is_server_name("Qnetd \u017ferver")  # LONG S: casefold() makes it 's', NSS does not
    assert not is_server_name("QNETD \u017fERVER")


@given(st.text(min_size=1, max_size=40))
def test_no_allowed_cluster_name_passes_as_the_server(name: str) -> None:
    """Whatever name is allowed for a cluster, the node's server-name check rejects it, also
    with a trailing dot or other blanks (so no cluster certificate can answer as the arbitrator)."""
    if reserved_cluster_name(name) is None:
        assert not is_server_name(name)
        assert not is_server_name(" ".join(name.split()).rstrip("."))
