"""A worker's traceback names the user's file and line for code sent by value (cloudpickle
calls its file ``<dynamic-code>``): `aia.sources` keeps the file names and carries the
lines, registered with linecache at the worker."""

from __future__ import annotations

import linecache
import pickle
import subprocess
import sys
import traceback

import pytest

from aia import sources

SCRIPT = '''\
import numpy as np
import aia
from algorithms import SGD, make_lrmse_problem

class Broken(SGD):
    def answer(self, q, problem):
        return self.helper(q)

    def helper(self, q):
        raise ValueError("boom in the user's code")

aia.start(Broken(0.1, x0=np.zeros(10)), make_lrmse_problem(), {"iteration": 3}, cluster=2,
          verbose=0)
'''


@pytest.mark.timeout(60)
def test_a_local_workers_traceback_names_the_script_and_its_lines(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=50)
    assert out.returncode == 1
    remote = out.stderr[out.stderr.index("Remote traceback"):]
    assert f'File "{script}", line 7, in answer\n    return self.helper(q)' in remote
    assert f'File "{script}", line 10, in helper\n    raise ValueError' in remote
    assert "<dynamic-code>" not in remote


def test_the_lines_travel_with_the_code_to_a_worker_without_the_file(tmp_path):
    path = tmp_path / "gone.py"
    source = "def f(x):\n    y = x + 1\n    return 1 / (y - y)  # the failing line\n"
    path.write_text(source)
    namespace = {"__name__": "not_importable"}
    exec(compile(source, str(path), "exec"), namespace)  # noqa: S102 - the test's own code
    payload = sources.dumps(namespace["f"])
    path.unlink()  # a worker on another machine has no copy of the script
    linecache.clearcache()
    f = pickle.loads(payload)
    with pytest.raises(ZeroDivisionError) as info:
        f(1)
    text = "".join(traceback.format_exception(info.value))
    assert f'File "{path}", line 3, in f\n    return 1 / (y - y)  # the failing line' in text
    assert f.__code__.co_filename == str(path)
