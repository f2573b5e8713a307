"""Regressions found by the review of the lab (each failed on the code before its fix)."""

from __future__ import annotations

from typing import Any

import pytest
from votemesh_lab import netns, supervisor
from votemesh_lab.timeline import TimelineError, fraction, seconds


def test_down_takes_only_the_labs_own_taps_from_the_root_namespace() -> None:
    """A host link that merely contains the lab id (Docker's `br-<12 hex>`, `veth<7 hex>`) is
    never deleted by `down`; the lab's TAPs `t<id><port>` are."""
    names = ["lo", "eth0", "br-1a2b3c4d5e6f", "veth1a2b3c4", "t1a2b3c7", "t1a2b3c12", "t1a2b3cx"]
    assert netns.lab_links("1a2b3c", names) == ["t1a2b3c7", "t1a2b3c12"]


@pytest.mark.parametrize("bad", ["abc", "20 parsecs", "ms"])
def test_a_time_that_is_not_a_number_is_a_timeline_error(bad: str) -> None:
    """`check` on a timeline whose `net` record says `"delay": "abc"` is one line, not a
    ValueError traceback."""
    with pytest.raises(TimelineError, match="is not a time"):
        seconds(bad)


def test_a_share_that_is_not_a_number_is_a_timeline_error() -> None:
    with pytest.raises(TimelineError, match="is not a share"):
        fraction("lots%")


def test_a_request_that_breaks_its_handler_is_refused_and_the_lab_stays(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Any exception out of a request handler is a refusal (`ok: false`, one line), never the
    end of the supervisor (which would tear the whole lab down)."""

    class Broken(supervisor.Supervisor):
        def op_status(self, _request: dict[str, Any]) -> dict[str, Any]:
            raise KeyError("n9")

    sup = Broken.__new__(Broken)  # no lab: only the request dispatch is under test
    reply = sup.handle({"op": "status"})
    assert reply["ok"] is False
    assert reply["error"] == "status failed: KeyError: 'n9'"
    assert "request status failed" in capsys.readouterr().err
