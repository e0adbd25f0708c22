"""The demo and the command line, run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys

from algorithms.glm import demo

from .conftest import v6_sites


def run(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=90,
                          env=env)


def test_the_demo_ships_its_data():
    assert [p.rsplit("/", 1)[-1] for p in demo.sites()] == [
        "admissions_a.csv", "admissions_b.csv", "admissions_c.csv"]


def test_demo_prints_the_summary_with_a_progress_bar():
    # As a new user runs it: no consent to numeric level names in the environment (the demo
    # gives its own sites' consent).
    env = {k: v for k, v in os.environ.items() if k != "GLM_ALLOW_NUMERIC_LEVELS"}
    out = run("-m", "algorithms.glm.demo", env=env)
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
