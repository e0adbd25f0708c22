"""Disclosure checks on the numbers a site is about to sum: can the sums read out a row?

The central receives sums over a site's rows: X'WX, X'Wz, the score, deviances, counts. A
sum reads out a row when the model's columns (or its weights) single that row out:

- a column that is **one value but on a few rows**: a binary column (an indicator such as
  ``I(id == 17)`` or ``I(x > t)``, a dummy of a rare level, a 0/1 response) with fewer than
  a few rows in one of its values (DataSHIELD's glmDS2 rule, ``nfilter.tab``), or any column
  equal on all but those rows (``I((id == 17) + 2 * (id == 18))``): its sums are those rows'
  values. Checked on every column of the design, the response, the prior weights and the
  offset, over the rows that enter the sums (complete cases with a positive prior weight);
- a design whose column space holds a vector that is zero but for one row (an indicator
  hidden in a continuous column, ``I(x + (id == 17))`` beside ``x``, or a spike such as
  ``I(exp(20 * (id == 17)))``): that row's **leverage** is (close to) 1. Checked once per
  design, exactly, on the prior-weighted design;
- **weights** concentrated on one row: the working weights depend on the coefficients, which
  the central chooses, and coefficients that make them vanish everywhere but near one row
  read that row out of X'WX and X'Wz. Checked at every round that sends X'WX: the weighted
  leverage ``w_i x_i' (X'WX)^-1 x_i`` of every row, against the same threshold. (Kish's
  effective number of rows would be cheaper, but honest fits fail it: a gaussian fit with
  the inverse link weighs rows by mu^4, and rests on ~3 rows' worth of weight while no row's
  leverage passes 0.5.)

None of these stops differencing across fits (two fits whose designs differ by one row's
indicator spread over a continuous column), nor what crafted coefficients can learn from
many score-only rounds and deviances: the site's budgets of models and of queries per
model, and its audit log, bound those (`algorithms.glm.audit`).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

import numpy as np
from scipy.linalg.blas import dsyrk

from .guards import Guards

#: Rows per block when the leverage is computed (bounds the memory to a few MiB).
BLOCK = 65536
#: Eigenvalues of the scaled X'WX below this fraction of the largest are the aliased
#: directions (they carry no row's information: the span is that of the others).
RANK_TOL = 1e-10


def minority(values: np.ndarray, minimum: int) -> int:
    """How many rows differ from the value most rows share, when it is shared by all but
    fewer than ``minimum`` rows (else ``minimum``: nothing to fear). A column that is one
    value everywhere but on a few rows reads those rows out of its sums, whatever their
    values (``I(id == 17)``, ``I((id == 17) + 2 * (id == 18))``); it is a binary column's
    smaller category. Such a dominant value is among any ``minimum`` rows, so at most
    ``minimum`` passes over the column."""
    n = len(values)
    if n == 0 or minimum <= 1:
        return minimum
    fewest = minimum
    for candidate in np.unique(values[:minimum]):
        others = n - int(np.count_nonzero(values == candidate))
        fewest = min(fewest, others)
    return fewest


def check_columns(guards: Guards, X: np.ndarray, names: Sequence[str], y: np.ndarray,
                  weights: np.ndarray, offset: np.ndarray) -> None:
    """The minority rule on every column of the model, the binary-column rule of DataSHIELD
    being its simplest case (see the module docstring)."""
    used = weights > 0
    if not used.all():
        X, y, offset, weights = X[used], y[used], offset[used], weights[used]
    # A design column's name may hold a level (C(g)[T.b]): the error names its term only.
    columns = [(f"design column {_term(name)!r}", X[:, j]) for j, name in enumerate(names)]
    columns += [("the response", y), ("the prior weights", weights), ("the offset", offset)]
    minimum = guards.min_rows_per_category_level
    for what, values in columns:
        few = minority(np.asarray(values), minimum)
        if 0 < few < minimum:
            guards.check_rows_apart(what, few)


def _term(name: str) -> str:
    return re.sub(r"\[[^\]]*\]", "[...]", str(name))


def max_leverage(X: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    """The largest leverage ``h_ii = w_i x_i' (X'WX)^+ x_i`` of the rows of ``X`` (prior
    weights ``weights``), exactly, in blocks of rows.

    X'WX is scaled to unit diagonal and its aliased directions dropped (eigenvalues below
    ``RANK_TOL`` of the largest): an aliased column adds nothing to the span, so the
    leverages are those of the remaining ones."""
    n, p = X.shape
    if n == 0 or p == 0:
        return 0.0
    root = None if weights is None else np.sqrt(np.maximum(weights, 0.0))
    gram = np.zeros((p, p))
    for rows in _blocks(n):
        A = _weighted(X[rows], None if root is None else root[rows])
        gram += dsyrk(1.0, A, trans=1, lower=0)
    gram = np.triu(gram) + np.triu(gram, 1).T
    finite = np.isfinite(np.diag(gram))
    if not finite.all():  # an overflowing column: the central refuses the sums anyway; the
        # leverage of the others is still checked
        return max_leverage(X[:, finite], weights) if finite.any() else 0.0
    d = np.diag(gram)
    s = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    values, vectors = np.linalg.eigh(gram * s[:, None] * s[None, :])
    keep = values > RANK_TOL * max(values.max(), 0.0)
    if not keep.any():
        return 0.0
    project = (s[:, None] * vectors[:, keep]) / np.sqrt(values[keep])[None, :]
    largest = 0.0
    for rows in _blocks(n):
        A = _weighted(X[rows], None if root is None else root[rows])
        h = np.einsum("ij,ij->i", A @ project, A @ project)
        largest = max(largest, float(h.max()))
    return largest


def check_round(guards: Guards, A: np.ndarray, gram: np.ndarray) -> None:
    """The weighted leverage of every row of a round, ``A = sqrt(W) X`` (the rows of the
    round, ``gram = A'A``), against ``GLM_MAX_LEVERAGE``.

    A bound first, one pass over A: with D the unit-diagonal scaling of the gram and
    ``lmin`` the smallest eigenvalue of D A'A D, ``h_i <= ||D a_i||^2 / lmin``. On large
    sites it settles the check; the exact leverages are computed only when it does not."""
    n, p = A.shape
    if n == 0 or p == 0:
        return
    finite = np.isfinite(np.diag(gram))
    if not finite.all():  # as in max_leverage: the finite columns are still checked
        if finite.any():
            check_round(guards, A[:, finite], gram[np.ix_(finite, finite)])
        return
    d = np.diag(gram)
    s = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    scaled = gram * s[:, None] * s[None, :]
    values = np.linalg.eigvalsh(scaled)
    lmin = values[0]
    if lmin > RANK_TOL * values[-1]:
        largest = 0.0
        for rows in _blocks(n):
            B = A[rows] * s[None, :]
            largest = max(largest, float(np.einsum("ij,ij->i", B, B).max()))
        if largest / lmin <= guards.max_leverage:
            return
    guards.check_leverage(max_leverage(A), weighted=True)


def _blocks(n: int):
    for start in range(0, n, BLOCK):
        yield slice(start, min(n, start + BLOCK))


def _weighted(X: np.ndarray, root: Optional[np.ndarray]) -> np.ndarray:
    A = np.asarray(X, dtype=float)
    return A if root is None else A * root[:, None]
