"""`History`: what `aia.start` returns."""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import zipfile
from typing import Any, Iterator

import numpy as np

from .errors import Failure

#: The built-in fields; a key of the algorithm's ``report()`` may not reuse one.
FIELDS = (
    "queries", "iterations", "epochs", "timestamps", "answer_count", "answers",
    "answers_origin", "failures", "staleness",
)


class History:
    """The record of a run.

    At each checkpoint (initialization, every ``saveat`` interval, whenever ``savenow`` is
    true, and the end): ``queries``, ``iterations``, ``epochs``, ``timestamps`` (seconds since
    the start of `start`, the clock of ``stopat["time"]``). With ``save_answers=True``, at each
    checkpoint after the first, ``answers`` and ``answers_origin`` (the answer of that step
    and its worker in asynchronous mode; the round's answers and workers in synchronous mode).

    For the whole run: ``answer_count`` (worker id -> answers consumed by central steps),
    ``staleness`` (worker id -> for each answer consumed, how many central steps old the
    query it answered was), ``failures`` (the `aia.errors.Failure` s tolerated).

    Each key of the algorithm's ``report()`` is an attribute and an item:
    ``history.precisions == history["precisions"]``.

    As data: `to_frame` (pandas, one row per checkpoint), `plot` (matplotlib), `save` (an
    npz file that runs no code when read back with `aia.load_history`).
    """

    def __init__(self) -> None:
        self.queries: list = []
        self.iterations: list = []
        self.epochs: list = []
        self.timestamps: list = []
        self.answers: list = []
        self.answers_origin: list = []
        self.answer_count: dict = {}
        self.staleness: dict = {}
        self.failures: list = []
        self._report: dict = {}

    def add_report(self, values: dict) -> None:
        """Add the algorithm's ``report()``; a key that collides with a field is an error."""
        if values is None:
            return
        if not isinstance(values, dict):
            raise TypeError(f"report() must return a dict, got {type(values).__name__}")
        for key in values:
            if not isinstance(key, str) or not key.isidentifier():
                raise ValueError(f"report() key {key!r} is not a valid attribute name")
            if key in FIELDS or key.startswith("_") or hasattr(type(self), key):
                raise ValueError(f"report() key {key!r} collides with the built-in History "
                                 f"field of that name; rename it")
        self._report.update(values)

    def __getattr__(self, name: str) -> Any:
        report = self.__dict__.get("_report", {})
        if name in report:
            return report[name]
        raise AttributeError(f"History has no field or reported value {name!r}")

    def __getitem__(self, key: str) -> Any:
        if key in FIELDS:
            return getattr(self, key)
        if key in self._report:
            return self._report[key]
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in FIELDS or key in self._report

    def keys(self) -> list:
        return list(FIELDS) + list(self._report)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        """The number of checkpoints."""
        return len(self.iterations)

    def __repr__(self) -> str:
        last = f"iteration {self.iterations[-1]}, epoch {self.epochs[-1]}" if self.iterations else "empty"
        extra = f", reported: {sorted(self._report)}" if self._report else ""
        fails = f", {len(self.failures)} failures" if self.failures else ""
        return f"<History: {len(self)} checkpoints, {last}{fails}{extra}>"

    # -- the history as data -------------------------------------------------------------
    def to_frame(self):
        """The checkpoints as a `pandas.DataFrame`: one row per checkpoint.

        Columns ``iteration``, ``epoch``, ``time`` (``timestamps``), then each value of
        ``report()`` that is a sequence of numbers with one entry per checkpoint (e.g. a loss
        appended in ``savevalues``). The report's scalar values (numbers, strings, booleans)
        are in ``frame.attrs``; its other values (arrays, sequences of another length) stay
        on the history only.
        """
        import pandas as pd

        frame = pd.DataFrame({"iteration": list(self.iterations), "epoch": list(self.epochs),
                              "time": list(self.timestamps)})
        for key, value in self._report.items():
            if _is_scalar(value):
                frame.attrs[key] = value
            elif _is_per_checkpoint(value, len(self)):
                if key in frame.columns:
                    raise ValueError(f"report() key {key!r} names a column to_frame() already "
                                     f"has (iteration, epoch, time); rename it")
                frame[key] = list(value)
        return frame

    def plot(self, y=None, x: str = "time", ax=None, logy: bool = False, **kwargs):
        """Plot per-checkpoint values against ``x`` (``"time"``, ``"iteration"`` or
        ``"epoch"``); returns the matplotlib figure.

        ``y``: a column of `to_frame` or a list of them (default: every per-checkpoint value
        of ``report()``). ``ax``: draw on these axes instead of a new figure. ``logy``: a log
        scale for the values. Other keywords go to ``ax.plot``. Needs matplotlib
        (``pip install 'aia[plot]'``).
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError("History.plot needs matplotlib, which is not installed: "
                              "pip install 'aia[plot]' (or pip install matplotlib)") from exc
        frame = self.to_frame()
        if x not in ("time", "iteration", "epoch"):
            raise ValueError(f"x must be 'time', 'iteration' or 'epoch', got {x!r}")
        names = [c for c in frame.columns if c not in ("iteration", "epoch", "time")] \
            if y is None else [y] if isinstance(y, str) else list(y)
        if not names:
            raise ValueError("History.plot: the history has no per-checkpoint values to plot "
                             "(report() returned no sequence with one number per checkpoint); "
                             "name a column with y=...")
        missing = [n for n in names if n not in frame.columns]
        if missing:
            raise ValueError(f"History.plot: no per-checkpoint value named {missing}; the "
                             f"columns are {list(frame.columns)}")
        if ax is None:
            fig, ax = plt.subplots()
        else:
            fig = ax.figure
        for name in names:
            ax.plot(frame[x], frame[name], label=name, **kwargs)
        ax.set_xlabel("time (s)" if x == "time" else x)
        if logy:
            ax.set_yscale("log")
        if len(names) > 1:
            ax.legend()
        else:
            ax.set_ylabel(names[0])
        return fig

    def save(self, path) -> None:
        """Write the history to ``path`` (an ``.npz`` file) in a format that runs no code when
        read: numpy arrays plus one JSON document, read back with `aia.load_history`.

        Every saved value (queries, answers, report values) must be a number, a string,
        None, a numpy array of numbers, or a list, tuple or dict of those; anything else is a
        ``TypeError`` naming the field and the type found, before the file is touched. The
        file is written under a temporary name and moved into place.
        """
        arrays: dict = {}
        doc = {"format": _FORMAT, "version": _VERSION}
        for name in ("queries", "answers", "answers_origin"):
            doc[name] = _encode_per_checkpoint(getattr(self, name), name, arrays)
        doc["iterations"] = [int(i) for i in self.iterations]
        doc["epochs"] = [int(e) for e in self.epochs]
        doc["timestamps"] = [float(t) for t in self.timestamps]
        doc["answer_count"] = [[_encode(w, "answer_count key", arrays), int(n)]
                               for w, n in self.answer_count.items()]
        doc["staleness"] = [[_encode(w, "staleness key", arrays), [int(s) for s in v]]
                            for w, v in self.staleness.items()]
        doc["failures"] = [_encode_failure(f) for f in self.failures]
        doc["report"] = {k: _encode(v, f"report value {k!r}", arrays)
                         for k, v in self._report.items()}
        arrays[_DOC] = np.frombuffer(json.dumps(doc).encode("utf-8"), dtype=np.uint8)
        path = os.fspath(path)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


# -- the file format: numpy arrays (no pickles) and one JSON document describing them ----------

_FORMAT = "aia.History"
_VERSION = 1
_DOC = "__history__"
_SAVABLE = ("numbers, strings, None, numpy arrays of numbers or booleans, and lists, tuples "
            "and dicts of them")


def load_history(path) -> History:
    """Read a history written by `History.save`; runs no code from the file (numpy arrays
    read with ``allow_pickle=False`` and JSON)."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is not a history written by History.save: {exc}") from exc
    if _DOC not in arrays:
        raise ValueError(f"{path} is not a history written by History.save (an npz file "
                         f"without its {_DOC!r} document)")
    doc = json.loads(arrays.pop(_DOC).tobytes().decode("utf-8"))
    if doc.get("format") != _FORMAT or doc.get("version") != _VERSION:
        raise ValueError(f"{path}: expected format {_FORMAT} version {_VERSION}, found "
                         f"{doc.get('format')!r} version {doc.get('version')!r}")
    h = History()
    for name in ("queries", "answers", "answers_origin"):
        setattr(h, name, _decode_per_checkpoint(doc[name], arrays))
    h.iterations = list(doc["iterations"])
    h.epochs = list(doc["epochs"])
    h.timestamps = list(doc["timestamps"])
    h.answer_count = {_decode(w, arrays): n for w, n in doc["answer_count"]}
    h.staleness = {_decode(w, arrays): list(v) for w, v in doc["staleness"]}
    h.failures = [Failure(**_renamed(f)) for f in doc["failures"]]
    h.add_report({k: _decode(v, arrays) for k, v in doc["report"].items()})
    return h


def _encode_per_checkpoint(values: list, name: str, arrays: dict):
    """One entry per checkpoint; arrays of one shape and dtype are stacked into one array
    (a long run's queries are one array in the file, not thousands)."""
    if values and all(isinstance(v, np.ndarray) for v in values) \
            and len({(v.shape, v.dtype) for v in values}) == 1:
        _check_array(values[0], f"{name}[0]")
        arrays[name] = np.stack(values)
        return {"stacked": name}
    return {"list": [_encode(v, f"{name}[{i}]", arrays) for i, v in enumerate(values)]}


def _decode_per_checkpoint(spec, arrays: dict) -> list:
    if "stacked" in spec:
        return list(arrays[spec["stacked"]])
    return _decode(spec, arrays)


def _encode(value, where: str, arrays: dict):
    """JSON for ``value``; arrays (and numpy scalars) go to ``arrays``, referenced by name.
    Plain JSON numbers, strings, booleans and null stand for themselves; every JSON object
    is a tag (``list``, ``tuple``, ``dict``, ``array``, ``scalar``, ``complex``)."""
    if isinstance(value, (np.ndarray, np.generic)):  # first: np.float64 is also a float
        array = np.asarray(value)
        _check_array(array, where)
        key = f"a{len(arrays)}"
        arrays[key] = array
        return {"array" if isinstance(value, np.ndarray) else "scalar": key}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, complex):
        return {"complex": [value.real, value.imag]}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, f"{where}[{i}]", arrays) for i, v in enumerate(value)]
        return {"list" if isinstance(value, list) else "tuple": items}
    if isinstance(value, dict):
        return {"dict": [[_encode(k, f"{where} key {k!r}", arrays),
                          _encode(v, f"{where}[{k!r}]", arrays)] for k, v in value.items()]}
    raise TypeError(f"History.save: {where} is a {type(value).__module__}."
                    f"{type(value).__qualname__}; only {_SAVABLE} can be saved without "
                    f"pickling (keep such values out of the history, or pickle it yourself)")


def _check_array(array: np.ndarray, where: str) -> None:
    if array.dtype.kind not in "biufc":
        raise TypeError(f"History.save: {where} is a numpy array of dtype {array.dtype}; "
                        f"only {_SAVABLE} can be saved without pickling")


def _decode(spec, arrays: dict):
    if not isinstance(spec, dict):
        return spec
    (tag, body), = spec.items()
    if tag == "list":
        return [_decode(v, arrays) for v in body]
    if tag == "tuple":
        return tuple(_decode(v, arrays) for v in body)
    if tag == "dict":
        return {_decode(k, arrays): _decode(v, arrays) for k, v in body}
    if tag == "array":
        return arrays[body]
    if tag == "scalar":
        return arrays[body][()]
    if tag == "complex":
        return complex(*body)
    raise ValueError(f"history file: unknown tag {tag!r}")


def _renamed(fields: dict) -> dict:
    """A failure's fields as saved by an earlier version (``pid``: now ``os_pid``)."""
    if "pid" in fields and "os_pid" not in fields:
        fields = {("os_pid" if k == "pid" else k): v for k, v in fields.items()}
    return fields


def _encode_failure(failure) -> dict:
    fields = {f.name: getattr(failure, f.name) for f in dataclasses.fields(Failure)}
    for name, value in fields.items():
        if value is not None and not isinstance(value, (int, str)):
            raise TypeError(f"History.save: failures: field {name} is a "
                            f"{type(value).__name__}, expected int or str")
    return fields


def _is_scalar(value) -> bool:
    return isinstance(value, (bool, str, numbers.Number, np.bool_)) or \
        (isinstance(value, np.generic) and value.dtype.kind in "biufc")


def _is_per_checkpoint(value, n: int) -> bool:
    """A sequence (or 1-d array) of real numbers, one per checkpoint."""
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and len(value) == n and value.dtype.kind in "biuf"
    if not isinstance(value, (list, tuple)) or len(value) != n:
        return False
    return all(isinstance(v, (numbers.Real, np.bool_)) for v in value)
