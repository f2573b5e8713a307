"""Check the state directory's CA, server certificate and key with the ssl module alone.

A server whose files already exist starts without importing `cryptography` (about 10 MB of
resident memory, issue 7 item 9): an in-memory TLS handshake between a client trusting the CA and
a server presenting the certificate proves the key matches and the certificate chains to the CA.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from qnetd.state_files import CertError, StatePaths, locked, pair_complete

MAX_ROUNDS = 8  # a TLS 1.2/1.3 handshake completes in 2-3 flights


def check_server_pki(ca: Path, cert: Path, key: Path) -> None:
    """CertError (one line, with the fix) unless `key` matches `cert` and `ca` signed `cert`."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        server.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise CertError(
            f"{key} does not belong to {cert} (or cannot be read); "
            "restore the matching files or run 'certs init --force'"
        ) from exc
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False  # 'Qnetd Server' is no host name; only the chain matters here
    try:
        client.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise CertError(f"cannot read the CA certificate {ca}; restore it") from exc
    try:
        _handshake(client, server)
    except ssl.SSLCertVerificationError as exc:
        raise CertError(
            f"{cert} is not signed by {ca} ({exc.verify_message}); "
            "restore the matching files or run 'certs init --force'"
        ) from exc


def _handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> None:
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_client, from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(to_client, from_client)
    server = server_ctx.wrap_bio(to_server, from_server, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(MAX_ROUNDS):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        if all(done.values()):
            return
    raise CertError("the CA and server certificate did not complete a TLS handshake")


def ensure_state_pki(state_dir: Path) -> StatePaths:
    """The state directory's CA and server certificate: checked here when they exist (no
    `cryptography`), created by `qnetd.certs` (which imports it) when they do not."""
    paths = StatePaths(state_dir)
    with locked(paths):
        ready = pair_complete(paths.ca_cert, paths.ca_key) and pair_complete(
            paths.server_cert, paths.server_key
        )
    if ready:
        check_server_pki(paths.ca_cert, paths.server_cert, paths.server_key)
        return paths
    from qnetd import certs  # noqa: PLC0415 (first start: create the CA)

    return certs.ensure_state(state_dir)
