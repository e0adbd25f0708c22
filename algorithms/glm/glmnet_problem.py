"""One glmnet fit's standardisation, penalties and penalised weighted least squares, on
the summed X'WX and X'Wz (`algorithms.glm.glmnet_path` runs the path over it)."""

from __future__ import annotations

import numpy as np

from .coordinate_descent import elastic_net
from .glmnet_messages import Moments, PathSpec


class PenalisedProblem:
    """The standardisation and penalties of one fit, and its weighted least squares."""

    def __init__(self, spec: PathSpec, moments: Moments):
        self.spec = spec
        self.sw = moments.sum_w
        self.ic = spec.intercept_index
        self.pred = spec.predictors
        m = moments
        xm = m.xw[self.pred] / m.sum_w
        var = np.diag(m.xwx)[self.pred] / m.sum_w - xm ** 2
        # glmnet drops constant columns (chkvars); relative to the column's size
        scale2 = np.diag(m.xwx)[self.pred] / m.sum_w
        self.exclude = ~(var > 1e-13 * np.maximum(scale2, 1e-300))
        self.xs = np.where(spec.standardize & ~self.exclude, np.sqrt(np.abs(var)), 1.0)
        pf = np.ones(len(self.pred)) if spec.penalty_factor is None else \
            np.asarray(spec.penalty_factor, float)[self.pred]
        pf = np.maximum(pf, 0.0)
        total = pf[~self.exclude].sum()
        # glmnet rescales the penalty factors to sum to the number of predictors
        self.pf = pf * (len(self.pred) / total) if total > 0 else pf
        self.ridge_scale = 1.0  # gaussian: 1 / ys (set by path_fit)

    def penalties(self, lam: float) -> tuple[np.ndarray, np.ndarray]:
        a = self.spec.alpha
        if np.isinf(lam):  # glmnet's first point ("big"): only unpenalised columns move
            l1 = np.where(self.pf > 0, np.inf, 0.0)
            return l1, np.zeros_like(self.pf)
        return lam * a * self.pf, lam * (1 - a) * self.pf * self.ridge_scale

    def reduced(self, G: np.ndarray, c: np.ndarray) -> tuple:
        """``(A, r)`` of the predictors on the standardised scale, the intercept eliminated
        (it is unpenalised: its optimum given the others is closed form), over sum w."""
        p, ic = self.pred, self.ic
        d = 1.0 / self.xs
        A = G[np.ix_(p, p)] * d[:, None] * d[None, :]
        r = c[p] * d
        if ic is not None:
            g0 = G[ic, p] * d
            A = A - np.outer(g0, g0) / G[ic, ic]
            r = r - g0 * c[ic] / G[ic, ic]
        return A / self.sw, r / self.sw

    def gradient(self, G, c, beta) -> np.ndarray:
        """The standardised gradient of the quadratic at ``beta`` (the score there)."""
        A, r = self.reduced(G, c)
        return r - A @ (beta[self.pred] * self.xs)

    def solve(self, G, c, lam, beta, thr, outside=None) -> tuple[np.ndarray, int]:
        """The penalised weighted least squares at ``lam`` from warm start ``beta``;
        ``outside``: predictors held at 0 (not in the strong set: their gram is not sent)."""
        A, r = self.reduced(G, c)
        l1, l2 = self.penalties(lam)
        held = self.exclude if outside is None else self.exclude | outside
        b, passes = elastic_net(A, r, l1, l2, beta[self.pred] * self.xs, thr,
                                self.spec.max_iter, held)
        out = np.zeros(len(self.spec.columns))
        out[self.pred] = b / self.xs
        if self.ic is not None:
            p = self.pred
            out[self.ic] = (c[self.ic] - G[self.ic, p] @ out[p]) / G[self.ic, self.ic]
        return out, passes

    def score_gradient(self, score: np.ndarray) -> np.ndarray:
        """The standardised gradient of the likelihood part of the objective from the
        sites' score X'W(z - eta) (at the intercept's optimum, as `gradient`)."""
        return score[self.pred] / (self.xs * self.sw)

    def strong(self, gradient: np.ndarray, lam: float, previous: float) -> np.ndarray:
        """glmnet's sequential strong rule: the predictors that may be nonzero at ``lam``
        (``|g_j| >= alpha pf_j (2 lam - previous)``), the unpenalised ones always."""
        cut = self.spec.alpha * self.pf * (2 * lam - previous)
        return ~self.exclude & ((self.pf == 0) | (np.abs(gradient) >= cut))

    def violations(self, gradient: np.ndarray, lam: float, outside: np.ndarray) -> np.ndarray:
        """The KKT check of the predictors held at 0: ``|g_j| > alpha lam pf_j``."""
        return outside & ~self.exclude & (np.abs(gradient) > self.spec.alpha * lam * self.pf)

    def change(self, G, new, old) -> float:
        """glmnet's IRLS criterion: the largest weighted squared change of a coordinate
        (standardised; the intercept as the one of W-centred columns)."""
        d = new - old
        A, _ = self.reduced(G, np.zeros(len(d)))
        ds = d[self.pred] * self.xs
        largest = float(np.max(np.diag(A) * ds ** 2)) if len(ds) else 0.0
        if self.ic is not None:
            ic, p = self.ic, self.pred
            centred = d[ic] + G[ic, p] @ d[p] / G[ic, ic]
            largest = max(largest, G[ic, ic] / self.sw * centred ** 2)
        return largest
