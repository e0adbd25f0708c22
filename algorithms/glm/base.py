"""What the GLM algorithms over sites share: `SiteAlgorithm`.

Fisher scoring (`algorithms.glm.fisher`) and gradient descent (`algorithms.glm.gradient`)
both send coefficients to sites that keep their rows and read back sums. They share the
worker's side (answering for one site or several, resending the last answer on hold) and the
central's bookkeeping: the numbering of coefficients, the check that every site built the
same columns, the set-up of the null deviance and the state of a run's result (``beta``,
``cov_unscaled``, ``deviance``, ``converged``...).
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from aia.algorithm import AbstractAlgorithm

from .design import Design
from .guards import ENVIRONMENT, PrivacyError
from .messages import Contribution, combine
from .site import SiteGroup

INTERCEPT = "Intercept"
_HOLD_START, _HOLD_MAX = 0.001, 0.05  # seconds: a holding site's back-off


class DesignMismatchError(ValueError):
    """The sites built different design columns."""


class NonFiniteError(FloatingPointError):
    """A site's contribution, or the coefficients, are not finite."""


class SiteAlgorithm(AbstractAlgorithm):
    """The shared part of `FisherScoring` and `GradientDescent` (see the module docstring);
    not used on its own."""

    def __init__(self, design: Any, family: Any = "gaussian", link: Any = None, *,
                 null_model: bool = False, n_sites: Optional[int] = None, start=None,
                 **columns):
        if not isinstance(design, Design):
            design = Design.make(design, family, link, **columns)
        self.design = design
        self.null_model = null_model
        self.n_sites = n_sites
        self.start = None if start is None else np.asarray(start, dtype=float)
        self._subset = (INTERCEPT,) if null_model else None
        self._reset()

    def _reset(self) -> None:
        """The state both algorithms keep, fresh for each run."""
        self.beta: Optional[np.ndarray] = None  # accepted: its deviance is known
        self.cov_unscaled: Optional[np.ndarray] = None
        self.deviance = self.pearson_chi2 = self.null_deviance = None
        self.working_chi2 = float("nan")
        self.accepted_version: Optional[int] = None  # the version of beta (synchronous)
        self.criterion: Optional[float] = None
        self.iterations = 0
        self.converged = False
        self.column_names: Optional[list] = None
        self.nobs = self.n_ok = 0
        self.sum_w = float("nan")  # the prior weights' sum (R's dispersion in the likelihood)
        self.n_boundary = 0
        self.boundary = False  # R's flag: step-halving happened
        self.withheld: list = []  # sites that withheld their sums (disclosure)
        self._mode = "sync"
        self._tol = 1e-8
        self._maxit = 25
        self._version = 0
        self._betas: dict = {}
        self._null_mode: Optional[str] = None
        self._null_value: Any = None
        self._latest: dict = {}
        self._sent: dict = {}
        self._null_parts: dict = {}
        self._hold: dict = {}
        self._last = None  # worker side: the last answer, resent on hold
        self._done = False
        self._phase = "gather"  # asynchronous mode: gather -> ... (each algorithm's phases)
        self._target: Optional[int] = None  # the version a consistent round is at

    # -- worker -----------------------------------------------------------------------------
    def _resend(self, q) -> Any:
        """A hold query: wait, then send the last answer again (nothing new to compute).
        The wait is the site's to bound: a query cannot make it sleep longer than the
        longest hold of the algorithms (a central could otherwise stall it for good)."""
        hold = float(q.hold) if isinstance(q.hold, (int, float)) else 0.0
        time.sleep(min(hold, _HOLD_MAX) if hold > 0 else 0.0)
        if isinstance(self._last, list):
            return [c.again() for c in self._last]
        return self._last.again()

    @staticmethod
    def _local_sites(problem: Any) -> list:
        """The sites this worker answers for."""
        if problem is None:
            raise RuntimeError("this worker holds no site")
        return problem.sites if isinstance(problem, SiteGroup) else [problem]

    def _query(self, beta: np.ndarray) -> int:
        if not np.all(np.isfinite(beta)):
            raise NonFiniteError(f"the coefficients are not finite at iteration {self.iterations}")
        self._version += 1
        self._betas[self._version] = beta
        return self._version

    def _first_round(self, contribs: Sequence[Contribution]) -> None:
        """Version 0: check that every site built the same columns; set up the null model."""
        columns = [c.columns for c in contribs]
        if any(cols != columns[0] for cols in columns):
            detail = "; ".join(f"{c.site or i + 1}: {list(c.columns)}"
                               for i, c in enumerate(contribs))
            raise DesignMismatchError(f"the sites built different design columns ({detail})")
        self.column_names = list(columns[0])
        total = combine(contribs)
        self.nobs, self.n_ok, self.sum_w = total.nobs, total.n_ok, total.sum_w
        if self.null_model:
            self._null_mode = None
        elif INTERCEPT not in self.column_names:
            self._null_mode, self._null_value = "offset", "offset"
        elif self.design.has_offset or self.design.family.relative_survival:
            self._null_mode = "refit"  # R fits the intercept-only model: see glm.fit
        else:
            self._null_mode, self._null_value = "mean", total.sum_wy / total.sum_w

    def _check(self, contribs: Sequence[Contribution]) -> None:
        bad = [c.site or "?" for c in contribs
               if not (np.all(np.isfinite(c.xtwx)) and np.all(np.isfinite(c.xtwz)))]
        if bad:
            raise NonFiniteError(f"site(s) {bad} sent a non-finite X'WX or X'Wz "
                                 f"at iteration {self.iterations}")

    def _withheld(self, contribs: Sequence[Contribution]) -> list:
        """The sites that withheld their sums (at these coefficients they would single out
        a row: `rounds.check_leverage`); a `PrivacyError` when there is no accepted
        estimate to stop at."""
        sites = [c.site or "?" for c in contribs if c.withheld]
        if sites and self.beta is None:
            raise PrivacyError(
                ENVIRONMENT["max_leverage"], "the site's",
                f"site(s) {sites} withheld their sums: at these coefficients, the weights "
                "single out a row, one row carries the sums, or most rows are pinned at the "
                "family's edge (the site's audit log says which)", site=", ".join(sites))
        return sites

    def _take_null(self, worker, c: Contribution, n: int) -> None:
        if self._null_mode in ("mean", "offset") and c.null_deviance is not None:
            self._null_parts[worker] = c.null_deviance
            if len(self._null_parts) == n:
                self.null_deviance = float(sum(self._null_parts.values()))

    def _null_for(self, worker) -> Any:
        if self._null_mode in ("mean", "offset") and worker not in self._null_parts:
            return self._null_value
        return None

    def _n_expected(self) -> int:
        """How many sites answer (the asynchronous central step is not told)."""
        if not self.n_sites:
            raise ValueError(f"{type(self).__name__} needs n_sites=... in asynchronous mode")
        return self.n_sites


    def report(self) -> dict:
        """The fit: ``params``, ``cov_unscaled``, ``deviance``, ``pearson_chi2``,
        ``working_chi2``, ``null_deviance``, ``nobs``, ``n_ok``, ``sum_w``, ``n_boundary``,
        ``converged``, ``boundary``, ``withheld``, ``column_names``, ``accepted_version``
        (what `glm.fit` reads back: `algorithms.glm.fit_record.FitRecord`)."""
        names = self.column_names if self._subset is None else list(self._subset)
        params = None if self.beta is None else pd.Series(self.beta, index=names)
        return {
            "params": params,
            "cov_unscaled": self.cov_unscaled,
            "deviance": self.deviance,
            "pearson_chi2": self.pearson_chi2,
            "working_chi2": self.working_chi2,
            "null_deviance": self.null_deviance,
            "nobs": self.nobs,
            "n_ok": self.n_ok,
            "sum_w": self.sum_w,
            "n_boundary": self.n_boundary,
            "converged": self.converged,
            "boundary": self.boundary,
            "withheld": list(self.withheld),
            "column_names": names,
            "accepted_version": self.accepted_version,
        }
