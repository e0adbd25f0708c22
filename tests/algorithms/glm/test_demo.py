"""The demo and the command line, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys

from algorithms.glm import demo

from .conftest import v6_sites


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=90)


def test_the_demo_ships_its_data():
    assert [p.rsplit("/", 1)[-1] for p in demo.sites()] == [
        "admissions_a.csv", "admissions_b.csv", "admissions_c.csv"]


def test_demo_prints_the_summary_with_a_progress_bar():
    out = run("-m", "algorithms.glm.demo")
    assert out.returncode == 0, out.stderr
    assert "C(rank)[T.4]" in out.stdout and "yes, 4 iterations" in out.stdout
    assert "-3.9900" in out.stdout  # R: (Intercept) -3.989979
    assert "aia" in out.stderr and "100%" in out.stderr  # the bar


def test_cli_prints_a_csv_table():
    out = run("-m", "algorithms.glm.cli", "admit ~ gre + gpa + C(rank)",
              *map(str, v6_sites("binomial")), "--family", "binomial", "--csv",
              "--verbose", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == ",coef,std err,z,P>|z|,[0.025,0.975]"
