"""Ctrl-C while `aia.RayCluster` starts its own local Ray runtime: every process the start
spawned (the raylet, GCS, and the agents the raylet spawns) is gone afterwards, none left
behind with parent 1. Runs in a child interpreter with its own runtime, interrupted the
moment one of Ray's agents appears among its descendants (inside ``ray.init``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = ("import time, aia\n"
          "aia.RayCluster(1, num_cpus=1, log_to_driver=False)\n"
          "time.sleep(120)\n")
AGENTS = ("DashboardAgent", "RuntimeEnvAgent", "dashboard/agent.py", "runtime_env/agent")


def _descendants(pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _cmdline(proc) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.timeout(120)
def test_ctrl_c_while_ray_starts_leaves_no_process_behind():
    child = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            kids = _descendants(child.pid)
            seen.update({k.pid: _cmdline(k) for k in kids})
            if any(a in cmd for cmd in seen.values() for a in AGENTS):
                break
            time.sleep(0.01)
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert any(a in cmd for cmd in seen.values() for a in AGENTS), \
            "no Ray agent started within 60 s"
        child.send_signal(signal.SIGINT)
        end = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < end:
            seen.update({k.pid: _cmdline(k) for k in _descendants(child.pid)})
            time.sleep(0.01)
        assert child.poll() is not None, "the interrupted start did not end within 60 s"
        end = time.monotonic() + 15
        while time.monotonic() < end and any(_alive(p) for p in seen):
            time.sleep(0.1)
        left = {p: cmd[:80] for p, cmd in seen.items() if _alive(p)}
        assert not left, f"processes of the interrupted Ray start left behind: {left}"
    finally:
        if child.poll() is None:
            child.kill()
        for pid in seen:
            if _alive(pid):
                try:
                    psutil.Process(pid).kill()
                except psutil.Error:
                    pass
