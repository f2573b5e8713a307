"""Hook commands (design §3.13, "Hooks"): real processes run from small shell scripts that this
test writes. The event reaches them as environment and stdin; runs are serialized; a hook that
hangs is killed with its whole process group; a missing or non-executable command is one clear
line and counted; a full queue drops its oldest events, counted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from agent.outputs import HookConfig, Outputs
from agent.runtime.fanout import FanOut, Published, SinkContext
from agent.runtime.hooks import OUTPUT_TAIL, HookSink
from agent.runtime.sinks import make_sinks

STATUS: dict[str, Any] = {
    "cluster": "alpha",
    "node_id": 3,
    "node_name": "n3",
    "quorate": False,
    "ring": "1.2a",
    "members": [1, 3],
    "expected_votes": 3,
    "total_votes": 2,
    "quorum": 2,
    "config_version": 7,
    "qdevice": {"connected": False, "vote": False},
}


def context(status: dict[str, Any] | None = None) -> SinkContext:
    doc = status if status is not None else dict(STATUS)
    return SinkContext("alpha", 3, "n3", status=lambda: doc, stats=dict)


def script(path: Path, body: str, executable: bool = True) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    if executable:
        path.chmod(0o755)
    return path


def event(kind: str = "quorum_lost", seq: int = 1, **details: Any) -> Published:
    record = {"event": kind, "reason": f"because {seq}", **details}
    return Published(seq, 1_700_000_000_000 + seq, kind, record)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a reparented child may wait to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def hook(
    command: Path | str, *args: str, events: tuple[str, ...] = ("*",), **kw: Any
) -> HookConfig:
    return HookConfig(events=events, command=(str(command), *args), **kw)


@pytest_asyncio.fixture
async def fan() -> AsyncIterator[FanOut]:
    fan = FanOut()
    yield fan
    await fan.close()


DUMP = 'env > "$1/env.$VOTEMESH_SEQ"\ncat > "$1/stdin.$VOTEMESH_SEQ"\necho out-line\n'
DUMP += 'echo err-line >&2\nexit "${2:-0}"\n'


@pytest.mark.asyncio
async def test_the_event_arrives_as_environment_and_as_json_on_stdin(
    tmp_path: Path, fan: FanOut
) -> None:
    """Only PATH and VOTEMESH_* (event, agent, level state read at run time, each scalar detail
    sanitized) in the environment; the event's JSON plus a status summary on stdin; one
    `hook ran` line with the exit status and the output."""
    sink = HookSink(hook(script(tmp_path / "dump.sh", DUMP), str(tmp_path)), context(), "hook:0")
    with capture_logs() as logs:
        fan.start(sink)
        details = {"peer": 2, "added": [4, 5], "ok": True, "a-b.c": "x\0y", "nested": {"k": 1}}
        sink.offer(event("quorum_lost", 1, **details))
        await until(lambda: sink.stats()["runs"] == 1 and not sink.busy)
    env = dict(line.split("=", 1) for line in (tmp_path / "env.1").read_text().splitlines())
    assert env["PATH"] == os.environ["PATH"]
    shell_own = {"PWD", "SHLVL", "_", "OLDPWD"}
    assert {k for k in env if not k.startswith("VOTEMESH_")} - shell_own == {"PATH"}
    assert env["VOTEMESH_EVENT"] == "quorum_lost"
    assert env["VOTEMESH_REASON"] == "because 1"
    assert env["VOTEMESH_SEQ"] == "1"
    assert env["VOTEMESH_WALL_MS"] == "1700000000001"
    assert (env["VOTEMESH_CLUSTER"], env["VOTEMESH_NODE_ID"], env["VOTEMESH_NODE_NAME"]) == (
        "alpha",
        "3",
        "n3",
    )
    assert env["VOTEMESH_QUORATE"] == "0"
    assert env["VOTEMESH_MEMBERS"] == "1 3"
    assert env["VOTEMESH_RING"] == "1.2a"
    assert env["VOTEMESH_CONFIG_VERSION"] == "7"
    assert env["VOTEMESH_DETAIL_PEER"] == "2"
    assert env["VOTEMESH_DETAIL_ADDED"] == "4 5"
    assert env["VOTEMESH_DETAIL_OK"] == "1"
    assert env["VOTEMESH_DETAIL_A_B_C"] == "xy"
    assert not any("NESTED" in k for k in env)
    doc = json.loads((tmp_path / "stdin.1").read_text())
    assert doc["event"] == "quorum_lost"
    assert doc["seq"] == 1
    assert doc["nested"] == {"k": 1}
    assert doc["status"]["quorate"] is False
    assert doc["status"]["members"] == [1, 3]
    ran = [e for e in logs if e["event"] == "hook ran"]
    assert len(ran) == 1
    assert ran[0]["exit"] == 0
    assert ran[0]["stdout"] == "out-line\n"
    assert ran[0]["stderr"] == "err-line\n"
    assert sink.stats()["failures"] == 0


@pytest.mark.asyncio
async def test_the_level_state_is_read_when_the_hook_runs(tmp_path: Path, fan: FanOut) -> None:
    """VOTEMESH_QUORATE is the state at run time (a service manager acts on the level), while
    VOTEMESH_EVENT is the edge that caused the run."""
    status = dict(STATUS)
    sink = HookSink(hook(script(tmp_path / "dump.sh", DUMP), str(tmp_path)), context(status), "h")
    fan.start(sink)
    sink.offer(event("quorum_lost", 1))
    await until(lambda: not sink.busy)
    status["quorate"] = True
    sink.offer(event("quorum_gained", 2))
    await until(lambda: not sink.busy and sink.stats()["runs"] == 2)
    second = (tmp_path / "env.2").read_text().splitlines()
    assert "VOTEMESH_EVENT=quorum_gained" in second
    assert "VOTEMESH_QUORATE=1" in second


@pytest.mark.asyncio
async def test_a_hook_runs_only_for_the_kinds_it_names(tmp_path: Path, fan: FanOut) -> None:
    """`events` filters: other kinds are not even queued (not offered, not dropped)."""
    cfg = hook(script(tmp_path / "dump.sh", DUMP), str(tmp_path), events=("quorum_gained",))
    sink = HookSink(cfg, context(), "h")
    fan.start(sink)
    for seq, kind in enumerate(["view_installed", "quorum_gained", "peer_lost"], start=1):
        fan.publish(kind, event(kind, seq).record)
    await until(lambda: not sink.busy and sink.stats()["runs"] == 1)
    await asyncio.sleep(0.1)
    assert sorted(p.name for p in tmp_path.glob("env.*")) == ["env.2"]
    assert sink.stats()["offered"] == 1


@pytest.mark.asyncio
async def test_a_non_zero_exit_is_logged_and_counted_as_a_failure(
    tmp_path: Path, fan: FanOut
) -> None:
    """Exit 3: one `hook failed` warning with the status and stderr; the next run goes ahead."""
    sink = HookSink(hook(script(tmp_path / "d.sh", DUMP), str(tmp_path), "3"), context(), "h")
    with capture_logs() as logs:
        fan.start(sink)
        sink.offer(event(seq=1))
        sink.offer(event(seq=2))
        await until(lambda: not sink.busy and sink.stats()["runs"] == 2)
    failed = [e for e in logs if e["event"] == "hook failed"]
    assert [(e["exit"], e["stderr"], e["log_level"]) for e in failed] == [
        (3, "err-line\n", "warning"),
    ] * 2
    assert sink.stats()["failures"] == 2
    assert sink.stats()["failed"] == 2


HANG = """echo $$ > "$1/sh.pid"
sleep 30 &
echo $! > "$1/sleep.pid"
echo started
wait
"""


@pytest.mark.asyncio
async def test_a_hook_past_its_timeout_is_killed_with_its_process_group(
    tmp_path: Path, fan: FanOut
) -> None:
    """A hook doing `sleep 30` with timeout 0.5: SIGTERM to its group, `hook timed out` logged
    with what it printed, the child sleep is gone too, and the next event still runs."""
    body = f'[ "$VOTEMESH_EVENT" = quorum_lost ] || exec {tmp_path / "dump.sh"} "$@"\n' + HANG
    script(tmp_path / "dump.sh", DUMP)
    sink = HookSink(
        hook(script(tmp_path / "hang.sh", body), str(tmp_path), timeout=0.5), context(), "h"
    )
    with capture_logs() as logs:
        fan.start(sink)
        started = time.monotonic()
        sink.offer(event("quorum_lost", 1))
        sink.offer(event("quorum_gained", 2))
        await until(lambda: (tmp_path / "stdin.2").exists() and not sink.busy)
        took = time.monotonic() - started
    timed_out = [e for e in logs if e["event"] == "hook timed out"]
    assert len(timed_out) == 1
    assert timed_out[0]["stdout"] == "started\n"
    assert timed_out[0]["exit"] == -signal.SIGTERM
    assert took < 5  # not 30 s
    assert not alive(int((tmp_path / "sleep.pid").read_text()))
    assert not alive(int((tmp_path / "sh.pid").read_text()))
    assert sink.stats()["timeouts"] == 1
    assert sink.stats()["failures"] == 1
    assert sink.stats()["runs"] == 2


@pytest.mark.asyncio
async def test_a_hook_that_ignores_sigterm_gets_sigkill_after_the_grace(
    tmp_path: Path, fan: FanOut
) -> None:
    """`trap '' TERM` (inherited by its child): SIGKILL to the group after the grace."""
    body = "trap '' TERM\n" + HANG
    sink = HookSink(
        hook(script(tmp_path / "stubborn.sh", body), str(tmp_path), timeout=0.3), context(), "h"
    )
    sink.kill_grace = 0.3
    with capture_logs() as logs:
        fan.start(sink)
        sink.offer(event(seq=1))
        await until(lambda: sink.stats()["runs"] == 1 and not sink.busy)
    timed_out = [e for e in logs if e["event"] == "hook timed out"]
    assert [e["exit"] for e in timed_out] == [-signal.SIGKILL]
    assert not alive(int((tmp_path / "sleep.pid").read_text()))
    assert not alive(int((tmp_path / "sh.pid").read_text()))


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda d: d / "absent.sh", "does not exist"),
        (lambda d: script(d / "plain.sh", "exit 0\n", executable=False), "is not executable"),
        (lambda d: d, "is a directory"),
        (lambda _d: "votemesh-no-such-hook-command", "is not found on PATH"),
    ],
)
async def test_a_command_that_cannot_run_is_one_clear_line_and_counted(
    tmp_path: Path, fan: FanOut, make: Callable[[Path], Path | str], problem: str
) -> None:
    """One error line when the sink starts, one `hook not run` line per missed event (counted
    as failed), never a traceback; the sink keeps going."""
    command = make(tmp_path)
    sink = HookSink(hook(command), context(), "hook:0")
    with capture_logs() as logs:
        fan.start(sink)
        await asyncio.sleep(0.05)
        sink.offer(event(seq=1))
        sink.offer(event(seq=2))
        await until(lambda: sink.stats()["runs"] == 2 and not sink.busy)
    start = [e for e in logs if e["log_level"] == "error"]
    assert len(start) == 1
    assert start[0]["event"].startswith("hook command cannot run")
    assert problem in start[0]["problem"]
    not_run = [e for e in logs if e["event"] == "hook not run"]
    assert [problem in e["problem"] for e in not_run] == [True, True]
    assert not any("exc_info" in e or "exception" in e for e in logs)
    assert sink.stats()["failures"] == 2
    assert not fan._tasks["hook:0"].done()


@pytest.mark.asyncio
async def test_a_hook_installed_later_runs_without_a_reload(tmp_path: Path, fan: FanOut) -> None:
    """The command is looked for on every event: once the file exists, the next event runs it."""
    command = tmp_path / "later.sh"
    sink = HookSink(hook(command, str(tmp_path)), context(), "h")
    fan.start(sink)
    sink.offer(event(seq=1))
    await until(lambda: sink.stats()["runs"] == 1 and not sink.busy)
    script(command, DUMP)
    sink.offer(event(seq=2))
    await until(lambda: sink.stats()["runs"] == 2 and not sink.busy)
    assert (tmp_path / "env.2").exists()
    assert sink.stats()["failures"] == 1


@pytest.mark.asyncio
async def test_a_missing_interpreter_is_one_line_not_a_traceback(
    tmp_path: Path, fan: FanOut
) -> None:
    """An executable file whose #! names nothing: exec fails; logged and counted."""
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/nonexistent/interpreter\n")
    bad.chmod(0o755)
    sink = HookSink(hook(bad), context(), "h")
    with capture_logs() as logs:
        fan.start(sink)
        sink.offer(event(seq=1))
        await until(lambda: sink.stats()["runs"] == 1 and not sink.busy)
    assert [e["event"] for e in logs if e["log_level"] != "info"] == ["hook not run"]
    assert sink.stats()["failures"] == 1


SPAN = """echo "start $VOTEMESH_SEQ $(date +%s%N)" >> "$1/spans"
sleep 0.2
echo "end $VOTEMESH_SEQ $(date +%s%N)" >> "$1/spans"
"""


@pytest.mark.asyncio
async def test_runs_of_one_hook_never_overlap_and_keep_the_event_order(
    tmp_path: Path, fan: FanOut
) -> None:
    """Three events at once: start/end times written by the script show one run at a time,
    in seq order."""
    sink = HookSink(hook(script(tmp_path / "span.sh", SPAN), str(tmp_path)), context(), "h")
    fan.start(sink)
    for seq in (1, 2, 3):
        sink.offer(event(seq=seq))
    await until(lambda: sink.stats()["runs"] == 3 and not sink.busy)
    lines = [line.split() for line in (tmp_path / "spans").read_text().splitlines()]
    assert [(what, seq) for what, seq, _ in lines] == [
        ("start", "1"), ("end", "1"), ("start", "2"), ("end", "2"), ("start", "3"), ("end", "3"),
    ]  # fmt: skip
    times = [int(t) for _, _, t in lines]
    assert times == sorted(times)


@pytest.mark.asyncio
async def test_a_full_queue_drops_the_oldest_events_counted_and_logged(
    tmp_path: Path, fan: FanOut
) -> None:
    """queue = 2 and six events in one burst: four dropped (counted, one warning line), the
    two newest run."""
    cfg = hook(script(tmp_path / "dump.sh", DUMP), str(tmp_path), queue=2)
    sink = HookSink(cfg, context(), "h")
    with capture_logs() as logs:
        fan.start(sink)
        await asyncio.sleep(0.05)
        for seq in range(1, 7):
            sink.offer(event(seq=seq))
        await until(lambda: not sink.busy and sink.stats()["runs"] == 2)
    assert sorted(p.name for p in tmp_path.glob("env.*")) == ["env.5", "env.6"]
    assert sink.stats()["dropped"] == 4
    assert sink.stats()["queued"] == 0
    drops = [e for e in logs if e["event"] == "hook queue full; oldest events dropped"]
    assert [e["dropped"] for e in drops] == [4]


@pytest.mark.asyncio
async def test_output_is_bounded_to_its_tail(tmp_path: Path, fan: FanOut) -> None:
    """A hook printing 200 KB: the log keeps the last 4 KiB of it."""
    body = "head -c 200000 /dev/zero | tr '\\0' a\necho END\n"
    sink = HookSink(hook(script(tmp_path / "loud.sh", body)), context(), "h")
    with capture_logs() as logs:
        fan.start(sink)
        sink.offer(event(seq=1))
        await until(lambda: sink.stats()["runs"] == 1 and not sink.busy)
    (ran,) = [e for e in logs if e["event"] == "hook ran"]
    assert len(ran["stdout"]) == OUTPUT_TAIL
    assert ran["stdout"].endswith("aaaaEND\n")


@pytest.mark.asyncio
async def test_a_child_left_running_does_not_hold_the_hook(tmp_path: Path, fan: FanOut) -> None:
    """A hook that starts something in the background and exits 0 has succeeded at once
    (no timeout), although the child still holds its stdout; the child is left alone."""
    body = 'sleep 30 &\necho $! > "$1/child.pid"\nexit 0\n'
    sink = HookSink(
        hook(script(tmp_path / "bg.sh", body), str(tmp_path), timeout=5), context(), "h"
    )
    fan.start(sink)
    started = time.monotonic()
    sink.offer(event(seq=1))
    await until(lambda: sink.stats()["runs"] == 1 and not sink.busy)
    child = int((tmp_path / "child.pid").read_text())
    try:
        assert time.monotonic() - started < 3
        assert sink.stats()["failures"] == 0
        assert alive(child)
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.asyncio
async def test_a_bare_command_name_is_looked_up_on_path(fan: FanOut) -> None:
    """`command = ["true"]` runs /usr/bin/true (PATH from the agent)."""
    sink = HookSink(hook("true"), context(), "h")
    fan.start(sink)
    sink.offer(event(seq=1))
    await until(lambda: sink.stats()["runs"] == 1 and not sink.busy)
    assert sink.stats()["failures"] == 0


def test_make_sinks_builds_one_uniquely_named_sink_per_hook(tmp_path: Path) -> None:
    """Two [[hook]] tables: sinks `hook:0` and `hook:1` with their own settings."""
    hooks = (hook(tmp_path / "a"), hook(tmp_path / "a", events=("peer_lost",), queue=5))
    sinks = make_sinks(Outputs(hooks=hooks), context())
    assert [s.name for s in sinks] == ["hook:0", "hook:1"]
    assert isinstance(sinks[1], HookSink)
    assert sinks[1].capacity == 5


@pytest.mark.asyncio
async def test_a_status_that_cannot_be_read_leaves_the_event_variables(
    tmp_path: Path, fan: FanOut
) -> None:
    """A status() that raises: one warning, and the hook still runs with the event's variables
    (and no level state it could misread)."""

    def broken() -> dict[str, Any]:
        raise RuntimeError("snapshot failed")

    ctx = SinkContext("alpha", 3, "n3", status=broken, stats=dict)
    sink = HookSink(hook(script(tmp_path / "dump.sh", DUMP), str(tmp_path)), ctx, "h")
    with capture_logs() as logs:
        fan.start(sink)
        sink.offer(event(seq=1))
        await until(lambda: sink.stats()["runs"] == 1 and not sink.busy)
    env = (tmp_path / "env.1").read_text().splitlines()
    assert "VOTEMESH_EVENT=quorum_lost" in env
    assert not any(line.startswith("VOTEMESH_QUORATE=") for line in env)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["hook: status unavailable"]
    assert sink.stats()["failures"] == 0


def running_with(token: str) -> list[int]:
    """Pids of running (not zombie) processes whose command line contains `token`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if token.encode() in cmdline and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.mark.asyncio
async def test_stopping_the_sink_mid_run_leaves_no_process(tmp_path: Path) -> None:
    """The agent stops (or SIGHUP replaces the hook) while a run is starting or going: the
    run's whole process group is killed, whenever the cancel lands (also while the process is
    being started, where asyncio alone kills only the leader and then waits for the pipes
    its children hold)."""
    token = f"30.{os.getpid()}{time.monotonic_ns() % 10**6}"
    body = f"sleep {token} &\nsleep {token} &\nwait\n"
    command = script(tmp_path / "bg.sh", body)
    started = time.monotonic()
    try:
        for delay in (0, 0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.2):
            fan = FanOut()
            sink = HookSink(hook(command), context(), "h")
            fan.start(sink)
            await asyncio.sleep(0.01)
            sink.offer(event(seq=1))
            await asyncio.sleep(delay)
            await fan.stop("h")
        assert time.monotonic() - started < 10  # not held by the 30 s children
        await asyncio.sleep(0.3)
        assert running_with(token) == []
    finally:
        for pid in running_with(token):
            os.kill(pid, signal.SIGKILL)
