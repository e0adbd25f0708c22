"""glm.glmnet and glm.cv_glmnet against R's glmnet on the pooled rows (thresh = 1e-14): the
coefficients at the same lambdas, the default path, the deviance ratios and cv.glmnet's
statistics with the same fold ids; and the checks made before any process starts."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from formulaic import Formula

from algorithms import glm
from algorithms.glm.glmnet_site import fold_ids
from tests.r_reference import r_values

from .conftest import distribglm_sites, read, v6_sites

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
             (0, False, False, None, None), (0.5, True, True, zero, None),
             (0.5, True, False, None, (0.08, 0.02, 0.005, 0.0))]
    names, r = _r_paths(family, formula, frames, cases)
    for i, (alpha, weighted, offset, zero_term, lambdas) in enumerate(cases):
        path = glm.glmnet(formula, frames, family=family, alpha=alpha, tol=TOL, lambdas=lambdas,
                          weights="w" if weighted else None, offset="off" if offset else None,
                          penalty_factor={zero_term: 0} if zero_term else None,
                          cluster="inprocess")
        # the default path is R's: same length (glmnet's early stop), same lambdas
        assert len(path.lambdas) == len(r[f"lambda{i}"]), (alpha, weighted)
        _close_path(path, names, r[f"lambda{i}"], r[f"beta{i}"], r[f"dev{i}"])
        np.testing.assert_allclose(path.null_deviance, r[f"nulldev{i}"][0], rtol=1e-9)


def _r_cv(family, formula, frames, foldid, measure, alpha):
    pooled, y, X = _pooled(formula, frames)
    names = [c for c in X.columns if c != "Intercept"]
    d = pd.DataFrame(np.asarray(X[names], float), columns=[f"x{j}" for j in range(len(names))])
    d["y"], d["foldid"] = y, foldid
    return r_values(f"""x <- as.matrix(d[, grep('^x', names(d))])
cv <- cv.glmnet(x, d$y, family='{family}', alpha={alpha}, thresh={TOL}, foldid=d$foldid,
                type.measure='{measure}')
out('lambda', cv$lambda); out('cvm', cv$cvm); out('cvsd', cv$cvsd)
out('min', cv$lambda.min); out('se', cv$lambda.1se); out('nzero', cv$nzero)""",
                    frames={"d": d}, packages=["glmnet"])


@pytest.mark.parametrize("family,sites,formula,measure,folds", [
    ("binomial", "binomial", "admit ~ gre + gpa", "deviance", 5),
    ("binomial", "binomial", "admit ~ gre + gpa", "class", 4),
    ("poisson", "distribglm", "pois_y ~ x1 + x2", "deviance", 4),
    ("gaussian", "binomial", "gpa ~ gre + admit + C(rank)", "mse", "sites"),
])
def test_cv_equals_r_cv_glmnet_with_the_same_folds(family, sites, formula, measure, folds):
    frames = read(distribglm_sites() if sites == "distribglm" else v6_sites(sites))
    cv = glm.cv_glmnet(formula, frames, family=family, folds=folds, seed=7,
                       type_measure=measure, alpha=0.5, tol=TOL, cluster="inprocess")
    if folds == "sites":
        foldid = np.concatenate([np.full(len(f), i + 1) for i, f in enumerate(frames)])
    else:  # each site's folds, drawn as the sites draw them; fold k is every site's fold k
        foldid = np.concatenate([fold_ids(len(f), folds, 7) + 1 for f in frames])
    r = _r_cv(family, formula, frames, foldid, measure, 0.5)
    np.testing.assert_allclose(cv.lambdas, r["lambda"], rtol=1e-10)
    np.testing.assert_allclose(cv.cvm, r["cvm"], rtol=1e-5)
    np.testing.assert_allclose(cv.cvsd, r["cvsd"], rtol=1e-5)
    np.testing.assert_array_equal(cv.nzero, r["nzero"])
    assert cv.lambda_min == pytest.approx(r["min"][0], rel=1e-10)
    assert cv.lambda_1se == pytest.approx(r["se"][0], rel=1e-10)
    assert cv.coef("1se").equals(cv.glmnet_fit.coefs.iloc[cv.index_1se].rename(None))


def test_fold_ids_are_balanced_and_reproducible():
    ids = fold_ids(103, 10, seed=5)
    assert np.array_equal(ids, fold_ids(103, 10, seed=5))
    assert not np.array_equal(ids, fold_ids(103, 10, seed=6))
    counts = np.bincount(ids)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 103


def test_a_fold_too_small_for_the_guards_is_refused_at_the_site():
    frames = read(v6_sites("binomial"))
    with pytest.raises(glm.PrivacyError, match="fold .*ask for fewer folds"):
        glm.cv_glmnet("admit ~ gre + gpa + C(rank)", frames, family="binomial", folds=10,
                      cluster="inprocess")


def test_coef_off_the_path_is_the_exact_fit_there():
    frames = read(v6_sites("binomial"))
    path = glm.glmnet("admit ~ gre + gpa + C(rank)", frames, family="binomial", alpha=0.7,
                      tol=TOL, cluster="inprocess")
    s = float(np.sqrt(path.lambdas[10] * path.lambdas[11]))  # between two path points
    exact = path.coef(s)
    one = glm.glmnet("admit ~ gre + gpa + C(rank)", frames, family="binomial", alpha=0.7,
                     tol=TOL, lambdas=[s], cluster="inprocess")
    np.testing.assert_allclose(exact.to_numpy(), one.coefs.iloc[0].to_numpy(), rtol=1e-7,
                               atol=1e-10)
    between = path.coefs.iloc[[10, 11]].to_numpy()
    assert not np.allclose(exact.to_numpy(), between.mean(axis=0), rtol=1e-6)
    assert list(exact.index) == list(path.coefs.columns)
    assert path.coef(path.lambdas[3]).equals(path.coefs.iloc[3].rename(None))


def test_the_path_plot_has_one_line_per_term():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    frames = read(v6_sites("binomial"))
    path = glm.glmnet("gpa ~ gre + admit + C(rank)", frames, cluster="inprocess")
    ax = path.plot()
    assert len(ax.get_lines()) == len(path.coefs.columns) - 1
    matplotlib.pyplot.close("all")


def test_plot_without_matplotlib_says_which_extra(monkeypatch):
    frames = read(v6_sites("binomial"))
    path = glm.glmnet("gpa ~ gre + admit", frames, cluster="inprocess", nlambda=5)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # as if not installed
    with pytest.raises(ImportError, match=r"path.plot\(\) needs matplotlib.*aia\[plot\]"):
        path.plot()


BAD_PATH_INPUT = [
    (dict(alpha=1.5), ValueError, "alpha: expected a number in \\[0, 1\\]"),
    (dict(alpha=-0.1), ValueError, "alpha"),
    (dict(alpha="0.5"), ValueError, "alpha"),
    (dict(lambdas=[0.1, 0.2]), ValueError, "decreasing path"),
    (dict(lambdas=[0.1, 0.1]), ValueError, "decreasing path"),
    (dict(lambdas=[0.1, -0.01]), ValueError, "non-negative"),
    (dict(lambdas=[]), ValueError, "non-empty"),
    (dict(penalty_factor={"age": 0}), ValueError, "unknown term\\(s\\) \\['age'\\]"),
    (dict(penalty_factor={"gre": -1}), ValueError, "penalty_factor\\['gre'\\]"),
    (dict(family="gamma"), ValueError, "glmnet fits"),
    (dict(nlambda=0), ValueError, "nlambda"),
    (dict(alfa=0.5), TypeError, "unexpected keyword argument\\(s\\) \\['alfa'\\]"),
]
BAD_CV_INPUT = [
    (dict(folds=500), ValueError, "site 1 has .* rows, fewer than the 500 folds"),
    (dict(folds=2), ValueError, "folds: expected an integer >= 3"),
    (dict(type_measure="auc"), ValueError, "type_measure"),
    (dict(type_measure="class", family="poisson"), ValueError, "binomial"),
]


@pytest.mark.parametrize("function,kwargs,error,message",
                         [("glmnet",) + case for case in BAD_PATH_INPUT] +
                         [("cv_glmnet",) + case for case in BAD_PATH_INPUT + BAD_CV_INPUT])
def test_bad_input_is_refused_before_any_process(monkeypatch, function, kwargs, error,
                                                 message):
    monkeypatch.setattr("aia.LocalCluster.__init__", _no_process)
    frames = read(v6_sites("binomial"))
    args = dict(family="binomial")
    args.update(kwargs)
    with pytest.raises(error, match=message):
        getattr(glm, function)("admit ~ gre + gpa + C(rank)", frames, **args)


def test_a_file_site_with_fewer_rows_than_folds_is_refused_by_the_site(tmp_path):
    """A file's rows are counted where it is read (the central never opens a site's file):
    the site refuses before sending any sum."""
    frames = read(v6_sites("binomial"))
    small = tmp_path / "small.csv"
    frames[0].head(30).to_csv(small, index=False)
    with pytest.raises(glm.PrivacyError, match="fewer rows than the 40 folds"):
        glm.cv_glmnet("admit ~ gre + gpa", [small] + frames[1:], family="binomial", folds=40,
                      cluster="inprocess")


def _no_process(*args, **kwargs):
    raise AssertionError("a worker process was started before the input was checked")


def _wide_sites(family: str, n: int = 400, p: int = 15):
    """Two sites of correlated predictors, a sparse truth: most columns stay out of the
    strong set for most of the path."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((n, p))
    X[:, 1:] = 0.6 * X[:, :-1] + 0.8 * X[:, 1:]
    eta = 0.2 + X[:, :3] @ np.array([0.8, -0.6, 0.4])
    y = rng.random(n) < 1 / (1 + np.exp(-eta)) if family == "binomial" else \
        rng.poisson(np.exp(0.3 * eta))
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(p)]).assign(y=y.astype(float))
    return [frame.iloc[: n // 2].reset_index(drop=True),
            frame.iloc[n // 2:].reset_index(drop=True)]


@pytest.mark.parametrize("family,alpha", [("binomial", 1.0), ("poisson", 0.6)])
def test_strong_sets_send_fewer_columns_and_keep_r_s_path(monkeypatch, family, alpha):
    """After the first point the sites send the gram of the strong set only; the KKT check
    on every column's score brings the others in: the path is still R's."""
    from algorithms.glm import glmnet_site
    asked = []
    real = glmnet_site._irls_sums_at

    def spy(fam, guards, X, y, w, offset, ask, site):
        asked.append(X.shape[1] if ask.columns is None else len(ask.columns))
        return real(fam, guards, X, y, w, offset, ask, site)

    monkeypatch.setattr(glmnet_site, "_irls_sums_at", spy)
    frames = _wide_sites(family)
    formula = "y ~ " + " + ".join(f"x{j}" for j in range(15))
    path = glm.glmnet(formula, frames, family=family, alpha=alpha, tol=TOL,
                      cluster="inprocess")
    assert min(asked) < 8 < max(asked) == 16  # restricted early, every column at the start
    names, r = _r_paths(family, formula, [f.assign(w=1.0, off=0.0) for f in frames],
                        [(alpha, False, False, None, None)])
    assert len(path.lambdas) == len(r["lambda0"])
    _close_path(path, names, r["lambda0"], r["beta0"], r["dev0"])
