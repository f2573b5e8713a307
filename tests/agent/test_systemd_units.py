"""deploy/systemd: both units pass `systemd-analyze verify` with no warning, and the agent's unit
says what the agent does (Type=notify with a watchdog, no restart for exit 2 and 3, SIGHUP on
reload, the control socket's group)."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.runtime.main import EXIT_REMOVED
from tests.agent.live_agents import BIN

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
ANALYZE = shutil.which("systemd-analyze")


def analyze(verb: str, unit: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze VERB` of a copy whose ExecStart names this checkout's console script
    (verify insists the program exists; the package installs it as /usr/bin/NAME, where
    tests/test_deb.py verifies the installed units unchanged)."""
    name = unit.stem
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(f"/usr/bin/{name} ", f"{BIN / name} "))
    assert copy.read_text() != unit.read_text()
    options = ["--man=no"] if verb == "verify" else ["--offline=true", "--no-pager"]
    return subprocess.run(
        [str(ANALYZE), verb, *options, str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def service(unit: Path) -> dict[str, str]:
    """The [Service] section (continuation lines joined)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    return dict(parser["Service"])


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (Debian: systemd)")
@pytest.mark.parametrize("name", ["votemesh-agent.service", "votemesh-qnetd.service"])
def test_units_verify_clean(name: str, tmp_path: Path) -> None:
    """No error and no warning (an unknown or misspelt key is only a warning: caught too)."""
    result = analyze("verify", UNITS / name, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (Debian: systemd)")
@pytest.mark.parametrize(("name", "most"), [("votemesh-agent", 2.2), ("votemesh-qnetd", 2.0)])
def test_units_exposure(name: str, most: float, tmp_path: Path) -> None:
    """`systemd-analyze security` rates both units "OK" and no worse than today (agent 2.0,
    qnetd 1.7 on systemd 252; 0 is locked down, 10 is unprotected): removing a hardening line
    fails here."""
    result = analyze("security", UNITS / f"{name}.service", tmp_path)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout[-500:] + result.stderr
    assert float(match.group(1)) <= most


def test_agent_unit_matches_the_agent() -> None:
    """Type=notify with NotifyAccess=main and a watchdog; exit 2 (config mistake) and
    EXIT_REMOVED are not restarted; reload is SIGHUP; the control socket's directory is the
    group's; the program's own paths are the unit's."""
    unit = service(UNITS / "votemesh-agent.service")
    assert unit["Type"] == "notify"
    assert unit["NotifyAccess"] == "main"
    assert unit["WatchdogSec"] == "30s"
    assert unit["Restart"] == "on-failure"
    assert set(unit["RestartPreventExitStatus"].split()) == {"2", str(EXIT_REMOVED)}
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["ExecStart"] == "/usr/bin/votemesh-agent --config /etc/votemesh/node.toml"
    assert (unit["Group"], unit["RuntimeDirectory"]) == ("votemesh", "votemesh")
    assert unit["StateDirectory"] == "votemesh"  # /var/lib/votemesh, the agent's default
    assert unit["CapabilityBoundingSet"] == ""
    assert set(unit["RestrictAddressFamilies"].split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }


def test_qnetd_unit_is_notify() -> None:
    """qnetd says READY=1 (qnetd/runtime/app.py): Type=notify from its main process."""
    unit = service(UNITS / "votemesh-qnetd.service")
    assert (unit["Type"], unit["NotifyAccess"]) == ("notify", "main")
    assert unit["ExecStart"].startswith("/usr/bin/votemesh-qnetd run")
