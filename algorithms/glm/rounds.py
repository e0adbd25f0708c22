"""A site's round of Fisher scoring or of gradient descent, in one read of its rows.

A round of Fisher scoring at a site is, per row, eta = x'beta + offset, mu = g^{-1}(eta),
the deviance and Pearson terms, the working weight and response, and then X'WX and X'Wz.
Written as whole-array numpy expressions, each step reads and writes n-long (or n x p)
arrays from memory: on 1M rows x 21 columns that costs 3.6x the BLAS gram alone (measured
in ``benchmarks/glm.py``). Here the rows are taken in blocks that stay in cache (a few MB
of X): every per-row step of a block runs while the block is in cache, sqrt(W) [X z] is
written into one reused block buffer, and ``dsyrk`` adds the block's gram to the total. X
is read once per round, and no n x p temporary is ever made (a site's memory stays that of
its design).

The per-round weighted-leverage check (`disclosure.check_round`) needs sqrt(W) X, which is
no longer kept whole. It is bounded instead by sub-blocks of ``SUB_ROWS`` rows: the largest
x_ij^2 of each column in each sub-block (`x_peaks`, once per design) times the largest
working weight of the sub-block bounds every (sqrt(w_i) x_ij)^2 there, and so every row's
||D a_i||^2 once the gram (and the scaling D) is known. When the bound settles the check
(large sites: always, in practice) nothing more is read; otherwise sqrt(W) X is rebuilt
and checked exactly, as before.

Block sums are added in block order, so the sums differ from one whole-array pass in the
last bits only (measured: below 1e-14 relative on the deviance and X'WX).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy.linalg.blas import dsyrk

from . import disclosure, kernels
from .guards import Guards

#: The bytes of X in one block: within a core's share of the last-level cache, and large
#: enough that numpy's per-call overhead (a few microseconds per step) stays small.
BLOCK_BYTES = 2 << 20
#: The rows over which one maximum of each column of (sqrt(w) x)^2 is kept for the
#: leverage bound (n / SUB_ROWS x p numbers per round).
SUB_ROWS = 256


def block_rows(p: int) -> int:
    """The rows of one block for a design of ``p`` columns (a multiple of ``SUB_ROWS``)."""
    rows = BLOCK_BYTES // (8 * (p + 1))
    return max(SUB_ROWS, rows // SUB_ROWS * SUB_ROWS)


def blocks(n: int, rows: int):
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


@dataclass
class RoundSums:
    """A site's sums at one set of coefficients (before the leverage check)."""

    deviance: float
    pearson_chi2: float
    working_chi2: float
    n_boundary: int
    xtwx: np.ndarray
    xtwz: np.ndarray
    null_deviance: Optional[float]
    #: the working weights of the rows of the weighted least squares (0 elsewhere)
    weights: np.ndarray
    #: bounds of (sqrt(w) x)^2 per sub-block and column (several blocks), or None
    peaks: Optional[np.ndarray] = None
    #: sqrt(W) X when the rows fit in one block (the exact check is then free), or None
    whole: Optional[np.ndarray] = None


def x_peaks(X: np.ndarray) -> np.ndarray:
    """The largest x_ij^2 of each column of X in each sub-block of ``SUB_ROWS`` rows."""
    n, p = X.shape
    peaks = np.empty(((n + SUB_ROWS - 1) // SUB_ROWS, p))
    step = block_rows(p)
    for r in blocks(n, step):
        starts = np.arange(0, r.stop - r.start, SUB_ROWS)
        first = r.start // SUB_ROWS
        peaks[first:first + len(starts)] = np.maximum.reduceat(X[r] ** 2, starts, axis=0)
    return peaks


class Rows:
    """One site's model rows as a round reads them: X (or its columns ``cols``), y, the
    prior weights, the offset, the family bound to each block's rows, and ``peaks``, the
    `x_peaks` of X (computed here when not given)."""

    def __init__(self, X: np.ndarray, y, weights, offset, family, d_star=None,
                 cols: Optional[Sequence[int]] = None, peaks: Optional[np.ndarray] = None):
        self.X, self.y, self.w, self.offset = X, y, weights, offset
        self.family, self.d_star = family, d_star
        self.cols = None if cols is None else list(cols)
        self.n = len(y)
        self.p = X.shape[1] if cols is None else len(self.cols)
        self._peaks = peaks
        self._positive: Optional[bool] = None

    def all_positive(self) -> bool:
        """Whether every prior weight is > 0 (then no row is masked out of the sums)."""
        if self._positive is None:
            self._positive = bool(np.all(self.w > 0))
        return self._positive

    def peaks(self) -> np.ndarray:
        if self._peaks is None:
            self._peaks = x_peaks(self.X)
        return self._peaks if self.cols is None else self._peaks[:, self.cols]

    def block(self, rows: slice) -> np.ndarray:
        X = self.X[rows]
        return X if self.cols is None else X[:, self.cols]

    def family_of(self, rows: slice):
        return self.family.bind(None if self.d_star is None else self.d_star[rows])

    def columns(self) -> np.ndarray:
        return self.X if self.cols is None else self.X[:, self.cols]


def irls_round(rows: Rows, beta: Optional[np.ndarray], start: Optional[tuple] = None,
               previous: Optional[np.ndarray] = None, null=None,
               work: Optional[np.ndarray] = None,
               masked: bool = False) -> tuple[Optional[RoundSums], np.ndarray]:
    """The sums of one IRLS round at ``beta`` (or at R's starting ``(eta, mu)`` when
    ``beta`` is None), and the block buffer (to reuse). None instead of the sums when the
    coefficients leave the family's range or the deviance is not finite.

    ``previous``: the working weights of the site's previous valid round (R's last IRLS
    iteration), for ``summary.glm``'s ``sum(w_work * r_work^2)``; ``null``: the null
    model's fitted value (a number, or ``"offset"``), whose deviance is added.

    ``masked``: mask the rows of non-finite working weights or responses out of the sums
    in every block (otherwise only where the step can give them, `kernels.FINITE`: with
    every prior weight > 0 there is nothing to mask; a product that overflows all the same
    shows in the gram, and the round is done again masked)."""
    n, p = rows.n, rows.p
    size = block_rows(p)
    # Column-major, as X is (formulaic's and the direct designs are): the copy of a block
    # into it reads and writes in order, and dsyrk of a column-major A'A is the fast one
    # (A A' of the transposed row-major buffer measured 2.3x slower).
    if work is None or work.shape != (min(size, n), p + 1):
        work = np.empty((min(size, n), p + 1), order="F")
    several = n > size
    gram = np.zeros((p + 1, p + 1), order="F")
    used = np.empty(n)
    chi2_ok = previous is not None and len(previous) == n
    deviance = pearson = working = null_dev = 0.0
    boundary = 0
    y, w, offset = rows.y, rows.w, rows.offset
    unmasked = not masked and rows.all_positive()
    for r in blocks(n, size):
        fam = rows.family_of(r)
        Xb = rows.block(r)
        yb, wb = y[r], w[r]
        if beta is None:
            eta, mu = start[0][r], start[1][r]
            got = kernels.generic_at(fam, eta, mu, yb, wb)
            finite = False
        else:
            eta = Xb @ beta
            eta += offset[r]
            step = kernels.step_for(fam)
            got = step(fam, eta, yb, wb)
            finite = step in kernels.FINITE
        if got is None:
            return None, work
        mu, dev, chi2, edge, ww, residual = got
        deviance += dev
        pearson += chi2
        boundary += edge
        if null is not None:
            null_dev += _null_deviance(fam, yb, wb, offset[r], null)
        # The working weights and response of IRLS (statsmodels' and R's formulas); R
        # drops the rows where they are not finite from the weighted least squares: a
        # zero weight does the same to the sums.
        weights = wb * ww
        z = eta - offset[r]
        z += residual
        ub = used[r]
        k = r.stop - r.start
        A = work[:k]
        last = A[:, p]
        if finite and unmasked:  # every row counts: no mask, the same sums
            np.copyto(ub, weights)
            good = None
        else:
            good = np.isfinite(weights)
            good &= np.isfinite(z)
            good &= wb > 0
            ub.fill(0.0)
            np.copyto(ub, weights, where=good)
        if chi2_ok:
            prev = previous[r]
            kept = prev > 0
            working += float(np.sum(prev[kept] * residual[kept] ** 2))
        # in place, into the block buffer (no n-long temporaries beyond these two)
        root = np.sqrt(ub, out=weights)
        np.multiply(Xb, root[:, None], out=A[:, :p])
        if good is None:
            np.multiply(z, root, out=last)
        else:
            last.fill(0.0)
            np.copyto(last, z, where=good)
            last *= root
        gram = dsyrk(1.0, A, beta=1.0, c=gram, trans=1, overwrite_c=1)
    if unmasked and not np.all(np.isfinite(gram)):
        return irls_round(rows, beta, start, previous, null, work, masked=True)
    peaks = None
    if several:  # max_i w_i x_ij^2 <= max_i w_i * max_i x_ij^2 over a sub-block
        heaviest = np.maximum.reduceat(used, np.arange(0, n, SUB_ROWS))
        peaks = rows.peaks() * heaviest[:, None]
    xtwx = np.triu(gram[:p, :p]) + np.triu(gram[:p, :p], 1).T
    return RoundSums(
        deviance=float(deviance), pearson_chi2=float(pearson),
        working_chi2=float(working) if chi2_ok else float("nan"),
        n_boundary=int(boundary), xtwx=xtwx, xtwz=gram[:p, p].copy(),
        null_deviance=float(null_dev) if null is not None else None, weights=used,
        peaks=peaks, whole=None if several else work[:n, :p],
    ), work


def check_leverage(guards: Guards, rows: Rows, sums: RoundSums) -> None:
    """`disclosure.check_round` on this round's weighted design, from the block bound when
    it settles the check (see the module docstring), exactly otherwise."""
    if sums.whole is not None:
        disclosure.check_round(guards, sums.whole, sums.xtwx)
        return
    if disclosure.round_bound(sums.xtwx, sums.peaks) <= guards.max_leverage:
        return
    A = rows.columns() * np.sqrt(sums.weights)[:, None]
    disclosure.check_round(guards, A, sums.xtwx)


def _null_deviance(fam, y, w, offset, null) -> float:
    if null == "offset":  # no intercept: R's null model is mu = g^{-1}(offset)
        return fam.deviance(y, fam.linkinv(offset), w)
    return fam.deviance(y, np.full_like(y, float(null)), w)


def score_round(rows: Rows, beta: np.ndarray,
                masked: bool = False) -> Optional[tuple[np.ndarray, float]]:
    """A gradient-descent site's score ``X'W g'(mu) (y - mu)`` and deviance at ``beta``,
    each block of X read once for both products; None outside the family's range.
    ``masked``: as in `irls_round`."""
    n, p = rows.n, rows.p
    score = np.zeros(p)
    deviance = 0.0
    y, w, offset = rows.y, rows.w, rows.offset
    unmasked = not masked and rows.all_positive()
    for r in blocks(n, block_rows(p)):
        fam = rows.family_of(r)
        Xb = rows.block(r)
        eta = Xb @ beta
        eta += offset[r]
        yb, wb = y[r], w[r]
        step = kernels.step_for(fam)
        got = step(fam, eta, yb, wb, full=False)
        if got is None:
            return None
        _, dev, _, _, ww, residual = got
        deviance += dev
        weights = wb * ww
        if unmasked and step in kernels.FINITE:  # every row counts: no mask, the same sums
            g = np.multiply(weights, residual, out=weights)
        else:
            good = np.isfinite(weights)
            good &= np.isfinite(residual)
            good &= wb > 0
            g = np.zeros_like(weights)
            np.multiply(weights, residual, out=g, where=good)
        score += Xb.T @ g
    if unmasked and not np.all(np.isfinite(score)):
        return score_round(rows, beta, masked=True)
    return score, float(deviance)
