"""What both algorithm wrappers share (`aia.wrappers`): forwarding the hooks and
``staleness`` to ``inner``, pickling without the run state, and the checks of a round."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Sequence

from .algorithm import AbstractAlgorithm, overrides

HOOKS = ("stopnow", "savenow", "savevalues", "report", "progress", "showvalues")


def _defines(inner: Any, name: str) -> bool:
    """Whether ``inner`` provides ``name`` itself (not `AbstractAlgorithm`'s raising default)."""
    if not callable(getattr(inner, name, None)):
        return False
    if isinstance(inner, AbstractAlgorithm):
        return overrides(inner, name) or name in getattr(inner, "__dict__", {})
    return True


class _Wrapper(AbstractAlgorithm):
    """What both wrappers share: the inner algorithm, hooks, staleness, pickling."""

    _required: tuple = ()
    _signatures: dict = {}
    _transient: tuple = ("_staleness",)  # run state: not pickled, reset by initialize

    def __init__(self, inner: Any):
        missing = [name for name in self._required if not _defines(inner, name)]
        if missing:
            needed = "; ".join(self._signatures[name] for name in missing)
            raise TypeError(f"{type(self).__name__}: the inner algorithm "
                            f"{type(inner).__name__} must define {needed}")
        self.inner = inner
        self._reset()

    def _reset(self) -> None:
        self._staleness = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    # -- staleness: set by the engine on the wrapper, seen by inner ---------------------
    @property
    def staleness(self) -> Any:
        return self._staleness

    @staleness.setter
    def staleness(self, value: Any) -> None:
        self._staleness = value
        try:
            self.inner.staleness = value
        except (AttributeError, TypeError):  # an inner that takes no attributes (__slots__)
            pass

    # -- pickling: the run state stays behind -------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in self._transient:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- steps shared by both -----------------------------------------------------------
    def initialize(self, problem: Any) -> Any:
        self._reset()
        return self.inner.initialize(problem)

    # -- hooks: forwarded to inner ------------------------------------------------------
    def _forward(self, name: str, *args: Any) -> Any:
        method = getattr(self.inner, name, None)
        if callable(method):
            return method(*args)
        return getattr(AbstractAlgorithm, name)(self, *args)

    def stopnow(self, stopat: Mapping[str, Any]) -> bool:
        return self._forward("stopnow", stopat)

    def savenow(self, saveat: Mapping[str, Any]) -> bool:
        return self._forward("savenow", saveat)

    def savevalues(self) -> None:
        return self._forward("savevalues")

    def report(self) -> dict:
        return self._forward("report")

    def progress(self, stopat: Mapping[str, Any]) -> float:
        return self._forward("progress", stopat)

    def showvalues(self) -> list:
        return self._forward("showvalues")


def _check_round(answers: Sequence[Any], workers: Sequence[int]) -> None:
    if len(answers) != len(workers):
        raise ValueError(f"sync_central_step: got {len(answers)} answers for "
                         f"{len(workers)} workers")


def _nbytes(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)
    if nbytes is not None:
        return int(nbytes)
    if isinstance(value, float):
        return 8
    return sys.getsizeof(value)
