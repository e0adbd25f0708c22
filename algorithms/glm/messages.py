"""What crosses the boundary between the central and a site during Fisher scoring.

::

    central ── Query(version, beta, null, hold) ──────────────────────────▶ site
    central ◀── Contribution(X'WX, X'Wz, deviance, Pearson chi2, counts) ── site

A contribution holds sums over the site's rows and nothing row by row: p x p and p numbers,
a few scalars, and once the design's column names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import numpy as np


@dataclass(frozen=True)
class Query:
    """The central's request to a site.

    ``version`` numbers the coefficients ``beta`` (version 0, with ``beta=None``, asks for
    R's starting values). ``null`` asks for the site's share of the null deviance: the
    pooled weighted mean of y (a float), or ``"offset"`` for ``mu = g^{-1}(offset)`` (a model
    without intercept). ``hold`` > 0 (asynchronous mode) means nothing is new for this site:
    wait that many seconds, then send the previous answer again. ``saturated`` asks for the
    site's saturated log-likelihood too (secure aggregation, where it comes masked with the
    first round instead of in clear with the build).
    """

    version: int
    beta: Optional[np.ndarray] = None
    null: Union[None, float, str] = None
    hold: float = 0.0
    saturated: bool = False


@dataclass(frozen=True)
class Contribution:
    """One site's sums at the coefficients of query ``version``.

    ``valid`` is False when the coefficients give a non-finite deviance or fitted values
    outside the family's range (R's ``validmu``/``valideta``); the sums are then absent.
    ``n_boundary`` counts rows with fitted probabilities numerically 0 or 1 (or rates 0).
    ``columns`` (the design's column names) is sent with version 0 only. ``withheld``: the
    site refused to send its sums at these coefficients, whose weights would single out a
    row (`algorithms.glm.disclosure`); ``valid`` is then False too. ``working_chi2``:
    ``sum(w_work * r_work^2)``, R's dispersion numerator (`summary.glm`), with the working
    weights of the site's previous valid contribution (R's last IRLS iteration) and the
    working residuals at these coefficients; NaN at the first one. ``saturated_loglike``:
    the saturated log-likelihood when the query asks for it (a sum, like the deviance).
    """

    version: int
    valid: bool
    deviance: float = float("nan")
    pearson_chi2: float = float("nan")
    working_chi2: float = float("nan")
    xtwx: Optional[np.ndarray] = None
    xtwz: Optional[np.ndarray] = None
    n_boundary: int = 0
    null_deviance: Optional[float] = None
    nobs: int = 0
    n_ok: int = 0
    sum_wy: float = 0.0
    sum_w: float = 0.0
    columns: Optional[tuple] = None
    site: Optional[str] = None
    repeat: bool = False
    withheld: bool = False
    saturated_loglike: Optional[float] = None

    def again(self) -> "Contribution":
        """This contribution sent once more (asynchronous hold): nothing new in it."""
        return replace(self, repeat=True)


def combine(parts: Sequence[Contribution]) -> Contribution:
    """The sum of several sites' contributions (valid only if every part is)."""
    valid = all(p.valid for p in parts)
    nulls = [p.null_deviance for p in parts]
    saturated = [p.saturated_loglike for p in parts]
    return Contribution(
        version=max(p.version for p in parts),
        valid=valid,
        deviance=sum(p.deviance for p in parts) if valid else float("nan"),
        pearson_chi2=sum(p.pearson_chi2 for p in parts) if valid else float("nan"),
        working_chi2=sum(p.working_chi2 for p in parts) if valid else float("nan"),
        xtwx=sum(p.xtwx for p in parts) if valid else None,
        xtwz=sum(p.xtwz for p in parts) if valid else None,
        n_boundary=sum(p.n_boundary for p in parts),
        null_deviance=None if any(v is None for v in nulls) else sum(nulls),
        nobs=sum(p.nobs for p in parts),
        n_ok=sum(p.n_ok for p in parts),
        sum_wy=sum(p.sum_wy for p in parts),
        sum_w=sum(p.sum_w for p in parts),
        saturated_loglike=None if any(v is None for v in saturated) else sum(saturated),
    )
