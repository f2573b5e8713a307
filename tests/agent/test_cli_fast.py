"""`votemesh status` / `nodes` / `explain` fast path (issue 8 item 4): what it imports, that its
record reader is `agent.status.from_json` to the letter, and that its command-line reader agrees
with argparse or hands over to it. Not timed: `make bench` (bench cli) measures the cost."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import status as core_status
from agent.cli import build_parser
from agent.cli.client import loads
from agent.cli.render import explain_text, nodes_text, status_text
from agent.cli.status import parse_words
from agent.cli.status_reader import DEFAULTS, FIELDS, SCHEMA, StatusError, read_status
from agent.status import from_json, to_json
from proto.control_frame import encode_reply
from tests.agent.live_agents import BIN
from tests.agent.test_status_text import DATE, GOLDEN, STATES

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("LinkInfo", "PeerInfo", "QdeviceInfo", "Transition", "RuntimeInfo", "NodeStatus")
HEAVY = (
    "argparse",
    "typing",
    "dataclasses",
    "inspect",
    "pathlib",
    "socket",
    "ssl",
    "asyncio",
    "structlog",
    "cryptography",
    "msgpack",
    "tomllib",
    "gettext",
    "agent.status",
    "agent.node",
    "agent.config",
)
"""Modules the fast path must not load (each cost 1-20 ms per poll when it did, or more)."""
OURS = {
    "agent",
    "agent.cli",
    "agent.cli.client",
    "agent.cli.render",
    "agent.cli.status",
    "agent.cli.status_reader",
    "proto",
    "proto.control_frame",
    "proto.runtime",
    "proto.runtime.control_client",
}

# What `python -S` runs: the console script's work (import agent.cli, call main) with the
# modules loaded by then written to a file, so the CLI's own stdout stays what it prints.
PROBE = """
import sys
before = set(sys.modules)
from agent.cli import main
try:
    code = main(sys.argv[2:])
finally:  # argparse's errors leave by SystemExit
    with open(sys.argv[1], "w") as out:
        out.write("\\n".join(sorted(set(sys.modules) - before)))
sys.exit(code)
"""


def document(state: str) -> dict[str, Any]:
    """STATES[state] as the agent sends it: to_json, through JSON text."""
    doc: dict[str, Any] = json.loads(json.dumps(to_json(STATES[state])))
    return doc


@pytest.fixture
def agent_socket(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A unix socket that answers each request with the status document in `state[0]` (a
    thread of this test serving the control framing; what the CLI reads is all it checks)."""
    path = tmp_path / "agent.sock"
    state = ["quorate"]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(4096)
                conn.sendall(encode_reply(True, json.dumps(document(state[0]))))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, state
    stop.set()
    thread.join(5)
    server.close()


def run_cli(tmp_path: Path, *words: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """`votemesh WORDS` in a fresh `python -S` (no site hooks, so every module it loads shows)."""
    loaded = tmp_path / "modules.txt"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{sysconfig.get_paths()['purelib']}"}
    result = subprocess.run(
        [sys.executable, "-S", "-c", PROBE, str(loaded), *words],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )
    return result, set(loaded.read_text().split()) if loaded.exists() else set()


def without_date(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("Date:"))


@pytest.mark.parametrize(
    ("words", "state", "code"),
    [
        (("status",), "quorate", 0),
        (("status", "--decimal"), "qdevice_ack", 0),
        (("status", "--json"), "not_quorate", 2),
        (("nodes",), "not_quorate", 0),
        (("explain",), "quorate", 0),
        (("explain",), "qdevice_nack", 2),
    ],
)
def test_fast_path_loads_no_heavy_module_and_prints_the_same(
    tmp_path: Path,
    agent_socket: tuple[Path, list[str]],
    words: tuple[str, ...],
    state: str,
    code: int,
) -> None:
    """Each verb loads only OURS (seven small modules, three package files), `_json` and
    `_socket` (and `json` for --json): none of HEAVY. It prints what the dataclass path prints,
    byte for byte (the Date line aside), with the same exit status (0 quorate, 2 not)."""
    path, served = agent_socket
    served[0] = state
    result, loaded = run_cli(tmp_path, *words, "--socket", str(path))
    assert result.returncode == code, result.stderr
    assert result.stderr == ""
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    if "--json" not in words:  # json's Python half pulls in re, enum, functools: ~7 ms
        assert not loaded & {"json", "re", "enum", "functools"}, sorted(loaded)
    ours = {m for m in loaded if m.split(".")[0] in ("agent", "proto", "qnetd")}
    assert ours <= OURS, sorted(ours - OURS)
    st = STATES[state]
    if "--json" in words:
        assert json.loads(result.stdout) == document(state)
        assert result.stdout == json.dumps(document(state), indent=2, sort_keys=True) + "\n"
    elif words[0] == "status":
        expected = status_text(st, DATE, hex_ids="--decimal" not in words)
        assert without_date(result.stdout) == without_date(expected)
    elif words[0] == "nodes":
        assert result.stdout == nodes_text(st)
    else:
        assert result.stdout == explain_text(st)


def test_the_installed_console_script_takes_the_fast_path(
    agent_socket: tuple[Path, list[str]],
) -> None:
    """The real entry point (`.venv/bin/votemesh`, from pyproject's [project.scripts]) under
    `-X importtime`: whatever the interpreter and the install load first, the poll itself loads
    none of HEAVY (a heavier entry module or a new top-level import fails here)."""
    path, _ = agent_socket
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            str(BIN / "votemesh"),
            "status",
            "--socket",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Cluster information\n")
    loaded = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "agent.cli.status_reader" in loaded
    assert not loaded & (set(HEAVY) - {"pathlib"}), sorted(loaded & set(HEAVY))


def test_other_verbs_and_mistakes_still_take_argparse(tmp_path: Path) -> None:
    """A mistake on a fast verb is argparse's one line (exit 1); a slow verb still works."""
    result, loaded = run_cli(tmp_path, "status", "--socket", "a", "--config", "b")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "not allowed with argument" in result.stderr
    assert "argparse" in loaded
    result, _ = run_cli(tmp_path, "expected", "zero", "--socket", str(tmp_path / "x.sock"))
    assert result.returncode == 1
    assert "whole number" in result.stderr
    assert "Traceback" not in result.stderr


def test_record_table_is_the_dataclasses() -> None:
    """FIELDS / DEFAULTS / SCHEMA are agent/status.py's classes: names, types as written, order,
    and every default (a field added there and not here fails this test)."""
    assert SCHEMA == core_status.SCHEMA
    for name in CLASSES:
        cls = getattr(core_status, name)
        assert FIELDS[name] == tuple((f.name, str(f.type)) for f in fields(cls)), name
        defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        assert all(f.default_factory is MISSING for f in fields(cls)), name
        assert DEFAULTS.get(name, {}) == defaults, name


@pytest.mark.parametrize("state", sorted(STATES))
def test_records_render_the_golden_files(state: str) -> None:
    """A record read from a state's document prints its golden files exactly, and holds the same
    values as `from_json`'s dataclass (field by field, nested)."""
    doc = document(state)
    record, typed = read_status(doc), from_json(doc)
    assert to_json_record(record) == to_json(typed)
    assert record.ring == typed.ring
    assert all(record.peer(p.node_id) is not None for p in typed.peers)
    names = [f"status_{state}.txt", f"status_{state}_decimal.txt"]
    names += [f"nodes_{state}.txt", f"explain_{state}.txt"]
    golden = [GOLDEN / name for name in names if (GOLDEN / name).exists()]
    assert golden
    for path in golden:
        if path.name.startswith("status_"):
            text = status_text(record, DATE, hex_ids="decimal" not in path.name)
        else:
            text = (nodes_text if path.name.startswith("nodes_") else explain_text)(record)
        assert text == path.read_text(), path.name


def to_json_record(value: Any) -> Any:
    """A record as to_json writes the dataclass (tuples as lists, `ring` on the top)."""
    if hasattr(value, "__dict__") and not isinstance(value, type):
        doc = {k: to_json_record(v) for k, v in vars(value).items()}
        if hasattr(value, "ring_id"):
            doc["ring"] = value.ring
        return doc
    if isinstance(value, tuple | list):
        return [to_json_record(v) for v in value]
    return value


BAD_VALUES: tuple[Any, ...] = (None, True, 7, 1.5, "x", [], [1, "a"], {}, {"a": 1})


def mutations(doc: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every field of the document (nested ones too) removed, and set to each BAD_VALUE."""
    targets: list[tuple[str, dict[str, Any]]] = [("status", doc)]
    targets += [("qdevice", doc["qdevice"]), ("runtime", doc["runtime"])]
    targets += [(f"peer{i}", p) for i, p in enumerate(doc["peers"])]
    targets += [(f"link{i}", p["links"][0]) for i, p in enumerate(doc["peers"]) if p["links"]]
    targets += [(f"transition{i}", t) for i, t in enumerate(doc["transitions"])]
    for where, target in targets:
        for key in list(target):
            saved = target.pop(key)
            yield f"{where}.{key} removed", json.loads(json.dumps(doc))
            for bad in BAD_VALUES:
                target[key] = bad
                yield f"{where}.{key}={bad!r}", json.loads(json.dumps(doc))
            target[key] = saved


def outcome(reader: Any, doc: Any) -> tuple[str, str]:
    """('error', text) or ('ok', what the three views print)."""
    try:
        st = reader(doc)
    except (StatusError, core_status.StatusError) as exc:
        return "error", str(exc)
    return "ok", status_text(st, DATE) + nodes_text(st) + explain_text(st)


def test_reader_refuses_what_from_json_refuses_in_the_same_words() -> None:
    """Over every field removed or set to a wrong value (over 700 documents, the runtime section
    included), and non-documents: the record reader accepts exactly what `from_json` accepts,
    prints the same, and refuses with the same one-line text."""
    doc = document("qdevice_ack")
    st = replace(
        STATES["qdevice_ack"],
        runtime=core_status.RuntimeInfo(1.5, {"0": "10.0.0.2:5405"}, {"rx": 3}, {"late": 0}),
    )
    doc = json.loads(json.dumps(to_json(st)))
    cases = list(mutations(doc))
    cases += [("schema 2", {**doc, "schema": 2}), ("a list", [doc]), ("a string", "status")]
    assert len(cases) > 700
    for label, case in cases:
        assert outcome(read_status, case) == outcome(from_json, case), label


@pytest.mark.parametrize(
    "words",
    [
        ["status"],
        ["status", "--json"],
        ["status", "--decimal", "--json"],
        ["status", "--socket", "/run/x.sock"],
        ["status", "--socket=/run/x.sock", "--json"],
        ["status", "--config", "/etc/votemesh/node.toml", "--decimal"],
        ["nodes", "--config=/etc/votemesh/node.toml"],
        ["explain"],
        ["explain", "--socket", "relative.sock"],
    ],
)
def test_fast_words_mean_what_argparse_says(words: list[str]) -> None:
    """The usual command lines: the fast reader's result is argparse's, name for name."""
    fast = parse_words(words)
    assert fast is not None
    slow = build_parser().parse_args(words)
    for name in ("command", "verb", "socket", "config"):
        assert getattr(fast, name) == getattr(slow, name), name
    if words[0] == "status":
        assert (fast.json, fast.decimal) == (slow.json, slow.decimal)


@pytest.mark.parametrize(
    "words",
    [
        ["status", "-h"],
        ["status", "--help"],
        ["status", "--js"],  # argparse's abbreviation
        ["status", "--json=1"],
        ["status", "--json", "--json"],
        ["status", "--socket"],
        ["status", "--socket="],
        ["status", "--socket", "--json"],
        ["status", "--socket", "-x"],
        ["status", "--socket", "a", "--config", "b"],
        ["status", "--socket", "a", "--socket", "b"],
        ["status", "extra"],
        ["status", "--", "--json"],
        ["nodes", "--json"],
        ["explain", "--decimal"],
        ["config", "show"],
        [],
    ],
)
def test_anything_else_goes_to_argparse(words: list[str]) -> None:
    """Help, abbreviations, repeats, missing or dash-led values and mistakes: the fast reader
    says None, so argparse answers (its help, its one-line error) exactly as before."""
    assert parse_words(words) is None


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def json_outcome(reader: Any, text: str) -> tuple[str, Any]:
    try:
        return "ok", reader(text)
    except ValueError:
        return "error", None


@given(JSON_VALUES, st.sampled_from(["", " ", "\n\t", " x", "]", "\ufeff", "0"]), st.booleans())
def test_loads_is_json_loads(value: Any, tail: str, lead: bool) -> None:
    """The C-scanner reader gives json.loads's value, and refuses (ValueError) what it refuses:
    JSON text with and without white space around it, trailing garbage, a BOM, a cut text."""
    text = (" \r\n" if lead else "") + json.dumps(value) + tail
    for case in (text, text[: len(text) // 2], tail + text):
        assert json_outcome(loads, case) == json_outcome(json.loads, case), case
