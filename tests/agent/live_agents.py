"""Real `votemesh-agent` processes on 127.0.0.x with static peers, for tests and benchmarks.

Each agent i (1-based) listens on 127.0.0.i at a port found free at setup (bind port 0), has
its own directory (config, state, control socket, log) and shares one cluster key. Only
processes started here are ever signalled, by PID; `close()` reaps them all.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.runtime.keys import keygen
from proto.runtime.control_client import request

BIN = Path(sys.executable).parent
LAB_TIMING = '[timing]\npreset = "lab"\n'
LAN_TIMING = '[timing]\npreset = "lan"\n'


def free_udp_port(address: str) -> int:
    """A UDP port that is free on `address` right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def control_request(path: Path, line: str, timeout: float = 5.0) -> tuple[bool, str]:
    """One request on an agent's control socket: (ok, body)."""
    return request(path, line, timeout)


@dataclass
class LiveAgent:
    """One agent's addresses, files and process."""

    node_id: int
    address: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "agent.toml"

    @property
    def control_socket(self) -> Path:
        return self.workdir / "agent.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict[str, Any] | None:
        """The status document, or None while the control socket does not answer."""
        try:
            ok, body = control_request(self.control_socket, "status")
        except OSError:
            return None
        if not ok:
            return None
        doc: dict[str, Any] = json.loads(body)
        return doc

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (partial trailing lines skipped)."""
        records = []
        for line in self.log_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records


class AgentCluster:
    """N agents on 127.0.0.1 .. 127.0.0.N with static peers and one key."""

    def __init__(
        self,
        workdir: Path,
        count: int,
        timing: str = LAB_TIMING,
        extra: str = "",
        via: dict[tuple[int, int], tuple[str, int]] | None = None,
        *,
        prefix: tuple[str, ...] = (),
    ) -> None:
        """`via[(a, b)] = (host, port)`: agent a sends to peer b at that address (a relay).
        `prefix`: a command every agent runs under (e.g. `ip netns exec NAME`; it must exec)."""
        self.workdir = workdir
        self.via = via or {}
        self.prefix = prefix
        self.key_path = workdir / "cluster.key"
        workdir.mkdir(parents=True, exist_ok=True)
        keygen(self.key_path)
        self.agents: dict[int, LiveAgent] = {}
        for i in range(1, count + 1):
            address = f"127.0.0.{i}"
            self.agents[i] = LiveAgent(i, address, free_udp_port(address), workdir / f"node{i}")
        for agent in self.agents.values():
            agent.workdir.mkdir(exist_ok=True)
            agent.config_path.write_text(self.config_text(agent, timing, extra))

    def config_text(self, agent: LiveAgent, timing: str, extra: str) -> str:
        """The TOML of one agent: itself, its link, every other agent as a static peer."""
        lines = [
            'cluster_name = "live"',
            f"node_id = {agent.node_id}",
            f'node_name = "node{agent.node_id}"',
            f'key_files = ["{self.key_path}"]',
            'state_dir = "state"',
            'control_socket = "agent.sock"',
            "discovery = false",
            extra,
            timing,
            f'[[link]]\nindex = 0\naddress = "{agent.address}"\nport = {agent.port}',
        ]
        lines += [self.peer_text(agent, other) for other in self.agents.values() if other != agent]
        return "\n".join(lines) + "\n"

    def peer_text(self, agent: LiveAgent, other: LiveAgent) -> str:
        """The [[peer]] entry for `other` in `agent`'s config (through a relay if asked)."""
        host, port = self.via.get((agent.node_id, other.node_id), (other.address, other.port))
        return (
            f'[[peer]]\nnode_id = {other.node_id}\nname = "node{other.node_id}"\n'
            f'link0 = "{host}:{port}"'
        )

    def spawn(self, node_id: int, *extra_args: str) -> LiveAgent:
        """Start one agent's process (appending to its log); do not wait for it."""
        agent = self.agents[node_id]
        args = [str(BIN / "votemesh-agent"), "--config", str(agent.config_path), *extra_args]
        with agent.log_path.open("ab") as log:
            agent.process = subprocess.Popen(
                [*self.prefix, *args], stdout=log, stderr=subprocess.STDOUT
            )
        return agent

    def start(self, node_id: int, *extra_args: str) -> LiveAgent:
        """Start one agent (appending to its log) and wait until its control socket answers."""
        agent = self.spawn(node_id, *extra_args)
        self.wait_for(lambda: agent.status() is not None or not agent.running, 20, "control")
        if not agent.running:
            raise RuntimeError(f"agent {node_id} exited: {agent.log_path.read_text()[-2000:]}")
        return agent

    def start_all(self, *, together: bool = False) -> None:
        """Start every agent; `together`: all processes at once, then wait for every socket."""
        if not together:
            for node_id in self.agents:
                self.start(node_id)
            return
        for node_id in self.agents:
            self.spawn(node_id)
        pending = set(self.agents)

        def answering() -> bool:
            for node_id in sorted(pending):
                agent = self.agents[node_id]
                if not agent.running:
                    log = agent.log_path.read_text()[-2000:]
                    raise RuntimeError(f"agent {node_id} exited: {log}")
                if agent.status() is not None:
                    pending.discard(node_id)
            return not pending

        self.wait_for(answering, 20 + len(self.agents), "every control socket", 0.2)

    def kill(self, node_id: int) -> None:
        """SIGKILL one agent we started, and reap it."""
        agent = self.agents[node_id]
        if agent.process is not None and agent.process.poll() is None:
            agent.process.send_signal(signal.SIGKILL)
            agent.process.wait(timeout=10)

    def stop(self, node_id: int) -> int | None:
        """SIGTERM (graceful) and reap; the exit status."""
        agent = self.agents[node_id]
        if agent.process is None:
            return None
        if agent.process.poll() is None:
            agent.process.terminate()
            try:
                agent.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.process.kill()
                agent.process.wait(timeout=10)
        return agent.process.returncode

    def close(self) -> None:
        """Stop every agent that is still running (call from `finally`)."""
        for node_id in self.agents:
            self.stop(node_id)

    def statuses(self, node_ids: list[int] | None = None) -> dict[int, dict[str, Any] | None]:
        """Status of the given (default: running) agents."""
        ids = node_ids or [i for i, a in self.agents.items() if a.running]
        return {i: self.agents[i].status() for i in ids}

    def one_view(self, node_ids: list[int]) -> bool:
        """True when every given agent is quorate in the same view made of exactly them."""
        docs = self.statuses(node_ids)
        if any(d is None for d in docs.values()):
            return False
        views = {
            (tuple(d["ring_id"]), tuple(d["members"]), d["quorate"]) for d in docs.values() if d
        }
        if len(views) != 1:
            return False
        _ring, members, quorate = views.pop()
        return bool(quorate) and list(members) == sorted(node_ids)

    @staticmethod
    def wait_for(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> None:
        """Poll `check` until it holds; RuntimeError naming `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(poll)
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
