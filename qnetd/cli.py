"""`votemesh-qnetd`: run the arbitrator, show its status, manage certificates and tokens.

Adapter ring: parses arguments, turns user mistakes into one-line errors with exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, NoReturn

from proto.host_port import MAX_PORT, parse_host, parse_host_port, parse_port
from proto.qnetd_enums import TlsSupported
from qnetd import cli_certs

DEFAULT_STATE_DIR = "/var/lib/votemesh-qnetd"
DEFAULT_CONTROL_SOCKET = "/run/votemesh-qnetd/qnetd.sock"
ON_OFF = {"on": True, "yes": True, "1": True, "off": False, "no": False, "0": False}
TLS_MODES = {"on": TlsSupported.SUPPORTED, "off": TlsSupported.UNSUPPORTED}
TLS_MODES |= {"required": TlsSupported.REQUIRED, "req": TlsSupported.REQUIRED}
TLS_HELP = (
    "required (default): every client must start TLS; on: TLS optional, so a plain-text client "
    "may join ANY cluster without a certificate (corosync-qnetd's -s on); off: no TLS at all"
)
CERT_HELP = (
    "on (default): a TLS client needs a certificate naming its cluster; off: any TLS client may "
    "join any cluster"
)


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


def port_number(text: str) -> int:
    """A TCP port 1-65535 (argparse type); anything else is a usage error, never wrapped."""
    try:
        return parse_port(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _host_port(text: str, default_port: int, option: str) -> tuple[str, int] | None:
    """HOST[:PORT], [IPV6][:PORT] or a bare IPv6 address (proto/host_port.py), or 'off'."""
    if text.lower() == "off":
        return None
    try:
        return parse_host_port(text, default_port, default_host="127.0.0.1")
    except ValueError as exc:
        raise UserError(
            f"{option} '{text}': {exc}; use HOST:PORT or [IPV6]:PORT with a port 1-{MAX_PORT}, "
            "or 'off'"
        ) from None


def _listen_host(text: str | None) -> str | None:
    """--listen: an address of this host (NAME, IPv4, IPV6 or [IPV6]), no port."""
    if text is None:
        return None
    try:
        return parse_host(text)
    except ValueError as exc:
        raise UserError(f"--listen '{text}': {exc}; give --port separately") from None


def _http_listen(text: str) -> tuple[str, int] | Path | None:
    if text.startswith("unix:"):
        if not text[5:]:
            raise UserError("--http-listen unix: needs a socket path, e.g. unix:/run/x/http.sock")
        return Path(text[5:])
    return _host_port(text, 9403, "--http-listen")


def _choice(table: dict[str, Any], what: str) -> Any:
    def parse(text: str) -> Any:
        try:
            return table[text.lower()]
        except KeyError:
            raise argparse.ArgumentTypeError(f"{what} must be one of {', '.join(table)}") from None

    return parse


def add_run(sub: Any) -> None:
    """`run`: the server."""
    p = sub.add_parser("run", help="run the arbitrator (foreground)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="CA, certificates, tokens")
    p.add_argument("--listen", "-l", default=None, help="listen address (default: all)")
    p.add_argument("--port", "-p", type=port_number, default=5403, help="1-65535 (default 5403)")
    family = p.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const="4", help="IPv4 only")
    family.add_argument("-6", dest="family", action="store_const", const="6", help="IPv6 socket")
    p.add_argument(
        "--tls", "-s", type=_choice(TLS_MODES, "--tls"), default="required", help=TLS_HELP
    )
    p.add_argument(
        "--client-cert-required",
        "-c",
        type=_choice(ON_OFF, "--client-cert-required"),
        default="on",
        help=CERT_HELP,
    )
    p.add_argument("--max-clients", "-m", type=int, default=0, help="0 = unlimited")
    p.add_argument("--ca-cert", type=Path, help="operator PKI: CA certificate (PEM)")
    p.add_argument("--server-cert", type=Path, help="operator PKI: 'Qnetd Server' certificate")
    p.add_argument("--server-key", type=Path, help="operator PKI: its private key")
    p.add_argument(
        "--http-listen",
        default="127.0.0.1:9403",
        help="/healthz and /metrics: HOST:PORT (plain HTTP: every local user can read it), "
        "unix:PATH (a socket only root and the service group can use), or 'off'",
    )
    p.add_argument("--enroll-listen", default="off", help="enrollment endpoint HOST:PORT or 'off'")
    p.add_argument("--control-socket", default=DEFAULT_CONTROL_SOCKET)
    p.add_argument("--heartbeat-min", type=int, default=1000, help="ms")
    p.add_argument("--heartbeat-max", type=int, default=120000, help="ms")
    p.add_argument("--dpd-coefficient", type=float, default=1.5)
    p.add_argument(
        "--keep-active-partition-default",
        type=_choice(ON_OFF, "--keep-active-partition-default"),
        default="off",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _add_connection_limits(p)
    p.set_defaults(func=cmd_run, family="any")


def _add_connection_limits(p: Any) -> None:
    """Limits on connections that have not INIT-ed yet (docs/qnetd.md, "Under abuse")."""
    g = p.add_argument_group("unauthenticated connections")
    g.add_argument("--preinit-timeout", type=float, default=5.0, help="s from accept to INIT")
    g.add_argument("--preinit-per-source", type=int, default=16, help="not INIT-ed, per address")
    g.add_argument("--preinit-max", type=int, default=1024, help="not INIT-ed, in all")
    g.add_argument("--fd-reserve", type=int, default=128, help="file descriptors kept free")


def _connection_limit_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "preinit_timeout": args.preinit_timeout,
        "preinit_per_source": args.preinit_per_source,
        "preinit_max": args.preinit_max,
        "fd_reserve": args.fd_reserve,
    }


def cmd_run(args: argparse.Namespace) -> int:
    """Run the server until stopped."""
    from qnetd.runtime.app import RunOptions, run_server  # noqa: PLC0415
    from qnetd.runtime.control import ControlSocketInUseError  # noqa: PLC0415
    from qnetd.runtime.observability import configure_logging  # noqa: PLC0415
    from qnetd.settings import QnetdSettings  # noqa: PLC0415
    from qnetd.state_files import CertError  # noqa: PLC0415 (heavy imports)

    pki = (args.ca_cert, args.server_cert, args.server_key)
    if any(pki) and not all(pki):
        raise UserError("give all three of --ca-cert, --server-cert and --server-key, or none")
    if all(pki) and args.enroll_listen.lower() != "off":
        raise UserError(
            "--enroll-listen signs with the state-directory CA, which your --ca-cert does not "
            "trust; issue node certificates with your own PKI and drop --enroll-listen"
        )
    settings = QnetdSettings(
        tls=args.tls,
        client_cert_required=args.client_cert_required,
        max_clients=args.max_clients,
        heartbeat_min_ms=args.heartbeat_min,
        heartbeat_max_ms=args.heartbeat_max,
        dpd_coefficient=args.dpd_coefficient,
        keep_active_partition_default=args.keep_active_partition_default,
        **_connection_limit_settings(args),
    )
    try:
        settings.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    options = RunOptions(
        settings=settings,
        state_dir=Path(args.state_dir),
        listen=_listen_host(args.listen),
        port=args.port,
        family=args.family,
        control_socket=Path(args.control_socket),
        http_listen=_http_listen(args.http_listen),
        enroll_listen=_host_port(args.enroll_listen, 5404, "--enroll-listen"),
        ca_cert=args.ca_cert,
        server_cert=args.server_cert,
        server_key=args.server_key,
    )
    configure_logging(args.log_level)
    try:
        asyncio.run(run_server(options))
    except CertError as exc:
        raise UserError(f"cannot start: {exc}") from None
    except ControlSocketInUseError:
        raise UserError(
            f"another votemesh-qnetd is running with --control-socket {args.control_socket}; "
            "stop it first, or give this one its own --control-socket"
        ) from None
    except PermissionError as exc:
        raise UserError(
            f"{exc.filename}: permission denied; run as the service user or root"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot start: {exc}") from None
    return 0


def add_status(sub: Any) -> None:
    """`status`: what the running server sees."""
    p = sub.add_parser("status", help="clusters, clients and votes of the running server")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--cluster", "-c", help="only this cluster")
    p.add_argument("--control-socket", default=DEFAULT_CONTROL_SOCKET)
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    """Query the control socket and print status + list (text) or the snapshot (JSON)."""
    from proto.runtime.control_client import request  # noqa: PLC0415

    path = Path(args.control_socket)
    verbose = " verbose" if args.verbose else ""
    cluster = f' cluster "{args.cluster}"' if args.cluster else ""
    try:
        if args.json:
            ok, text = request(path, "json")
            if ok and args.cluster:
                snap = json.loads(text)
                snap["clusters"] = [c for c in snap["clusters"] if c["name"] == args.cluster]
                text = json.dumps(snap, indent=2, sort_keys=True) + "\n"
        else:
            ok, head = request(path, f"status{verbose}")
            ok2, body = request(path, f"list{verbose}{cluster}")
            ok, text = ok and ok2, head + body
    except (FileNotFoundError, ConnectionRefusedError):
        raise UserError(
            f"no qnetd is listening on {path}; is it running? (--control-socket)"
        ) from None
    except PermissionError:
        raise UserError(
            f"{path}: permission denied; run as root or the votemesh-qnetd group"
        ) from None
    except TimeoutError:
        raise UserError(f"the qnetd on {path} did not answer within 5 s") from None
    sys.stdout.write(text)
    return 0 if ok else 1


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what is wrong and where to look, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = _Parser(
        prog="votemesh-qnetd", description="votemesh quorum arbitrator (corosync-qnetd compatible)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('votemesh')}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run(sub)
    add_status(sub)
    cli_certs.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"votemesh-qnetd: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
