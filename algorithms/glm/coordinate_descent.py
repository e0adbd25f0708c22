"""Coordinate descent for the elastic net from a Gram matrix ("covariance updates").

The central never holds rows: at each IRLS round it holds the summed weighted Gram X'WX and
X'Wz of every site. glmnet's covariance method (Friedman, Hastie and Tibshirani 2010, section
2.2) needs exactly these: with ``A`` the weighted (centred, standardised) Gram divided by the
total weight and ``r`` the matching X'Wz, the coordinate update of ``b_j`` reads the gradient
``r_j - A_j. b``, which is kept up to date in O(p) per change. Each update is one soft
threshold, so a pass over p coordinates costs O(p^2) whatever the number of rows.

Why written here: scikit-learn's and glmnet's Python ports take rows (X, y), not a Gram; the
solvers that do take a Gram (adelie's covariance method, scikit-learn's ``precompute``) are
either not installed here or do not accept per-coordinate L1 and L2 weights (glmnet's penalty
factors) with an unpenalised intercept eliminated. The loop below is the field's standard one
(glmnet's ``elnet1``): cycle over the active set until it settles, then one pass over every
coordinate; stop when a full pass changes no coordinate by more than the threshold
(``max_j A_jj * delta_j^2 < thr``, glmnet's criterion). Its cost does not matter here: with
50 predictors, profiling a 50k-row path (benchmarks/glmnet.py's data) put the passes at 0.2%
of the run, the sites' grams at 75%.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np


class CoordinateDescentError(RuntimeError):
    """Coordinate descent did not converge within its budget of passes."""


def elastic_net(A: np.ndarray, r: np.ndarray, l1: np.ndarray, l2: np.ndarray,
                beta: np.ndarray, thr: float, max_passes: int = 100_000,
                exclude: Optional[np.ndarray] = None) -> tuple[np.ndarray, int]:
    """Minimise ``b'Ab / 2 - r'b + sum_j (l1_j |b_j| + l2_j b_j^2 / 2)`` from ``beta``.

    ``A`` is symmetric positive semi-definite (q x q), ``l1`` and ``l2`` per-coordinate
    penalties (``l1_j = inf`` keeps ``b_j`` at 0), ``exclude`` a mask of coordinates held at 0
    (constant columns). Returns ``(b, passes)``: the minimiser and the passes over the
    coordinates it took. Raises `CoordinateDescentError` after ``max_passes`` passes.
    """
    q = len(r)
    b = np.array(beta, dtype=float, copy=True)
    skip = np.zeros(q, bool) if exclude is None else np.asarray(exclude, bool)
    b[skip] = 0.0
    diag = np.diag(A).copy()
    denom = diag + l2
    grad = r - A @ b  # the gradient of the smooth part, kept current (covariance updates)
    rows = [A[j] for j in range(q)]
    l1 = [float(v) for v in l1]
    diag_l, denom_l = diag.tolist(), denom.tolist()
    everything = [j for j in range(q) if not skip[j] and denom_l[j] > 0]
    passes = 0

    def one_pass(coordinates) -> float:
        nonlocal grad
        largest = 0.0
        for j in coordinates:
            old = b[j]
            u = grad[j] + diag_l[j] * old
            shrunk = abs(u) - l1[j]
            new = math.copysign(shrunk, u) / denom_l[j] if shrunk > 0 else 0.0
            if new != old:
                d = new - old
                b[j] = new
                grad -= rows[j] * d
                largest = max(largest, diag_l[j] * d * d)
        return largest

    while True:
        passes += 1
        if one_pass(everything) < thr:
            return b, passes
        while True:  # the active set until it settles
            active = [j for j in everything if b[j] != 0.0]
            passes += 1
            if passes > max_passes:
                raise CoordinateDescentError(
                    f"coordinate descent did not converge in {max_passes} passes: raise "
                    "max_iter or the tolerance")
            if one_pass(active) < thr:
                break
