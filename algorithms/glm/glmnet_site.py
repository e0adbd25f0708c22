"""What a site computes for glmnet, and what crosses the boundary.

::

    central ── GlmnetQuery("moments", folds) ─────────────────────────────▶ site
    central ◀── prior-weighted sums: sum w, X'w, X'WX, X'W(y - offset), ...   (per fold too)
    central ── GlmnetQuery("sums", ((fit, Ask), ...)) ─────────────────────▶ site
    central ◀── X'WX, X'Wz, deviance at each Ask's beta, over that fit's rows, and the
                deviance at each of its deviance_at (earlier solutions)
    central ── GlmnetQuery("heldout", ((fold, B), ...)) ───────────────────▶ site
    central ◀── the held-out fold's summed deviance / squared error / misclassification
                at each column of B (one per lambda)

A "fit" is ``None`` (every row) or a fold number k (cross-validation: the rows outside fold k,
glmnet's training set). Every answer is sums over rows, built from the site's design
(`Site.model`: its checks and its budget of queries), and:

- every fold's rows, and the rows outside it, number at least ``GLM_MINIMUM_ROWS``; the
  minority rule and the leverage check of a site's design hold on every fold's rows (a
  fold's sums are a small site's sums);
- every X'WX sent passes the weighted-leverage check of a round
  (`algorithms.glm.disclosure.check_round`), as in Fisher scoring.

Folds are drawn at each site by a seeded hash of the row position (`fold_ids`): nothing about
them is sent, and the same seed gives the same folds. With ``folds="sites"`` a fold is a
site: its rows are held out whole, and it sends its sums for the other sites' fits.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
from scipy.linalg.blas import daxpy, dsyrk

from . import disclosure
from .guards import ENVIRONMENT, PrivacyError
from .glmnet_messages import Ask, Moments, Sums
from .linalg import weighted_sums
from .site import Site, _guarded

#: glmnet's cv.lognet clamps held-out probabilities to [PROB_MIN, 1 - PROB_MIN].
PROB_MIN = 1e-5


@dataclass(frozen=True)
class Folds:
    """How rows are split for cross-validation: ``k`` folds of each site's rows drawn with
    ``seed``, or (``sites`` given) one fold per site, in that order of site names."""

    k: int
    seed: int = 0
    sites: Optional[tuple] = None


@dataclass(frozen=True)
class GlmnetQuery:
    """The central's request: ``kind`` is ``"moments"``, ``"sums"`` or ``"heldout"``;
    ``betas`` pairs each fit (None or a fold) with coefficients (a matrix, one row per
    lambda, for ``"heldout"``). ``hold`` > 0: asynchronous mode, nothing new: wait, resend."""

    version: int
    kind: str = "moments"
    betas: tuple = ()
    folds: Optional[Folds] = None
    hold: float = 0.0


@dataclass(frozen=True)
class Heldout:
    """Sums over one held-out fold's rows, one entry per lambda: the weighted deviance,
    squared error and misclassification of glmnet's ``cv.<family>``, and the fold's weight."""

    deviance: np.ndarray
    mse: np.ndarray
    misclassified: np.ndarray
    sum_w: float


@dataclass(frozen=True)
class GlmnetAnswer:
    """One site's answer: ``parts`` pairs each fit with its `Moments`, `Sums` or
    `Heldout`; ``columns`` (the design's) comes with version 0."""

    version: int
    parts: tuple
    site: Optional[str] = None
    columns: Optional[tuple] = None
    repeat: bool = False

    def again(self) -> "GlmnetAnswer":
        return replace(self, repeat=True)


def fold_ids(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Fold numbers 0..k-1 of ``n`` rows: the rows ranked by a seeded hash of their position
    (splitmix64), then dealt out in turn, so folds differ in size by one at most."""
    with np.errstate(over="ignore"):
        x = np.arange(n, dtype=np.uint64) + np.uint64(seed % 2 ** 63) * np.uint64(0x9E3779B97F4A7C15)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    out = np.empty(n, dtype=int)
    out[np.argsort(x, kind="stable")] = np.arange(n) % k
    return out


_FOLD_CACHE: "weakref.WeakKeyDictionary[Site, tuple]" = weakref.WeakKeyDictionary()


def _row_folds(site: Site, n: int, folds: Optional[Folds]) -> Optional[np.ndarray]:
    """The fold of every row of the site's design (None without cross-validation)."""
    if folds is None:
        return None
    if folds.sites is not None:
        own = folds.sites.index(site.name) if site.name in folds.sites else -1
        return np.full(n, own)
    key = (n, folds.k, folds.seed)
    cached = _FOLD_CACHE.get(site)
    if cached is None or cached[0] != key:
        if n < folds.k:
            raise PrivacyError(ENVIRONMENT["minimum_rows"], folds.k,
                               f"the site has fewer rows than the {folds.k} folds asked for")
        cached = (key, fold_ids(n, folds.k, folds.seed))
        _FOLD_CACHE[site] = cached
    return cached[1]


#: The folds whose rows passed `_check_fold` at each site, by (design token, `Folds`).
_CHECKED_FOLDS: "weakref.WeakKeyDictionary[Site, set]" = weakref.WeakKeyDictionary()


def _require_checked(site: Site, design, guards, m, folds: Folds,
                     rows_folds: np.ndarray) -> None:
    """Moments, sums or held-out sums only over folds that pass `_check_fold`: checked once
    per design and folds (in the path's moments query, or in the first query that names
    them: a site started again since, whose moments a resumed central replays). Every
    query names its folds: without this, a central could
    ask the moments over honest folds, then sums over one row a fold (``Folds(k=n)``),
    whose differences with the full sums are the rows."""
    if (design.token, folds) in _CHECKED_FOLDS.get(site, ()):
        return
    for k in range(folds.k):
        _check_fold(site, guards, m, rows_folds == k, k)
    _CHECKED_FOLDS.setdefault(site, set()).add((design.token, folds))


def _check_fold(site: Site, guards, m, rows: np.ndarray, fold: int) -> None:
    """A fold's rows, and the rows outside it, pass the guards of a site's rows."""
    used = m.weights > 0
    inside, outside = int(np.sum(used & rows)), int(np.sum(used & ~rows))
    minimum = guards.minimum_rows
    if inside < minimum or outside < minimum:
        raise PrivacyError(ENVIRONMENT["minimum_rows"], minimum,
                           f"fold {fold + 1} (or the rows outside it) has fewer rows than the "
                           "minimum: ask for fewer folds")
    try:
        disclosure.check_columns(guards, m.X[rows], m.names, m.y[rows], m.weights[rows],
                                 m.offset[rows])
        guards.check_leverage(disclosure.max_leverage(m.X[rows], m.weights[rows]))
    except PrivacyError as exc:  # say it is a fold's, and what to do
        raise PrivacyError(exc.guard, exc.threshold,
                           f"in the rows of fold {fold + 1}: {exc.detail} (ask for fewer "
                           "folds)") from None


def _moments(X, y, w, offset, gram: bool) -> Moments:
    """The prior-weighted sums; ``gram`` False (binomial, Poisson: the central only
    standardises with them) puts the diagonal of X'WX alone in ``xwx``, without the
    product of a whole gram."""
    z0 = y - offset
    if gram:
        xwx, xwz, _ = weighted_sums(X, w, z0)
    else:
        xwx, xwz = np.diag(np.einsum("ij,ij,i->j", X, X, w)), X.T @ (w * z0)
    return Moments(float(np.sum(w)), X.T @ w, xwx, xwz, float(np.sum(w * z0 * z0)),
                   float(np.sum(w * y)), len(y), int(np.sum(w > 0)))


def _eta(X: np.ndarray, beta: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``X beta + offset`` from the columns of the nonzero coefficients only: along a lasso
    path they are few, and reading the others would be most of a round's time."""
    nz = np.flatnonzero(beta)
    if 2 * len(nz) > X.shape[1] or not X.flags.f_contiguous:
        return X @ beta + offset
    eta = np.array(offset, dtype=float)
    for j in nz:
        daxpy(X[:, j], eta, a=beta[j])  # in place: no new n-vector per column
    return eta


def _deviance(fam, X, y, w, offset, beta) -> float:
    """The deviance at ``beta`` (nan outside the family's range)."""
    with np.errstate(all="ignore"):
        eta = _eta(X, beta, offset)
        mu = fam.linkinv(eta)
        if not fam.valid(eta, mu):
            return float("nan")
        return float(fam.deviance(y, mu, w))


def _irls_sums(fam, guards, X, y, w, offset, ask: Ask, site: Optional[Site] = None) -> Sums:
    """X'WX, X'Wz and the deviance at ``ask.beta`` (as `Site.contribution` computes them),
    and the deviance at each of ``ask.deviance_at``. ``site`` given: X is its whole design,
    and a buffer of sqrt(W) X is kept for it from round to round."""
    deviances = tuple(_deviance(fam, X, y, w, offset, b) for b in ask.deviance_at)
    if ask.beta is None:
        return Sums(None, None, float("nan"), True, deviances)
    return replace(_irls_sums_at(fam, guards, X, y, w, offset, ask, site),
                   deviances=deviances)


_BUFFERS: "weakref.WeakKeyDictionary[Site, np.ndarray]" = weakref.WeakKeyDictionary()


def _buffer(site: Optional[Site], n: int, p: int, q: int) -> np.ndarray:
    """A column-major n x (q + 1) buffer: a slice of the site's kept n x (p + 1) one (on a
    virtual machine, writing fresh memory costs more than the product), or a new one."""
    if site is None:
        return np.empty((n, q + 1), order="F")
    held = _BUFFERS.get(site)
    if held is None or held.shape != (n, p + 1):
        held = np.empty((n, p + 1), order="F")
        _BUFFERS[site] = held
    return held[:, :q + 1]


def _gram(X, cols: np.ndarray, weights, z, work: np.ndarray) -> tuple:
    """``(X_c'WX_c, X_c'Wz)`` of the columns ``cols``, as `linalg.weighted_sums` (one
    ``syrk`` of sqrt(W) [X_c z]) with the columns gathered straight into ``work``."""
    root = np.sqrt(weights)
    for i, j in enumerate(cols):
        np.multiply(X[:, j], root, out=work[:, i])
    np.multiply(z, root, out=work[:, len(cols)])
    q = len(cols)
    upper = dsyrk(1.0, work, trans=1)
    return np.triu(upper[:q, :q]) + np.triu(upper[:q, :q], 1).T, upper[:q, q].copy()


def _irls_sums_at(fam, guards, X, y, w, offset, ask: Ask, site) -> Sums:
    """The sums at ``ask.beta``: X'WX and X'Wz over the columns ``ask.columns`` (None:
    all; zero elsewhere) and the score X'W(z - eta) of every column."""
    n, p = X.shape
    with np.errstate(all="ignore"):
        eta = _eta(X, ask.beta, offset)
        mu = fam.linkinv(eta)
        if not fam.valid(eta, mu):
            return Sums(None, None, float("nan"), False)
        deviance = fam.deviance(y, mu, w)
        if not np.isfinite(deviance):
            return Sums(None, None, float("nan"), False)
        weights = w * fam.working_weights(mu)
        z = eta - offset + fam.deriv(mu) * (y - mu)
        good = (w > 0) & np.isfinite(weights) & np.isfinite(z)
        score = X.T @ np.where(good, weights * (z - eta + offset), 0.0)
        if not good.all():  # R drops these rows from the weighted least squares
            X, weights, z, site = X[good], weights[good], z[good], None
        # the central's strong set: n q^2 for q columns instead of n p^2
        cols = np.arange(p) if ask.columns is None else np.asarray(ask.columns, int)
        work = _buffer(site, len(z), p, len(cols))
        sent, xtwz_c = _gram(X, cols, weights, z, work)
    if ask.columns is None:
        xtwx, xtwz = sent, xtwz_c
    else:
        xtwx, xtwz = np.zeros((p, p)), np.zeros(p)
        xtwx[np.ix_(cols, cols)] = sent
        xtwz[cols] = xtwz_c
    # The coefficients choose the weights: they must not single out a row (of the columns
    # whose gram is sent; the score of every column is a p-vector, as in Fisher scoring).
    disclosure.check_round(guards, work[:, :len(cols)], sent)
    return Sums(xtwx, xtwz, float(deviance), score=score)


def _heldout(family: str, X, y, w, offset, B: np.ndarray) -> Heldout:
    """glmnet's ``cv.elnet``/``cv.lognet``/``cv.fishnet`` per row, summed with the weights."""
    eta = X @ np.asarray(B, float).T + offset[:, None]  # rows x lambdas
    yy = y[:, None]
    with np.errstate(all="ignore"):
        if family == "gaussian":
            dev = mse = (yy - eta) ** 2
            wrong = np.zeros_like(eta)
        elif family == "binomial":
            p = 1 / (1 + np.exp(-eta))
            mse = 2 * (yy - p) ** 2
            pc = np.clip(p, PROB_MIN, 1 - PROB_MIN)
            ly = np.where(yy > 0, yy * np.log(np.where(yy > 0, yy, 1)), 0) + \
                np.where(yy < 1, (1 - yy) * np.log(np.where(yy < 1, 1 - yy, 1)), 0)
            dev = 2 * (ly - ((1 - yy) * np.log(1 - pc) + yy * np.log(pc)))
            wrong = (1 - yy) * (p > 0.5) + yy * (p <= 0.5)
        else:  # poisson
            devy = np.where(yy > 0, yy * np.log(np.where(yy > 0, yy, 1)) - yy, 0)
            dev = 2 * (devy - (yy * eta - np.exp(eta)))
            mse = (yy - np.exp(eta)) ** 2
            wrong = np.zeros_like(eta)
    ww = w[:, None]
    return Heldout(np.sum(ww * dev, 0), np.sum(ww * mse, 0), np.sum(ww * wrong, 0),
                   float(np.sum(w)))


@_guarded
def glmnet_answer(site: Site, design, q: GlmnetQuery) -> GlmnetAnswer:
    """The site's answer to ``q`` (see the module docstring)."""
    m = site.model(design)
    guards = site.round_guards(design)
    folds = _row_folds(site, len(m.y), q.folds)
    X, y, w, off = m.X, m.y, m.weights, m.offset
    parts = []
    by_rows = folds is not None and q.folds.sites is None
    if by_rows:  # every fold of every query: the moments' first, then again if not seen
        _require_checked(site, design, guards, m, q.folds, folds)
    if q.kind == "moments":
        gram = design.family.name.lower() == "gaussian"  # its path runs on these sums
        parts.append((None, _moments(X, y, w, off, gram)))
        if by_rows:
            for k in range(q.folds.k):
                rows = folds == k
                parts.append((k, _moments(X[rows], y[rows], w[rows], off[rows], gram)))
    elif q.kind == "sums":
        fam = design.family.bind(m.d_star)
        for fit, ask in q.betas:
            if fit is None:
                parts.append((fit, _irls_sums(fam, guards, X, y, w, off, ask, site)))
                continue
            rows = folds != fit  # the fit's training rows
            if rows.any():
                parts.append((fit, _irls_sums(fam, guards, X[rows], y[rows], w[rows],
                                              off[rows], ask)))
    elif q.kind == "heldout":
        for fit, B in q.betas:
            rows = folds == fit
            if rows.any():
                parts.append((fit, _heldout(design.family.name.lower(), X[rows], y[rows], w[rows],
                                            off[rows], B)))
    else:
        raise ValueError(f"unknown glmnet query {q.kind!r}")
    columns = tuple(m.names) if q.version == 0 else None
    return GlmnetAnswer(q.version, tuple(parts), site.name, columns)
