"""Fused per-block steps of a round for the common family/link pairs (issue 19).

A round's per-row work through `families.Family` goes through statsmodels' family, link
and variance objects: every step (inverse link, clipping, validity, deviance, Pearson,
g'(mu), V(mu), the working weights) is a separate pass over the block, and several are
two or three numpy calls each, about 50 passes per block in all. For binomial-logit,
poisson-log and gaussian-identity the same quantities are written here in closed form
(g'(mu)^2 V(mu) simplifies: logit's working weight is mu(1 - mu), log's is mu, identity's
is 1), in a handful of passes. The deviance keeps statsmodels' formula (its clipping of
y/mu at the machine epsilon included), so the sums agree with the generic path to a few
ulps (tested to 1e-12 relative in ``tests/algorithms/glm/test_rounds.py``).

A compiled (numba) kernel was measured and not kept: numba's scalar exp/log are about 5x
slower than numpy's vectorised ones on this machine, and the fused numba round came out
slower than numpy's (see the README's speed section).

``AIA_GLM_KERNEL=generic`` forces the generic path everywhere (``fused``, the default,
uses these steps where they apply).
"""

from __future__ import annotations

import math
import os
from typing import Callable, Optional

import numpy as np
from statsmodels.genmod import families as smf
from statsmodels.genmod.families import links

_EPS = np.finfo(float).eps
_BOUNDARY_EPS = 10 * _EPS

#: (mu, deviance, pearson, boundary, working weights without prior weights, g'(mu)(y-mu));
#: with ``full=False`` (gradient rounds) Pearson's sum and the boundary count are 0, and
#: the fused steps (canonical links, where w_work g'(mu)(y - mu) is y - mu) give None for
#: the working weights and y - mu for the residual: the score's terms without a product.
Step = tuple


def generic_step(fam, eta, y, w, full: bool = True, unit: bool = False,
                 ones=None) -> Optional[Step]:
    """The block step through the family's own methods (every family and link);
    ``unit`` and ``ones`` (what the fused steps may know of the rows) are not used."""
    return generic_at(fam, eta, fam.linkinv(eta), y, w, full)


def generic_at(fam, eta, mu, y, w, full: bool = True, unit: bool = False,
               ones=None) -> Optional[Step]:
    """`generic_step` at a given ``mu`` (R's starting values are not g^{-1}(g(mu)))."""
    if not fam.valid(eta, mu):
        return None
    dev = fam.deviance(y, mu, w)
    if not math.isfinite(dev):
        return None
    if not full:
        return mu, dev, 0.0, 0, fam.working_weights(mu), fam.deriv(mu) * (y - mu)
    return (mu, dev, fam.pearson_chi2(y, mu, w), fam.boundary_count(mu),
            fam.working_weights(mu), fam.deriv(mu) * (y - mu))


#: Within |eta| <= _INNER, logit's mu is inside [eps, 1 - eps] (exp(30) ~ 1e13 << 1 / eps)
#: and no row is at the boundary (mu < 10 eps needs eta < -33.7): statsmodels' clip and the
#: boundary count change nothing there, and are skipped.
_INNER = 30.0


def _binomial_logit(fam, eta, y, w, full: bool = True, unit: bool = False,
                    ones=None) -> Optional[Step]:
    """Binomial-logit. ``unit``: every prior weight is 1; ``ones``: y == 1 of the block's
    rows when every y is 0 or 1, False when some is not, None when not known."""
    lo, hi = _range(eta)
    if lo is None:
        return None
    mu = np.negative(eta)
    np.exp(mu, out=mu)
    mu += 1.0
    np.divide(1.0, mu, out=mu)
    inner = -_INNER <= lo and hi <= _INNER
    if not inner:
        np.clip(mu, _EPS, 1 - _EPS, out=mu)  # then 0 < mu < 1: valid
    return _binomial_at_mu(mu, y, w, full, unit, ones, edges=not inner)


def _binomial_logit_at(fam, eta, mu, y, w, full: bool = True, unit: bool = False,
                       ones=None) -> Optional[Step]:
    """`_binomial_logit` at a given mu (R's starting values) and eta = logit(mu)."""
    if _range(eta)[0] is None or not (mu.min() > 0.0 and mu.max() < 1.0):
        return None
    return _binomial_at_mu(mu, y, w, full, unit, ones, edges=True)


def _binomial_at_mu(mu, y, w, full, unit, ones, edges) -> Optional[Step]:
    """``edges``: some mu may be within 10 eps of 0 or 1 (count them)."""
    q = 1.0 - mu
    dev, t = _binomial_deviance(mu, q, y, w, unit, ones)
    if not math.isfinite(dev):
        return None
    d = y - mu
    if not full:  # a gradient round: the score's y - mu (see `Step`)
        return mu, dev, 0.0, 0, None, d
    v = mu * q
    resid = np.divide(d, v, out=t)  # g'(mu)(y - mu) = (y - mu) / (mu(1 - mu))
    if not unit:
        d *= w
    pearson = float(np.dot(d, resid))  # w (y - mu)^2 / V(mu)
    boundary = int(np.count_nonzero(mu < _BOUNDARY_EPS)
                   + np.count_nonzero(q < _BOUNDARY_EPS)) if edges else 0
    return mu, dev, pearson, boundary, v, resid


def _binomial_deviance(mu, q, y, w, unit, ones) -> tuple:
    """The deviance, and its terms (an array the caller may reuse)."""
    if ones is None:
        ones = _ones(y)
    t = _binomial_terms(y, mu, q) if ones is False else _binary_terms(ones, mu, q)
    return 2.0 * float(t.sum() if unit else np.dot(w, t)), t


def _range(eta) -> tuple:
    """(min, max) of eta, or (None, None) when some eta is not finite."""
    lo, hi = eta.min(), eta.max()  # a NaN or an infinity shows in one of them
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None, None
    return lo, hi


def _ones(y):
    """y == 1 when every y is 0 or 1, else False (a proportion: both deviance terms)."""
    ones = y == 1.0
    return ones if np.all(ones | (y == 0.0)) else False


def _binomial_terms(y, mu, q):
    """statsmodels' Binomial._resid_dev, term by term."""
    t = y / (mu + 1e-20)
    np.clip(t, _EPS, np.inf, out=t)
    np.log(t, out=t)
    t *= y
    s = (1.0 - y) / (q + 1e-20)
    np.clip(s, _EPS, np.inf, out=s)
    np.log(s, out=s)
    s *= 1.0 - y
    t += s
    return t


def _binary_terms(ones, mu, q):
    """The same terms when every y is 0 or 1 (``ones``: y == 1), bit for bit, with one
    log: for y = 1 statsmodels' term is log(1 / (mu + 1e-20)) plus 0 * log(eps), for y = 0
    log(1 / (q + 1e-20)) plus 0 * log(eps), and adding -0.0 changes nothing."""
    t = np.where(ones, mu, q)
    t += 1e-20
    np.divide(1.0, t, out=t)  # >= 1: statsmodels' clip at eps changes nothing
    np.log(t, out=t)
    return t


def _poisson_log(fam, eta, y, w, full: bool = True, unit: bool = False,
                 ones=None) -> Optional[Step]:
    lo, hi = _range(eta)
    if lo is None:
        return None
    mu = np.exp(eta)
    if lo < _POISSON_FLOOR:
        np.maximum(mu, _EPS, out=mu)  # then mu > 0: valid
    if hi > 700.0 and not np.isfinite(mu.max()):  # exp(700) ~ 1e304 is finite
        return None
    return _poisson_at_mu(mu, y, w, full, unit, edges=lo < _POISSON_FLOOR)


def _poisson_log_at(fam, eta, mu, y, w, full: bool = True, unit: bool = False,
                    ones=None) -> Optional[Step]:
    """`_poisson_log` at a given mu (R's starting values) and eta = log(mu)."""
    if _range(eta)[0] is None or not (mu.min() > 0.0 and np.isfinite(mu.max())):
        return None
    # a copy: the working weights are mu, and a round writes into them (sqrt in place);
    # the given mu is the caller's
    return _poisson_at_mu(mu.copy(), y, w, full, unit, edges=True)


def _poisson_at_mu(mu, y, w, full, unit, edges) -> Optional[Step]:
    dev, t, d = _poisson_deviance(mu, y, w, unit)
    if not math.isfinite(dev):
        return None
    if not full:
        return mu, dev, 0.0, 0, None, d
    resid = np.divide(d, mu, out=t)  # g'(mu)(y - mu)
    if not unit:
        d *= w
    pearson = float(np.dot(d, resid))  # w (y - mu)^2 / mu
    boundary = int(np.count_nonzero(mu < _BOUNDARY_EPS)) if edges else 0
    return mu, dev, pearson, boundary, mu, resid


def _poisson_deviance(mu, y, w, unit) -> tuple:
    """The deviance, its terms and y - mu (arrays the caller may reuse)."""
    t = y / mu  # statsmodels' Poisson._resid_dev
    np.clip(t, _EPS, np.inf, out=t)
    np.log(t, out=t)
    t *= y
    d = y - mu
    t -= d
    return 2.0 * float(t.sum() if unit else np.dot(w, t)), t, d


#: Above this eta, exp(eta) > 10 eps: no clip at eps and no boundary row.
_POISSON_FLOOR = -33.0


def _gaussian_identity(fam, eta, y, w, full: bool = True, unit: bool = False,
                       ones=None) -> Optional[Step]:
    return _gaussian_identity_at(fam, eta, eta, y, w, full, unit)


def _gaussian_identity_at(fam, eta, mu, y, w, full: bool = True, unit: bool = False,
                          ones=None) -> Optional[Step]:
    if _range(mu)[0] is None:
        return None
    dev, resid = _gaussian_deviance(mu, y, w, unit)
    if not math.isfinite(dev):
        return None
    if not full:
        return mu, dev, 0.0, 0, None, resid
    return mu, dev, dev, 0, np.ones_like(mu), resid


def _gaussian_deviance(mu, y, w, unit) -> tuple:
    resid = y - mu
    t = resid * resid
    return float(t.sum() if unit else np.dot(w, t)), resid


def null_deviance(step: Callable, fam, mu, y, w, unit: bool = False, ones=None) -> float:
    """The deviance at ``mu`` (the null model's fitted values) by the fused step's own
    terms when ``step`` is one, else the family's."""
    if step is _binomial_logit:
        return _binomial_deviance(mu, 1.0 - mu, y, w, unit, ones)[0]
    if step is _poisson_log:
        return _poisson_deviance(mu, y, w, unit)[0]
    if step is _gaussian_identity:
        return _gaussian_deviance(mu, y, w, unit)[0]
    return fam.deviance(y, mu, w)


#: The fused steps whose working weights and residuals are finite whenever they return
#: (mu is clipped inside the family's range, eta checked finite): a round needs no mask of
#: the non-finite rows after them.
FINITE = frozenset({_binomial_logit, _poisson_log, _gaussian_identity})
#: The same steps at given (eta, mu), for R's starting values (finite as well).
AT = {_binomial_logit: _binomial_logit_at, _poisson_log: _poisson_log_at,
      _gaussian_identity: _gaussian_identity_at}


def step_for(fam) -> Callable:
    """The block step for ``fam`` (already bound): a fused one for the common pairs with
    their exact statsmodels classes, else `generic_step`."""
    if os.environ.get("AIA_GLM_KERNEL", "fused") == "generic":
        return generic_step
    if fam.relative_survival or fam.quasi is not None:
        return generic_step
    sm, link = type(fam.sm), type(fam.sm.link)
    if sm is smf.Binomial and link is links.Logit and getattr(fam.sm, "n", 1) == 1:
        return _binomial_logit
    if sm is smf.Poisson and link is links.Log:
        return _poisson_log
    if sm is smf.Gaussian and link is links.Identity:
        return _gaussian_identity
    return generic_step
