"""`votemesh qdevice setup` / `remove` inside the agent: enroll with votemesh-qnetd, then one
configuration change that every node receives (design §3.11, qdevice).

Adapter ring. Control requests (one line each):

    qdevice-setup HOST PORT ENROLL_PORT TOKEN ALGORITHM TIE_BREAKER FORCE(0|1)
    qdevice-remove

Setup enrolls with the qnetd's one-time token (`agent/runtime/enroll.py`: the qnetd's CA pinned
by the token's fingerprint, the key made here) in a private temporary directory, and puts the
device settings with the credentials themselves (PEM text, not paths) into the cluster
configuration, so every member gets them through replication. Like `pvecm qdevice setup`, an
odd node count with ffsplit is refused unless forced: an odd cluster cannot split into equal
halves, so ffsplit's one vote breaks no tie and only adds a dependency. Every node applies the
new device settings at run time (the runtime's `QdeviceReconfigure`: a new qdevice session).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import structlog

from agent.cluster_config import ClusterConfig
from agent.config import ConfigError, QdeviceConfig
from agent.runtime.enroll import EnrollError, enroll
from agent.runtime.join import ChangeResult, JoinHost
from proto.enrollment import Token
from proto.errors import DecodeError

log = structlog.get_logger("votemesh.agent.qdevice_setup")
SETUP_WORDS = 8
ALGORITHMS = ("ffsplit", "lms")


class _Host(JoinHost, Protocol):
    pass


def odd_count_problem(config: ClusterConfig, algorithm: str, force: bool) -> str | None:
    """pvecm's rule: ffsplit on an odd node count only with --force (and why)."""
    count = len(config.nodes)
    if algorithm != "ffsplit" or count % 2 == 0 or force:
        return None
    return (
        f"the cluster has {count} nodes, an odd count: it cannot split into equal halves, so "
        "ffsplit's one vote breaks no tie and only adds a dependency; use --algorithm lms, or "
        "--force"
    )


def with_device(config: ClusterConfig, device: QdeviceConfig, force: bool) -> ClusterConfig:
    """The configuration with `device`; ConfigError (one line) when refused."""
    problem = odd_count_problem(config, device.algorithm, force)
    if problem is not None:
        raise ConfigError(problem)
    if device.tie_breaker.isdigit() and config.node(int(device.tie_breaker)) is None:
        raise ConfigError(f"--tie-breaker {device.tie_breaker} is not a node id of this cluster")
    return replace(config, qdevice=device)


def without_device(config: ClusterConfig) -> ClusterConfig:
    """The configuration without a qdevice; ConfigError when there is none."""
    if config.qdevice is None:
        raise ConfigError("no qdevice is configured; nothing to remove")
    return replace(config, qdevice=None)


class _RefusedError(Exception):
    """A setup request refused before any change (one line)."""


async def answer(host: _Host, words: list[str]) -> tuple[bool, str]:
    """One control request; (ok, body) with a JSON body or one line."""
    if words[0] == "qdevice-remove" and len(words) == 1:
        return _outcome(await host.change_config(without_device), "qdevice removed")
    try:
        return await _setup(host, words)
    except _RefusedError as exc:
        return False, f"{exc}\n"


async def _setup(host: _Host, words: list[str]) -> tuple[bool, str]:
    if words[0] != "qdevice-setup" or len(words) != SETUP_WORDS:
        raise _RefusedError("send qdevice-setup HOST PORT EPORT TOKEN ALGO TIE 0|1")
    _, server, port, enroll_port, token, algorithm, tie, force_word = words
    if not (port.isdigit() and enroll_port.isdigit()) or algorithm not in ALGORITHMS:
        raise _RefusedError("qdevice-setup: bad port or algorithm")
    force = force_word == "1"
    _check_token(token, host.cluster_config)
    problem = odd_count_problem(host.cluster_config, algorithm, force)
    if problem is not None:  # before the token is spent
        raise _RefusedError(problem)
    try:
        ca, cert, key = await asyncio.to_thread(_enroll, server, int(enroll_port), token)
    except EnrollError as exc:
        raise _RefusedError(f"enrollment with {server}:{enroll_port} failed: {exc}") from None
    device = QdeviceConfig(
        host=server, port=int(port), algorithm=algorithm, tie_breaker=tie,
        ca_pem=ca, cert_pem=cert, key_pem=key,
    )  # fmt: skip
    try:
        device.validate()
    except ConfigError as exc:
        raise _RefusedError(str(exc)) from None
    outcome = await host.change_config(lambda c: with_device(c, device, force))
    return _outcome(outcome, f"qdevice {server}:{port} set up ({algorithm})")


def _check_token(token: str, committed: ClusterConfig) -> None:
    """The qnetd token must be for this cluster (qnetd checks the certificate's name)."""
    try:
        cluster = Token.parse(token).cluster
    except DecodeError as exc:
        raise _RefusedError(
            f"malformed qnetd token ({exc.detail}); copy it again from 'token create'"
        ) from None
    if cluster != committed.cluster_name:
        raise _RefusedError(
            f"the token is for cluster {cluster!r}, this is {committed.cluster_name!r}; create "
            f"one with: votemesh-qnetd token create --cluster {committed.cluster_name}"
        )


def _enroll(server: str, port: int, token: str) -> tuple[str, str, str]:
    """Enroll into a private temporary directory; the PEM texts (the files are removed)."""
    with tempfile.TemporaryDirectory(prefix="votemesh-qdevice-") as tmp:
        files = enroll(server, port, token, Path(tmp) / "out")
        return (
            files.ca_pem.read_text(),
            files.client_pem.read_text(),
            files.client_key.read_text(),
        )


def _outcome(outcome: ChangeResult, done: str) -> tuple[bool, str]:
    if not outcome.ok:
        return False, outcome.text.strip() + "\n"
    log.info(done, version=outcome.version)
    return True, json.dumps({"text": done, "version": outcome.version}) + "\n"
