"""`FitRecord`: a GLM algorithm's fit as its run returns it.

`aia.start` returns a `History` holding the algorithm's ``report()``; `glm.fit` builds its
result from that, never from the algorithm object it handed to the run (which an engine
need not give back: the central's copy may live elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class FitRecord:
    """The fit of one run of `FisherScoring` or `GradientDescent` (the keys of their
    ``report()``): the estimate ``beta`` and its ``cov_unscaled``, the sums at it
    (``deviance``, ``pearson_chi2``, ``working_chi2``, ``null_deviance``), the counts
    (``nobs``, ``n_ok``, ``n_boundary``), how it ended (``iterations``, ``converged``,
    ``boundary``, ``rescued``, ``stalled``, ``withheld``), ``column_names``,
    ``accepted_version`` (the query of ``beta``, synchronous rounds) and, with
    ``FisherScoring.ask_saturated``, the pooled ``saturated_loglike``."""

    method: str
    beta: Optional[np.ndarray]
    cov_unscaled: Optional[np.ndarray]
    deviance: Optional[float]
    pearson_chi2: Optional[float]
    working_chi2: float
    null_deviance: Optional[float]
    nobs: int
    n_ok: int
    n_boundary: int
    iterations: int
    converged: bool
    boundary: bool
    rescued: bool
    stalled: bool
    withheld: list
    column_names: list
    accepted_version: Optional[int]
    saturated_loglike: Optional[float]
    #: the sum of the prior weights (NaN in a history written before it was recorded)
    sum_w: float = float("nan")

    @classmethod
    def from_history(cls, history: Any) -> "FitRecord":
        """The record of the run whose `aia.History` is ``history``."""
        fisher = "fisher_iterations" in history
        if not fisher and "gradient_iterations" not in history:
            raise TypeError("expected the History of a run of FisherScoring or "
                            "GradientDescent (its report() names fisher_iterations or "
                            "gradient_iterations)")
        params = history["params"]
        beta = None if params is None else np.asarray(params, dtype=float)
        return cls(
            method="fisher" if fisher else "gradient", beta=beta,
            cov_unscaled=history["cov_unscaled"], deviance=history["deviance"],
            pearson_chi2=history["pearson_chi2"], working_chi2=history["working_chi2"],
            null_deviance=history["null_deviance"], nobs=history["nobs"],
            n_ok=history["n_ok"], n_boundary=history["n_boundary"],
            iterations=history["fisher_iterations" if fisher else "gradient_iterations"],
            converged=history["converged"], boundary=history["boundary"],
            rescued=history["rescued"] if "rescued" in history else False,
            stalled=history["stalled"] if "stalled" in history else False,
            withheld=list(history["withheld"]), column_names=list(history["column_names"]),
            accepted_version=history["accepted_version"],
            saturated_loglike=history["saturated_loglike"]
            if "saturated_loglike" in history else None,
            sum_w=float(history["sum_w"]) if "sum_w" in history else float("nan"))
