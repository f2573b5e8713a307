"""Misbehaving clients for abuse tests and the abuse benchmark: connections that never INIT.

Three kinds, each a plain non-blocking socket the caller holds open and closes:

- `idle`: TCP connected, nothing sent;
- `preinit`: a PREINIT sent, nothing more;
- `tls_stalled`: PREINIT, STARTTLS and a real TLS ClientHello, then silence (the server has
  answered with its ServerHello and certificate and waits for a handshake that never ends).

`source` is a loopback address (any of 127.0.0.0/8) the socket binds to, so tests can show
per-source limits with several sources on one machine.
"""

from __future__ import annotations

import contextlib
import json
import resource
import selectors
import socket
import ssl
import sys
import time
from collections.abc import Iterable

from proto.qnetd_messages import Preinit, StartTls, encode

KINDS = ("idle", "preinit", "tls_stalled")


def client_hello() -> bytes:
    """The first flight of a TLS client: a ClientHello record, as a real handshake sends it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def open_abuser(
    port: int, kind: str, source: str = "127.0.0.1", hello: bytes = b""
) -> socket.socket:
    """Connect from `source` to 127.0.0.1:`port` and misbehave as `kind`; return the socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((source, 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        if kind in ("preinit", "tls_stalled"):
            sock.sendall(encode(Preinit(seq=1, cluster_name=b"abuse")))
        if kind == "tls_stalled":
            sock.sendall(encode(StartTls(seq=2)) + (hello or client_hello()))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def is_closed_by_peer(sock: socket.socket) -> bool:
    """True when the peer has closed (FIN or RST); reads and discards what it sent before."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def wait_closed(socks: Iterable[socket.socket], timeout: float) -> int:
    """Wait up to `timeout` s for the peer to close every socket; return how many it closed."""
    closed = 0
    with selectors.DefaultSelector() as selector:  # epoll: no FD_SETSIZE limit
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(0.2):
                peer = key.fileobj
                if isinstance(peer, socket.socket) and is_closed_by_peer(peer):
                    selector.unregister(peer)
                    closed += 1
    return closed


def count_closed(socks: Iterable[socket.socket]) -> int:
    """How many of these sockets the peer has closed by now (without waiting)."""
    return sum(1 for sock in socks if is_closed_by_peer(sock))


def close_all(socks: Iterable[socket.socket]) -> None:
    """Close our side of every socket."""
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


def hold(
    port: int,
    target: int,
    seconds: float,
    sources: list[str],
    max_rate: float,
    *,
    kinds: tuple[str, ...] = KINDS,
    reopen: bool = True,
) -> dict[str, int]:
    """Open abusive connections (at most `max_rate` per second, kinds and sources in turn) and
    hold them for `seconds`, then close them all. `reopen` (churn): keep `target` open,
    re-opening what the server drops; else open `target` once and re-open nothing (and print
    `{"opened_all": N}` once they are all open). Counts:
    opened, failed connects, `held_max` (open at once as seen from here) and `closed_by_server`
    (refused, evicted or timed out while held)."""
    hello = client_hello()
    held: set[socket.socket] = set()
    counts = dict.fromkeys(("opened", "failed", "held_max", "closed_by_server"), 0)
    started = time.monotonic()
    burst = 1.0 if reopen else 0.0  # churn may open a second's worth at once
    announced = False
    with selectors.DefaultSelector() as selector:
        while time.monotonic() < started + seconds:
            while (len(held) if reopen else counts["opened"] + counts["failed"]) < target and (
                counts["opened"] < max_rate * (time.monotonic() - started + burst)
            ):
                n = counts["opened"]
                try:
                    sock = open_abuser(
                        port, kinds[n % len(kinds)], sources[n % len(sources)], hello
                    )
                except OSError:
                    counts["failed"] += 1
                    if reopen:
                        break
                    continue
                held.add(sock)
                selector.register(sock, selectors.EVENT_READ)
                counts["opened"] += 1
            counts["held_max"] = max(counts["held_max"], len(held))
            opening = not reopen and counts["opened"] + counts["failed"] < target
            if not reopen and not opening and not announced:  # tell the bench: all are open now
                print(json.dumps({"opened_all": counts["opened"]}), flush=True)
                announced = True
            for key, _ in selector.select(0.01 if opening else 0.05):
                peer = key.fileobj
                if isinstance(peer, socket.socket) and is_closed_by_peer(peer):
                    selector.unregister(peer)
                    held.discard(peer)
                    peer.close()
                    counts["closed_by_server"] += 1
        close_all(held)
    return counts


def main(argv: list[str]) -> int:
    """`python -m tests.qnetd.abusers PORT TARGET SECONDS SOURCES MAX_RATE [MODE [KINDS]]`.

    MODE `churn` (default: re-open what the server drops) or `once` (open TARGET, no re-open);
    KINDS a comma-separated subset of idle,preinit,tls_stalled (default all three in turn).
    Prints the counts as JSON. A process of its own, so the abuse does not share an interpreter
    lock with the measurements.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port, target, seconds, sources, rate = argv[:5]
    mode = argv[5] if len(argv) > 5 else "churn"
    kinds = tuple(argv[6].split(",")) if len(argv) > 6 else KINDS
    if mode not in ("churn", "once") or not set(kinds) <= set(KINDS):
        print(f"mode churn|once, kinds from {','.join(KINDS)}", file=sys.stderr)
        return 1
    addresses = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(int(sources))]
    result = hold(
        int(port), int(target), float(seconds), addresses, float(rate),
        kinds=kinds, reopen=mode == "churn",
    )  # fmt: skip
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
