"""The synchronous step of `algorithms.glm.gradient.GradientDescent`: the metric M and the
criteria in standard errors, and the non-monotone line search on the summed deviance (the
module docstring of `gradient` gives the method)."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from scipy.linalg import cho_solve

from .gradient_async import T_MIN, _clip

MEMORY = 10  # accepted deviances the non-monotone line search looks back on
ARMIJO = 1e-4  # the fraction of the predicted decrease a step must achieve
DEV_NOISE = 1e-12  # relative deviance change below which the score decides (rounding)


class LineSearch:
    """The metric and the line search, on `GradientDescent`'s state (``_factor``, ``_t``,
    the accepted point ``_x``, ``_U``, ``_D``, ``_d``, ``_g2`` and the ``_recent``
    deviances)."""

    def _minv(self, v: np.ndarray) -> np.ndarray:
        """M^-1 v."""
        L, s = self._factor
        return s * cho_solve((L, True), s * v)

    def _phi(self, deviance: float) -> float:
        """The dispersion that puts the criteria in standard errors (deviance / df)."""
        if not self.design.family.scale_estimated:
            return 1.0
        df = self.n_ok - len(self.column_names)
        phi = deviance / df if df > 0 else float("nan")
        return phi if np.isfinite(phi) and phi > 0 else 1.0

    def _crit(self, quad: float, deviance: float) -> float:
        return math.sqrt(max(quad, 0.0) / self._phi(deviance))

    def _acceptable(self, U: np.ndarray, D: float) -> bool:
        """The non-monotone Armijo test, or near the estimate the approximate one."""
        if D <= max(self._recent) - 2 * ARMIJO * self._t * self._g2:
            return True
        noise = DEV_NOISE * (abs(self._D) + 0.1)
        return D <= self._D + noise and float(U @ self._d) >= -0.8 * self._g2

    def _accept(self, beta: np.ndarray, U: np.ndarray, D: float) -> None:
        d = self._minv(U)
        if self._x is not None:
            s = beta - self._x
            sy = float(s @ (self._U - U))
            sms = float(s @ self._metric @ s)
            self._t = _clip(sms / sy if sy > 0 and sms > 0 else 2 * self._t)
            self.criterion_dev = abs(D - self._D) / (abs(D) + 0.1)
        elif self._dev_hint is not None:
            self.criterion_dev = abs(D - self._dev_hint) / (abs(D) + 0.1)
        self._x, self._U, self._D, self._d = beta, U, D, d
        self._g2 = float(U @ d)
        self._recent.append(D)
        self.beta, self.deviance = beta, D
        self.criterion = self._crit(self._g2, D)

    def _shrink(self, D: Optional[float]) -> None:
        """A rejected step: a shorter one (quadratic interpolation of the deviance)."""
        t = self._t
        if D is None or not np.isfinite(D):
            t_new = t / 4
        else:
            curvature = (D - self._D + 2 * t * self._g2) / t**2
            t_new = self._g2 / curvature if curvature > 0 else t / 2
            t_new = min(max(t_new, t / 10), t / 2)
        self._t = max(t_new, T_MIN / 2)
        self.rejections += 1
