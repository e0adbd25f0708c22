"""What crosses between glmnet's sites and its central (`algorithms.glm.glmnet_path`):
the `Moments` every fit starts from, the central's `Ask` of a round and the sites' `Sums`
(added across sites), and what one path fit is (`PathSpec`) and gives (`PathResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class Moments:
    """Prior-weighted sums over a fit's rows, with ``z0 = y - offset``: sum w, X'w, X'WX,
    X'W z0, z0'W z0, sum w y, and the row counts (all rows, and rows of positive weight)."""

    sum_w: float
    xw: np.ndarray
    xwx: np.ndarray
    xwz: np.ndarray
    zwz: float
    sum_wy: float
    nobs: int
    n_ok: int

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(*(a + b for a, b in zip(self._values(), other._values())))

    def __sub__(self, other: "Moments") -> "Moments":
        return Moments(*(a - b for a, b in zip(self._values(), other._values())))

    def _values(self) -> tuple:
        return (self.sum_w, self.xw, self.xwx, self.xwz, self.zwz, self.sum_wy, self.nobs,
                self.n_ok)


@dataclass(frozen=True)
class Ask:
    """What one fit needs from the sites in one round: the IRLS sums at ``beta`` (None:
    none) and the deviance at each of ``deviance_at`` (earlier solutions; one product with
    the rows each, against the two of the gram: it saves the round at each solution)."""

    beta: Optional[np.ndarray]
    deviance_at: tuple = ()
    columns: Optional[tuple] = None  # the gram's columns (the strong set); None: all


@dataclass
class Sums:
    """IRLS sums at one set of coefficients over a fit's rows (``valid`` False when the
    coefficients give fitted values outside the family's range), and the deviances at the
    `Ask`'s ``deviance_at`` (nan where invalid)."""

    xtwx: Optional[np.ndarray]
    xtwz: Optional[np.ndarray]
    deviance: float
    valid: bool = True
    deviances: tuple = ()
    score: Optional[np.ndarray] = None  # X'W(z - eta), every column (the KKT check)

    def __add__(self, other: "Sums") -> "Sums":
        valid = self.valid and other.valid
        both = valid and self.xtwx is not None and other.xtwx is not None
        return Sums(self.xtwx + other.xtwx if both else None,
                    self.xtwz + other.xtwz if both else None,
                    self.deviance + other.deviance, valid,
                    tuple(a + b for a, b in zip(self.deviances, other.deviances)),
                    self.score + other.score if both else None)


@dataclass(frozen=True)
class PathSpec:
    """What one path fit needs besides the data: see `algorithms.glm.glmnet.glmnet`."""

    family: str
    columns: tuple
    alpha: float = 1.0
    penalty_factor: Optional[tuple] = None  # one per column; the intercept's is ignored
    lambdas: Optional[tuple] = None  # a user path (decreasing), or None: glmnet's default
    nlambda: int = 100
    lambda_min_ratio: Optional[float] = None
    standardize: bool = True
    intercept: bool = True
    tol: float = 1e-7
    max_iter: int = 100_000

    @property
    def intercept_index(self) -> Optional[int]:
        return self.columns.index("Intercept") if self.intercept and \
            "Intercept" in self.columns else None

    @property
    def predictors(self) -> np.ndarray:
        return np.array([j for j, c in enumerate(self.columns) if c != "Intercept"])


@dataclass
class PathResult:
    """One fitted path: ``lambdas`` (decreasing), ``betas`` (one row per lambda, one column
    per design column, original scale), ``dev_ratio``, ``null_deviance``, ``rounds`` (IRLS
    rounds of site sums at each lambda) and the standardisation used."""

    lambdas: np.ndarray
    betas: np.ndarray
    dev_ratio: np.ndarray
    null_deviance: float
    rounds: np.ndarray
    xs: np.ndarray = field(repr=False, default=None)
    passes: int = 0
