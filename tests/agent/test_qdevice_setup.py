"""agent/runtime/qdevice_setup.py: the configuration edits and refusals of `qdevice setup`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from agent.cluster_config import ClusterConfig, ClusterNode, NodeLink
from agent.config import ConfigError, QdeviceConfig
from agent.runtime import qdevice_setup
from proto.enrollment import Token

DEVICE = QdeviceConfig(host="10.0.0.9", ca_pem="CA", cert_pem="CERT", key_pem="KEY")


def _cluster(count: int) -> ClusterConfig:
    nodes = tuple(
        ClusterNode(i, f"n{i}", 1, (NodeLink(0, f"10.0.0.{i}"),)) for i in range(1, count + 1)
    )
    return ClusterConfig("prod", 2, nodes)


def test_ffsplit_on_an_odd_count_needs_force_and_says_why() -> None:
    """pvecm's rule: 3 nodes + ffsplit refused (with the reason and both ways out); forced, or
    lms, or an even count, it is accepted."""
    with pytest.raises(ConfigError, match="odd count: it cannot split into equal halves"):
        qdevice_setup.with_device(_cluster(3), DEVICE, force=False)
    assert qdevice_setup.with_device(_cluster(3), DEVICE, force=True).qdevice == DEVICE
    lms = QdeviceConfig(host="q", algorithm="lms", ca_pem="C", cert_pem="C", key_pem="K")
    assert qdevice_setup.with_device(_cluster(3), lms, force=False).qdevice == lms
    assert qdevice_setup.with_device(_cluster(2), DEVICE, force=False).qdevice == DEVICE


def test_tie_breaker_must_be_a_node_and_remove_needs_a_device() -> None:
    """A tie-breaker id that is no node is refused; removing when there is none is refused."""
    bad = QdeviceConfig(host="q", tie_breaker="7", ca_pem="C", cert_pem="C", key_pem="K")
    with pytest.raises(ConfigError, match="not a node id"):
        qdevice_setup.with_device(_cluster(2), bad, force=False)
    with pytest.raises(ConfigError, match="no qdevice is configured"):
        qdevice_setup.without_device(_cluster(2))
    with_device = qdevice_setup.with_device(_cluster(2), DEVICE, force=False)
    assert qdevice_setup.without_device(with_device).qdevice is None


@dataclass(frozen=True)
class Outcome:
    ok: bool
    text: str
    version: int


class Host:
    def __init__(self, config: ClusterConfig) -> None:
        self.cluster_config = config

    async def change_config(self, mutate: Callable[[ClusterConfig], ClusterConfig]) -> Outcome:
        try:
            self.cluster_config = mutate(self.cluster_config)
        except ConfigError as exc:
            return Outcome(False, str(exc), self.cluster_config.version)
        return Outcome(True, "", self.cluster_config.version + 1)


def _token(cluster: str) -> str:
    return Token(cluster, b"s" * 32, b"f" * 32).encode()


@pytest.mark.parametrize(
    ("words", "says"),
    [
        (["qdevice-setup", "q", "5403", "5404", _token("other"), "ffsplit", "lowest", "0"],
         "the token is for cluster 'other', this is 'prod'"),
        (["qdevice-setup", "q", "5403", "5404", "vmq1.x", "ffsplit", "lowest", "0"],
         "malformed qnetd token"),
        (["qdevice-setup", "q", "5403", "5404", _token("prod"), "ffsplit", "lowest", "0"],
         "odd count"),
        (["qdevice-setup", "q", "x", "5404", _token("prod"), "ffsplit", "lowest", "0"],
         "bad port"),
        (["qdevice-setup", "q"], "send qdevice-setup"),
        (["qdevice-remove"], "no qdevice is configured"),
    ],
)  # fmt: skip
def test_refusals_before_any_enrollment(words: list[str], says: str) -> None:
    """Each refusal is one line, made before the qnetd token is spent (no network here: an
    attempt to enroll would fail with another message)."""
    host = Host(_cluster(3))
    ok, body = asyncio.run(qdevice_setup.answer(host, words))
    assert not ok
    assert says in body
    assert body.count("\n") == 1
    assert host.cluster_config == _cluster(3)


def test_the_qdevice_client_loads_pem_text_from_the_configuration() -> None:
    """Credentials that arrive in the cluster configuration (PEM text, not paths) make a TLS
    context; a broken key is one ConfigError line, and no temporary file is left."""
    import datetime
    import tempfile
    from pathlib import Path

    from agent.runtime import join_files
    from agent.runtime.qdevice import client_tls_context
    from proto import certificates

    now = datetime.datetime.now(datetime.UTC)
    ca, ca_key = join_files.new_ca("prod", now)
    key = join_files.new_key()
    cert = join_files.sign_node(ca, ca_key, "prod", key.public_key(), now)
    before = set(Path(tempfile.gettempdir()).glob("votemesh-qdevice-*"))
    device = QdeviceConfig(
        host="q",
        ca_pem=certificates.cert_pem(ca).decode(),
        cert_pem=certificates.cert_pem(cert).decode(),
        key_pem=certificates.key_pem(key).decode(),
    )
    assert client_tls_context(device) is not None
    with pytest.raises(ConfigError, match="qdevice TLS files unusable"):
        client_tls_context(QdeviceConfig(host="q", ca_pem=device.ca_pem, cert_pem=device.cert_pem,
                                         key_pem="-----BEGIN PRIVATE KEY-----\nxx\n"))  # fmt: skip
    assert set(Path(tempfile.gettempdir()).glob("votemesh-qdevice-*")) == before
