"""Fixtures shared by the agent tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from votemesh_lab.netns import LabFactory


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[LabFactory]:
    """Labs for one test; every namespace and process is gone after it, pass or fail."""
    with LabFactory(tmp_path) as factory:
        yield factory
