"""Functions sent by value keep their file names and lines, so a worker's traceback points
at the user's script.

cloudpickle sends the code of functions and classes defined in a script (or a notebook) by
value and names their file ``<dynamic-code>``, so a traceback from a worker reads
``File "<dynamic-code>", line 7, in answer`` with no source. `dumps` pickles as cloudpickle
does, except that each code object keeps its own file name, and carries the lines of that
file (once per pickle: one list shared by every code object of the file), which the worker
registers with `linecache`. The worker's traceback then reads
``File "/home/me/fit.py", line 7, in answer`` followed by the line itself, even on a
machine that has no copy of the script (a Ray node).
"""

from __future__ import annotations

import io
import linecache
import types
from collections import ChainMap
from typing import Any, Optional

import cloudpickle
from cloudpickle import cloudpickle as _cp

#: The largest source (in characters) sent with the code; larger files travel without.
MAX_SOURCE = 2 * 2**20

def _source_lines(filename: str) -> Optional[list]:
    """The lines of ``filename`` (a file, or a notebook cell IPython registered): linecache's
    own list, the same object for every code object of the file, so that pickle's memo
    writes it once per pickle."""
    lines = linecache.getlines(filename)
    if not lines or sum(map(len, lines)) > MAX_SOURCE:
        return None
    return lines


def _reduce_code(code: types.CodeType):
    """cloudpickle's reduction of a code object, with its file name and the file's lines."""
    _, args = _cp._code_reduce(code)
    return _code, (args, code.co_filename, _source_lines(code.co_filename))


def _code(args: tuple, filename: str, lines: Optional[list]) -> types.CodeType:
    """A code object sent by `dumps`, under its own file name (registered with linecache)."""
    code = types.CodeType(*args)
    if isinstance(filename, str) and filename:
        code = code.replace(co_filename=filename)
        if lines:  # what the central runs, even where the worker's copy differs or is absent
            linecache.cache[filename] = (sum(map(len, lines)), None, list(lines), filename)
    return code


class _Pickler(cloudpickle.Pickler):
    dispatch_table = ChainMap({types.CodeType: _reduce_code}, cloudpickle.Pickler.dispatch_table)


def dumps(obj: Any, protocol: Optional[int] = None) -> bytes:
    """``cloudpickle.dumps(obj)``, code objects keeping their files and lines (read by any
    ``pickle.loads`` where `aia` is installed)."""
    with io.BytesIO() as file:
        _Pickler(file, protocol=protocol).dump(obj)
        return file.getvalue()
