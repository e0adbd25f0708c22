"""The progress bar: on the central only, monotone, with the values below it at verbose=2."""

from __future__ import annotations

import io
import re

import aia
from algorithms import make_lrmse_problem

from .algorithms_for_tests import Counter, Precision, pid_problem


def percentages(text: str) -> list:
    return [int(p) for p in re.findall(r"(\d+)%\|", text)]


def test_verbose_1_shows_a_bar_that_ends_at_100_percent():
    out = io.StringIO()
    aia.start(Counter(), pid_problem, {"iteration": 300}, cluster=2, verbose=1,
              progress_file=out)
    text = out.getvalue()
    shown = percentages(text)
    assert shown[-1] == 100
    assert shown == sorted(shown)  # monotone
    assert "iteration=300" in text


def test_verbose_0_prints_nothing(capfd):
    aia.start(Counter(), pid_problem, {"iteration": 50}, cluster=2, verbose=0)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_bar_goes_to_stderr_of_the_central_only(capfd):
    aia.start(Counter(), pid_problem, {"iteration": 50}, cluster=2, verbose=1)
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err.count("100%") >= 1
    # Workers print nothing: only the central's "aia" bar is in the output.
    assert set(re.findall(r"(\w+):\s+\d+%", captured.err)) == {"aia"}


def test_verbose_2_shows_showvalues_below_the_bar():
    out = io.StringIO()
    make = make_lrmse_problem(n_rows=30, n_features=3, noise=0.0)
    aia.start(Precision(0.1), make, {"iteration": 200, "precision": 1e-6}, synchronous=True,
              cluster=2, verbose=2, progress_file=out)
    text = out.getvalue()
    assert "precision:" in text
    assert "iterations:" in text and "epochs:" in text and "answers: {1:" in text


def test_bar_follows_the_criterion_nearest_to_stopping_and_never_goes_back():
    class Wobbly(Counter):
        """progress() goes up and down; the bar must not."""

        def progress(self, stopat):
            return 0.9 if self.q % 2 else 0.1

        def stopnow(self, stopat):
            return self.q >= stopat["steps"]

    out = io.StringIO()
    aia.start(Wobbly(), pid_problem, {"iteration": 10**6, "steps": 20000}, cluster=2,
              verbose=1, progress_file=out)
    shown = percentages(out.getvalue())
    assert shown == sorted(shown)
    assert shown[-1] == 100


PIPED_SCRIPT = """
import aia
from tests.aia.algorithms_for_tests import Counter, pid_problem
aia.progress.LINE_INTERVAL = 0.2
class Slow(Counter):
    def answer(self, q, problem):
        import time; time.sleep(0.01)
        return super().answer(q, problem)
h = aia.start(Slow(), pid_problem, {"iteration": 120}, cluster=2, verbose=2)
print("ITERATION", h.iterations[-1])
"""


def test_progress_into_a_pipe_is_plain_lines_without_carriage_returns():
    """Off a terminal (a CI log, nohup), one plain line every few seconds and at the end:
    no carriage return, no escape code; its iteration count is the history's."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", PIPED_SCRIPT], cwd=root, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    last = int(done.stdout.split()[-1])
    assert "\r" not in done.stderr and "\x1b" not in done.stderr, repr(done.stderr[-300:])
    lines = [line for line in done.stderr.splitlines() if line.startswith("aia: ")]
    assert len(lines) >= 3, done.stderr  # some while it ran (every 0.2 s here), one at the end
    assert lines[-1].startswith(f"aia: 100% iteration={last} "), lines[-1]
    assert "answers: {" in lines[-1]  # verbose=2: the values on the same line
    assert [int(re.search(r"(\d+)%", line).group(1)) for line in lines] == sorted(
        int(re.search(r"(\d+)%", line).group(1)) for line in lines)
