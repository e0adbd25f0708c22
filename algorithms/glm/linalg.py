"""Solving the summed normal equations X'WX beta = X'Wz, and naming aliased columns.

The central only ever holds X'WX (never X), so it cannot use R's pivoted QR of sqrt(W) X.
It factors X'WX instead, after scaling it to unit diagonal (which removes the units of the
columns from the condition number), with a Cholesky factorisation that goes column by
column in design order. A column whose squared residual norm, relative to its own norm, is
below ``ALIAS_TOL`` once the earlier kept columns are projected out is aliased: a linear
combination of earlier columns, as R reports it (R's tolerance 1e-11 on the norm of QR;
squared here because X'WX squares norms, with room for the rounding that squaring costs).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy.linalg import cho_solve, solve_triangular
from scipy.linalg.blas import dsyrk

ALIAS_TOL = 1e-12


class SingularDesignError(np.linalg.LinAlgError, ValueError):
    """X'WX is singular: ``aliased`` names the columns that are linear combinations of
    earlier ones."""

    def __init__(self, aliased: Sequence[str], when: str = ""):
        self.aliased = list(aliased)
        super().__init__(
            f"X'WX is singular{when}: the column(s) {self.aliased} are aliased (linear "
            "combinations of earlier columns of the design); remove them from the formula"
        )


def factor(A: np.ndarray, names: Sequence[str], when: str = ""):
    """Cholesky-factor X'WX scaled to unit diagonal; raise `SingularDesignError` if aliased.

    Returns ``(L, s)`` with ``diag(s) A diag(s) = L L'``.
    """
    p = A.shape[0]
    d = np.diag(A).copy()
    positive = d > 0
    s = np.where(positive, 1.0 / np.sqrt(np.where(positive, d, 1.0)), 0.0)
    As = A * s[:, None] * s[None, :]
    L = np.zeros((p, p))
    aliased = [j for j in range(p) if not positive[j]]
    for j in range(p):
        if not positive[j]:
            continue
        # Column j against the kept columns before it (rows of L filled so far).
        idx = [i for i in range(j) if i not in aliased]
        if idx:
            l = solve_triangular(L[np.ix_(idx, idx)], As[idx, j], lower=True)
            r = As[j, j] - l @ l
        else:
            l, r = np.empty(0), As[j, j]
        if not r > ALIAS_TOL:
            aliased.append(j)
            continue
        L[j, idx] = l
        L[j, j] = np.sqrt(r)
    if aliased:
        raise SingularDesignError([names[j] for j in sorted(aliased)], when)
    return L, s


def solve(A: np.ndarray, b: np.ndarray, names: Sequence[str], when: str = ""):
    """``(beta, inverse of A)`` for the normal equations ``A beta = b``."""
    L, s = factor(A, names, when)
    beta = s * cho_solve((L, True), s * b)
    inv = s[:, None] * cho_solve((L, True), np.eye(len(b))) * s[None, :]
    return beta, (inv + inv.T) / 2


def weighted_sums(X: np.ndarray, weights: np.ndarray, z: np.ndarray,
                  work: Optional[np.ndarray] = None) -> tuple:
    """``(X'WX, X'Wz)`` for W = diag(weights) (weights >= 0), and the buffer used.

    With A = sqrt(W) [X z], A'A holds X'WX in its top left block and X'Wz in its last
    column: one BLAS ``syrk`` (which computes one triangle) reads the rows once for both,
    where X'(WX) and then X'(Wz) would read them three times. ``work``, a column-major
    buffer of A's shape, is reused across rounds: on a virtual machine, writing fresh memory
    costs more than the product.
    """
    n, p = X.shape
    if work is None or work.shape != (n, p + 1) or not work.flags.f_contiguous:
        work = np.empty((n, p + 1), order="F")
    root = np.sqrt(weights)
    np.multiply(X, root[:, None], out=work[:, :p])
    np.multiply(z, root, out=work[:, p])
    upper = dsyrk(1.0, work, trans=1)
    return np.triu(upper[:p, :p]) + np.triu(upper[:p, :p], 1).T, upper[:p, p].copy(), work
