"""Issue 21: no hang, no orphan, no broken cluster under interruption, frozen workers and
large messages.

Each test runs real worker processes; anything that could hang runs in a script in its own
session (`Script`), waited for with a bound, and every test checks that no process is left.
"""

from __future__ import annotations

import os
import textwrap
import time

import pytest

from .failure_helpers import Script, descendants, kill_all

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def no_leftover():
    before = descendants()
    yield
    left = descendants() - before
    kill_all(left)
    assert not left, f"processes left behind: {left}"


def run_script(tmp_path, text: str, *args, env=None, timeout: float = 20.0) -> list:
    """Run ``text`` as a script; its stdout lines. Fails if it does not exit 0 in time, and
    checks that none of its processes outlive it."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(text))
    script = Script(path, *args, env=None if env is None else {**os.environ, **env})
    workers = set()
    try:
        deadline = time.monotonic() + timeout
        while script.proc.poll() is None and time.monotonic() < deadline:
            workers |= script.descendants()
            time.sleep(0.05)
        rc = script.proc.poll()
        out = script.rest()
        assert rc == 0, (f"exit code {rc} (None: still running after {timeout} s); stdout "
                         f"{out}; stderr:\n{script.stderr}")
        return out
    finally:
        script.cleanup(workers)


# -- 1. a persistent cluster, large in-band answers of a finished run ------------------

PERSISTENT_SCRIPT = """
    import sys, time
    import numpy as np
    import aia

    HOW = sys.argv[1]

    class GD(aia.AbstractAlgorithm):
        def __init__(self, x0):
            self.x = x0

        def initialize(self, problem):
            return self.x

        def answer(self, q, problem):
            a = 0.5 * q
            return a.tolist() if HOW == "list" else a

        def central_step(self, a, worker, problem):
            self.x = self.x - np.asarray(a)
            return self.x

    start = time.monotonic()
    with aia.LocalCluster(2) as cluster:
        objects = aia.DistributedObject(lambda pid: pid, cluster)
        for i in range(10):
            aia.start(GD(np.ones(100_000)), lambda pid: None, {"iteration": 3, "time": 5},
                      cluster=cluster, verbose=0)
            if HOW == "map":  # a large closure while the last answers are still coming
                big = np.ones(200_000)
                assert objects.map(lambda p: p + big[0]) == {1: 2.0, 2: 3.0}
    print("DONE", round(time.monotonic() - start, 2), flush=True)
"""


@pytest.mark.parametrize("how, shared", [("array", "0"), ("list", "1"), ("map", "0")])
def test_persistent_cluster_does_not_deadlock_on_large_answers_of_an_ended_run(
        how, shared, tmp_path, no_leftover):
    """The workers are still sending 800 kB answers of the run that just ended while the
    central sends the next set-up (the algorithm pickled in-band): the central writes what
    the socket takes and reads meanwhile, so neither side waits for the other."""
    out = run_script(tmp_path, PERSISTENT_SCRIPT, how, env={"AIA_SHARED_MEMORY": shared})
    assert out[-1].startswith("DONE")
