"""The three rings: core modules never import I/O, clock or logging, and imports point inward."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"asyncio", "socket", "ssl", "time", "structlog", "selectors", "subprocess"}
RANDOM_ALLOWED = {"Random"}  # an injected random.Random is fine; module-level functions are not
ADAPTER_PARTS = {"runtime", "cli", "__main__.py"}  # and every cli*.py
PACKAGES = ("proto", "agent", "qnetd")
#: The pure modules of the lab package (design §4.1); adapters (switch, netns, ...) are not here.
LAB_CORE = ("netem", "grudge", "scenario", "timeline", "checker", "expect", "report", "picture")
LAB_DIR = ROOT / "deploy" / "lab" / "votemesh_lab"


def core_modules() -> list[Path]:
    """Every .py file of proto/, agent/ and qnetd/ outside the adapter directories, and the lab's
    pure modules that exist."""
    lab = [LAB_DIR / f"{name}.py" for name in LAB_CORE if (LAB_DIR / f"{name}.py").exists()]
    return [
        p
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if not ADAPTER_PARTS & set(p.relative_to(ROOT).parts) and not p.name.startswith("cli")
    ] + lab


def violations(source: str, package: str) -> list[str]:
    """What a module does that a core module must not."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if _bad(a.name, package)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if _bad(node.module, package):
                found.append(f"from {node.module} import")
            if node.module == "random":
                found += [
                    f"from random import {a.name}"
                    for a in node.names
                    if a.name not in RANDOM_ALLOWED
                ]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr not in RANDOM_ALLOWED
        ):
            found.append(f"random.{node.attr}")
    return found


def _bad(module: str, package: str) -> bool:
    top = module.split(".", maxsplit=1)[0]
    if top in FORBIDDEN:
        return True
    if package == "proto":
        return top in {"agent", "qnetd", "secrets", "os"}  # proto draws no randomness, no files
    return {package, top} == {"agent", "qnetd"}  # agent and qnetd never import each other


def test_there_are_core_modules_to_check() -> None:
    """The walk finds the proto modules (an empty walk would pass vacuously)."""
    names = {p.name for p in core_modules()}
    assert {"tlv.py", "qnetd_messages.py", "datagram_seal.py"} <= names


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_has_no_io_clock_or_logging(path: Path) -> None:
    """A core module imports none of asyncio, socket, ssl, time, structlog; no module random."""
    parts = path.relative_to(ROOT).parts
    package = "votemesh_lab" if parts[0] == "deploy" else parts[0]
    assert violations(path.read_text(), package) == []


@pytest.mark.parametrize(
    ("source", "package"),
    [
        ("import asyncio", "agent"),
        ("from time import monotonic", "qnetd"),
        ("import structlog.testing", "proto"),
        ("import random\nx = random.random()", "agent"),
        ("from random import choice", "qnetd"),
        ("import secrets", "proto"),
        ("from qnetd.arbitration import x", "agent"),
    ],
)
def test_checker_flags_each_forbidden_pattern(source: str, package: str) -> None:
    """The checker itself catches each pattern it is meant to (so the test above can fail)."""
    assert violations(source, package) != []


def test_checker_allows_injected_random() -> None:
    """`random.Random` passed in from an adapter is the allowed way to get randomness."""
    assert violations("import random\ndef f(rng: random.Random) -> None: ...", "agent") == []
