"""A real mosquitto broker on 127.0.0.1 (a free port), and a subscriber, for the MQTT tests and
benchmark.

The broker runs from a config written here (no persistence: a restart forgets every retained
message, so whatever a subscriber sees afterwards was published again). Only the process started
here is ever signalled, by PID.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from paho.mqtt.enums import CallbackAPIVersion
from votemesh_lab.netns import stop_process

from proto.certificates import cert_pem, key_pem, make_ca, name

MOSQUITTO = Path("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_test_ca(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (IP SAN): (ca.pem, server.pem, server.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = make_ca(ca_key, 1, now, "votemesh test mqtt CA")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = workdir / "ca.pem", workdir / "server.pem", workdir / "server.key"
    paths[0].write_bytes(cert_pem(ca))
    paths[1].write_bytes(cert_pem(cert))
    paths[2].write_bytes(key_pem(key))
    return paths


@dataclass
class Broker:
    """mosquitto on 127.0.0.1:`port` (plain) and optionally a TLS listener on `tls_port`."""

    workdir: Path
    users: dict[str, str] = field(default_factory=dict)
    """With users, anonymous clients are refused (password file made by mosquitto_passwd)."""
    tls: bool = False
    port: int = field(default_factory=free_tcp_port)
    tls_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            "user root",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type all",
            "per_listener_settings false",
            f"allow_anonymous {'false' if self.users else 'true'}",
            f"listener {self.port} 127.0.0.1",
        ]
        if self.users:
            if MOSQUITTO_PASSWD is None:
                raise RuntimeError("mosquitto_passwd is not installed")
            passwd = self.workdir / "passwd"
            passwd.touch()
            for user, password in self.users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwd), user, password], check=True)
            lines.append(f"password_file {passwd}")
        if self.tls:
            self.tls_port = self.tls_port or free_tcp_port()
            self.ca_path, cert, key = make_test_ca(self.workdir)
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.ca_path}",
                f"certfile {cert}",
                f"keyfile {key}",
            ]
        (self.workdir / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def start(self) -> None:
        """Start it and wait until the plain listener accepts."""
        conf = self.workdir / "mosquitto.conf"
        self.process = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err} {self.log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            except OSError:
                time.sleep(0.05)
            else:
                return
        raise RuntimeError("mosquitto did not listen within 10 s")

    def stop(self) -> None:
        """Terminate it (SIGTERM, then SIGKILL) and reap it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused broker hears SIGTERM
        stop_process(self.process, grace=10)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts TCP connections, nothing ever answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log_lines(self) -> list[str]:
        return self.log_path.read_text().splitlines() if self.log_path.exists() else []


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float
    """time.time() when the subscriber got it."""
    properties: dict[str, Any]

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client (MQTT 5) on its own thread recording every message it receives."""

    def __init__(self, port: int, topics: list[str], client_id: str = "") -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-sub-{time.monotonic_ns()}",
            protocol=paho.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        self.topics = topics
        self.client.on_connect = self._on_connect
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("subscriber did not subscribe within 10 s")

    def _on_connect(self, client: paho.Client, *_args: Any) -> None:
        client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        props: dict[str, Any] = {}
        if msg.properties is not None:
            for key in ("MessageExpiryInterval", "UserProperty", "ContentType"):
                if hasattr(msg.properties, key):
                    props[key] = getattr(msg.properties, key)
        with self._lock:
            self.messages.append(
                Received(msg.topic, bytes(msg.payload), bool(msg.retain), time.time(), props)
            )

    def received(self, topic: str | None = None) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def first(self, topic: str) -> Received | None:
        """The first message on `topic` (for a new subscriber: the retained one, if any)."""
        got = self.received(topic)
        return got[0] if got else None

    def last(self, topic: str) -> Received | None:
        got = self.received(topic)
        return got[-1] if got else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
