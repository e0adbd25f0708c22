"""Stochastic gradient descent on a least-squares problem: the Julia manual's quick start.

Each worker holds a block of rows ``(A, b)`` of the problem
``min_x f(x) = ||A x - b||^2 / (2 m)``. A query is the current iterate ``x``; a worker answers
with ``stepsize`` times the gradient of one of its rows, drawn at random; the central subtracts
it (asynchronous mode) or the mean of the round's answers (synchronous mode).

With ``staleness_aware=True`` (staleness-aware asynchronous SGD) the central divides each
answer by 1 + its staleness, the number of central steps taken since the query it answered
was sent: a gradient computed on an old iterate moves the current one less.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aia import AbstractAlgorithm


@dataclass
class LRMSE:
    """Linear regression with mean squared error on rows ``A`` (m x n) and targets ``b``.

    ``L`` is the Lipschitz constant of the gradient of the mean loss (the largest eigenvalue
    of A'A / m), so ``1 / L`` is a safe step size for full gradients.
    """

    A: np.ndarray
    b: np.ndarray
    m: int = field(init=False)
    n: int = field(init=False)
    L: float = field(init=False)

    def __post_init__(self) -> None:
        self.A = np.asarray(self.A, dtype=float)
        self.b = np.asarray(self.b, dtype=float)
        self.m, self.n = self.A.shape
        self.L = float(np.linalg.eigvalsh(self.A.T @ self.A / self.m)[-1]) if self.m else 0.0

    def gradient(self, x: np.ndarray, i: int | None = None) -> np.ndarray:
        """The gradient of the mean loss, or of row ``i``'s loss."""
        if i is None:
            return self.A.T @ (self.A @ x - self.b) / self.m
        row = self.A[i]
        return row * (row @ x - self.b[i])

    def loss(self, x: np.ndarray) -> float:
        r = self.A @ x - self.b
        return float(r @ r) / (2 * self.m)


def make_lrmse_problem(n_rows: int = 100, n_features: int = 10, seed: int = 0, noise: float = 0.1):
    """A ``make_problem(pid)`` giving each pid its own random block of one common problem."""

    def make_problem(pid: int) -> LRMSE:
        rng = np.random.default_rng(seed)
        x_true = rng.normal(size=n_features)
        rng = np.random.default_rng([seed, pid])
        A = rng.normal(size=(n_rows, n_features))
        b = A @ x_true + noise * rng.normal(size=n_rows)
        return LRMSE(A, b)

    return make_problem


class SGD(AbstractAlgorithm):
    """Stochastic gradient descent, asynchronous or synchronous.

    ``stepsize``: the step on one row's gradient. ``x0``: the first iterate (default zeros).
    ``seed``: of each worker's row draws. ``staleness_aware``: divide each step by 1 + the
    staleness of the answer applied (the engine's ``self.staleness``); synchronous answers
    are never stale, so it changes only asynchronous runs.
    """

    def __init__(self, stepsize: float, x0=None, seed: int | None = None,
                 staleness_aware: bool = False):
        if not isinstance(staleness_aware, (bool, np.bool_)):
            raise TypeError(f"staleness_aware must be True or False (divide each step by 1 + "
                            f"the answer's staleness), got {staleness_aware!r}")
        self.stepsize = stepsize
        self.x0 = x0
        self.seed = seed
        # Not ``staleness``: the engine sets ``self.staleness`` to each answer's staleness, and
        # a folder site rebuilds the algorithm from attributes named like the parameters.
        self.staleness_aware = bool(staleness_aware)
        self.x = None
        self.rng = None

    def initialize(self, problem: LRMSE) -> np.ndarray:
        if problem is None and self.x0 is None:
            raise ValueError(
                "SGD needs the size of x at the central: pass x0=... (e.g. np.zeros(n)), or "
                "give the central a problem with .n (make_problem(0), or problems.local for a "
                "DistributedObject); the central's problem is None")
        n = problem.n if problem is not None else len(self.x0)
        self.x = np.zeros(n) if self.x0 is None else np.array(self.x0, dtype=float)
        return self.x

    def answer(self, q: np.ndarray, problem: LRMSE) -> np.ndarray:
        if self.rng is None:  # one stream per worker copy
            self.rng = np.random.default_rng(self.seed)
        i = int(self.rng.integers(problem.m))
        return self.stepsize * problem.gradient(q, i)

    def central_step(self, a: np.ndarray, worker: int, problem) -> np.ndarray:
        if self.staleness_aware:
            a = a / (1 + getattr(self, "staleness", 0))
        self.x = self.x - a
        return self.x

    def sync_central_step(self, answers, workers, problem) -> np.ndarray:
        if self.staleness_aware:  # one staleness per answer (all 0 in today's engine)
            stale = getattr(self, "staleness", None) or [0] * len(answers)
            answers = [a / (1 + s) for a, s in zip(answers, stale)]
        self.x = self.x - np.mean(answers, axis=0)
        return self.x
