"""The algorithm protocol: what a user writes.

An algorithm is a subclass of `AbstractAlgorithm`. The central calls ``initialize`` once and
then one central step per answer (asynchronous mode) or per round of answers (synchronous
mode); each worker calls ``answer`` on its own copy of the algorithm, so state a worker keeps
on ``self`` stays on that worker. The hooks below have do-nothing defaults.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence


class AbstractAlgorithm:
    """Base class of every `aia` algorithm.

    Override ``initialize`` and ``answer``, plus ``central_step`` (asynchronous mode) and/or
    ``sync_central_step`` (synchronous and non-distributed mode). A step the chosen mode needs
    and the subclass lacks is a ``TypeError`` raised by `aia.start` before any process starts.

    During a run, the central sets ``self.staleness`` before each central step: for each
    answer, how many central steps old the query it answered was (an int in asynchronous mode;
    a list, one per worker, in synchronous mode, where it is always 0 for live workers).
    """

    # -- steps --------------------------------------------------------------------------
    def initialize(self, problem: Any) -> Any:
        """Central, once: return the first query, sent to every worker."""
        raise NotImplementedError

    def answer(self, q: Any, problem: Any) -> Any:
        """Worker: answer query ``q`` with the worker's own ``problem``."""
        raise NotImplementedError

    def central_step(self, a: Any, worker: int, problem: Any) -> Any:
        """Central, asynchronous mode: take answer ``a`` of ``worker``; return its next query."""
        raise NotImplementedError

    def sync_central_step(self, answers: Sequence[Any], workers: Sequence[int], problem: Any) -> Any:
        """Central, synchronous mode: take one round of answers (in the order of ``workers``);
        return the next query, sent to every active worker."""
        raise NotImplementedError

    # -- hooks --------------------------------------------------------------------------
    def stopnow(self, stopat: Mapping[str, Any]) -> bool:
        """Custom stopping criteria, e.g. a ``precision`` key of ``stopat``."""
        return False

    def savenow(self, saveat: Mapping[str, Any]) -> bool:
        """Custom saving checkpoints."""
        return False

    def savevalues(self) -> None:
        """Called at every saving checkpoint: store values on the algorithm."""

    def report(self) -> dict:
        """Values added to the returned history (as attributes and items)."""
        return {}

    def progress(self, stopat: Mapping[str, Any]) -> float:
        """Completion in [0, 1] of the custom criteria, shown by the progress bar."""
        return 0.0

    def showvalues(self) -> list:
        """``[(name, value), ...]`` shown under the progress bar when ``verbose > 1``."""
        return []


#: The signature of each step, quoted in error messages.
SIGNATURES = {
    "initialize": "initialize(self, problem) -> query",
    "answer": "answer(self, q, problem) -> answer",
    "central_step": "central_step(self, a, worker, problem) -> query",
    "sync_central_step": "sync_central_step(self, answers, workers, problem) -> query",
}


def overrides(algorithm: Any, name: str) -> bool:
    """Whether ``algorithm`` defines ``name`` itself rather than inheriting the default."""
    method = getattr(type(algorithm), name, None)
    if method is None:
        return False
    default = getattr(AbstractAlgorithm, name, None)
    return method is not default


def required_steps(synchronous: bool) -> tuple[str, ...]:
    """The steps a run in this mode calls."""
    central = "sync_central_step" if synchronous else "central_step"
    return ("initialize", "answer", central)


def check_algorithm(algorithm: Any, synchronous: bool) -> None:
    """Raise ``TypeError`` if ``algorithm`` cannot run in this mode, naming what is missing."""
    if not isinstance(algorithm, AbstractAlgorithm):
        raise TypeError(
            "algorithm: expected an instance of a subclass of aia.AbstractAlgorithm, "
            f"got {type(algorithm).__name__!r}"
        )
    mode = "synchronous" if synchronous else "asynchronous"
    for name in required_steps(synchronous):
        if not overrides(algorithm, name):
            hint = ""
            if name == "central_step" and overrides(algorithm, "sync_central_step"):
                hint = " (it defines sync_central_step: pass synchronous=True to use it)"
            elif name == "sync_central_step" and overrides(algorithm, "central_step"):
                hint = " (it defines central_step: pass synchronous=False to use it)"
            raise TypeError(
                f"{type(algorithm).__name__} cannot run in {mode} mode: it must define "
                f"{SIGNATURES[name]}{hint}"
            )
