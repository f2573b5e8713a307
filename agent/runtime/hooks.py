"""Hook commands: one `HookSink` per `[[hook]]`, running its command for the events it names
(design §3.13, "Hooks").

Adapter ring. Each run is a real process (no shell) in its own session, with the event as
`VOTEMESH_*` environment variables and as JSON on stdin; one run at a time per hook, a bounded
queue in front, a timeout that kills the whole process group. Whatever a hook does (hang, crash,
flood its output, not exist) is logged and counted here and changes nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from agent.outputs import HookConfig
from agent.runtime.fanout import Published, QueuedSink, SinkContext

log = structlog.get_logger("votemesh.agent")

KILL_GRACE = 1.0
"""Seconds between SIGTERM and SIGKILL to a timed-out hook's process group."""
OUTPUT_TAIL = 4096
"""Bytes kept of a run's stdout and of its stderr (the last ones), for the log line."""
VALUE_LIMIT = 4096
"""Characters kept of one environment value (a huge detail must not make exec fail)."""
EXIT_WAIT = 0.2
"""Seconds to wait for the output pipes after the hook exited (a child it left may hold them)."""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_KEY_UNSAFE = re.compile(r"[^A-Z0-9_]")
_SIGNALS = frozenset(int(s) for s in signal.Signals)


def command_problem(argv0: str, path: str) -> str | None:
    """Why `argv0` cannot be run (None: it looks runnable), in words for the log."""
    if "/" not in argv0:
        return None if shutil.which(argv0, path=path) else f"{argv0} is not found on PATH={path}"
    file = Path(argv0)
    if not file.exists():
        return f"{argv0} does not exist"
    if file.is_dir():
        return f"{argv0} is a directory"
    if not os.access(file, os.X_OK):
        return f"{argv0} is not executable (chmod +x it)"
    return None


def _env_value(value: Any) -> str | None:
    """A scalar (or a list of scalars, space-separated) as an environment value; None: skip."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return ""
    if isinstance(value, int | float | str):
        text = str(value)
    elif isinstance(value, list | tuple) and all(
        isinstance(v, int | float | str) and not isinstance(v, bool) for v in value
    ):
        text = " ".join(str(v) for v in value)
    else:
        return None
    return text.replace("\0", "")[:VALUE_LIMIT]


def summary(status: Mapping[str, Any]) -> dict[str, Any]:
    """The level state a hook needs, from the `votemesh status --json` document."""
    qdevice = status.get("qdevice") or {}
    return {
        "cluster": status.get("cluster"),
        "node_id": status.get("node_id"),
        "node_name": status.get("node_name"),
        "quorate": bool(status.get("quorate")),
        "ring": status.get("ring"),
        "members": list(status.get("members") or []),
        "expected_votes": status.get("expected_votes"),
        "total_votes": status.get("total_votes"),
        "quorum": status.get("quorum"),
        "config_version": status.get("config_version"),
        "qdevice_connected": bool(qdevice.get("connected")),
        "qdevice_vote": bool(qdevice.get("vote")),
    }


def hook_env(
    item: Published, ctx: SinkContext, state: Mapping[str, Any], path: str
) -> dict[str, str]:
    """PATH and the VOTEMESH_* variables of one run (nothing else of the agent's environment)."""
    env = {
        "PATH": path,
        "VOTEMESH_EVENT": item.kind,
        "VOTEMESH_REASON": str(item.record.get("reason", ""))[:VALUE_LIMIT],
        "VOTEMESH_SEQ": str(item.seq),
        "VOTEMESH_WALL_MS": str(item.wall_ms),
        "VOTEMESH_CLUSTER": ctx.cluster,
        "VOTEMESH_NODE_ID": str(ctx.node_id),
        "VOTEMESH_NODE_NAME": ctx.node_name,
    }
    for key in ("quorate", "ring", "members", "expected_votes", "total_votes", "quorum",
                "config_version", "qdevice_connected", "qdevice_vote"):  # fmt: skip
        value = _env_value(state[key]) if key in state else None
        if value is not None:
            env[f"VOTEMESH_{key.upper()}"] = value
    for key, raw in item.record.items():
        if key in ("event", "reason"):
            continue
        value = _env_value(raw)
        if value is not None:
            env["VOTEMESH_DETAIL_" + _KEY_UNSAFE.sub("_", key.upper())] = value
    return {k: v.replace("\0", "") for k, v in env.items()}


class _Run(asyncio.SubprocessProtocol):
    """One run's pipes: the tail of stdout and stderr, and when the process and pipes end."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.output = {1: bytearray(), 2: bytearray()}
        self.exited: asyncio.Future[None] = loop.create_future()
        self.drained: asyncio.Future[None] = loop.create_future()
        self._open = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        keep = self.output[fd]
        keep += data
        if len(keep) > OUTPUT_TAIL:
            del keep[: len(keep) - OUTPUT_TAIL]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:  # noqa: ARG002
        self._open.discard(fd)  # fd 0: the hook closed stdin unread, which is fine
        if not self._open and not self.drained.done():
            self.drained.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def text(self, fd: int) -> str:
        return self.output[fd].decode(errors="replace")


def _killpg(pgid: int, sig: int) -> bool:
    """Signal a process group (0: only look); False when nothing of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # the group is gone and its id reused by someone else's
        return False
    return True


def _group_running(pgid: int) -> bool:
    """Some process of the group is still running (zombies waiting for a reaper do not count;
    where /proc cannot be read, any member counts)."""
    if not _killpg(pgid, 0):
        return False
    try:
        entries = [e for e in Path("/proc").iterdir() if e.name.isdigit()]
    except OSError:
        return True
    for entry in entries:
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state ppid pgrp ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


class HookSink(QueuedSink):
    """One `[[hook]]`: its command for each event it names, one run at a time."""

    def __init__(self, config: HookConfig, ctx: SinkContext, name: str) -> None:
        super().__init__(config.queue)
        self.config = config
        self.ctx = ctx
        self.name = name
        self.path = os.environ.get("PATH") or DEFAULT_PATH
        self.kill_grace = KILL_GRACE
        self.runs = 0
        self.timeouts = 0
        self._drops_logged = 0

    def wants(self, item: Published) -> bool:
        return self.config.wants(item.kind)

    async def run(self) -> None:
        """Say once whether the command can run, then deliver until cancelled."""
        problem = command_problem(self.config.command[0], self.path)
        if problem:
            log.error(
                "hook command cannot run; its events will be counted as failed until it can",
                hook=self.name,
                command=list(self.config.command),
                problem=problem,
            )
        else:
            log.info(
                "hook ready", hook=self.name, command=list(self.config.command),
                events=list(self.config.events), timeout=self.config.timeout,
            )  # fmt: skip
        await super().run()

    async def deliver(self, item: Published) -> None:
        """One run of the command for `item`; its outcome is logged and counted, never raised."""
        self.runs += 1
        self._log_drops()
        fields = {"hook": self.name, "kind": item.kind, "seq": item.seq}
        problem = command_problem(self.config.command[0], self.path)
        if problem:
            self.failed += 1
            log.warning("hook not run", **fields, problem=problem)
            return
        state = self._state()
        stdin = json.dumps({**item.as_dict(), "status": state}, default=str).encode() + b"\n"
        env = hook_env(item, self.ctx, state, self.path)
        started = time.monotonic()
        run = _Run()
        try:
            transport = await self._spawn(run, env)
        except OSError as exc:  # e.g. a script whose #! interpreter does not exist
            self.failed += 1
            log.warning("hook not run", **fields, problem=f"{self.config.command[0]}: {exc}")
            return
        try:
            timed_out = await self._wait(transport, run, stdin)
        finally:
            if transport.get_returncode() is None:  # cancelled (the agent stops)
                _killpg(transport.get_pid(), signal.SIGKILL)
            transport.close()  # also the pipes a child it left running still holds
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        self._outcome(timed_out, {**fields, "command": list(self.config.command),
                                  "duration_ms": duration_ms, "exit": transport.get_returncode(),
                                  "stdout": run.text(1), "stderr": run.text(2)})  # fmt: skip

    async def _spawn(self, run: _Run, env: dict[str, str]) -> asyncio.SubprocessTransport:
        """Start the command in its own session. Cancelled meanwhile (the agent stops), the
        start is finished and its whole group killed: asyncio alone would kill only the
        leader, leaving whatever the hook had already started."""
        spawn = asyncio.ensure_future(
            asyncio.get_running_loop().subprocess_exec(
                lambda: run,
                *self.config.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd="/",
                start_new_session=True,
            )
        )
        try:
            transport, _ = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                late, _ = await spawn
                _killpg(late.get_pid(), signal.SIGKILL)
                late.close()
            raise
        return transport

    async def _wait(self, transport: asyncio.SubprocessTransport, run: _Run, stdin: bytes) -> bool:
        """Feed stdin, wait for the exit (killing the group at the timeout) and, briefly, for
        the last output; True when it timed out."""
        pipe = transport.get_pipe_transport(0)
        if isinstance(pipe, asyncio.WriteTransport):
            pipe.write(stdin)  # buffered by the loop; a hook that never reads is fine
            pipe.close()
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(run.exited), self.config.timeout)
        except TimeoutError:
            timed_out = True
            await self._kill(transport.get_pid(), run)
        await asyncio.wait([run.drained], timeout=EXIT_WAIT)
        return timed_out

    async def _kill(self, pgid: int, run: _Run) -> None:
        """SIGTERM to the hook's process group; SIGKILL to what is left of it after the grace."""
        _killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(run.exited), self.kill_grace)
        while time.monotonic() < deadline and _group_running(pgid):  # its children, too
            await asyncio.sleep(0.05)
        _killpg(pgid, signal.SIGKILL)
        await run.exited

    def _outcome(self, timed_out: bool, fields: dict[str, Any]) -> None:
        """Count the run and log its one line."""
        code = fields["exit"]
        if timed_out:
            self.timeouts += 1
            self.failed += 1
            log.warning("hook timed out", **fields, timeout=self.config.timeout)
        elif code != 0:
            self.failed += 1
            if code is not None and code < 0:
                fields["signal"] = signal.Signals(-code).name if -code in _SIGNALS else -code
            log.warning("hook failed", **fields)
        else:
            log.info("hook ran", **fields)

    def _state(self) -> dict[str, Any]:
        try:
            return summary(self.ctx.status())
        except Exception as exc:  # noqa: BLE001 (the run goes ahead without the level state)
            log.warning("hook: status unavailable", hook=self.name, error=str(exc))
            return {}

    def _log_drops(self) -> None:
        if self.dropped > self._drops_logged:
            log.warning(
                "hook queue full; oldest events dropped",
                hook=self.name,
                dropped=self.dropped - self._drops_logged,
                queue=self.capacity,
            )
            self._drops_logged = self.dropped

    def stats(self) -> dict[str, int]:
        """`runs`, `failures` (= `failed`), `timeouts`, `dropped`, `queued`, ..."""
        return {**super().stats(), "runs": self.runs, "failures": self.failed,
                "timeouts": self.timeouts}  # fmt: skip


def make_hook_sinks(hooks: tuple[HookConfig, ...], ctx: SinkContext) -> list[HookSink]:
    """One sink per `[[hook]]`, named `hook:<index>`."""
    return [HookSink(config, ctx, f"hook:{i}") for i, config in enumerate(hooks)]
