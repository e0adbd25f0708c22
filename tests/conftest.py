"""Shared fixtures: real worker processes, real data, and a check that none is left behind."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

import aia
from tests.processes import living_children

# The test sites consent to sending the level names of numeric columns (C(rank): 1-4), as
# their operators may (GLM_ALLOW_NUMERIC_LEVELS); set before any worker starts, so every
# worker inherits it. The privacy tests that check the refusal unset it.
os.environ.setdefault("GLM_ALLOW_NUMERIC_LEVELS", "1")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


#: Where the shared data sets come from (README, first section).
DATA_NOTE = ("the shared data sets (v6-glm-py's and distribglm's sites, the published tools' "
             "own data) belong in ../shared/data beside the repository")


def _needs_shared_data(report) -> bool:
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return "shared data" in str(reason)


def pytest_report_header(config) -> list:
    """Said once, at the start, when the shared data are absent."""
    if DATA.is_dir():
        return []
    return [f"shared data: {DATA} is absent: the tests that need it skip ({DATA_NOTE})"]


def pytest_terminal_summary(terminalreporter) -> None:
    """And once at the end: how many tests skipped for it."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if _needs_shared_data(r)]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} test(s) skipped: no shared data at {DATA} ({DATA_NOTE})",
            yellow=True)


@pytest.fixture
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"the shared data sets are not beside the repository ({DATA})")
    return DATA


@pytest.fixture
def cluster():
    """A persistent local cluster of 3 workers, closed after the test."""
    with aia.LocalCluster(3) as c:
        yield c


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Every test must leave no child process behind."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    left = []
    for _ in range(50):  # give exiting children up to 5 s to be reaped
        left = [p for p in living_children() if p.pid not in before]
        if not left:
            break
        psutil.wait_procs(left, timeout=0.1)
    assert not left, f"child processes left behind: {[(p.pid, p.name()) for p in left]}"
