"""qnetd's /healthz and /metrics port is bounded: a cap on scrapes at once, and a client that
neither sends nor reads is cut after the exchange timeout (it used to hold its connection and
the whole answer for as long as it liked)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from qnetd.runtime import http

BIG = b"x" * (8 << 20)  # far more than the kernel's socket buffers


def port_of(server: asyncio.AbstractServer) -> int:
    assert isinstance(server, asyncio.Server)
    port: int = server.sockets[0].getsockname()[1]
    return port


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(2.0)
    return sock


def read_all(sock: socket.socket) -> tuple[int, bool]:
    """(bytes read until EOF or a reset, whether it ended with a reset)."""
    total = 0
    try:
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:
        return total, True
    return total, False


@pytest.mark.asyncio
async def test_a_client_that_does_not_read_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "EXCHANGE_TIMEOUT", 0.3)
    server = await http.serve_http("127.0.0.1", 0, lambda: BIG, dict)
    port = port_of(server)
    try:
        sock = connect(port)
        sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        await asyncio.sleep(1.0)  # past the timeout, without reading
        total, _reset = await asyncio.to_thread(read_all, sock)
        sock.close()
        assert total < len(BIG)  # the server gave up on it instead of writing it all
    finally:
        server.close()


@pytest.mark.asyncio
async def test_scrapes_at_once_are_capped_and_a_normal_one_still_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http, "MAX_CLIENTS", 2)
    server = await http.serve_http("127.0.0.1", 0, lambda: b"m 1\n", dict)
    port = port_of(server)
    idle = [connect(port), connect(port)]  # hold both slots without a request
    try:
        await asyncio.sleep(0.1)
        third = connect(port)
        got = await asyncio.to_thread(read_all, third)  # closed at once, nothing sent
        assert got[0] == 0
        third.close()
        for sock in idle:
            sock.close()
        await asyncio.sleep(0.1)
        scrape = connect(port)
        scrape.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        total, _ = await asyncio.to_thread(read_all, scrape)
        scrape.close()
        assert total > len(b"m 1\n")
    finally:
        server.close()
