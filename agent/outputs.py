"""Where a node's events go besides its log: MQTT, hook commands, a metrics address.

Core ring: pure data. These are node-local settings (`[mqtt]`, `[[hook]]`, `[metrics]` in
node.toml or in today's single file; design §3.13): never replicated, reloaded on SIGHUP.
`agent/runtime/config_file.py` parses them; `agent/runtime/sinks.py` builds the sinks.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import ConfigError
from agent.events import EventKind

HOOK_EVENTS = frozenset(str(k) for k in EventKind)
"""Event kinds a hook may name (`"*"` means every kind)."""


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """`[mqtt]`: one broker connection per agent (its will marks this node offline)."""

    host: str
    port: int = 1883
    tls: bool = False
    """TLS to the broker; with `ca_file` empty the system CAs are trusted."""
    ca_file: str = ""
    cert_file: str = ""
    """Client certificate (with `key_file`) when the broker asks for one."""
    key_file: str = ""
    username: str = ""
    password_file: str = ""
    """The password is read from this file (first line), never written in node.toml."""
    topic_prefix: str = "votemesh"
    """Topics are `<prefix>/<cluster>/<node>/...` and `<prefix>/<cluster>/state`."""
    client_id: str = ""
    """Empty: `votemesh-<cluster>-<node id>`."""
    keepalive: int = 10
    """Seconds; the broker sends this node's will about 1.5 keepalives after it goes silent."""
    home_assistant: bool = False
    """Publish Home Assistant MQTT discovery for the quorate sensors."""
    discovery_prefix: str = "homeassistant"
    queue: int = 1000
    """Events held while the broker is away or slow; older ones are dropped (counted)."""

    def validate(self) -> None:
        if not self.host:
            raise ConfigError('mqtt.host is empty; write e.g. `host = "127.0.0.1"`')
        if not 0 < self.port < 65536:
            raise ConfigError(f"mqtt.port = {self.port} is not a TCP port (1-65535)")
        if not 1 <= self.keepalive <= 3600:
            raise ConfigError(f"mqtt.keepalive = {self.keepalive} must be 1-3600 seconds")
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("mqtt.cert_file and mqtt.key_file go together; give both or neither")
        if (self.ca_file or self.cert_file) and not self.tls:
            raise ConfigError("mqtt.ca_file / cert_file need `tls = true`")
        if self.password_file and not self.username:
            raise ConfigError("mqtt.password_file needs mqtt.username")
        for name, topic in (("topic_prefix", self.topic_prefix),
                            ("discovery_prefix", self.discovery_prefix)):  # fmt: skip
            if not topic or any(c in topic for c in "+#\0") or topic.startswith("/"):
                raise ConfigError(
                    f'mqtt.{name} = "{topic}" is not a topic prefix; write e.g. "votemesh" '
                    "(no +, #, or leading /)"
                )
        if not 1 <= self.queue <= 1_000_000:
            raise ConfigError(f"mqtt.queue = {self.queue} must be 1-1000000")


@dataclass(frozen=True, slots=True)
class HookConfig:
    """One `[[hook]]`: a command run for the named event kinds, one run at a time."""

    events: tuple[str, ...]
    """Event kinds (values of `EventKind`), or `("*",)` for every kind."""
    command: tuple[str, ...]
    """argv; no shell. The event comes as VOTEMESH_* environment variables and JSON on stdin."""
    timeout: float = 10.0
    """Seconds; a run still going then is killed (logged, counted)."""
    queue: int = 100
    """Events waiting for this hook; older ones are dropped (counted)."""

    def validate(self, where: str) -> None:
        if not self.command or not self.command[0]:
            raise ConfigError(
                f'{where}.command is empty; write e.g. `command = ["/usr/local/bin/x"]`'
            )
        if not self.events:
            raise ConfigError(f'{where}.events is empty; write e.g. `events = ["quorum_lost"]`')
        unknown = [e for e in self.events if e != "*" and e not in HOOK_EVENTS]
        if unknown:
            raise ConfigError(
                f"{where}.events names unknown kinds {unknown}; known: "
                f'{", ".join(sorted(HOOK_EVENTS))} or "*"'
            )
        if not 0 < self.timeout <= 3600:
            raise ConfigError(f"{where}.timeout = {self.timeout} must be 0-3600 seconds")
        if not 1 <= self.queue <= 100_000:
            raise ConfigError(f"{where}.queue = {self.queue} must be 1-100000")

    def wants(self, kind: str) -> bool:
        return "*" in self.events or kind in self.events


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """`[metrics]`: a node-local HTTP address serving `/metrics` and `/healthz`."""

    host: str = "127.0.0.1"
    port: int = 9466

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"metrics.port = {self.port} is not a TCP port (1-65535)")


@dataclass(frozen=True, slots=True)
class Outputs:
    """All of a node's event outputs besides its log and control socket (off by default)."""

    mqtt: MqttConfig | None = None
    hooks: tuple[HookConfig, ...] = ()
    metrics: MetricsConfig | None = None

    def validate(self) -> None:
        if self.mqtt is not None:
            self.mqtt.validate()
        for i, hook in enumerate(self.hooks):
            hook.validate(f"hook[{i}]")
        if self.metrics is not None:
            self.metrics.validate()
