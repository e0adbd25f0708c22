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
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy.linalg.blas import dgemm, dsyrk

from statsmodels.genmod import families as smf
from statsmodels.genmod.families import links

from . import disclosure, kernels
from .guards import ENVIRONMENT, Guards, PrivacyError

def _l2_bytes(default: int = 1 << 20) -> int:
    """The size of a core's level-2 cache (Linux's sysfs), else ``default``."""
    try:
        for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return default


#: The bytes of X in one block of a Fisher-scoring round: a core's level-2 cache, clamped
#: to [256 KB, 4 MB]. The block's X, read for eta, is read again from that cache for
#: sqrt(W) X; blocks much smaller pay numpy's per-call overhead (a few microseconds per
#: step) too often. Measured on 500k x 21 (1 MB L2): 0.5 MB blocks 29.3 ms a round, 1 MB
#: 27.1, 1.5 MB 32.7.
BLOCK_BYTES = min(4 << 20, max(256 << 10, _l2_bytes()))
#: A gradient round reads each block twice with less in between: twice the bytes
#: (measured: 9.8 ms against 10.4 at the Fisher round's blocks).
SCORE_BLOCK_FACTOR = 2
#: The rows over which one maximum of each column of (sqrt(w) x)^2 is kept for the
#: leverage bound (n / SUB_ROWS x p numbers per round).
SUB_ROWS = 256


def block_rows(p: int, factor: int = 1) -> int:
    """The rows of one block (of ``factor`` x ``BLOCK_BYTES``) for a design of ``p``
    columns: an odd multiple of ``SUB_ROWS``. Odd, because the block buffer's columns are
    then not 4 KB apart (or a multiple of it): with OpenBLAS, dsyrk of a buffer whose
    columns are an even multiple of 2 KB apart took 1.2x as long (``benchmarks/gram.py``
    prints both)."""
    units = max(1, factor * BLOCK_BYTES // (8 * (p + 1)) // SUB_ROWS)
    return (units if units % 2 else units - 1) * SUB_ROWS


def gram_split(q: int) -> int:
    """The leading columns of a q-column block whose gram one ``dsyrk`` sums (the last
    ``q - m`` rows of the gram are one ``dgemm`` against all q columns), or q for one
    dsyrk of all. OpenBLAS's dsyrk of a few columns past a multiple of 4 is slow: on 22
    columns, dsyrk of 16 and dgemm of the other 6 took 0.8x the time of one dsyrk of 22
    (``benchmarks/gram.py``: the best split keeps 4 to 7 columns for the dgemm)."""
    if q <= 4:
        return q
    return 4 if q < 8 else 4 * ((q - 4) // 4)


class BlockGram:
    """A'A of a q-column matrix A given block by block (`add`), as `gram_split` sums it."""

    def __init__(self, q: int):
        self.q, self.m = q, gram_split(q)
        self._top = np.zeros((self.m, self.m), order="F")
        self._rest = np.zeros((q - self.m, q), order="F") if self.m < q else None

    def add(self, A: np.ndarray) -> None:
        m = self.m
        self._top = dsyrk(1.0, A if m == self.q else A[:, :m], beta=1.0, c=self._top,
                          trans=1, overwrite_c=1)
        if self._rest is not None:
            self._rest = dgemm(1.0, A[:, m:], A, beta=1.0, c=self._rest, trans_a=1,
                               overwrite_c=1)

    def total(self) -> np.ndarray:
        """The symmetric q x q sum (each entry from the upper triangle of its part)."""
        m, top = self.m, self._top
        G = np.empty((self.q, self.q))
        G[:m, :m] = np.triu(top) + np.triu(top, 1).T
        if self._rest is not None:
            rest = self._rest
            G[m:, :m] = rest[:, :m]
            G[:m, m:] = rest[:, :m].T
            corner = rest[:, m:]
            G[m:, m:] = np.triu(corner) + np.triu(corner, 1).T
        return G


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
    #: what `check_saturation` and `check_dominance` read (`RowMass`)
    mass: Optional["RowMass"] = None


@dataclass
class RowMass:
    """What a round's rows put in its sums, for the checks of the coefficients: ``pinned``
    rows (of prior weight > 0) whose fitted value the coefficients pin at the family's
    edge (`pinned_rows`), and ``total``/``largest`` of ``|t_i| ||x_i||`` over the rows,
    ``t_i`` the number each row's x_i is multiplied by in a sent sum (X'Wz, or the score)."""

    pinned: int = 0
    total: float = 0.0
    largest: float = 0.0

    def clear(self) -> "RowMass":
        self.pinned, self.total, self.largest = 0, 0.0, 0.0
        return self

    def add(self, terms: np.ndarray, lengths: np.ndarray) -> None:
        if not len(terms):
            return
        a = np.abs(terms)
        a *= lengths
        self.total += float(a.sum())
        self.largest = max(self.largest, float(a.max()))


def pin_rule(family) -> Optional[str]:
    """How `pinned_rows` knows a pinned row of ``family``: ``"edge"`` (binomial: the
    expected count of the rarer outcome, min(mu, 1 - mu) times the row's number of trials,
    at least 1, under `PINNED`), ``"floor"`` (a log link: mu at R's floor, the machine
    epsilon), or None."""
    sm = getattr(family, "sm", None)
    if isinstance(sm, smf.Binomial):
        return "edge"
    if sm is not None and isinstance(sm.link, links.Log):
        return "floor"
    return None


def pinned_rows(rule: Optional[str], mu, ww, wb, positive: bool) -> int:
    """The rows of a block that ``rule`` (`pin_rule`) counts as pinned; ``ww``: the working
    weights without prior weights (None: the canonical link's own, from mu)."""
    if rule is None:
        return 0
    if rule == "edge":
        edge = np.minimum(mu, 1.0 - mu)
        if not len(edge) or edge.min() >= PINNED:  # one pass: most blocks pin none
            return 0
        pinned = edge * np.maximum(wb, 1.0) < PINNED
    else:
        if not len(mu) or mu.min() > _FLOOR:
            return 0
        pinned = mu <= _FLOOR
    if not positive:
        pinned &= wb > 0
    return int(np.count_nonzero(pinned))


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


def design_sums(X: np.ndarray, weights: Optional[np.ndarray]) -> tuple:
    """The design check's gram and `x_peaks` of X in one pass over X, by blocks that stay
    in cache: (the gram of sqrt(w) X, the peaks of X). ``weights``: the prior weights
    (>= 0), or None when every one is 1."""
    n, p = X.shape
    peaks = np.empty(((n + SUB_ROWS - 1) // SUB_ROWS, p))
    gram = BlockGram(p)
    step = block_rows(p)
    buffer = np.empty((min(n, step), p), order="F")
    for r in blocks(n, step):
        k = r.stop - r.start
        B = buffer[:k]
        np.copyto(B, X[r])
        first = r.start // SUB_ROWS
        starts = np.arange(0, k, SUB_ROWS)
        peaks[first:first + len(starts)] = np.maximum.reduceat(B * B, starts, axis=0)
        if weights is not None:
            B *= np.sqrt(weights[r])[:, None]
        gram.add(B)
    return gram.total(), peaks


class Rows:
    """One site's model rows as a round reads them: X (or its columns ``cols``), y, the
    prior weights, the offset, the family bound to each block's rows, and ``peaks``, the
    `x_peaks` of X (computed here when not given). ``facts``: a dict kept by the site for
    the model's rows (what is learnt of y, the weights and the offset once, not per round:
    `all_positive`, `unit_weights`, `zero_offset`, `ones`)."""

    def __init__(self, X: np.ndarray, y, weights, offset, family, d_star=None,
                 cols: Optional[Sequence[int]] = None, peaks: Optional[np.ndarray] = None,
                 facts: Optional[dict] = None):
        self.X, self.y, self.w, self.offset = X, y, weights, offset
        self.family, self.d_star = family, d_star
        self.cols = None if cols is None else list(cols)
        self.n = len(y)
        self.p = X.shape[1] if cols is None else len(self.cols)
        self._peaks = peaks
        self._facts = {} if facts is None else facts

    def _fact(self, name: str, learn):
        if name not in self._facts:
            self._facts[name] = learn()
        return self._facts[name]

    def all_positive(self) -> bool:
        """Whether every prior weight is > 0 (then no row is masked out of the sums)."""
        return self._fact("positive", lambda: bool(np.all(self.w > 0)))

    def unit_weights(self) -> bool:
        """Whether every prior weight is 1 (then the working weights are the family's)."""
        return self._fact("unit", lambda: bool(np.all(self.w == 1.0)))

    def zero_offset(self) -> bool:
        """Whether the offset is 0 everywhere (then eta is X beta, and z is eta + r)."""
        return self._fact("zero_offset", lambda: not np.any(self.offset))

    def ones(self):
        """y == 1 when every y is 0 or 1, else False (`kernels._binomial_logit`)."""
        return self._fact("ones", lambda: kernels._ones(self.y))

    def row_lengths(self) -> np.ndarray:
        """||x_i|| of every row of the round's columns (`RowMass`), learnt once."""
        def learn():
            out = np.empty(self.n)
            for r in blocks(self.n, block_rows(self.p)):
                B = self.block(r)
                out[r] = np.sqrt(np.einsum("ij,ij->i", B, B))
            return out
        return self._fact(("lengths", None if self.cols is None else tuple(self.cols)), learn)

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
    gram = BlockGram(p + 1)
    used = np.empty(n)
    chi2_ok = previous is not None and len(previous) == n
    deviance = pearson = working = null_dev = 0.0
    boundary = 0
    y, w, offset = rows.y, rows.w, rows.offset
    unmasked = not masked and rows.all_positive()
    fast = _fast_path(rows)
    mass, rule, lengths = RowMass(), pin_rule(rows.family), rows.row_lengths()
    positive = rows.all_positive()
    for r in blocks(n, size):
        fam = rows.family_of(r)
        Xb = rows.block(r)
        yb, wb = y[r], w[r]
        if beta is None:
            eta, mu = start[0][r], start[1][r]
            got = fast.at(fam, eta, mu, yb, wb, unit=fast.unit, ones=fast.ones_of(r))
        else:
            eta = Xb @ beta
            if not fast.zero_offset:
                eta += offset[r]
            got = fast.step(fam, eta, yb, wb, unit=fast.unit, ones=fast.ones_of(r))
        finite = fast.finite
        if got is None:
            return None, work
        mu, dev, chi2, edge, ww, residual = got
        deviance += dev
        pearson += chi2
        boundary += edge
        mass.pinned += pinned_rows(rule, mu, ww, wb, positive)  # (before ww is overwritten)
        if null is not None:
            null_dev += kernels.null_deviance(fast.step, fam, _null_mu(fam, yb, offset[r], null),
                                              yb, wb, fast.unit, fast.ones_of(r))
        # The working weights and response of IRLS (statsmodels' and R's formulas); R
        # drops the rows where they are not finite from the weighted least squares: a
        # zero weight does the same to the sums.
        weights = ww if fast.unit else wb * ww
        if fast.zero_offset and beta is not None:  # eta is this round's own: in place
            z = np.add(eta, residual, out=eta)
        elif fast.zero_offset:
            z = eta + residual
        else:
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
            if good is None:  # finite residuals: a row of weight 0 adds 0
                working += float(np.dot(prev * residual, residual))
            else:
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
        mass.add(np.multiply(last, root), lengths[r])  # w_i z_i, the terms of X'Wz
        gram.add(A)
    gram = gram.total()
    if unmasked and not np.all(np.isfinite(gram)):
        return irls_round(rows, beta, start, previous, null, work, masked=True)
    peaks = None
    if several:  # max_i w_i x_ij^2 <= max_i w_i * max_i x_ij^2 over a sub-block
        heaviest = np.maximum.reduceat(used, np.arange(0, n, SUB_ROWS))
        peaks = rows.peaks() * heaviest[:, None]
    xtwx = gram[:p, :p].copy()
    return RoundSums(
        deviance=float(deviance), pearson_chi2=float(pearson),
        working_chi2=float(working) if chi2_ok else float("nan"),
        n_boundary=int(boundary), xtwx=xtwx, xtwz=gram[:p, p].copy(),
        null_deviance=float(null_dev) if null is not None else None, weights=used,
        peaks=peaks, whole=None if several else work[:n, :p], mass=mass,
    ), work


@dataclass
class _Fast:
    """What a round at coefficients knows before its first block: the step, whether its
    results are finite (`kernels.FINITE`), and the facts of the rows it uses."""

    step: object
    at: object  # the step at given (eta, mu), for R's starting values
    finite: bool
    unit: bool
    zero_offset: bool
    ones: object  # the rows' y == 1, False, or None (not known: the step checks)

    def ones_of(self, rows: slice):
        return self.ones[rows] if isinstance(self.ones, np.ndarray) else self.ones


def _fast_path(rows: Rows) -> _Fast:
    step = kernels.step_for(rows.family_of(slice(0, rows.n)))
    if step is kernels.generic_step:
        return _Fast(step, kernels.generic_at, False, False, False, None)
    ones = rows.ones() if step is kernels._binomial_logit else None
    return _Fast(step, kernels.AT[step], step in kernels.FINITE, rows.unit_weights(),
                 rows.zero_offset(), ones)


#: A binomial row whose expected count of the rarer outcome (min(mu, 1 - mu) times its
#: trials, at least 1) is under this is pinned at the family's edge (|eta| > ~20.7 for the
#: logit of one trial): it moves with no coefficient. By mu, not the working weight: the
#: cauchit's weight falls as |eta|^-3 at honest prevalences; by the count: rare events
#: in many trials (1e-10 in 1e12) are not pinned.
PINNED = 1e-9
#: A log link's mu at R's floor (the machine epsilon, where R's link clamps it) is pinned
#: too; just above it a fit of tiny y (1e-15) is honest.
_FLOOR = np.finfo(float).eps


def check_saturation(guards: Guards, rows: Rows, mass: Optional[RowMass]) -> None:
    """Refuse coefficients that pin more than half of the rows at the family's edge
    (`pinned_rows`: a binomial row's expected count of its rarer outcome under `PINNED`, a
    log link's mu at R's floor eps).

    Steep coefficients make the fitted values a step: mu is 0 or 1 on either side of a
    hyperplane the central chooses (or, with a log link, eps on one side), every pinned
    row has the same weight (the weighted leverages are then the design's, and pass), and
    the score is X'y less the sum of x over the rows past the hyperplane. Two such rounds
    with the hyperplane moved past one row give that row by difference. At coefficients
    that leave half the rows free the step is smooth over many rows. A fit whose
    coefficients genuinely go there is (quasi-)separated, and its estimate does not exist
    (R warns at fitted values within 10 eps of the edge). Each row by its own trials: a
    binomial with numbers of trials from 1 to 1e12 is not pinned at flat coefficients.
    Off with ``GLM_MAX_LEVERAGE`` >= 1, as the leverage checks."""
    if guards.max_leverage >= 1.0 or rows.n == 0 or mass is None:
        return
    active = rows.n if rows.all_positive() else int(np.count_nonzero(rows.w > 0))
    if mass.pinned > active / 2:
        raise PrivacyError(
            ENVIRONMENT["max_leverage"], guards.max_leverage,
            f"the coefficients pin {mass.pinned} of {active} rows at the family's edge: "
            "so steep a fit singles out rows between two rounds")


def check_dominance(guards: Guards, rows: Rows, mass: Optional[RowMass],
                    what: str = "X'Wz") -> None:
    """Refuse a round in which one row carries more than ``GLM_MAX_LEVERAGE`` of
    ``sum_i |t_i| ||x_i||`` (`RowMass`): the sum ``sum_i t_i x_i`` is then that row's x,
    to a scale. The leverage checks look at the weights of X'WX only; a score or X'Wz can
    be carried by one row through its residual (a Gamma or Poisson fit at steep
    coefficients: y / mu of the smallest fitted value, or y - mu of the largest)."""
    if guards.max_leverage >= 1.0 or mass is None or not mass.total > 0.0:
        return
    if mass.largest > guards.max_leverage * mass.total:
        raise PrivacyError(
            ENVIRONMENT["max_leverage"], guards.max_leverage,
            f"at these coefficients one row carries more than this share of {what} (of "
            "sum_i |t_i| ||x_i||): the sum would single it out")


def check_score(guards: Guards, rows: Rows, mass: RowMass) -> None:
    """The guards of a gradient round, whose score has no gram to check leverages against:
    `check_saturation` and `check_dominance`."""
    check_saturation(guards, rows, mass)
    check_dominance(guards, rows, mass, "the score")


def check_leverage(guards: Guards, rows: Rows, sums: RoundSums) -> None:
    """`check_saturation` and `check_dominance`, then `disclosure.check_round` on this
    round's weighted design, from the block bound when it settles the check (see the
    module docstring), exactly otherwise."""
    check_saturation(guards, rows, sums.mass)
    check_dominance(guards, rows, sums.mass)
    if sums.whole is not None:
        disclosure.check_round(guards, sums.whole, sums.xtwx)
        return
    if disclosure.round_bound(sums.xtwx, sums.peaks) <= guards.max_leverage:
        return
    A = rows.columns() * np.sqrt(sums.weights)[:, None]
    disclosure.check_round(guards, A, sums.xtwx)


def _null_mu(fam, y, offset, null) -> np.ndarray:
    """The null model's fitted values of a block's rows."""
    if null == "offset":  # no intercept: R's null model is mu = g^{-1}(offset)
        return fam.linkinv(offset)
    return np.full_like(y, float(null))


def score_round(rows: Rows, beta: np.ndarray, masked: bool = False,
                mass: Optional[RowMass] = None) -> Optional[tuple[np.ndarray, float]]:
    """A gradient-descent site's score ``X'W g'(mu) (y - mu)`` and deviance at ``beta``,
    each block of X read once for both products; None outside the family's range.
    ``masked``: as in `irls_round`. ``mass``: a `RowMass` to fill (for `check_score`)."""
    n, p = rows.n, rows.p
    rule = pin_rule(rows.family)
    lengths = None if mass is None else rows.row_lengths()
    positive = rows.all_positive()
    score = np.zeros(p)
    deviance = 0.0
    y, w, offset = rows.y, rows.w, rows.offset
    unmasked = not masked and rows.all_positive()
    fast = _fast_path(rows)
    for r in blocks(n, block_rows(p, SCORE_BLOCK_FACTOR)):
        fam = rows.family_of(r)
        Xb = rows.block(r)
        eta = Xb @ beta
        if not fast.zero_offset:
            eta += offset[r]
        yb, wb = y[r], w[r]
        got = fast.step(fam, eta, yb, wb, full=False, unit=fast.unit,
                        ones=fast.ones_of(r))
        if got is None:
            return None
        mu, dev, _, _, ww, residual = got
        deviance += dev
        if mass is not None:
            mass.pinned += pinned_rows(rule, mu, ww, wb, positive)
        if ww is None:  # a canonical link: the terms are y - mu, times the prior weights
            terms = residual if fast.unit else np.multiply(residual, wb, out=residual)
        else:
            terms = np.multiply(wb, ww)
            terms *= residual
        if not (unmasked and fast.finite):  # mask the rows of non-finite terms
            good = np.isfinite(terms)
            good &= wb > 0
            g = np.zeros_like(terms)
            np.copyto(g, terms, where=good)
        else:  # every row counts: no mask, the same sums
            g = terms
        score += Xb.T @ g
        if mass is not None:
            mass.add(g, lengths[r])
    if unmasked and not np.all(np.isfinite(score)):
        return score_round(rows, beta, masked=True,
                           mass=None if mass is None else mass.clear())
    return score, float(deviance)
