"""The start-up check of an existing state directory, done with the ssl module alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from qnetd import certs
from qnetd.runtime.pki_check import check_server_pki


def test_matching_state_files_pass(tmp_path: Path) -> None:
    """The CA, server certificate and key `certs init` writes pass the handshake check."""
    paths = certs.ensure_state(tmp_path / "s")
    check_server_pki(paths.ca_cert, paths.server_cert, paths.server_key)


def test_certificate_of_another_ca_and_foreign_key_are_one_line_errors(tmp_path: Path) -> None:
    """A server certificate from another CA, or a key of another certificate, is a CertError whose
    single line says what to restore."""
    a = certs.ensure_state(tmp_path / "a")
    b = certs.ensure_state(tmp_path / "b")
    with pytest.raises(certs.CertError, match="is not signed by") as chain:
        check_server_pki(a.ca_cert, b.server_cert, b.server_key)
    with pytest.raises(certs.CertError, match="does not belong to") as key:
        check_server_pki(a.ca_cert, a.server_cert, b.server_key)
    for error in (chain.value, key.value):
        assert "\n" not in str(error)
        assert "certs init --force" in str(error)
