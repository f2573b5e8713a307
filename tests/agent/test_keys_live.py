"""`votemesh rotate-key` and `votemesh updatecerts` end to end: real agents in network namespaces.

Three lab hosts made a cluster with `create` / `join-info` / `add` (the helpers of
test_cluster_join_live.py). Design §3.12: a rotation with every node up ends with every node
sealing and opening only the new key, the old key gone from every key file, and no view change;
a node down during a rotation holds it in `distribute` (the old key stays in use), a node that
joins meanwhile gets both keys and confirms, and the node that was down, once started again,
takes the new key from the configuration and lets the rotation finish.
"""

from __future__ import annotations

import hashlib
import json
import stat
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from votemesh_lab import netns
from votemesh_lab.netns import LabFactory, NotYetError, stop_process

from proto.datagram_seal import ClusterKey
from proto.runtime.control_client import request
from tests.agent import test_cluster_join_live as join_live
from tests.agent.test_cluster_join_live import Node, _quorate

SETTLE = 30.0
pytestmark = join_live.pytestmark


def _keys(node: Node) -> dict[str, Any]:
    ok, body = request(node.socket, "keys", 5.0)
    assert ok, body
    return dict(json.loads(body))


def _key_id(path: Path) -> str:
    return ClusterKey(path.read_bytes()).key_id.hex()


def _ring(node: Node) -> tuple[int, int]:
    return tuple(node.status()["ring_id"])


def _cluster(lab_factory: LabFactory, tmp_path: Path, spare: int = 0) -> list[Node]:
    """k1..k3 in one cluster (k1 created it), plus `spare` hosts with nothing on them."""
    lab = lab_factory([f"k{i}" for i in range(1, 4 + spare)])
    nodes = [Node(lab[f"k{i}"], tmp_path / f"k{i}") for i in range(1, 4 + spare)]
    n1 = nodes[0]
    code, _, err = n1.votemesh(
        "create", "labkeys", "--name", "k1", "--link0", n1.host.address, *n1.dirs
    )
    assert code == 0, err
    n1.start()
    netns.wait_until(lambda: n1.status() or None, timeout=SETTLE, what="k1's agent")
    for count, node in ((2, nodes[1]), (3, nodes[2])):
        code, _, err = node.add(n1.join_info())
        assert code == 0, err
        node.start()
        _quorate(nodes[:count], count)
    return nodes


def _all_on(nodes: list[Node], key_id: str) -> None:
    """Every node seals and opens only `key_id`; its key files hold it, mode 0600, no .new."""

    def probe() -> bool:
        for node in nodes:
            keys = _keys(node)
            if keys != {"seals": key_id, "opens": [key_id]}:
                raise NotYetError(f"{node.host.name}: {keys}")
        return True

    netns.wait_until(probe, timeout=SETTLE, what=f"every node on key {key_id}")
    for node in nodes:
        path = node.work / "etc" / "cluster.key"
        assert _key_id(path) == key_id
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not (node.work / "etc" / "cluster.key.new").exists()


def test_rotate_key_with_every_node_up_then_with_one_down(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """All up: every node ends on the new key, the old key file content is gone, the ring id
    never changes. One down: the rotation waits in `distribute` with the old key sealing; a
    node that joins meanwhile gets both keys and confirms; the node that was down, started
    again, takes the key from the configuration and the rotation completes on all four."""
    n1, n2, n3, n4 = _cluster(lab_factory, tmp_path, spare=1)
    nodes = [n1, n2, n3]
    old = _key_id(n1.work / "etc" / "cluster.key")
    rings = [_ring(n) for n in nodes]
    before = json.loads(request(n1.socket, "config", 5.0)[1])["config_version"]

    started = time.monotonic()
    code, out, err = n1.votemesh("rotate-key", "--socket", str(n1.socket))
    elapsed = time.monotonic() - started
    assert code == 0, err
    assert "every node seals with the new key" in out, out
    new = out.split()[3].rstrip(":")
    assert new != old
    _all_on(nodes, new)
    assert [_ring(n) for n in nodes] == rings, "a view changed during the rotation"
    for node in nodes:
        assert node.status()["members"] == [1, 2, 3]
        dropped = node.status()["runtime"]["datagrams"]["dropped"]
        assert dropped.get("unknown_key", 0) == 0, dropped
    config = json.loads(request(n2.socket, "config", 5.0)[1])
    assert config["key_rotation"]["phase"] == "done"
    versions = config["config_version"] - before
    print(f"rotate-key on 3 agents: {elapsed:.2f} s wall, {versions} configuration versions")
    assert "wrapped" not in json.dumps(config)

    # -- a node down during the rotation
    assert n3.agent is not None
    stop_process(n3.agent.process)
    _quorate([n1, n2], config["config_version"])
    code, out, err = n1.votemesh("rotate-key", "--wait", "3", "--socket", str(n1.socket))
    assert code == 0, err
    assert "waiting for node(s) 3" in out, out
    newer = out.split()[3].rstrip(":")
    assert _keys(n1) == {"seals": new, "opens": [new, newer]}
    code, _, err = n2.votemesh("rotate-key", "--wait", "0", "--socket", str(n2.socket), check=False)
    assert code == 1
    assert err.strip().startswith("votemesh: a key rotation is in progress"), err
    assert "Traceback" not in err
    assert _key_id(n3.work / "etc" / "cluster.key") == new  # k3 still has only the old key
    code, _, err = n4.add(n1.join_info())
    assert code == 0, err
    assert _key_id(n4.work / "etc" / "cluster-1.key") == newer  # both keys, sealing key first
    n4.start()
    netns.wait_until(
        lambda: (
            4 in json.loads(request(n1.socket, "config", 5.0)[1])["key_rotation"]["confirmed"]
            or None
        ),
        timeout=SETTLE,
        what="k4 confirmed the new key",
    )
    n3.start()
    nodes.append(n4)
    _all_on(nodes, newer)
    _quorate(nodes, json.loads(request(n1.socket, "config", 5.0)[1])["config_version"])
    assert _key_id(n4.work / "etc" / "cluster.key") == newer

    # -- not quorate: refused in one line, no key written, nothing changed
    for node in (n2, n3, n4):
        assert node.agent is not None
        stop_process(node.agent.process)
    netns.wait_until(
        lambda: not n1.status()["quorate"] or None, timeout=SETTLE, what="k1 inquorate"
    )
    code, _, err = n1.votemesh("rotate-key", "--socket", str(n1.socket), check=False)
    assert code == 1
    assert err.startswith("votemesh: key not rotated: not quorate"), err
    assert len(err.strip().splitlines()) == 1, err
    assert not (n1.work / "etc" / "cluster.key.new").exists()
    assert _keys(n1) == {"seals": newer, "opens": [newer]}


def _rotation(node: Node) -> dict[str, Any]:
    return dict(json.loads(request(node.socket, "config", 5.0)[1])["key_rotation"])


def test_a_node_down_across_the_switch_seals_as_its_stored_phase_says_and_catches_up(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """k3 confirms `distribute` (it holds cluster.key.new) and stops; the others move to
    `switch` and seal with the new key. k3, started again from its stored `distribute`, opens
    both keys and seals with the old one, which the others still open: it rejoins, takes
    `switch` from the configuration, and the rotation completes on all three."""
    n1, n2, n3 = _cluster(lab_factory, tmp_path)
    assert n2.agent is not None
    stop_process(n2.agent.process)
    _quorate([n1, n3], 3)  # after the last join's transition (design §3.9, joint counting)
    code, out, err = n1.votemesh("rotate-key", "--wait", "0", "--socket", str(n1.socket))
    assert code == 0, err
    new = out.split()[3].rstrip(":")
    netns.wait_until(
        lambda: _rotation(n1)["confirmed"] == [1, 3] or None, timeout=SETTLE, what="k3 confirmed"
    )
    assert (n3.work / "etc" / "cluster.key.new").exists()
    assert n3.agent is not None
    stop_process(n3.agent.process)
    n2.start()
    netns.wait_until(
        lambda: _rotation(n1)["phase"] == "switch" or None, timeout=SETTLE, what="switch"
    )
    netns.wait_until(
        lambda: _rotation(n1)["waiting_for"] == [3] or None,
        timeout=SETTLE,
        what="k2 confirmed the switch",
    )
    assert _keys(n1)["seals"] == _keys(n2)["seals"] == new
    assert _rotation(n1)["phase"] == "switch"
    n3.start()
    _all_on([n1, n2, n3], new)
    _quorate([n1, n2, n3], json.loads(request(n1.socket, "config", 5.0)[1])["config_version"])


def _served_cert(node: Node, client: Node, port: int) -> bytes:
    """SHA-256 of the certificate node's join port presents, seen from `client`'s host."""
    script = textwrap.dedent(f"""
        import hashlib, socket, ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("{node.host.address}", {port}), timeout=5) as raw:
            with ctx.wrap_socket(raw) as tls:
                print(hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest())
    """)
    return bytes.fromhex(client.host.run([sys.executable, "-c", script], timeout=30).stdout)


def test_updatecerts_renews_the_node_certificate_and_the_join_port_serves_it(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """`updatecerts` re-issues node.pem from the cluster CA (same key; `--force` a new key),
    modes 0644/0600, and the running join port presents it without a restart; a node.toml
    that does not exist is one line and exit 1."""
    lab = lab_factory(["c1", "c2"])
    n1, n2 = (Node(lab[f"c{i}"], tmp_path / f"c{i}") for i in (1, 2))
    code, _, err = n1.votemesh(
        "create", "labcerts", "--name", "c1", "--link0", n1.host.address, *n1.dirs
    )
    assert code == 0, err
    n1.start()
    netns.wait_until(lambda: n1.status() or None, timeout=SETTLE, what="c1's agent")
    etc = n1.work / "etc"
    before = x509.load_pem_x509_certificate((etc / "node.pem").read_bytes())
    key_before = (etc / "node.key").read_bytes()
    assert (
        _served_cert(n1, n2, 5408)
        == hashlib.sha256(before.public_bytes(serialization.Encoding.DER)).digest()
    )
    toml = str(etc / "node.toml")
    for extra in ((), ("--force",)):
        code, out, err = n1.votemesh("updatecerts", "--config", toml, *extra)
        assert code == 0, err
        assert "join port certificate reloaded" in out, out
        after = x509.load_pem_x509_certificate((etc / "node.pem").read_bytes())
        assert after.serial_number != before.serial_number
        assert after.subject == before.subject
        assert ((etc / "node.key").read_bytes() == key_before) == (not extra)
        assert stat.S_IMODE((etc / "node.pem").stat().st_mode) == 0o644
        assert stat.S_IMODE((etc / "node.key").stat().st_mode) == 0o600
        served = _served_cert(n1, n2, 5408)
        assert served == hashlib.sha256(after.public_bytes(serialization.Encoding.DER)).digest()
        before = after
    # a join after the renewal still verifies the CA and the certificate (design §3.11)
    code, _, err = n2.add(n1.join_info())
    assert code == 0, err
    code, _, err = n1.votemesh("updatecerts", "--config", str(tmp_path / "no.toml"), check=False)
    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("votemesh: "), err
