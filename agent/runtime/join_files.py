"""The files a cluster member keeps next to node.toml, and how `create` / `add` write them.

Adapter ring (design §3.11): `cluster.key` 0600, `cluster-ca.pem` 0644, `cluster-ca.key` 0600,
`node.pem` 0644, `node.key` 0600, `node.toml` 0644, each written atomically and durably
(`agent.runtime.state.write_durable`: temporary file, fsync, rename, fsync the directory), the
key files created 0600 before a byte is written. Also: whether a directory already belongs to a
cluster (`create` and `add` refuse it unless forced), and the committed configuration written
into the state dir (`agent/runtime/cluster_store.py`).
"""

from __future__ import annotations

import datetime
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.cluster_config import ClusterConfig
from agent.config import ConfigError
from agent.config_replication import Persist
from agent.node_local import NodeLocal, to_toml
from agent.runtime import cluster_store
from agent.runtime.state import write_durable
from proto import certificates
from proto.cert_names import CLUSTER_CA_PREFIX

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700  # the state dir, and a new directory for a key file
CONFIG_DIR_MODE = 0o755  # /etc/votemesh: node.toml is readable, the keys in it are 0600


@dataclass(frozen=True)
class ClusterFiles:
    """Where a member's files live: `config_dir` (next to node.toml) and `state_dir`."""

    config_dir: Path
    state_dir: Path

    @property
    def node_toml(self) -> Path:
        return self.config_dir / "node.toml"

    @property
    def cluster_key(self) -> Path:
        return self.config_dir / "cluster.key"

    @property
    def ca_cert(self) -> Path:
        return self.config_dir / "cluster-ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.config_dir / "cluster-ca.key"

    @property
    def node_cert(self) -> Path:
        return self.config_dir / "node.pem"

    @property
    def node_key(self) -> Path:
        return self.config_dir / "node.key"

    @property
    def cluster_config(self) -> Path:
        return self.state_dir / cluster_store.FILE_NAME

    def membership(self) -> str | None:
        """Why this node already belongs to a cluster (one line), or None when it is free. A
        node.toml alone is not a membership: `votemesh leave` keeps it and removes the rest."""
        for path in (self.cluster_key, self.cluster_config):
            if path.exists():
                return f"this node already belongs to a cluster ({path} exists)"
        return None


def make_dir(path: Path, mode: int = DIR_MODE) -> None:
    """`path` and its parents (`mode` for new ones); ConfigError (one line) if that fails or it
    is not writable, before anything is written or asked of the cluster."""
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write in {path}: permission denied; run as root")


def check_writable(path: Path) -> None:
    """ConfigError (one line) if `path` could not be made or written in, judged from it or its
    nearest existing ancestor; creates nothing (a refused command writes nothing)."""
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write in {existing}: permission denied; run as root")


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Atomically and durably; the directory is made (0700 for a new one) if missing."""
    make_dir(path.parent)
    try:
        write_durable(path, data)
        path.chmod(mode)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None


def new_key() -> rsa.RSAPrivateKey:
    """A fresh RSA key (the size qnetd's certificates use)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=certificates.KEY_BITS)


def new_cluster_key() -> bytes:
    """32 random bytes (agent/runtime/keys.py KEY_BYTES)."""
    return secrets.token_bytes(32)


def utcnow() -> datetime.datetime:
    """The wall clock for certificate validity."""
    return datetime.datetime.now(datetime.UTC)


def new_ca(cluster: str, now: datetime.datetime) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A new cluster CA `CN=votemesh CA <cluster>`."""
    key = new_key()
    serial = x509.random_serial_number()
    return certificates.make_ca(key, serial, now, CLUSTER_CA_PREFIX + cluster), key


def sign_node(
    ca: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    node_name: str,
    public_key: rsa.RSAPublicKey,
    now: datetime.datetime,
) -> x509.Certificate:
    """A node certificate `CN=<node name>`, SAN DNS `<node name>`, random serial (any member
    signs: no shared serial counter)."""
    return certificates.issue(
        ca,
        ca_key,
        certificates.name(node_name),
        public_key,
        serial=x509.random_serial_number(),
        now=now,
        dns_names=(node_name,),
    )


def load_ca(files: ClusterFiles) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """The cluster CA and its key; ConfigError (one line) when missing or broken."""
    try:
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read the cluster CA: {exc.strerror or exc}") from None
    except ValueError:
        raise ConfigError(f"{files.ca_cert} or {files.ca_key} is not PEM") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{files.ca_key} is not an RSA key")
    return cert, key


@dataclass(frozen=True)
class Membership:
    """Everything a member holds, as `create` makes it and `add` receives it."""

    keys: tuple[bytes, ...]
    ca: bytes
    ca_key: bytes
    node_cert: bytes
    node_key: bytes
    config: ClusterConfig
    local: NodeLocal


def write_membership(files: ClusterFiles, m: Membership) -> None:
    """Keys and certificates first, then the committed configuration, node.toml last: a failure
    half way leaves no node.toml that would start an agent on a partial set."""
    make_dir(files.config_dir, CONFIG_DIR_MODE)
    for i, key in enumerate(m.keys):
        name = files.cluster_key if i == 0 else files.config_dir / f"cluster-{i}.key"
        write_file(name, key, PRIVATE_MODE)
    write_file(files.ca_key, m.ca_key, PRIVATE_MODE)
    write_file(files.ca_cert, m.ca, PUBLIC_MODE)
    write_file(files.node_key, m.node_key, PRIVATE_MODE)
    write_file(files.node_cert, m.node_cert, PUBLIC_MODE)
    make_dir(files.state_dir)
    try:
        cluster_store.save(files.state_dir, Persist(m.config, None, None))
    except OSError as exc:
        raise ConfigError(f"cannot write {files.cluster_config}: {exc.strerror or exc}") from None
    write_file(files.node_toml, to_toml(m.local).encode(), PUBLIC_MODE)


def key_file_names(count: int) -> tuple[str, ...]:
    """node.toml's `key_files` for `count` keys (relative to its directory)."""
    return tuple("cluster.key" if i == 0 else f"cluster-{i}.key" for i in range(count))
