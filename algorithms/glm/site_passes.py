"""A site's passes besides the iterations (`Site` inherits them): the log-likelihood at the
estimate, glm.nb's theta sums at coefficients already answered, the sandwich's meat."""

from __future__ import annotations

import hashlib
import hmac
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from . import disclosure, rounds
from .design import Design
from .errors import SiteError
from .guards import PrivacyError
from .families import negbin_sums
from .site_guard import _guarded

#: How many coefficients of one design a site remembers for `Site.theta_sums`.
MAX_REMEMBERED = 4096


class SitePasses:
    """The passes of `Site` besides its rounds (its state: ``_answered``, ``_groups_key``)."""

    @_guarded
    def loglike(self, design: Design, beta: np.ndarray, scale: float,
                subset: Optional[Sequence[str]] = None) -> float:
        """The site's share of the log-likelihood at ``beta`` (`Family.loglike`).

        Only at coefficients whose round passes the rounds' guards (`_require_answered`)."""
        self._require_answered(design, beta, "the log-likelihood")
        m = self.model(design)
        X = m.X if subset is None else m.X[:, [m.names.index(c) for c in subset]]
        fam = design.family.bind(m.d_star)
        with np.errstate(all="ignore"):
            mu = fam.linkinv(X @ beta + m.offset)
            return fam.loglike(m.y, mu, m.weights, scale, m.trials, m.freq)


    def _passed(self, design: Design, beta: np.ndarray) -> None:
        """Remember coefficients whose round passed the round's guards (`theta_sums`,
        `loglike` and `meat` answer at those only)."""
        if self._answered[0] != design.token:
            self._answered = (design.token, set())
        if len(self._answered[1]) < MAX_REMEMBERED:
            self._answered[1].add(np.asarray(beta, dtype=float).tobytes())

    def _require_answered(self, design: Design, beta: np.ndarray, what: str) -> None:
        """Answer a pass only at coefficients whose round passes the rounds' guards: those
        of a round this site has answered for this design, or (a site started again since,
        whose rounds a resumed central replays from its record) coefficients at which the
        round's sums, computed here and not sent, pass `rounds.check_leverage` now.
        Otherwise the central could choose coefficients for these passes alone: two steep
        coefficients either side of a row make the meat's difference that row's."""
        key = np.asarray(beta, dtype=float).tobytes()
        if self._answered[0] == design.token and key in self._answered[1]:
            return
        m = self.model(design)
        rows = self._rows(design, m, None)
        with np.errstate(all="ignore"):
            sums, _ = rounds.irls_round(rows, np.asarray(beta, dtype=float))
        if sums is None:
            raise SiteError(f"{what}: the coefficients leave the family's range")
        try:
            rounds.check_leverage(self.round_guards(design), rows, sums)
        except PrivacyError as exc:
            self.audit.refused(design.model_key, exc)
            raise SiteError(f"{what}: sent only at coefficients whose round this site would "
                            f"answer ({exc.guard}: {exc.detail})") from None
        self._passed(design, beta)

    @_guarded
    def theta_sums(self, design: Design, beta: np.ndarray,
                   theta: Optional[float] = None) -> dict:
        """The site's sums for glm.nb's theta at the fitted values of ``beta``
        (`algorithms.glm.families.negbin_sums`: four numbers, and the log-likelihood).

        Only at coefficients whose round passes the rounds' guards (`_require_answered`):
        the central cannot choose fitted values for these sums alone."""
        self._require_answered(design, beta, "theta sums")
        m = self.model(design)
        fam = design.family.bind(m.d_star)
        with np.errstate(all="ignore"):
            mu = fam.linkinv(m.X @ np.asarray(beta, dtype=float) + m.offset)
            sums = negbin_sums(m.y, mu, m.fit_weights, theta)
        if not all(np.isfinite(v) for v in sums.values()):
            raise SiteError(f"{self.label}: non-finite sums for theta at these "
                            "coefficients")
        return sums

    @_guarded
    def meat(self, design: Design, beta: np.ndarray, clusters: str,
             salt: str = "", version: Optional[int] = None,
             bread: Optional[np.ndarray] = None, hat_power: int = 0) -> dict:
        """The site's share of the sandwich's meat at ``beta`` (a p x p sum) for a robust
        covariance: ``clusters="rows"`` (HC0/HC1) ``sum_i u_i u_i'``; ``"site"`` (the site is
        one cluster) ``U U'`` with ``U = sum_i u_i``; ``"groups"`` ``sum_g U_g U_g'`` over the
        clusters of the column ``design.groups``. ``u_i = x_i w_i (y_i - mu_i) g'(mu_i)``,
        the working weight times the working residual (sandwich's ``estfun.glm``): the
        weights of R's last iteration when ``version`` (the coefficients' version in the
        fit) is that of this site's last contribution, else the weights at ``beta``.

        With ``"groups"`` the site also sends its number of clusters and a keyed digest of
        each cluster id (never the id), for the central to refuse an id seen at two sites:
        keyed with ``GLM_GROUPS_KEY`` of the site's environment when set (a secret shared
        by the sites, so that the central cannot test guesses of ids), else with ``salt``.
        ``hat_power`` 1 or 2 (sandwich's HC2, HC3; ``clusters="rows"``): each ``u_i`` is
        divided by ``(1 - h_i)^(power / 2)``, ``h_i = w_i x_i' bread x_i`` the hat values of
        the fit, ``bread`` its unscaled covariance (X'WX)^{-1}, which the central sends.

        The cluster column passes the level checks of a categorical column, and the rows'
        weights ``u_i`` the weighted-leverage check of every round. Only at coefficients
        whose round this site has answered (`_require_answered`)."""
        self._require_answered(design, beta, "the meat of the sandwich")
        m = self.model(design)
        guards = self.round_guards(design)
        fam = design.family.bind(m.d_star)
        last = self._last_weights(design, version)
        with np.errstate(all="ignore"):
            mu = fam.linkinv(m.X @ beta + m.offset)
            weights = m.fit_weights * fam.working_weights(mu) if last is None else last
            score = weights * (m.y - mu) * fam.deriv(mu)
        score = np.where(weights > 0, score, 0.0)
        if not np.all(np.isfinite(score)):
            raise SiteError(f"{self.label}: non-finite scores at the estimate")
        rows = m.X * score[:, None]  # with frequency weights f: f u_i, the sum of f copies
        if hat_power:
            rows /= _hat_scale(m, weights, bread, hat_power, clusters, self.label)[:, None]
        if clusters == "rows":  # each copy of a row is an observation: sum f u_i u_i'
            single = rows if m.freq is None else rows / np.sqrt(np.where(
                m.freq > 0, m.freq, 1.0))[:, None]
            disclosure.check_round(guards, single, single.T @ single)
            return {"meat": single.T @ single, "clusters": m.rows}
        disclosure.check_round(guards, rows, rows.T @ rows)
        if clusters == "site":
            total = rows.sum(axis=0)
            return {"meat": np.outer(total, total), "clusters": 1}
        codes, ids = pd.factorize(pd.Series(m.groups), sort=False)
        guards.check_levels(design.groups, np.bincount(codes, minlength=len(ids)).tolist())
        sums = np.zeros((len(ids), rows.shape[1]))
        np.add.at(sums, codes, rows)
        key = (self._groups_key or salt).encode("utf-8")
        digests = sorted(hmac.new(key, _id_text(v).encode("utf-8"), hashlib.sha256).hexdigest()
                         for v in ids)
        return {"meat": sums.T @ sums, "clusters": len(ids), "digests": digests}


def _hat_scale(m, weights, bread, power: int, clusters: str, label: str) -> np.ndarray:
    """``(1 - h_i)^(power / 2)`` of every row (sandwich's HC2: power 1, HC3: 2)."""
    if clusters != "rows" or power not in (1, 2) or m.freq is not None:
        raise SiteError("HC2 and HC3 are per row, without frequency weights")
    C = np.asarray(bread, dtype=float)
    p = m.X.shape[1]
    if C.shape != (p, p) or not np.all(np.isfinite(C)):
        raise SiteError(f"the bread of HC{power + 1}: expected a finite {p} x {p} matrix")
    with np.errstate(all="ignore"):
        h = weights * np.einsum("ij,jk,ik->i", m.X, C, m.X)
        scale = np.where(weights > 0, (1.0 - h) ** (power / 2.0), 1.0)
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0.0):
        raise SiteError(f"{label}: hat values of 1 or more (a row the fit interpolates): "
                        f"HC{power + 1} is not defined")
    return scale


def _id_text(value) -> str:
    """A cluster id as text, the same at every site (2 and 2.0 read from two files agree)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{type(value).__name__ if not isinstance(value, (int, float)) else 'n'}:{value}"
