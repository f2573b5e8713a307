"""mosquitto in a lab host, and a subscriber beside it that records every message.

`LabBroker` writes a mosquitto config into the host's directory (one plain listener on the host's
lab address, anonymous clients, no persistence: a restart forgets every retained message) and runs
`mosquitto -c` in the host; the lab stops it by PID. `tap()` starts this module in the same host:

    python -m votemesh_lab.broker --host 198.18.0.9 --port 1883 --out events.jsonl

which subscribes to `votemesh/#` (QoS 1, reconnecting by itself when the broker is killed and
started again) and writes one JSON object per message: `{"at_ms", "topic", "payload"}` (the
payload as text). The collector (`collect.py`) reads that file into the timeline (`src: mqtt`).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from votemesh_lab.netns import Host, LabError, TrackedProcess, wait_until

MOSQUITTO = Path("/usr/sbin/mosquitto")
PORT = 1883
TOPICS = "votemesh/#"


def unavailable_reason() -> str | None:
    """Why a broker cannot run here, or None."""
    if not MOSQUITTO.exists():
        return f"{MOSQUITTO} not installed (apt-get install mosquitto)"
    return None


class LabBroker:
    """mosquitto on `host`'s lab address, port 1883; its files under `workdir`."""

    def __init__(self, host: Host, workdir: Path, port: int = PORT) -> None:
        self.host = host
        self.workdir = workdir
        self.port = port
        self.process: TrackedProcess | None = None
        self.tap_process: TrackedProcess | None = None

    @property
    def address(self) -> str:
        return self.host.address

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def events_path(self) -> Path:
        """Where the subscriber writes what it received."""
        return self.workdir / "mqtt-events.jsonl"

    def start(self) -> None:
        """Write the config (once), start mosquitto and wait until it listens."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    "user root",
                    "persistence false",
                    f"log_dest file {self.log_path}",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "allow_anonymous true",
                    f"listener {self.port} {self.address}",
                ]
            )
            + "\n"
        )
        self.process = self.host.start([str(MOSQUITTO), "-c", str(conf)], label="broker")
        wait_until(self._listening, timeout=15, what="mosquitto to listen")

    def tap(self) -> None:
        """Start the recording subscriber in the broker's host."""
        args = [sys.executable, "-m", "votemesh_lab.broker", "--host", self.address,
                "--port", str(self.port), "--out", str(self.events_path)]  # fmt: skip
        self.tap_process = self.host.start(args, label="mqtt-tap")

    def _listening(self) -> bool | None:
        if self.process is None or not self.process.alive():
            tail = self.process.log_tail() if self.process else ""
            raise LabError(f"mosquitto exited: {tail}")
        out = self.host.run(["ss", "-Hltn", f"sport = :{self.port}"], check=False).stdout
        return True if f"{self.address}:{self.port}" in out else None


# ------------------------------------------------------------------ the subscriber (a process)
def _record(out: Any, lock: threading.Lock, topic: str, payload: bytes) -> None:
    line = json.dumps(
        {"at_ms": time.time_ns() // 1_000_000, "topic": topic,
         "payload": payload.decode("utf-8", "replace")}
    )  # fmt: skip
    with lock:
        out.write(line + "\n")
        out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Subscribe to votemesh/# and append every message to --out until SIGTERM."""
    import paho.mqtt.client as paho  # noqa: PLC0415 (only this process needs paho)
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m votemesh_lab.broker")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    lock = threading.Lock()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with args.out.open("a", encoding="utf-8") as out:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"votemesh-lab-tap-{time.time_ns()}",
            protocol=paho.MQTTv5,
        )  # fmt: skip
        client.on_connect = lambda c, *_a: c.subscribe(TOPICS, qos=1)
        client.on_message = lambda _c, _u, msg: _record(out, lock, msg.topic, bytes(msg.payload))
        client.reconnect_delay_set(min_delay=1, max_delay=1)
        while not stop.is_set():
            try:
                client.connect(args.host, args.port, keepalive=5)
                break
            except OSError:
                stop.wait(0.2)
        client.loop_start()
        stop.wait()
        client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
