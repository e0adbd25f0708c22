"""Shared data and references for the GLM tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from formulaic import Formula

import aia

REPO = Path(__file__).resolve().parents[3]
DATA = (REPO / ".." / "shared" / "data").resolve()
V6 = DATA / "v6-glm"
DISTRIBGLM = DATA / "distribglm"


def v6_sites(family: str) -> list[Path]:
    """The three v6-glm-py sites of one family's data."""
    paths = [V6 / family / f"{s}.csv" for s in "abc"]
    if not all(p.exists() for p in paths):
        pytest.skip(f"shared data {V6 / family} not found")
    return paths


def distribglm_sites() -> list[Path]:
    paths = [DISTRIBGLM / f"data_site{i}.csv" for i in (1, 2)]
    if not all(p.exists() for p in paths):
        pytest.skip(f"shared data {DISTRIBGLM} not found")
    return paths


def read(sites) -> list[pd.DataFrame]:
    return [s if isinstance(s, pd.DataFrame) else pd.read_csv(s) for s in sites]


def survival_frames(rate: float = 0.01) -> list[pd.DataFrame]:
    """The v6 survival sites with expected deaths d* = rate * eventtime (the files have
    no expected-deaths column)."""
    frames = read(v6_sites("survival"))
    return [f.assign(dstar=rate * f["eventtime"]) for f in frames]


def reference(formula: str, sites, family, *, weights=None, offset=None, exposure=None,
              use_t=False, start_params=None):
    """statsmodels' GLM on the pooled rows, with formulaic's design (the same columns)."""
    pooled = pd.concat(read(sites), ignore_index=True)
    y, X = Formula(formula).get_model_matrix(pooled)
    kwargs = {}
    if weights:
        kwargs["var_weights"] = pooled[weights].to_numpy(float)
    if offset:
        kwargs["offset"] = pooled[offset].to_numpy(float)
    if exposure:
        kwargs["exposure"] = pooled[exposure].to_numpy(float)
    with warnings.catch_warnings():  # statsmodels' DomainWarning on R's non-canonical links
        warnings.simplefilter("ignore", sm.tools.sm_exceptions.DomainWarning)
        model = sm.GLM(np.asarray(y, float).ravel(), X, family=family, **kwargs)
    return model.fit(tol=1e-14, maxiter=200, use_t=use_t, start_params=start_params)


def r_glm_fit(y, X, family, weights=None, offset=None, tol=1e-8, maxit=25, mustart=None,
              start=None, valid=lambda eta, mu: True):
    """R's ``glm.fit`` transcribed to numpy on pooled rows (QR-based; step-halving when
    ``valid(eta, mu)`` fails): the reference for iterations, the stopping rule, the
    covariance of the last QR and the halved steps."""
    n = len(y)
    w = np.ones(n) if weights is None else weights
    offset = np.zeros(n) if offset is None else offset
    link = family.link
    coefold = None
    if start is not None:
        coefold = np.asarray(start, float)
        eta = X @ coefold + offset
        mu = link.inverse(eta)
    else:
        mu = mustart
        eta = link(mu)
    devold = family.deviance(y, mu, var_weights=w)
    for it in range(1, maxit + 1):
        mu_eta = link.inverse_deriv(eta)
        z = eta - offset + (y - mu) / mu_eta
        sw = np.sqrt(w * mu_eta**2 / family.variance(mu))
        q, r = np.linalg.qr(X * sw[:, None])
        beta = np.linalg.solve(r, q.T @ (z * sw))
        eta = X @ beta + offset
        mu = link.inverse(eta)
        while not valid(eta, mu):  # R: "step size truncated: out of bounds"
            beta = (beta + coefold) / 2
            eta = X @ beta + offset
            mu = link.inverse(eta)
        dev = family.deviance(y, mu, var_weights=w)
        if abs(dev - devold) / (abs(dev) + 0.1) < tol:
            break
        devold, coefold = dev, beta
    rinv = np.linalg.inv(r)
    return beta, rinv @ rinv.T, dev, it


def close(a, b, rtol=1e-6, atol=1e-10):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=rtol, atol=atol)


@pytest.fixture(scope="session")
def glm_cluster():
    """Three persistent worker processes shared by the GLM tests that need real sites
    (session-scoped, so set up before the per-test check for leftover processes)."""
    with aia.LocalCluster(3) as c:
        yield c


_R_FRAMES: dict = {}


def r_frame(expr: str, packages=("MASS",)) -> pd.DataFrame:
    """A data set of R's (``datasets``, MASS...) exported by R itself: ``expr`` is an R
    expression giving a data frame (factors become their labels). Cached per session."""
    from tests.r_reference import require_r  # noqa: WPS433 (R only where a test needs it)
    import subprocess
    import tempfile
    key = (expr, tuple(packages))
    if key not in _R_FRAMES:
        require_r()
        with tempfile.TemporaryDirectory(prefix="aia-rdata-") as tmp:
            path = Path(tmp) / "data.csv"
            libs = "".join(f"suppressPackageStartupMessages(library({p}));" for p in packages)
            script = (f'{libs} d <- as.data.frame({expr}); '
                      f'd[] <- lapply(d, function(v) if (is.factor(v)) as.character(v) else v); '
                      f'write.csv(d, "{path}", row.names = FALSE)')
            subprocess.run(["Rscript", "--vanilla", "-e", script], check=True,
                           capture_output=True, timeout=60)
            _R_FRAMES[key] = pd.read_csv(path)
    return _R_FRAMES[key].copy()


def split3(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """Three sites: rows 1, 4, 7... at the first, 2, 5, 8... at the second (every level of
    a factor sorted in R's data reaches each site)."""
    return [frame.iloc[i::3].reset_index(drop=True) for i in range(3)]


def separated_sites() -> list:
    """Three sites of 40 rows whose y is completely separated by x (x > 0.1)."""
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(3):
        x = rng.normal(size=40)
        frames.append(pd.DataFrame({"x": x, "y": (x > 0.1).astype(float)}))
    return frames
