"""The agent's TOML file -> `AgentConfig`, with one-line errors that name the key and the fix.

Adapter ring: reads a file with `tomllib`; `agent/config.py` and `agent/node_local.py` own the
meaning and the checks. Two kinds of file (design §3.9, docs/agent.md):

* `node.toml` (no `cluster_name`): node-local settings only; the cluster configuration is the
  agreed one in `<state_dir>/cluster-config` (`agent/runtime/cluster_store.py`), which must exist;
* today's single file (with `cluster_name`): bootstraps the cluster as version 0; once an agreed
  configuration is stored, that one wins over the file's cluster part.

`load_startup` reads either and the stored state, and says what the agent starts from.
Relative paths (key files, state directory, control socket) are taken relative to the file's
directory, so a config and its key can travel together.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from agent import cluster_config
from agent.cluster_config import ClusterConfig
from agent.config import (
    MAX_LINKS,
    AgentConfig,
    ConfigError,
    LinkConfig,
    PeerConfig,
    QdeviceConfig,
    QuorumOptions,
    TieBreaker,
    Timing,
)
from agent.config_replication import Persist
from agent.node_local import (
    DEFAULT_JOIN_PORT,
    BindLink,
    NodeLocal,
    agent_config,
    from_agent_config,
)
from agent.outputs import HookConfig, MetricsConfig, MqttConfig, Outputs
from agent.runtime import cluster_store
from proto.host_port import parse_host_port

DEFAULT_PORT = 5407
T = TypeVar("T")

TOP_KEYS = {
    "cluster_name", "node_id", "node_name", "key_files", "state_dir", "control_socket",
    "discovery", "clock_skew_bound", "timing", "quorum", "qdevice", "link", "peer",
    "mqtt", "hook", "metrics",
}  # fmt: skip
TIMING_KEYS = {"preset", *Timing.__dataclass_fields__}
QUORUM_KEYS = set(QuorumOptions.__dataclass_fields__)
QDEVICE_KEYS = set(QdeviceConfig.__dataclass_fields__)
LINK_KEYS = {"index", "address", "port", "priority"}
PEER_KEYS = {"node_id", "name", "votes", *(f"link{i}" for i in range(MAX_LINKS))}
NODE_KEYS = {
    "node_id", "key_files", "state_dir", "control_socket", "discovery", "clock_skew_bound",
    "link", "join", "mqtt", "hook", "metrics",
}  # fmt: skip
BIND_KEYS = {"index", "address", "port"}
JOIN_KEYS = {"port"}
MQTT_KEYS = set(MqttConfig.__dataclass_fields__)
HOOK_KEYS = set(HookConfig.__dataclass_fields__)
METRICS_KEYS = set(MetricsConfig.__dataclass_fields__)
PRESETS: dict[str, Callable[[], Timing]] = {"lan": Timing.lan, "lab": Timing.lab}


class _Table:
    """One TOML table and its dotted name, with typed getters that fail in one line."""

    def __init__(self, data: Mapping[str, Any], where: str, known: set[str]) -> None:
        self.data, self.where = data, where
        for key in data:
            if key not in known:
                raise ConfigError(
                    f"unknown key {self._name(key)}; known keys here: {', '.join(sorted(known))}"
                )

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _get(self, key: str, kinds: tuple[type, ...], example: str, default: Any) -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                raise ConfigError(f"missing {self._name(key)}; add e.g. `{key} = {example}`")
            return default
        value = self.data[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ConfigError(
                f"{self._name(key)} = {value!r} has the wrong type; write e.g. `{key} = {example}`"
            )
        return value

    def text(self, key: str, example: str, default: Any = None) -> Any:
        return self._get(key, (str,), f'"{example}"', default)

    def integer(self, key: str, example: int, default: Any = None) -> Any:
        return self._get(key, (int,), str(example), default)

    def number(self, key: str, example: float, default: Any = None) -> Any:
        value = self._get(key, (int, float), str(example), default)
        return float(value) if isinstance(value, int) else value

    def flag(self, key: str, default: Any = None) -> Any:
        return self._get(key, (bool,), "true", default)

    def items(self, key: str, kind: type[T], example: str) -> tuple[T, ...]:
        values = self._get(key, (list,), example, [])
        if not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"{self._name(key)} must be a list; write e.g. `{key} = {example}`")
        return tuple(values)

    def tables(self, key: str) -> list[Mapping[str, Any]]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{self._name(key)} must be an array of tables: [[{key}]] entries")
        return value

    def table(self, key: str) -> Mapping[str, Any] | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{self._name(key)} must be a table: a [{key}] section")
        return value


_REQUIRED = object()


def load_config(path: Path) -> AgentConfig:
    """Read, parse and validate a config file; ConfigError (one line, names the file) if bad."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not UTF-8 text") from None
    try:
        return parse_config(text, base=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_config(text: str, base: Path = Path()) -> AgentConfig:
    """An `AgentConfig` from TOML text; relative paths are resolved against `base`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    top = _Table(data, "", TOP_KEYS)
    links = tuple(
        _link(_Table(t, f"link[{i}]", LINK_KEYS)) for i, t in enumerate(top.tables("link"))
    )
    ports = {link.index: link.port for link in links}
    peers = tuple(
        _peer(_Table(t, f"peer[{i}]", PEER_KEYS), ports) for i, t in enumerate(top.tables("peer"))
    )
    qdevice_table = top.table("qdevice")
    config = AgentConfig(
        cluster_name=top.text("cluster_name", "prod", _REQUIRED),
        node_id=top.integer("node_id", 1, _REQUIRED),
        node_name=top.text("node_name", "node1", ""),
        links=links,
        peers=peers,
        timing=_timing(_Table(top.table("timing") or {}, "timing", TIMING_KEYS)),
        quorum=_quorum(_Table(top.table("quorum") or {}, "quorum", QUORUM_KEYS)),
        qdevice=None if qdevice_table is None else _qdevice(qdevice_table, base),
        clock_skew_bound=top.number("clock_skew_bound", 1.0, 1.0),
        key_files=tuple(
            _path(base, f) for f in top.items("key_files", str, '["/etc/votemesh/cluster.key"]')
        ),
        state_dir=_path(base, top.text("state_dir", "/var/lib/votemesh", "/var/lib/votemesh")),
        control_socket=_path(
            base, top.text("control_socket", "/run/votemesh/agent.sock", "/run/votemesh/agent.sock")
        ),
        discovery=top.flag("discovery", True),
    )
    if not config.key_files:
        raise ConfigError('missing key_files; add e.g. `key_files = ["/etc/votemesh/cluster.key"]`')
    config.validate()
    return config


def _path(base: Path, text: str) -> str:
    return str(base / Path(text).expanduser())


def _timing(t: _Table) -> Timing:
    preset = t.text("preset", "lan", "lan")
    if preset not in PRESETS:
        raise ConfigError(f'timing.preset = "{preset}" is unknown; write "lan" or "lab"')
    base = PRESETS[preset]()
    return Timing(
        heartbeat_interval=t.number("heartbeat_interval", 0.1, base.heartbeat_interval),
        missed_heartbeats=t.integer("missed_heartbeats", 6, base.missed_heartbeats),
        jitter_allowance=t.number("jitter_allowance", 0.05, base.jitter_allowance),
        probe_interval=t.number("probe_interval", 1.0, base.probe_interval),
        agreement_rounds=t.integer("agreement_rounds", 3, base.agreement_rounds),
    )


def _quorum(t: _Table) -> QuorumOptions:
    breaker = t.text("auto_tie_breaker_node", "lowest", "lowest")
    try:
        tie_breaker = TieBreaker(breaker)
    except ValueError:
        raise ConfigError(
            f'quorum.auto_tie_breaker_node = "{breaker}" is unknown; write "lowest", "highest" '
            'or "list" (with tie_breaker_nodes = [1, 2])'
        ) from None
    return QuorumOptions(
        votes=t.integer("votes", 1, 1),
        expected_votes=t.integer("expected_votes", 3, None),
        two_node=t.flag("two_node", False),
        wait_for_all=t.flag("wait_for_all", None),
        last_man_standing=t.flag("last_man_standing", False),
        last_man_standing_window=t.number("last_man_standing_window", 10.0, 10.0),
        auto_tie_breaker=t.flag("auto_tie_breaker", False),
        auto_tie_breaker_node=tie_breaker,
        tie_breaker_nodes=t.items("tie_breaker_nodes", int, "[1, 2]"),
    )


def _qdevice(data: Mapping[str, Any], base: Path) -> QdeviceConfig:
    t = _Table(data, "qdevice", QDEVICE_KEYS)
    pem = {k: t.text(k, f"/etc/votemesh/qdevice/{k[:-4]}.pem", "") for k in ("ca_pem", "cert_pem")}
    key_pem = t.text("key_pem", "/etc/votemesh/qdevice/client.key", "")
    return QdeviceConfig(
        host=t.text("host", "qnetd.example.net", _REQUIRED),
        port=_port(t, "port", 5403),
        algorithm=t.text("algorithm", "ffsplit", "ffsplit"),
        tie_breaker=t.text("tie_breaker", "lowest", "lowest"),
        tls=t.text("tls", "on", "on"),
        allow_tls_downgrade=t.flag("allow_tls_downgrade", False),
        ca_pem=_path(base, pem["ca_pem"]) if pem["ca_pem"] else "",
        cert_pem=_path(base, pem["cert_pem"]) if pem["cert_pem"] else "",
        key_pem=_path(base, key_pem) if key_pem else "",
        votes=t.integer("votes", 1, None),
        heartbeat_interval=t.number("heartbeat_interval", 8.0, 8.0),
        heuristics=t.items("heuristics", str, '["/usr/local/bin/check-uplink"]'),
        heuristics_timeout=t.number("heuristics_timeout", 5.0, 5.0),
        sync_timeout=t.number("sync_timeout", 0.5, 0.5),
    )


def _port(t: _Table, key: str, default: int) -> int:
    port: int = t.integer(key, default, default)
    if not 0 < port < 65536:
        raise ConfigError(f"{t.where}.{key} = {port} is not a UDP/TCP port (1-65535)")
    return port


def _address(text: str, where: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(
            f'{where} = "{text}" is not an IP address; write e.g. "192.0.2.10" or "fd00::10"'
        ) from None


def _link(t: _Table) -> LinkConfig:
    index = t.integer("index", 0, _REQUIRED)
    if not 0 <= index < MAX_LINKS:
        raise ConfigError(f"{t.where}.index = {index}; links are numbered 0 to {MAX_LINKS - 1}")
    return LinkConfig(
        index=index,
        address=_address(t.text("address", "192.0.2.10", _REQUIRED), f"{t.where}.address"),
        port=_port(t, "port", DEFAULT_PORT),
        priority=t.integer("priority", 0, 0),
    )


def _peer(t: _Table, ports: dict[int, int]) -> PeerConfig:
    addresses = []
    for index in range(MAX_LINKS):
        key = f"link{index}"
        text = t.text(key, "192.0.2.11:5407", None)
        if text is not None:
            host, port = _host_port(text, ports.get(index, DEFAULT_PORT), f"{t.where}.{key}")
            addresses.append((index, host, port))
    if not addresses:
        raise ConfigError(f'{t.where} has no address; add e.g. `link0 = "192.0.2.11:5407"`')
    return PeerConfig(
        node_id=t.integer("node_id", 2, _REQUIRED),
        name=t.text("name", "node2", ""),
        addresses=tuple(addresses),
        votes=t.integer("votes", 1, 1),
    )


def _host_port(text: str, default_port: int, where: str) -> tuple[str, int]:
    """ "HOST", "HOST:PORT", "[V6]:PORT" or a bare IPv6 address (proto/host_port.py)."""
    try:
        host, port = parse_host_port(text, default_port)
    except ValueError as exc:
        raise ConfigError(
            f'{where} = "{text}": {exc}; write "192.0.2.11:5407", "[fd00::11]:5407" or "fd00::11"'
        ) from None
    return _address(host, where), port


# ---------------------------------------------------------------- event outputs


def _outputs(top: _Table, base: Path) -> Outputs:
    """`[mqtt]`, `[[hook]]`, `[metrics]` (design §3.13); relative paths against `base`."""
    mqtt = None
    if (data := top.table("mqtt")) is not None:
        t = _Table(data, "mqtt", MQTT_KEYS)
        files = {
            k: t.text(k, f"/etc/votemesh/mqtt-{k[:-5]}", "")
            for k in ("ca_file", "cert_file", "key_file", "password_file")
        }
        mqtt = MqttConfig(
            host=t.text("host", "127.0.0.1", _REQUIRED),
            port=t.integer("port", 1883, 1883),
            tls=t.flag("tls", False),
            username=t.text("username", "votemesh", ""),
            topic_prefix=t.text("topic_prefix", "votemesh", "votemesh"),
            client_id=t.text("client_id", "votemesh-alpha-1", ""),
            keepalive=t.integer("keepalive", 10, 10),
            home_assistant=t.flag("home_assistant", False),
            discovery_prefix=t.text("discovery_prefix", "homeassistant", "homeassistant"),
            queue=t.integer("queue", 1000, 1000),
            **{k: _path(base, v) if v else "" for k, v in files.items()},
        )
    hooks = []
    for i, data in enumerate(top.tables("hook")):
        t = _Table(data, f"hook[{i}]", HOOK_KEYS)
        command = t._get("command", (str, list), '["/usr/local/bin/on-quorum"]', _REQUIRED)
        argv = (command,) if isinstance(command, str) else tuple(command)
        if not all(isinstance(a, str) for a in argv):
            raise ConfigError(f"hook[{i}].command must be a list of strings (argv, no shell)")
        events = t._get("events", (str, list), '["quorum_gained", "quorum_lost"]', _REQUIRED)
        kinds = (events,) if isinstance(events, str) else tuple(events)
        if not all(isinstance(k, str) for k in kinds):
            raise ConfigError(f"hook[{i}].events must be a list of event kinds")
        if argv and argv[0] and "/" in argv[0]:
            argv = (_path(base, argv[0]), *argv[1:])
        hooks.append(
            HookConfig(
                events=kinds,
                command=argv,
                timeout=t.number("timeout", 10.0, 10.0),
                queue=t.integer("queue", 100, 100),
            )
        )
    metrics = None
    if (data := top.table("metrics")) is not None:
        t = _Table(data, "metrics", METRICS_KEYS)
        metrics = MetricsConfig(
            host=_address(t.text("host", "127.0.0.1", "127.0.0.1"), "metrics.host"),
            port=_port(t, "port", 9466),
        )
    outputs = Outputs(mqtt, tuple(hooks), metrics)
    outputs.validate()
    return outputs


def load_outputs(path: Path) -> Outputs:
    """Only the event outputs of either kind of file (SIGHUP re-reads them); ConfigError."""
    text = _read_text(path)
    try:
        data = tomllib.loads(text)
        return _outputs(_Table(data, "", TOP_KEYS | NODE_KEYS), path.parent)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# ---------------------------------------------------------------- node.toml and start-up


def parse_node_local(text: str, base: Path = Path()) -> NodeLocal:
    """A `NodeLocal` from node.toml text; relative paths are resolved against `base`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    return _node_local(_Table(data, "", NODE_KEYS), base)


def _node_local(top: _Table, base: Path) -> NodeLocal:
    join = _Table(top.table("join") or {}, "join", JOIN_KEYS)
    links = []
    for i, t in enumerate(top.tables("link")):
        link = _Table(t, f"link[{i}]", BIND_KEYS)
        bound = _link(link)
        links.append(BindLink(bound.index, bound.address, bound.port))
    local = NodeLocal(
        node_id=top.integer("node_id", 1, _REQUIRED),
        key_files=tuple(_path(base, f) for f in top.items("key_files", str, '["cluster.key"]')),
        state_dir=_path(base, top.text("state_dir", "/var/lib/votemesh", "/var/lib/votemesh")),
        control_socket=_path(
            base, top.text("control_socket", "/run/votemesh/agent.sock", "/run/votemesh/agent.sock")
        ),
        discovery=top.flag("discovery", False),
        links=tuple(links),
        join_port=_port(join, "port", DEFAULT_JOIN_PORT),
        clock_skew_bound=top.number("clock_skew_bound", 1.0, 1.0),
    )
    local.validate()
    return local


@dataclass(frozen=True)
class Startup:
    """What an agent starts from (design §3.9)."""

    path: Path
    local: NodeLocal
    agent: AgentConfig
    """What the node core runs on: the stored agreed configuration, or the file's bootstrap."""
    stored: Persist | None
    """The replication state from `<state_dir>/cluster-config` (None: none, or refused)."""
    bootstrap: ClusterConfig | None
    """A single file's cluster part as version 0 (None for node.toml)."""
    refused: str | None = None
    """Why the stored state was refused (corrupt or truncated): the agent then starts at version
    0 without the right to bootstrap and takes the cluster's configuration from the first view."""
    warnings: tuple[str, ...] = ()
    unreplicated: str | None = None
    """Why a single file's cluster part cannot be replicated (it breaks a rule of the cluster
    configuration, e.g. peers on fewer links): the agent runs on the file alone, configuration
    changes are refused with this reason."""
    outputs: Outputs = field(default_factory=Outputs)
    """MQTT, hooks, metrics (node-local; design §3.13)."""

    @property
    def single_file(self) -> bool:
        return self.bootstrap is not None

    @property
    def promised_seq(self) -> int:
        """The sequence of the ring the stored replica last took part in (0: none)."""
        promised = self.stored.promised if self.stored is not None else None
        return 0 if promised is None else promised.seq


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not UTF-8 text") from None


def load_startup(path: Path) -> Startup:
    """Read node.toml or a single file, and the stored cluster configuration; ConfigError (one
    line, names the file) when the agent cannot start."""
    text = _read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        outputs = _outputs(_Table(data, "", TOP_KEYS | NODE_KEYS), path.parent)
        if "cluster_name" in data:
            return replace(
                _single_file(path, parse_config(text, base=path.parent)), outputs=outputs
            )
        local = _node_local(_Table(data, "", NODE_KEYS), path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return replace(_node_file(path, local), outputs=outputs)


def startup_of(config: AgentConfig, path: Path = Path("agent.toml")) -> Startup:
    """What an agent built from a single file's `AgentConfig` starts from."""
    return _single_file(path, config)


def _single_file(path: Path, config: AgentConfig) -> Startup:
    local = from_agent_config(config)
    bootstrap = cluster_config.from_agent_config(config)
    why = _unreplicable(bootstrap, config)
    if why is not None:
        why = f"{path}'s cluster part cannot be replicated: {why}"
        return Startup(path, local, config, None, bootstrap, unreplicated=why)
    stored, refused = _stored(Path(config.state_dir))
    if stored is None:
        return Startup(path, local, config, None, bootstrap, refused)
    agreed = agent_config(local, stored.committed)
    warnings: tuple[str, ...] = ()
    if cluster_config.encode(stored.committed.with_version(0)) != cluster_config.encode(bootstrap):
        text = (
            f"{path}'s cluster part differs from the agreed configuration (version "
            f"{stored.committed.version}); the agreed one is used: see `votemesh config show`"
        )
        warnings = (text,)
    return Startup(path, local, agreed, stored, bootstrap, None, warnings)


def _unreplicable(bootstrap: ClusterConfig, config: AgentConfig) -> str | None:
    """Why a single file's cluster part cannot be the cluster's configuration, if it cannot."""
    if not config.peers:
        return "it lists no [[peer]] (discovery finds the members)"
    try:
        cluster_config.validate(bootstrap)
    except ConfigError as exc:
        return str(exc)
    return None


def _node_file(path: Path, local: NodeLocal) -> Startup:
    state_dir = Path(local.state_dir)
    stored, refused = _stored(state_dir)
    if stored is not None:
        return Startup(path, local, agent_config(local, stored.committed), stored, None)
    if refused is None:
        raise ConfigError(
            f"no cluster configuration in {state_dir}; run `votemesh create NAME` or "
            "`votemesh add JOIN-STRING`"
        )
    seed = cluster_store.load_backup(state_dir)
    if seed is None:
        raise ConfigError(
            f"{refused}; no readable copy is left to find the cluster: run "
            "`votemesh add JOIN-STRING --force` to join again"
        )
    return Startup(path, local, agent_config(local, seed), None, None, refused)


def _stored(state_dir: Path) -> tuple[Persist | None, str | None]:
    """(stored state, None), (None, None) when there is none, (None, why) when refused."""
    try:
        return cluster_store.load(state_dir), None
    except ConfigError as exc:
        return None, str(exc)


def local_of(path: Path) -> NodeLocal:
    """The node-local settings of either kind of file (no stored configuration needed): what
    `votemesh` needs to find the control socket, the key files and the state directory."""
    text = _read_text(path)
    try:
        data = tomllib.loads(text)
        if "cluster_name" in data:
            return from_agent_config(parse_config(text, base=path.parent))
        return _node_local(_Table(data, "", NODE_KEYS), path.parent)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
