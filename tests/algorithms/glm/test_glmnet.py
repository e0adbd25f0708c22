"""glm.glmnet and glm.cv_glmnet against R's glmnet on the pooled rows (thresh = 1e-14): the
coefficients at the same lambdas, the default path, the deviance ratios and cv.glmnet's
statistics with the same fold ids; and the checks made before any process starts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from formulaic import Formula

from algorithms import glm
from algorithms.glm.glmnet_site import fold_ids
from tests.r_reference import r_values

from .conftest import read, v6_sites

TOL = 1e-14  # as R's thresh


def _with_columns(frames):
    """Deterministic prior weights and an offset beside the real columns."""
    out = []
    for f in frames:
        i = np.arange(len(f))
        out.append(f.assign(w=1 + (i % 3) / 2, off=0.2 * np.sin(i)))
    return out


DATA = {
    "binomial": ("binomial", "admit ~ gre + gpa + C(rank)", "gpa"),
    "poisson": ("poisson", "num_awards ~ math + C(prog)", "math"),
    "gaussian": ("binomial", "gpa ~ gre + admit + C(rank)", "gre"),
}


def _pooled(formula, frames):
    pooled = pd.concat(frames, ignore_index=True)
    y, X = Formula(formula).get_model_matrix(pooled)
    return pooled, np.asarray(y, float).ravel(), X


def _r_paths(family, formula, frames, cases):
    """R's glmnet for each case (alpha, weights?, offset?, zero-pf column, lambdas?)."""
    pooled, y, X = _pooled(formula, frames)
    names = [c for c in X.columns if c != "Intercept"]
    d = pd.DataFrame(np.asarray(X[names], float), columns=[f"x{j}" for j in range(len(names))])
    d["y"], d["w"], d["off"] = y, pooled["w"], pooled["off"]
    script = ["x <- as.matrix(d[, grep('^x', names(d))])"]
    for i, (alpha, weighted, offset, zero, lambdas) in enumerate(cases):
        pf = ",".join("0" if n == zero else "1" for n in names)
        lam = "NULL" if lambdas is None else f"c({','.join(repr(v) for v in lambdas)})"
        script.append(
            f"f <- glmnet(x, d$y, family='{family}', alpha={alpha}, thresh={TOL}, "
            f"weights={'d$w' if weighted else 'NULL'}, offset={'d$off' if offset else 'NULL'}, "
            f"penalty.factor=c({pf}), lambda={lam})\n"
            f"out('lambda{i}', f$lambda); out('beta{i}', as.matrix(coef(f)));"
            f"out('dev{i}', f$dev.ratio); out('nulldev{i}', f$nulldev)")
    got = r_values("\n".join(script), frames={"d": d}, packages=["glmnet"])
    return ["Intercept"] + names, got


def _close_path(path, names, lambdas, beta, dev):
    L = len(lambdas)
    ours = path.coefs[names].to_numpy()
    beta = beta.reshape(L, len(names))
    scale = np.maximum(np.abs(beta).max(axis=0), 1e-12)
    # R's intercept-only fit with an offset stops at a step of 1e-7 (glmnet's azero): its
    # lambda_max is that close to the exact one
    np.testing.assert_allclose(path.lambdas, lambdas, rtol=1e-8)
    np.testing.assert_allclose(ours, beta, rtol=1e-5, atol=1e-6 * scale.max())
    np.testing.assert_allclose(path.dev_ratio, dev, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["binomial", "poisson", "gaussian"])
def test_paths_equal_r_glmnet(name):
    folder, formula, zero = DATA[name]
    family = name
    frames = _with_columns(read(v6_sites(folder)))
    cases = [(1, False, False, None, None), (0.5, False, False, None, None),
             (0, False, False, None, None), (0.5, True, True, zero, None)]
    names, r = _r_paths(family, formula, frames, cases)
    for i, (alpha, weighted, offset, zero_term, _) in enumerate(cases):
        path = glm.glmnet(formula, frames, family=family, alpha=alpha, tol=TOL,
                          weights="w" if weighted else None, offset="off" if offset else None,
                          penalty_factor={zero_term: 0} if zero_term else None,
                          cluster="inprocess")
        # the default path is R's: same length (glmnet's early stop), same lambdas
        assert len(path.lambdas) == len(r[f"lambda{i}"]), (alpha, weighted)
        _close_path(path, names, r[f"lambda{i}"], r[f"beta{i}"], r[f"dev{i}"])
        np.testing.assert_allclose(path.null_deviance, r[f"nulldev{i}"][0], rtol=1e-9)
