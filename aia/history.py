"""`History`: what `aia.start` returns."""

from __future__ import annotations

from typing import Any, Iterator

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
