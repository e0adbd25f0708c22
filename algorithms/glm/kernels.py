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

import os
from typing import Callable, Optional

import numpy as np
from statsmodels.genmod import families as smf
from statsmodels.genmod.families import links

_EPS = np.finfo(float).eps
_BOUNDARY_EPS = 10 * _EPS

#: (mu, deviance, pearson, boundary, working weights without prior weights, g'(mu)(y-mu));
#: with ``full=False`` (gradient rounds) Pearson's sum and the boundary count are 0.
Step = tuple


def generic_step(fam, eta, y, w, full: bool = True) -> Optional[Step]:
    """The block step through the family's own methods (every family and link)."""
    return generic_at(fam, eta, fam.linkinv(eta), y, w, full)


def generic_at(fam, eta, mu, y, w, full: bool = True) -> Optional[Step]:
    """`generic_step` at a given ``mu`` (R's starting values are not g^{-1}(g(mu)))."""
    if not fam.valid(eta, mu):
        return None
    dev = fam.deviance(y, mu, w)
    if not np.isfinite(dev):
        return None
    if not full:
        return mu, dev, 0.0, 0, fam.working_weights(mu), fam.deriv(mu) * (y - mu)
    return (mu, dev, fam.pearson_chi2(y, mu, w), fam.boundary_count(mu),
            fam.working_weights(mu), fam.deriv(mu) * (y - mu))


def _binomial_logit(fam, eta, y, w, full: bool = True) -> Optional[Step]:
    if not np.all(np.isfinite(eta)):
        return None
    mu = np.exp(-eta)
    mu += 1.0
    np.divide(1.0, mu, out=mu)
    np.clip(mu, _EPS, 1 - _EPS, out=mu)  # then 0 < mu < 1: valid
    q = 1.0 - mu
    v = mu * q
    t = _binary_terms(y, mu, q)
    if t is None:
        t = _binomial_terms(y, mu, q)
    dev = 2.0 * float(np.dot(w, t))
    if not np.isfinite(dev):
        return None
    resid = y - mu
    np.divide(resid, v, out=resid)  # g'(mu)(y - mu) = (y - mu) / (mu(1 - mu))
    if not full:  # a gradient round needs neither Pearson's sum nor the boundary count
        return mu, dev, 0.0, 0, v, resid
    np.multiply(resid, resid, out=t)
    t *= v  # (y - mu)^2 / V(mu)
    pearson = float(np.dot(w, t))
    boundary = int(np.count_nonzero(mu < _BOUNDARY_EPS) + np.count_nonzero(q < _BOUNDARY_EPS))
    return mu, dev, pearson, boundary, v, resid


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


def _binary_terms(y, mu, q):
    """The same terms when every y is 0 or 1 (None otherwise), bit for bit, with one log
    instead of two: for y = 1 statsmodels' term is log(1 / (mu + 1e-20)) plus
    0 * log(eps), for y = 0 log(1 / (q + 1e-20)) plus 0 * log(eps); ``y mu + (1 - y) q``
    is exactly mu or q, and adding -0.0 changes nothing."""
    other = 1.0 - y
    t = y * other
    if t.any():  # a proportion (0 < y < 1): both terms are needed
        return None
    np.multiply(y, mu, out=t)
    other *= q
    t += other
    t += 1e-20
    np.divide(1.0, t, out=t)  # >= 1: statsmodels' clip at eps changes nothing
    np.log(t, out=t)
    return t


def _poisson_log(fam, eta, y, w, full: bool = True) -> Optional[Step]:
    if not np.all(np.isfinite(eta)):
        return None
    mu = np.exp(eta)
    np.maximum(mu, _EPS, out=mu)  # then mu > 0: valid
    if not np.all(np.isfinite(mu)):
        return None
    t = y / mu  # statsmodels' Poisson._resid_dev
    np.clip(t, _EPS, np.inf, out=t)
    np.log(t, out=t)
    t *= y
    d = y - mu
    t -= d
    dev = 2.0 * float(np.dot(w, t))
    if not np.isfinite(dev):
        return None
    resid = d / mu  # g'(mu)(y - mu)
    if not full:
        return mu, dev, 0.0, 0, mu, resid
    np.multiply(resid, d, out=t)  # (y - mu)^2 / mu
    pearson = float(np.dot(w, t))
    return mu, dev, pearson, int(np.count_nonzero(mu < _BOUNDARY_EPS)), mu, resid


def _gaussian_identity(fam, eta, y, w, full: bool = True) -> Optional[Step]:
    if not np.all(np.isfinite(eta)):
        return None
    resid = y - eta
    t = resid * resid
    dev = float(np.dot(w, t))
    if not np.isfinite(dev):
        return None
    return eta, dev, dev, 0, np.ones_like(eta), resid


#: The fused steps whose working weights and residuals are finite whenever they return
#: (mu is clipped inside the family's range, eta checked finite): a round needs no mask of
#: the non-finite rows after them.
FINITE = frozenset({_binomial_logit, _poisson_log, _gaussian_identity})


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
