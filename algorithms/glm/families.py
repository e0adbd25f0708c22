"""Families and links: names resolved to statsmodels objects, plus what R adds on top.

Fisher scoring needs a handful of operations from a family: the link g, its inverse, its
derivative g'(mu), the variance function V(mu), the deviance and the log-likelihood.
statsmodels provides all of them, so this module writes no new family. It only

- maps R's and statsmodels' names onto statsmodels classes (``resolve``),
- adds R's starting values (``family$initialize``) and R's validity checks
  (``validmu``/``valideta``), which statsmodels does not have, and
- adds R's quasi families (``quasipoisson``, ``quasibinomial``: the Poisson and binomial
  fits with the dispersion estimated and no likelihood), and R's binomial log-likelihood,
  which takes the prior weights as numbers of trials (``binomial()$aic``), and
- adds glm.nb's family (``negative_binomial``, theta estimated by `algorithms.glm.negbin`:
  statsmodels' Poisson, then ``NegativeBinomial(alpha=1/theta)``, under one name) and the
  per-site sums of theta (`negbin_sums`), and
- composes the relative-survival model (Dickman et al. 2004) out of statsmodels' Poisson
  family and log link: ``mu = d* + exp(eta)``, Poisson variance, where ``d*`` (the expected
  deaths) differs from row to row. That per-row shift is why it cannot be a statsmodels
  link object: it is bound to one site's ``d*`` with ``Family.bind``.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from scipy import special
from statsmodels.genmod import families as smf

links = smf.links

#: Family names (R's and statsmodels' spellings) -> statsmodels family class.
FAMILIES = {
    "gaussian": smf.Gaussian,
    "normal": smf.Gaussian,
    "binomial": smf.Binomial,
    "poisson": smf.Poisson,
    "gamma": smf.Gamma,
    "inverse_gaussian": smf.InverseGaussian,
    "inverse.gaussian": smf.InverseGaussian,
    "inversegaussian": smf.InverseGaussian,
}

#: The name of the relative-survival model (v6-glm-py calls it "survival").
RELATIVE_SURVIVAL = "relative_survival"

#: R's quasi families: the family whose fit they share.
QUASI = {"quasipoisson": smf.Poisson, "quasibinomial": smf.Binomial}

#: The negative binomial with theta estimated (``MASS::glm.nb``; `algorithms.glm.negbin`).
NEGATIVE_BINOMIAL = "negative_binomial"
_NEGBIN_NAMES = (NEGATIVE_BINOMIAL, "negative.binomial", "negativebinomial", "nb", "glm.nb")
#: glm.nb's links (R: log, sqrt, identity).
NEGBIN_LINKS = ("log", "sqrt", "identity")

#: Link names (R's and statsmodels' spellings) -> statsmodels link class.
LINKS = {
    "identity": links.Identity,
    "log": links.Log,
    "logit": links.Logit,
    "probit": links.Probit,
    "cloglog": links.CLogLog,
    "loglog": links.LogLog,
    "cauchit": links.Cauchy,
    "cauchy": links.Cauchy,
    "inverse": links.InversePower,
    "inverse_power": links.InversePower,
    "sqrt": links.Sqrt,
    "inverse_squared": links.InverseSquared,
    "1/mu^2": links.InverseSquared,
}

_EPS = np.finfo(float).eps  # R's .Machine$double.eps
# R's `eps` for "fitted probabilities numerically 0 or 1" (10 * .Machine$double.eps).
_BOUNDARY_EPS = 10 * _EPS


def resolve(family: Any = "gaussian", link: Any = None) -> "Family":
    """Turn a family and a link given by name or as statsmodels objects into a `Family`.

    ``family``: ``"gaussian"``, ``"binomial"``, ``"poisson"``, ``"gamma"``,
    ``"inverse_gaussian"``, ``"quasipoisson"``, ``"quasibinomial"``,
    ``"relative_survival"``, ``"negative_binomial"`` (theta estimated, links log, sqrt,
    identity), a statsmodels family instance, or a
    `Family`. ``link``: a name from `LINKS`, a statsmodels link instance, or None for the
    family's default (canonical) link.
    """
    if isinstance(family, Family):
        if link is not None:
            raise ValueError("link: give the link inside the Family, not both")
        return family
    if isinstance(family, smf.Family):
        if link is not None:
            raise ValueError(
                "link: a statsmodels family object carries its link; "
                "pass e.g. sm.families.Binomial(link=sm.families.links.Probit())"
            )
        return Family(family)
    link_obj = _resolve_link(link)
    if not isinstance(family, str):
        raise TypeError(
            f"family: expected a name or a statsmodels family, got {type(family).__name__}"
        )
    name = family.strip().lower()
    if name in _NEGBIN_NAMES:
        return _negative_binomial(link, link_obj)
    if name in (RELATIVE_SURVIVAL, "survival"):
        if link_obj is not None and not isinstance(link_obj, links.Log):
            raise ValueError("link: the relative_survival family has its own link, log(mu - d*)")
        return Family(smf.Poisson(), relative_survival=True)
    if name not in FAMILIES and name not in QUASI:
        known = ", ".join(sorted({*FAMILIES, *QUASI, RELATIVE_SURVIVAL, NEGATIVE_BINOMIAL}))
        raise ValueError(f"family: unknown family {family!r}; expected one of: {known}")
    cls = FAMILIES.get(name) or QUASI[name]
    quasi = name if name in QUASI else None
    if link_obj is None:
        return Family(cls(), quasi=quasi)
    try:
        return Family(cls(link=link_obj), quasi=quasi)
    except ValueError:
        allowed = sorted(n for n, c in LINKS.items() if c in cls.links or any(
            issubclass(c, k) for k in cls.links))
        raise ValueError(
            f"link: {type(link_obj).__name__} is not a link of the {cls.__name__} family; "
            f"expected one of: {', '.join(allowed)}"
        ) from None


def _negative_binomial(link: Any, link_obj) -> "Family":
    """``family="negative_binomial"``: glm.nb's family, theta to be estimated; its first fit
    is Poisson with the same link."""
    if link_obj is None:
        link_obj = links.Log()
    allowed = tuple(LINKS[n] for n in NEGBIN_LINKS)
    if type(link_obj) not in allowed:
        raise ValueError(f"link: the negative_binomial family (MASS::glm.nb) takes the links "
                         f"{', '.join(NEGBIN_LINKS)}; got {link!r}")
    return Family(smf.Poisson(link=link_obj), theta_estimated=True)


def _resolve_link(link: Any):
    if link is None or isinstance(link, links.Link):
        return link
    if isinstance(link, str):
        key = link.strip().lower()
        if key not in LINKS:
            raise ValueError(f"link: unknown link {link!r}; expected one of: {', '.join(LINKS)}")
        return LINKS[key]()
    raise TypeError(f"link: expected a name or a statsmodels link, got {type(link).__name__}")


class Family:
    """The operations Fisher scoring needs, taken from one statsmodels family.

    ``sm`` is the statsmodels family. For the relative-survival model, ``sm`` is Poisson
    with its log link, and the instance returned by ``bind(d_star)`` applies that link to
    ``mu - d*``. ``quasi`` (``"quasipoisson"``, ``"quasibinomial"``): R's quasi family of
    ``sm``, the same fit with the dispersion estimated and no likelihood. Every method works
    on numpy arrays of one site's rows.
    """

    def __init__(self, sm, relative_survival: bool = False, d_star=None,
                 quasi: Optional[str] = None, theta_estimated: bool = False,
                 theta: Optional[float] = None):
        self.sm = sm
        self.relative_survival = relative_survival
        self.d_star = d_star
        self.quasi = quasi
        #: glm.nb's family (`algorithms.glm.negbin`): ``sm`` is Poisson before the first
        #: theta, then ``NegativeBinomial(alpha=1/theta)`` with the current ``theta``.
        self.theta_estimated = theta_estimated
        self.theta = theta

    def with_theta(self, theta: Optional[float]) -> "Family":
        """glm.nb's family at ``theta`` (None: its first, Poisson, fit); the same name, so
        that a site counts every stage as one model."""
        link = self.sm.link
        sm = smf.Poisson(link=link) if theta is None else smf.NegativeBinomial(
            link=link, alpha=1.0 / theta)
        return Family(sm, theta_estimated=True, theta=theta)

    # -- description ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        if self.quasi:
            return self.quasi
        if self.theta_estimated:
            return NEGATIVE_BINOMIAL
        return "Relative survival" if self.relative_survival else type(self.sm).__name__

    @property
    def binomial(self) -> bool:
        """Binomial or quasibinomial (a response of proportions, or cbind counts)."""
        return isinstance(self.sm, smf.Binomial)

    @property
    def has_likelihood(self) -> bool:
        """False for the quasi families (R's logLik and AIC are NA)."""
        return self.quasi is None

    @property
    def link_name(self) -> str:
        return "log(mu - d*)" if self.relative_survival else type(self.sm.link).__name__

    @property
    def scale_estimated(self) -> bool:
        """Whether the dispersion is estimated: R's ``summary.glm`` rule, every family but
        binomial and Poisson (a negative binomial family object with its theta fixed, a
        Tweedie and the quasi families included)."""
        if self.quasi:
            return True
        if self.theta_estimated:  # glm.nb's summary: dispersion 1
            return False
        return not isinstance(self.sm, (smf.Binomial, smf.Poisson))

    def __repr__(self) -> str:
        return f"Family({self.name}, link={self.link_name})"

    def bind(self, d_star) -> "Family":
        """This family for one site's rows: relative survival needs that site's ``d*``."""
        if not self.relative_survival:
            return self
        return Family(self.sm, True, np.asarray(d_star, dtype=float), quasi=self.quasi)

    # -- the link -------------------------------------------------------------------------
    def linkfun(self, mu):
        """eta = g(mu)."""
        return self.sm.link(self._shift(mu))

    def linkinv(self, eta):
        """mu = g^{-1}(eta), kept off the boundary as R's links keep it: R's log link
        returns at least the machine epsilon, and its logit, probit, cauchit and cloglog
        links a probability in [eps, 1 - eps]. (Without that, a separated fit reaches
        fitted probabilities of exactly 0 or 1, which are outside the family's range.)"""
        mu = self.sm.link.inverse(eta)
        if self.relative_survival:
            return mu + self.d_star
        link = self.sm.link
        if isinstance(link, links.Log):
            return np.maximum(mu, _EPS)
        if isinstance(self.sm, smf.Binomial) and isinstance(link, links.Logit):
            return np.clip(mu, _EPS, 1 - _EPS)  # Logit and its subclasses: CDF links, cloglog
        return mu

    def deriv(self, mu):
        """g'(mu) = d eta / d mu."""
        return self.sm.link.deriv(self._shift(mu))

    def _shift(self, mu):
        return mu - self.d_star if self.relative_survival else mu

    # -- variance, deviance, likelihood ---------------------------------------------------
    def variance(self, mu):
        return self.sm.variance(mu)

    def working_weights(self, mu):
        """The IRLS weights without prior weights: 1 / (g'(mu)^2 V(mu))."""
        return 1.0 / (self.deriv(mu) ** 2 * self.variance(mu))

    def deviance(self, y, mu, w) -> float:
        return float(self.sm.deviance(y, mu, var_weights=w))

    def pearson_chi2(self, y, mu, w) -> float:
        return float(np.sum(w * (y - mu) ** 2 / self.variance(mu)))

    def loglike(self, y, mu, w, scale: float, trials=None, freq=None) -> float:
        """The log-likelihood (NaN for the quasi families), R's: the binomial's with its
        trials (`binomial_loglike`), Gamma's and the inverse Gaussian's each row's density
        times its weight, the others statsmodels' (the same there); rows of zero weight
        left out. ``scale``: R's dispersion (`fit_result._llf_scale`); ``freq``: frequency
        weights (a row counts that many times)."""
        if self.quasi:
            return float("nan")
        if type(self.sm) is smf.Binomial:
            return binomial_loglike(y, mu, w, trials, freq)
        used = w > 0  # R's Gaussian sum(log(wt)) is -Inf with a zero weight: left out
        if not np.all(used):
            y, mu, w = y[used], mu[used], w[used]
            freq = None if freq is None else freq[used]
        if type(self.sm) in (smf.Gamma, smf.InverseGaussian):
            # R's family$aic: each row's log-density at the dispersion, times its prior
            # weight (statsmodels divides the dispersion by the weight instead)
            f = 1.0 if freq is None else freq
            return float(np.sum(f * w * self.sm.loglike_obs(y, mu, var_weights=1.0,
                                                             scale=scale)))
        return float(self.sm.loglike(y, mu, var_weights=w, scale=scale,
                                     freq_weights=1.0 if freq is None else freq))

    def saturated_loglike(self, y, w, trials=None, freq=None) -> Optional[float]:
        """The log-likelihood of the saturated model (mu = y), for the families whose
        log-likelihood at scale 1 is that minus half the deviance (Poisson, relative
        survival, the binomial when its numbers of successes are whole): the fit then has
        its log-likelihood without another pass over the rows. None for the others."""
        sm = self.sm
        if self.quasi or self.theta_estimated:
            return None
        f = 1.0 if freq is None else freq
        if type(sm) is smf.Poisson:
            return float(np.sum(f * w * (special.xlogy(y, y) - y - special.gammaln(y + 1))))
        if type(sm) is smf.Binomial:
            if trials is None and _ones(w) and not np.any(y * (1.0 - y)):
                return 0.0  # 0/1 outcomes of one trial each: every term is log(1) = 0
            m = _binomial_trials(w, trials)
            whole = lambda v: np.all(np.abs(v - np.round(v)) <= 1e-9 * np.maximum(1.0, v))
            if whole(m) and whole(m * y):  # R's rounding changes nothing
                return binomial_loglike(y, y, w, trials, freq)
        return None

    # -- what R adds ----------------------------------------------------------------------
    def check_response(self, y, w) -> Optional[str]:
        """R's domain checks on the response: a message (without values), or None."""
        sm = self.sm
        if self.relative_survival or isinstance(sm, (smf.Poisson, smf.NegativeBinomial)):
            if np.any(y < 0):
                return f"negative values are not allowed for the {self.name} family"
        elif isinstance(sm, smf.Binomial):
            if np.any((y < 0) | (y > 1)):
                return "the binomial response must lie in [0, 1] (a 0/1 outcome or a proportion)"
        elif isinstance(sm, (smf.Gamma, smf.InverseGaussian)):
            if np.any(y <= 0):
                return f"non-positive values are not allowed for the {self.name} family"
        elif isinstance(sm, smf.Tweedie):
            if np.any(y < 0):
                return "negative values are not allowed for the Tweedie family"
        return None

    def start_mu(self, y, w, trials=None):
        """R's starting values (``family$initialize``); ``trials``: the numbers of trials
        of a ``cbind(successes, failures)`` response."""
        sm = self.sm
        if self.relative_survival:
            # Dickman's relative-survival family: pmax(y, d*) + 0.1 keeps mu - d* > 0.
            return np.maximum(y, self.d_star) + 0.1
        if isinstance(sm, smf.Binomial):
            n = w if trials is None else trials
            return (n * y + 0.5) / (n + 1.0)
        if isinstance(sm, smf.Poisson):
            return y + 0.1
        if isinstance(sm, (smf.Gaussian, smf.Gamma, smf.InverseGaussian)):
            return np.asarray(y, dtype=float).copy()
        if isinstance(sm, smf.NegativeBinomial):  # MASS::negative.binomial
            return y + (y == 0) / 6.0
        if isinstance(sm, smf.Tweedie):  # statmod::tweedie
            return y + 0.1 * (y == 0)
        return sm.starting_mu(y)

    def valid(self, eta, mu) -> bool:
        """R's ``valideta(eta) && validmu(mu)``, plus finiteness."""
        if not (np.all(np.isfinite(eta)) and np.all(np.isfinite(mu))):
            return False
        sm, link = self.sm, self.sm.link
        if self.relative_survival:
            return bool(np.all(mu > self.d_star))
        if isinstance(link, (links.Sqrt, links.InverseSquared)) and np.any(eta <= 0):
            return False
        if isinstance(link, links.InversePower) and np.any(eta == 0):
            return False
        if isinstance(sm, smf.Binomial):
            return bool(np.all((mu > 0) & (mu < 1)))
        if isinstance(sm, (smf.Poisson, smf.Gamma, smf.InverseGaussian, smf.NegativeBinomial,
                           smf.Tweedie)):
            return bool(np.all(mu > 0))
        return True

    def boundary_count(self, mu) -> int:
        """Rows whose fitted value is numerically on the boundary (R's separation warning):
        probabilities 0 or 1 (binomial), rates 0 (Poisson)."""
        if self.relative_survival:
            return 0
        if isinstance(self.sm, smf.Binomial):
            return int(np.sum((mu < _BOUNDARY_EPS) | (mu > 1 - _BOUNDARY_EPS)))
        if isinstance(self.sm, smf.Poisson):
            return int(np.sum(mu < _BOUNDARY_EPS))
        return 0


def negbin_sums(y, mu, w, theta: Optional[float]) -> dict:
    """One site's sums for glm.nb's theta (``MASS::theta.ml``, ``glm.nb``'s ``loglik``) at
    the fitted values ``mu``: ``n`` (the prior weights' sum) and ``pearson``
    (``sum w (y / mu - 1)^2``, theta.ml's start); with ``theta``: the ``score`` and the
    ``info`` of theta, and the log-likelihood ``loglik``. The rows enter only through these
    sums (``sum w digamma(y + theta)``...)."""
    y, mu, w = (np.asarray(a, dtype=float) for a in (y, mu, w))
    out = {"n": float(np.sum(w)), "pearson": float(np.sum(w * (y / mu - 1) ** 2))}
    if theta is None:
        return out
    th = float(theta)
    out["score"] = float(np.sum(w * (special.digamma(th + y) - special.digamma(th) + np.log(th)
                                     + 1 - np.log(th + mu) - (y + th) / (mu + th))))
    out["info"] = float(np.sum(w * (-special.polygamma(1, th + y) + special.polygamma(1, th)
                                    - 1 / th + 2 / (mu + th) - (y + th) / (mu + th) ** 2)))
    out["loglik"] = float(np.sum(w * (special.gammaln(th + y) - special.gammaln(th)
                                      - special.gammaln(y + 1) + th * np.log(th)
                                      + y * np.log(mu + (y == 0)) - (th + y) * np.log(th + mu))))
    return out


#: Rows per block of `binomial_loglike`.
_ROWS = 1 << 16


def _ones(w) -> bool:
    w = np.asarray(w)
    return bool(np.all(w == 1.0)) if w.ndim else float(w) == 1.0


def _binomial_trials(w, trials) -> np.ndarray:
    """R's ``m`` in ``binomial()$aic``: the numbers of trials of a cbind response, else the
    prior weights (a proportion with ``weights=`` its numbers of trials)."""
    return np.asarray(w if trials is None else trials, dtype=float)


def binomial_loglike(y, mu, w, trials=None, freq=None) -> float:
    """R's binomial log-likelihood, ``-binomial()$aic / 2``:
    ``sum((w / m) dbinom(round(m y), round(m), mu, log = TRUE))`` over the rows with
    ``m > 0``, ``m`` the numbers of trials (`_binomial_trials`). With one trial per row and
    unit weights it is statsmodels' (which ignores the weights as numbers of trials)."""
    m = _binomial_trials(w, trials)
    y, mu, w = (np.asarray(a, dtype=float) for a in (y, mu, w))
    if freq is not None:  # R's likelihood of the rows repeated
        w = w * np.asarray(freq, dtype=float)
        m = np.broadcast_to(m, w.shape)
    if len(y) > _ROWS:  # by blocks: a dozen temporaries of n rows would outweigh X
        return float(sum(binomial_loglike(y[r], mu[r], w[r], m[r])
                         for r in (slice(i, i + _ROWS) for i in range(0, len(y), _ROWS))))
    used = m > 0
    m, y, mu, w = m[used], y[used], mu[used], w[used]
    size = np.round(m)
    k = np.round(m * y)
    logpmf = special.xlogy(k, mu) + special.xlog1py(size - k, -mu)
    if not np.all(size == 1):  # one trial per row: the binomial coefficients are all 1
        logpmf += (special.gammaln(size + 1) - special.gammaln(k + 1)
                   - special.gammaln(size - k + 1))
    return float(np.sum(w / m * logpmf))
