"""glmnet's path at the central, from the sites' sums: three nested loops, named as in glmnet.

::

    for each lambda (largest first, warm starts)          the path
        until the coefficients settle                     IRLS: one round of site sums each
            coordinate descent on the summed X'WX, X'Wz   coordinate_descent.elastic_net

`path_fit` is a generator: it yields an `Ask` (the coefficients at which it needs the sites'
IRLS sums over the fit's rows: X'WX and X'Wz of the strong set's columns, `_StrongSet`, the
score of every column and the deviance; and the earlier solutions whose deviance it still
needs) and is sent them back as `Sums`; it returns a `PathResult`. The gaussian family needs
no round at all: its sums do not depend on the coefficients, and come with the
prior-weighted `Moments` every fit starts from.

The objective is glmnet's, on the original scale of the columns:

    (1 / sum w) sum_i w_i dev_i / 2 + lambda sum_j pf_j [alpha |b_j| s_j + (1 - alpha) / 2 (b_j s_j)^2]

with ``s_j`` the pooled weighted standard deviation of column j (``standardize=True``; 1
otherwise), the penalty factors ``pf`` rescaled to sum to the number of predictors, and the
intercept unpenalised. As glmnet does, the gaussian response is scaled by its weighted
standard deviation ``ys`` before the fit, so that its ridge term is ``(1 - alpha) / (2 ys)``
times the above (glmnet's documented behaviour; the lasso part is unaffected).

The messages are `algorithms.glm.glmnet_messages`', the penalised least squares of one fit
`algorithms.glm.glmnet_problem`'s.

The default path is glmnet's: ``lambda_max`` (the smallest lambda at which every penalised
coefficient is 0, at ``max(alpha, 1e-3)``) down to ``lambda_min_ratio * lambda_max`` in
``nlambda`` geometric steps, stopped early as glmnet stops it (after 5 lambdas, when the
fraction of deviance explained passes 0.999 or stops moving by 1e-5).
"""

from __future__ import annotations

from typing import Generator, Optional, Sequence

import numpy as np

from .glmnet_messages import Ask, Moments, PathResult, PathSpec, Sums
from .glmnet_problem import PenalisedProblem

#: glmnet.control() defaults.
FDEV, DEVMAX, EPS, MNLAM = 1e-5, 0.999, 1e-6, 5
#: IRLS iterations at one lambda before giving up (glmnet has no separate cap; R's glm 25).
IRLS_MAX = 50


class GlmnetConvergenceError(RuntimeError):
    """The IRLS loop at one lambda did not settle."""


def default_lambda_min_ratio(nobs: int, nvars: int) -> float:
    """glmnet: 1e-4 when there are more rows than predictors, else 0.01."""
    return 0.01 if nobs < nvars else 1e-4


def path_fit(spec: PathSpec, moments: Moments, start: Optional[np.ndarray] = None
             ) -> Generator[Ask, Sums, PathResult]:
    """The path of one fit (see the module docstring): yields `Ask`s, is sent the
    `Sums` at them, returns the `PathResult`. ``start`` warm-starts a user path."""
    prob = PenalisedProblem(spec, moments)
    if spec.family == "gaussian":
        return _gaussian_path(spec, prob, moments, start)
    return (yield from _irls_path(spec, prob, moments, start))


def _lambda_sequence(spec: PathSpec, prob: PenalisedProblem, gradient: Optional[np.ndarray],
                     nobs: int):
    """glmnet's lambdas: user ones as given; else inf first (reported as lambda_max), then
    lambda_max * alf^m, lambda_max from the gradient at the first point (the fit of the
    unpenalised columns; None before it is known)."""
    if spec.lambdas is not None:
        return np.asarray(spec.lambdas, float), False
    if gradient is None:
        return np.full(max(spec.nlambda, 1), np.inf), True
    penalised = (prob.pf > 0) & ~prob.exclude
    top = np.max(np.abs(gradient[penalised]) / prob.pf[penalised]) if penalised.any() else 0.0
    lam_max = top / max(spec.alpha, 1e-3)
    ratio = spec.lambda_min_ratio if spec.lambda_min_ratio is not None else \
        default_lambda_min_ratio(nobs, len(prob.pred))
    if spec.nlambda == 1:
        return np.array([np.inf]), True
    alf = max(EPS, ratio) ** (1.0 / (spec.nlambda - 1))
    lambdas = lam_max * alf ** np.arange(spec.nlambda, dtype=float)
    lambdas[0] = np.inf
    return lambdas, True


def _stop(family: str, m: int, dev_ratio: list) -> bool:
    """glmnet's early end of a default path (after ``MNLAM`` lambdas)."""
    if m + 1 < MNLAM:
        return False
    dev = dev_ratio[m]
    if dev > DEVMAX:
        return True
    if family == "gaussian":
        change = np.inf if dev == 0 else (dev - dev_ratio[m - 1]) / dev
    elif family == "binomial":
        change = dev - dev_ratio[m - 1]
    else:  # poisson: MNLAM - 1 lambdas back, and glmnetpp's threshold is 10 fdev
        change = (dev - dev_ratio[m - MNLAM + 1]) / dev if dev != 0 else np.inf
        return change < 10 * FDEV
    return change < FDEV


def _report_lambdas(lambdas: np.ndarray) -> np.ndarray:
    """R's ``fix.lam``: the first lambda ("big") reported as the geometric extrapolation of
    the next two."""
    out = lambdas.copy()
    if len(out) > 2 and np.isinf(out[0]):
        out[0] = np.exp(2 * np.log(out[1]) - np.log(out[2]))
    elif len(out) and np.isinf(out[0]):
        out[0] = np.nan
    return out


def _gaussian_path(spec, prob: PenalisedProblem, m: Moments, start) -> PathResult:
    G, c, zwz, sw = m.xwx, m.xwz, m.zwz, m.sum_w
    ic = prob.ic
    null = np.zeros(len(spec.columns))
    if ic is not None:
        null[ic] = c[ic] / G[ic, ic]
    null_dev = zwz - 2 * null @ c + null @ G @ null
    if null_dev <= 0:
        raise ValueError("y is constant: the gaussian glmnet cannot standardize it")
    ys = np.sqrt(null_dev / sw)
    prob.ridge_scale = 1.0 / ys
    thr = spec.tol * ys ** 2  # glmnet's threshold on the standardised response
    beta = null.copy()
    lambdas, default = _lambda_sequence(spec, prob, None, m.nobs)
    if start is not None:
        beta = np.asarray(start, float)
    betas, ratios, passes = [], [], 0
    k = -1
    while k + 1 < len(lambdas):  # the sequence is known after its first point
        k += 1
        lam = lambdas[k]
        beta, n = prob.solve(G, c, lam, beta, thr)
        passes += n
        dev = zwz - 2 * beta @ c + beta @ G @ beta
        betas.append(beta)
        ratios.append(1 - dev / null_dev)
        if default and k == 0:
            lambdas, _ = _lambda_sequence(spec, prob, prob.gradient(G, c, beta), m.nobs)
        if default and _stop("gaussian", k, ratios):
            break
    n = len(betas)
    return PathResult(_report_lambdas(lambdas[:n]), np.array(betas), np.array(ratios),
                      null_dev, np.zeros(n, int), prob.xs, passes)


def _link(family: str, mean: float) -> float:
    return np.log(mean / (1 - mean)) if family == "binomial" else np.log(mean)


def _irls_path(spec, prob: PenalisedProblem, m: Moments, start):
    """Binomial and Poisson: the intercept-only fit, then the path (see module docstring).

    Rounds: each IRLS iteration at a lambda is one round (the sums at its new coefficients).
    glmnet also evaluates the deviance at each lambda's solution; here that deviance rides
    on the next round (`Ask.deviance_at`), and the next lambda starts from the quadratic of
    the last IRLS point (within the threshold of the solution) instead of asking for the
    sums at the solution itself: one round per lambda less (measured with
    benchmarks/glmnet.py: 1.96 rounds per lambda before, about 1 after). Only the first
    point keeps its own round: lambda_max is read off the exact gradient there. A default
    path's early stop, known one round late, drops the lambda begun meanwhile."""
    ic = prob.ic
    beta = np.zeros(len(spec.columns))
    rounds_null = 0
    if ic is not None:
        mean = m.sum_wy / m.sum_w
        if not 0 < mean < (1 if spec.family == "binomial" else np.inf):
            raise ValueError(f"the {spec.family} response has a weighted mean of {mean:g}: "
                             "nothing to fit")
        beta[ic] = _link(spec.family, mean)
    sums = yield Ask(beta)
    rounds_null += 1
    # The intercept-only fit with an offset: Newton steps on the intercept (glmnet's azero).
    while ic is not None:
        score = sums.xtwz[ic] - sums.xtwx[ic] @ beta
        if spec.family == "poisson":  # exact in one step: sum w exp(offset + b0) is known
            step = np.log(m.sum_wy / (m.sum_wy - score))
        else:
            step = score / sums.xtwx[ic, ic]
        if abs(step) < 1e-10 * max(1.0, abs(beta[ic])):
            break
        beta = beta.copy()
        beta[ic] += step
        sums = yield Ask(beta)
        rounds_null += 1
    null_dev = sums.deviance
    thr = spec.tol * null_dev / (2 * m.sum_w)
    lambdas, default = _lambda_sequence(spec, prob, None, m.nobs)
    if start is not None:
        beta = np.asarray(start, float)
        sums = yield Ask(beta)
    path = _Found(spec.family, null_dev, default)
    strong = _StrongSet(prob)
    passes = 0
    at = beta  # the coefficients the sums in hand were computed at
    k = -1
    while k + 1 < len(lambdas) and not path.stopped:  # lambdas known after the first point
        k += 1
        lam = lambdas[k]
        n_rounds = 0
        if k == 0 and default and default_is_null(prob):
            new = beta  # nothing unpenalised besides the intercept: the null fit itself
        else:
            while not path.stopped:
                new, n = prob.solve(sums.xtwx, sums.xtwz, lam, beta, thr, strong.outside())
                passes += n
                settled = prob.change(sums.xtwx, new, beta) < thr
                beta = new
                if settled:
                    missing = strong.violations(sums, lam)
                    if not missing.any():
                        break
                    strong.add(missing)  # glmnet's KKT check failed: their gram, again
                n_rounds += 1
                if n_rounds > IRLS_MAX:
                    raise GlmnetConvergenceError(
                        f"IRLS did not settle at lambda {lam:g} in {IRLS_MAX} rounds")
                if k > 0:
                    strong.plan(sums, beta, lambdas, k)
                sums = yield Ask(beta, path.waiting(), strong.columns())
                strong.asked()
                path.take(sums.deviances)
                at = beta
                while not sums.valid:  # outside the family's range: halve the step
                    beta = (beta + path.betas[-1]) / 2 if path.betas else beta / 2
                    sums = yield Ask(beta, (), strong.columns())
                    at = beta
                    n_rounds += 1
        if path.stopped:  # the deviance that came with this lambda's rounds ended the path
            path.rounds[-1] += n_rounds
            break
        beta = new
        if k == 0 and new is not at:  # lambda_max needs the exact gradient at this point
            sums = yield Ask(beta)
            at = beta
            n_rounds += 1
        path.add(beta, n_rounds, sums.deviance if new is at else None)
        if default and k == 0:
            lambdas, _ = _lambda_sequence(
                spec, prob, prob.gradient(sums.xtwx, sums.xtwz, beta), m.nobs)
    if path.waiting():  # the last solutions' deviances: a round of products only
        sums = yield Ask(None, path.waiting())
        path.take(sums.deviances)
        path.rounds[-1] += 1
    n = len(path.betas)
    path.rounds[0] += rounds_null
    return PathResult(_report_lambdas(lambdas[:n]), np.array(path.betas),
                      np.array(path.ratios), null_dev, np.array(path.rounds), prob.xs, passes)


class _StrongSet:
    """The predictors whose gram the sites send: every one for the first point, then
    glmnet's strong set, looking one lambda ahead (the rounds at lambda k ask for the
    columns lambda k + 1 may need, so that it rarely waits for a round of new columns),
    never dropping a column once asked for. A predictor outside is held at 0, and
    glmnet's KKT check on the score of every column (sent each round, p numbers) brings
    it in when it must move. On 1M rows x 50 predictors the gram is most of a site's time
    (n q^2 for q columns): the strong set averages far fewer than 50 columns along a path."""

    def __init__(self, prob: PenalisedProblem):
        self.prob = prob
        self.have: Optional[np.ndarray] = None  # the predictors of the sums in hand; None: all
        self.want: Optional[np.ndarray] = None  # those of the next ask

    def outside(self) -> Optional[np.ndarray]:
        return None if self.have is None else ~self.have

    def columns(self) -> Optional[tuple]:
        if self.want is None or self.want.all():
            return None
        cols = np.zeros(len(self.prob.spec.columns), bool)
        cols[self.prob.pred[self.want]] = True
        if self.prob.ic is not None:
            cols[self.prob.ic] = True
        return tuple(int(j) for j in np.flatnonzero(cols))

    def asked(self) -> None:
        self.have = None if self.want is None else self.want.copy()

    def plan(self, sums: Sums, beta: np.ndarray, lambdas: np.ndarray, k: int) -> None:
        """The columns of the next ask, at lambda k: the nonzero ones, the strong set of
        lambda k + 2 from the latest score (a superset of lambda k + 1's), those asked."""
        g = self.prob.score_gradient(sums.score)
        last = len(lambdas) - 1
        ahead, before = lambdas[min(k + 2, last)], lambdas[min(k + 1, last)]
        want = self.prob.strong(g, ahead, before) | (beta[self.prob.pred] != 0)
        self.want = want if self.want is None else self.want | want

    def violations(self, sums: Sums, lam: float) -> np.ndarray:
        if self.have is None:
            return np.zeros(len(self.prob.pred), bool)
        return self.prob.violations(self.prob.score_gradient(sums.score), lam, ~self.have)

    def add(self, missing: np.ndarray) -> None:
        self.want = self.have | missing


class _Found:
    """The solutions of a path so far, with their deviance ratios, of which the last may
    wait for its deviance (it comes with the next round); ``stopped`` once glmnet's early
    stop holds at a solution (the ones after it are dropped)."""

    def __init__(self, family: str, null_dev: float, default: bool):
        self.family, self.null_dev, self.default = family, null_dev, default
        self.betas, self.ratios, self.rounds = [], [], []
        self.stopped = False

    def waiting(self) -> tuple:
        return tuple(self.betas[len(self.ratios):])

    def add(self, beta: np.ndarray, n_rounds: int, deviance: Optional[float]) -> None:
        self.betas.append(beta)
        self.rounds.append(n_rounds)
        if deviance is not None and not self.waiting()[:-1]:
            self.take((deviance,))

    def take(self, deviances: Sequence[float]) -> None:
        for dev in deviances:
            self.ratios.append(1 - dev / self.null_dev)
            if self.default and _stop(self.family, len(self.ratios) - 1, self.ratios):
                self.stopped = True
                n = len(self.ratios)
                self.rounds[n - 1] += sum(self.rounds[n:])  # spent on the dropped ones
                del self.betas[n:], self.rounds[n:]
                return


def default_is_null(prob: PenalisedProblem) -> bool:
    """Every kept predictor is penalised: glmnet's first point is the intercept-only fit."""
    return bool((prob.pf[~prob.exclude] > 0).all())


def lambda_interp(lambdas: np.ndarray, s: np.ndarray) -> tuple:
    """R's ``lambda.interp``: for each ``s``, the neighbouring path indices and the weight of
    the left one (coefficients at s = frac * left + (1 - frac) * right)."""
    lambdas = np.asarray(lambdas, float)
    s = np.atleast_1d(np.asarray(s, float))
    k = len(lambdas)
    if k == 1:
        ones = np.zeros(len(s), int)
        return ones, ones, np.ones(len(s))
    sfrac = (lambdas[0] - s) / (lambdas[0] - lambdas[-1])
    lam = (lambdas[0] - lambdas) / (lambdas[0] - lambdas[-1])
    sfrac = np.clip(sfrac, lam.min(), lam.max())
    coord = np.interp(sfrac, lam, np.arange(k, dtype=float))
    left, right = np.floor(coord).astype(int), np.ceil(coord).astype(int)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = (sfrac - lam[right]) / (lam[left] - lam[right])
    frac[left == right] = 1.0
    frac[np.abs(lam[left] - lam[right]) < np.finfo(float).eps] = 1.0
    return left, right, frac


def interpolate(result: PathResult, s: Sequence[float]) -> np.ndarray:
    """Coefficients at ``s`` by R's linear interpolation along the path (``exact=FALSE``):
    one row per value of ``s``."""
    left, right, frac = lambda_interp(result.lambdas, s)
    B = result.betas
    return B[left] * frac[:, None] + B[right] * (1 - frac)[:, None]
