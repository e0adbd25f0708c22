"""Without ../shared/data the tests that need it skip, and pytest says so once at the start
and once at the end (not only test by test)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

NEEDS_DATA = '''
import pytest

@pytest.mark.parametrize("k", range(3))
def test_needs_the_shared_data(data_dir, k):
    assert data_dir.is_dir()

def test_needs_nothing():
    pass
'''


@pytest.mark.timeout(60)
def test_absent_shared_data_is_said_once(tmp_path):
    tests = tmp_path / "repo" / "tests"  # no ../shared beside this repository
    tests.mkdir(parents=True)
    for name in ("__init__.py", "conftest.py", "processes.py"):  # conftest imports processes
        shutil.copy(HERE / name, tests / name)
    (tests / "test_data.py").write_text(NEEDS_DATA)
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path / "repo"), str(tests)],
                         capture_output=True, text=True, timeout=50, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:]
    text = out.stdout
    shared = str(tmp_path / "shared" / "data")
    assert text.count(f"shared data: {shared} is absent") == 1  # the header (not with -q)
    assert text.count(f"3 test(s) skipped: no shared data at {shared}") == 1  # the summary
    assert "1 passed, 3 skipped" in text
