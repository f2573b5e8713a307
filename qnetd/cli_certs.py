"""`votemesh-qnetd certs init|sign|client` and `token create|list` (docs/design.md 2.2).

Adapter ring: reads the clock, prints, and turns `CertError` / bad arguments into `UserError`
(one line, exit status 2).
"""

from __future__ import annotations

import argparse
import datetime
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from proto.cert_names import reserved_cluster_name
from qnetd import enrollment, state_files

DEFAULT_STATE_DIR = Path("/var/lib/votemesh-qnetd")
TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_REQUEST_BYTES = 65536
MAX_CLUSTER_BYTES = 255


def parse_ttl(text: str) -> float:
    """`90`, `90s`, `15m`, `1h`, `7d` -> seconds; argparse turns a ValueError into a usage error."""
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"bad --ttl {text!r}; use e.g. 90s, 15m, 1h or 7d")
    return float(int(match.group(1)) * TTL_UNITS[match.group(2) or "s"])


def cluster_name(text: str) -> str:
    """A cluster name as corosync's totem.cluster_name: 1-255 bytes, printable, no '/'."""
    if not text or len(text.encode()) > MAX_CLUSTER_BYTES:
        raise argparse.ArgumentTypeError("a cluster name has 1 to 255 bytes")
    if not text.isprintable() or "/" in text:
        raise argparse.ArgumentTypeError(f"bad cluster name {text!r}: use totem.cluster_name")
    problem = reserved_cluster_name(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem}; choose another totem.cluster_name")
    return text


def _user_error(message: str) -> Exception:
    from qnetd.cli import UserError  # noqa: PLC0415 -- cli imports this module

    return UserError(message)


def _state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"state directory (default {DEFAULT_STATE_DIR})",
    )


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Register the certs and token subcommands."""
    certs_parser = sub.add_parser("certs", help="CA, server and client certificates")
    certs_sub = certs_parser.add_subparsers(dest="certs_command", required=True)

    p = certs_sub.add_parser("init", help="create the CA and the server certificate")
    _state_dir(p)
    p.add_argument("--force", action="store_true", help="replace an existing CA")
    p.set_defaults(func=cmd_certs_init)

    p = certs_sub.add_parser("sign", help="sign a cluster's certificate request")
    p.add_argument("request", type=Path, help="PKCS#10 request, PEM or DER (qdevice-net-node.crq)")
    p.add_argument(
        "--cluster", required=True, type=cluster_name, help="cluster name; must be the request's CN"
    )
    p.add_argument(
        "--out", type=Path, help="certificate file (default ./cluster-NAME.crt, DER; .pem: PEM)"
    )
    _state_dir(p)
    p.set_defaults(func=cmd_certs_sign)

    p = certs_sub.add_parser("client", help="key and certificate files for a cluster's nodes")
    p.add_argument(
        "--cluster", required=True, type=cluster_name, help="cluster name (totem.cluster_name)"
    )
    p.add_argument("--out", type=Path, required=True, help="directory to write into")
    p.add_argument("--force", action="store_true", help="replace existing files")
    _state_dir(p)
    p.set_defaults(func=cmd_certs_client)

    token_parser = sub.add_parser("token", help="one-time enrollment tokens")
    token_sub = token_parser.add_subparsers(dest="token_command", required=True)
    p = token_sub.add_parser("create", help="print a new one-time token for a cluster")
    p.add_argument(
        "--cluster", required=True, type=cluster_name, help="cluster name (totem.cluster_name)"
    )
    p.add_argument("--ttl", type=parse_ttl, default=enrollment.DEFAULT_TTL, help="e.g. 15m, 1h")
    _state_dir(p)
    p.set_defaults(func=cmd_token_create)

    p = token_sub.add_parser("list", help="show stored tokens (hashes only)")
    _state_dir(p)
    p.set_defaults(func=cmd_token_list)


def cmd_certs_init(args: argparse.Namespace) -> int:
    """Create the CA and server certificate."""
    from qnetd import certs  # noqa: PLC0415 (cryptography: not for `run`)

    try:
        paths = certs.init(args.state_dir, args.force)
    except certs.CertError as exc:
        raise _user_error(str(exc)) from exc
    fingerprint = certs.state_ca_fingerprint(paths.root).hex(":")
    print(f"CA {paths.ca_cert} (SHA-256 {fingerprint}), server certificate {paths.server_cert}")
    if args.force:  # tokens pin the old CA: nodes would refuse them anyway
        dropped = enrollment.TokenStore(paths.tokens).purge_expired(now=math.inf)
        print(f"dropped {dropped} enrollment token(s) made for the old CA")
    return 0


def cmd_certs_sign(args: argparse.Namespace) -> int:
    """Sign a request; write DER (like corosync-qnetd-certutil -s) or PEM for a .pem name."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    from qnetd import certs  # noqa: PLC0415 (cryptography: not for `run`)

    out: Path = args.out or Path(f"cluster-{args.cluster}.crt")
    try:
        with args.request.open("rb") as f:
            request = f.read(MAX_REQUEST_BYTES)
    except OSError as exc:
        raise _user_error(f"cannot read {args.request}: {exc.strerror}") from exc
    try:
        certs.ensure_state(args.state_dir)
        cert = certs.sign_request(args.state_dir, request, args.cluster)
    except certs.CertError as exc:
        raise _user_error(f"{args.request}: {exc}") from exc
    encoding = serialization.Encoding.PEM if out.suffix == ".pem" else serialization.Encoding.DER
    certs.write_atomic(out, cert.public_bytes(encoding), certs.PUBLIC_MODE)
    print(f"signed CN={args.cluster} serial {cert.serial_number}: {out}")
    return 0


def cmd_certs_client(args: argparse.Namespace) -> int:
    """Write ca.pem, client.pem, client.key, client.p12."""
    from qnetd import certs  # noqa: PLC0415 (cryptography: not for `run`)

    try:
        certs.ensure_state(args.state_dir)
        bundle = certs.client_bundle(args.state_dir, args.cluster, args.out, args.force)
    except certs.CertError as exc:
        raise _user_error(str(exc)) from exc
    print(
        f"wrote {bundle.ca_pem}, {bundle.client_pem}, {bundle.client_key}, {bundle.client_p12}; "
        f"on each node: corosync-qdevice-net-certutil -i -c ca.pem && "
        f"corosync-qdevice-net-certutil -m -c client.p12"
    )
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    """Print a one-time token; only its hash is stored. Say which state dir and CA it is for, and
    warn when no running server uses that state dir (the node would find another CA there)."""
    from qnetd import certs  # noqa: PLC0415 (cryptography: not for `run`)

    had_ca = state_files.StatePaths(args.state_dir).ca_cert.exists()
    try:
        paths = certs.ensure_state(args.state_dir)
        fingerprint = certs.state_ca_fingerprint(paths.root)
        text = enrollment.TokenStore(paths.tokens).create(
            args.cluster, fingerprint, ttl=args.ttl, now=time.time()
        )
    except (certs.CertError, ValueError) as exc:
        raise _user_error(str(exc)) from exc
    print(text)
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=args.ttl)
    print(
        f"single use, cluster {args.cluster}, expires {expires:%Y-%m-%d %H:%M:%S}Z, "
        f"state dir {paths.root}, CA SHA-256 {fingerprint.hex(':')}",
        file=sys.stderr,
    )
    if not had_ca:
        print(f"created a new CA in {paths.root} (there was none)", file=sys.stderr)
    if not certs.server_running(paths):
        print(
            f"warning: no votemesh-qnetd is running with --state-dir {paths.root}; a node can only "
            "enroll at a server using this state dir (pass the server's --state-dir)",
            file=sys.stderr,
        )
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    """One line per stored token: hash prefix, cluster, expiry, state."""
    now = time.time()
    try:
        records = enrollment.TokenStore(state_files.StatePaths(args.state_dir).tokens).list()
    except ValueError as exc:
        raise _user_error(str(exc)) from exc
    for r in records:
        state = "used" if r.used_at is not None else "expired" if r.expires_at <= now else "valid"
        expires = datetime.datetime.fromtimestamp(r.expires_at, datetime.UTC)
        print(f"{r.sha256[:12]}  {r.cluster}  {expires:%Y-%m-%d %H:%M:%S}Z  {state}")
    return 0
