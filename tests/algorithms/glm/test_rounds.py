"""A site's round in row blocks (algorithms/glm/rounds.py): the same fit as in one block,
to the last bits, for every kind of model, and the same privacy outcome.

The shipped sites are small (one block each), so these tests shrink the blocks to a few
rows: every round then goes through the block loop, the sub-block leverage bound and its
exact fallback.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from algorithms import glm
from algorithms.glm import PrivacyError, disclosure, kernels, rounds

from .conftest import read, survival_frames, v6_sites


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Blocks of a few dozen rows (24 for p = 9), leverage maxima over 8 rows."""
    monkeypatch.setattr(rounds, "SUB_ROWS", 8)
    monkeypatch.setattr(rounds, "BLOCK_BYTES", 8 * 24 * 10)
    assert rounds.block_rows(9) == 24 and rounds.block_rows(100) == 8


def awards():
    return read(v6_sites("poisson"))


def weighted_binomial():
    frames = read(v6_sites("binomial"))
    rng = np.random.default_rng(3)
    return [f.assign(w=rng.integers(1, 4, len(f)).astype(float),
                     off=rng.normal(0, 0.1, len(f))) for f in frames]


MODELS = [
    ("num_awards ~ C(prog) + math", awards, dict(family="poisson")),
    ("admit ~ gre + gpa + C(rank)", weighted_binomial,
     dict(family="binomial", weights="w", offset="off")),
    ("eventtime ~ sex + age", survival_frames, dict(family="gamma", link="log")),
    ("status ~ sex + age", survival_frames,
     dict(family="relative_survival", expected="dstar")),
    ("num_awards ~ C(prog) + math", awards, dict(family="poisson", method="gradient")),
]


def _fit(formula, frames, kwargs):
    return glm.fit(formula, frames, cluster="inprocess", tol=1e-10, **kwargs)


@pytest.mark.parametrize("formula,data,kwargs", MODELS,
                         ids=["poisson", "binomial-weights-offset", "gamma-log",
                              "relative-survival", "gradient"])
def test_blocks_give_the_one_block_fit(formula, data, kwargs, request):
    frames = data()
    whole = _fit(formula, frames, kwargs)
    request.getfixturevalue("tiny_blocks")
    assert all(rounds.block_rows(len(whole.params)) < len(f) for f in frames)
    blocked = _fit(formula, frames, kwargs)
    assert blocked.iterations == whole.iterations
    for name in ("params", "bse"):
        np.testing.assert_allclose(getattr(blocked, name), getattr(whole, name),
                                   rtol=1e-12, atol=0)
    for name in ("deviance", "null_deviance", "llf", "scale"):
        assert getattr(blocked, name) == pytest.approx(getattr(whole, name), rel=1e-12)


def test_rows_left_out_of_the_least_squares_in_a_block(tiny_blocks):
    """Rows with a zero prior weight sit in the middle of blocks: they must add nothing."""
    frames = read(v6_sites("binomial"))
    zeroed = [f.assign(w=np.where(np.arange(len(f)) % 7 == 3, 0.0, 1.0)) for f in frames]
    kept = [f[f["w"] > 0].drop(columns="w") for f in zeroed]
    a = glm.fit("admit ~ gre + gpa", zeroed, family="binomial", weights="w",
                cluster="inprocess", tol=1e-10)
    b = glm.fit("admit ~ gre + gpa", kept, family="binomial", cluster="inprocess", tol=1e-10)
    np.testing.assert_allclose(a.params, b.params, rtol=1e-10)
    assert a.deviance == pytest.approx(b.deviance, rel=1e-10)


@pytest.mark.parametrize("family,slope", [("binomial", 80.0), ("poisson", 40.0)])
def test_concentrated_weights_are_withheld_in_blocks(tiny_blocks, family, slope):
    """The attack of test_attacks.py (coefficients that make the working weights vanish
    but near one row) across blocks: the bound does not settle it, the exact check does."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(3):
        x = rng.normal(size=100)
        frames.append(pd.DataFrame({"x": x, "b": (rng.uniform(size=100) < 0.5).astype(int)}))
    x_max = float(frames[0]["x"].max())
    with pytest.raises(PrivacyError, match="withheld") as info:
        glm.fit("b ~ x", frames, family=family, cluster="inprocess",
                start=[-slope * (x_max + 0.01), slope], max_iter=1)
    assert info.value.guard == "GLM_MAX_LEVERAGE"


def test_the_block_bound_holds_and_settles_honest_rounds():
    """The sub-block bound is never below any row's true weighted leverage, and on an
    honest large design it settles the check without the exact pass."""
    rng = np.random.default_rng(1)
    n, p = 20_000, 6
    X = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1)) * [1, 10, 0.1, 5, 100]])
    w = rng.uniform(0.1, 2, n)
    A = X * np.sqrt(w)[:, None]
    gram = A.T @ A
    h = np.einsum("ij,ij->i", A @ np.linalg.inv(gram), A)
    for sub in (1, 64, 256):
        starts = np.arange(0, n, sub)
        peaks = np.maximum.reduceat(A ** 2, starts, axis=0)
        bound = disclosure.round_bound(gram, peaks)
        assert bound >= h.max() * (1 - 1e-12)
        # What a round uses: the largest weight times the largest x_ij^2 of the sub-block.
        products = np.maximum.reduceat(w, starts)[:, None] * \
            np.maximum.reduceat(X ** 2, starts, axis=0)
        looser = disclosure.round_bound(gram, products)
        assert looser >= bound * (1 - 1e-12) and looser < 0.01
        if sub == 1:  # one row per sub-block: the bound of check_round itself
            d = 1 / np.sqrt(np.diag(gram))
            lmin = np.linalg.eigvalsh(gram * np.outer(d, d))[0]
            assert bound == pytest.approx(((A * d) ** 2).sum(1).max() / lmin, rel=1e-12)
    assert bound < 0.01  # settles the check (GLM_MAX_LEVERAGE 0.99)
    # An aliased column: no bound, the exact check decides.
    assert disclosure.round_bound(np.ones((2, 2)), np.ones((1, 2))) == float("inf")


@pytest.mark.parametrize("formula", [
    "y ~ x + I(x + (id == 17))",                # an indicator hidden in a continuous column
    "y ~ x + I(x + 0.001 * (id == 17))",        # ... however small
])
def test_a_design_that_isolates_a_row_is_refused_in_blocks(tiny_blocks, formula):
    """The design's leverage check of test_attacks.py with the block bound in front of it:
    the bound cannot settle these, the exact check refuses them."""
    rng = np.random.default_rng(2)
    frames = [pd.DataFrame({"id": np.arange(100) + 1000 * i, "x": rng.normal(size=100),
                            "y": rng.normal(size=100)}) for i in range(3)]
    with pytest.raises(PrivacyError) as info:
        glm.fit(formula, frames, cluster="inprocess")
    assert info.value.guard == "GLM_MAX_LEVERAGE"


def test_honest_large_sites_pass_on_the_bound_alone(monkeypatch):
    """On sites of many blocks the bounds settle the design's and every round's leverage
    check: the exact (two-pass) computation is never needed."""
    def exact(*args, **kwargs):
        raise AssertionError("the exact leverage was computed")

    monkeypatch.setattr(disclosure, "max_leverage", exact)
    rng = np.random.default_rng(4)
    frames = []
    for i in range(2):
        x = rng.normal(size=(3 * rounds.block_rows(4), 3))
        eta = 0.3 + x @ [0.5, -0.2, 0.1]
        frames.append(pd.DataFrame(x, columns=["a", "b", "c"]).assign(
            y=(rng.uniform(size=len(x)) < 1 / (1 + np.exp(-eta))).astype(int)))
    res = glm.fit("y ~ a + b + c", frames, family="binomial", cluster="inprocess")
    assert res.converged


# -- the fused block steps (algorithms/glm/kernels.py) against the generic one ----------

FUSED = [("binomial", None), ("poisson", None), ("gaussian", None)]


def _block(family, rng, n=5000):
    eta = rng.normal(0, 1.5, n)
    if family == "binomial":  # 0/1 outcomes and proportions, some at the edges
        y = np.where(rng.random(n) < 0.5, (rng.random(n) < 0.4) * 1.0, rng.random(n))
        eta[:5] = [40.0, -40.0, 0.0, 36.0, -36.0]
    elif family == "poisson":
        y = rng.poisson(np.exp(eta)).astype(float)
        eta[:2] = [-800.0, -40.0]  # mu clipped at eps, and a boundary row
    else:
        y = eta + rng.normal(0, 1, n)
    return eta, y, rng.uniform(0, 3, n)


@pytest.mark.parametrize("family,link", FUSED, ids=[f for f, _ in FUSED])
def test_fused_steps_match_the_generic_one(family, link):
    fam = glm.families.resolve(family, link)
    step = kernels.step_for(fam)
    assert step is not kernels.generic_step, f"{family}: expected a fused step"
    eta, y, w = _block(family, np.random.default_rng(11))
    fused, generic = step(fam, eta, y, w), kernels.generic_step(fam, eta, y, w)
    assert fused is not None and generic is not None
    for name, a, b in zip(["mu", "deviance", "pearson", "boundary", "weights", "residual"],
                          fused, generic):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, err_msg=f"{family}: {name}")
    bad = eta.copy()
    bad[7] = np.nan
    assert step(fam, bad, y, w) is None and kernels.generic_step(fam, bad, y, w) is None


def test_other_pairs_take_the_generic_step(monkeypatch):
    for family, link in [("gamma", "log"), ("binomial", "probit"), ("poisson", "sqrt"),
                         ("inverse_gaussian", None)]:
        assert kernels.step_for(glm.families.resolve(family, link)) is kernels.generic_step
    monkeypatch.setenv("AIA_GLM_KERNEL", "generic")
    assert kernels.step_for(glm.families.resolve("binomial")) is kernels.generic_step


@pytest.mark.parametrize("formula,data,kwargs", MODELS[:2] + MODELS[4:],
                         ids=["poisson", "binomial-weights-offset", "gradient"])
def test_fused_and_generic_fits_agree(formula, data, kwargs, monkeypatch):
    frames = data()
    fused = _fit(formula, frames, kwargs)
    monkeypatch.setenv("AIA_GLM_KERNEL", "generic")
    generic = _fit(formula, frames, kwargs)
    np.testing.assert_allclose(fused.params, generic.params, rtol=1e-10)
    assert fused.deviance == pytest.approx(generic.deviance, rel=1e-12)
    assert fused.null_deviance == pytest.approx(generic.null_deviance, rel=1e-12)


def test_binary_outcomes_give_the_generic_deviance_bit_for_bit():
    """0/1 outcomes take the one-log path of the fused binomial step: its deviance terms
    are statsmodels' exactly (the same operations on the same numbers), at the edges too."""
    fam = glm.families.resolve("binomial", None)
    rng = np.random.default_rng(5)
    eta = rng.normal(0, 3, 4000)
    eta[:6] = [40.0, -40.0, 0.0, 36.0, -36.0, 700.0]
    y = (rng.random(4000) < 0.3) * 1.0
    y[:6] = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    w = rng.uniform(0, 3, 4000)
    mu = kernels.generic_step(fam, eta, y, w)[0]
    ones = kernels._ones(y)
    assert ones is not False  # the path is taken
    terms = kernels._binary_terms(ones, mu, 1.0 - mu)
    np.testing.assert_array_equal(terms, kernels._binomial_terms(y, mu, 1.0 - mu))
    generic = kernels.generic_step(fam, eta, y, w)
    assert kernels._binomial_logit(fam, eta, y, w)[1] == generic[1]
    assert kernels._binomial_logit(fam, eta, y, w, ones=ones)[1] == generic[1]
    unit = np.ones_like(w)  # unit prior weights: the sum without the product
    assert (kernels._binomial_logit(fam, eta, y, unit, unit=True, ones=ones)[1]
            == pytest.approx(kernels.generic_step(fam, eta, y, unit)[1], rel=1e-14))
    y[100] = 0.5  # one proportion: both terms
    assert kernels._ones(y) is False
    assert (kernels._binomial_logit(fam, eta, y, w)[1]
            == pytest.approx(kernels.generic_step(fam, eta, y, w)[1], rel=1e-14))


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
def test_rounds_without_masks_give_the_masked_sums_bit_for_bit(family):
    """With every prior weight > 0, the fused steps' rounds skip the mask of non-finite rows
    (there are none): the sums are the masked round's exactly, over several blocks."""
    rng = np.random.default_rng(3)
    n, p = 3 * rounds.block_rows(4) + 17, 4
    X = np.asfortranarray(np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))]))
    beta = np.array([0.2, 0.5, -0.3, 0.1])
    eta = X @ beta
    y = {"binomial": (rng.random(n) < 1 / (1 + np.exp(-eta))) * 1.0,
         "poisson": rng.poisson(np.exp(eta)).astype(float),
         "gaussian": eta + rng.normal(size=n)}[family]
    fam = glm.families.resolve(family)
    rows = rounds.Rows(X, y, rng.uniform(0.5, 2, n), np.zeros(n), fam)
    assert rows.all_positive()
    fast, _ = rounds.irls_round(rows, beta)
    slow, _ = rounds.irls_round(rows, beta, masked=True)
    for name in ("deviance", "pearson_chi2", "n_boundary", "xtwx", "xtwz", "weights"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
    score, dev = rounds.score_round(rows, beta)
    score_m, dev_m = rounds.score_round(rows, beta, masked=True)
    np.testing.assert_array_equal(score, score_m)
    assert dev == dev_m
    rows.w[5] = 0.0  # a row of zero prior weight: the masked path, and it drops out
    assert not rounds.Rows(X, y, rows.w, np.zeros(n), fam).all_positive()


@pytest.mark.parametrize("q", [1, 3, 4, 5, 7, 8, 9, 22, 23, 31])
def test_block_gram_is_the_gram(q):
    """dsyrk of the leading columns and dgemm of the rest, block by block (a short last
    block too): the whole A'A, symmetric, to the last bits of the sums."""
    rng = np.random.default_rng(q)
    A = np.asfortranarray(rng.normal(size=(1000, q)) * rng.uniform(0.1, 100, q))
    gram = rounds.BlockGram(q)
    assert 0 < gram.m <= q and (gram.m == q or q - gram.m <= 7)
    for r in rounds.blocks(len(A), 384):
        gram.add(np.asfortranarray(A[r]))
    G = gram.total()
    np.testing.assert_array_equal(G, G.T)
    np.testing.assert_allclose(G, A.T @ A, rtol=1e-13, atol=1e-13 * np.abs(A.T @ A).max())


def test_block_rows_are_odd_multiples_of_the_sub_blocks():
    for p in (1, 5, 20, 21, 40, 100, 400):
        for factor in (1, 2):
            rows = rounds.block_rows(p, factor)
            assert rows % rounds.SUB_ROWS == 0 and (rows // rounds.SUB_ROWS) % 2 == 1
            assert rows * 8 * (p + 1) <= max(factor * rounds.BLOCK_BYTES,
                                             8 * (p + 1) * rounds.SUB_ROWS)
    assert 256 << 10 <= rounds.BLOCK_BYTES <= 4 << 20


@pytest.mark.parametrize("outcome", ["binary", "proportions", "poisson", "gaussian"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unit-weights", "weights-offset"])
def test_fused_rounds_give_the_generic_sums(outcome, weighted, monkeypatch):
    """The fused round's shortcuts (what `Rows` learns once: unit weights, no offset, 0/1
    outcomes) give the generic round's sums to 1e-12, over several blocks, in a Fisher
    round and in a gradient round."""
    rng = np.random.default_rng(8)
    n, p = 3 * rounds.block_rows(4) + 17, 4
    X = np.asfortranarray(np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))]))
    beta = np.array([0.2, 0.5, -0.3, 0.1])
    eta = X @ beta
    family = {"binary": "binomial", "proportions": "binomial"}.get(outcome, outcome)
    y = {"binary": (rng.random(n) < 1 / (1 + np.exp(-eta))) * 1.0,
         "proportions": rng.binomial(5, 1 / (1 + np.exp(-eta))) / 5.0,
         "poisson": rng.poisson(np.exp(eta)).astype(float),
         "gaussian": eta + rng.normal(size=n)}[outcome]
    w = rng.uniform(0.5, 2, n) if weighted else np.ones(n)
    offset = rng.normal(0, 0.1, n) if weighted else np.zeros(n)
    fam = glm.families.resolve(family)

    def sums():
        rows = rounds.Rows(X, y, w, offset, fam)
        mu = fam.start_mu(y, w, None)  # R's starting values, and the null deviance
        start, _ = rounds.irls_round(rows, None, (fam.linkfun(mu), mu),
                                     null=float(np.average(y, weights=w)))
        # No intercept: R's null model is mu = g^{-1}(offset), some of it at the edges
        edges = offset.copy()
        edges[:4] = [40.0, -40.0, 30.0, -50.0]
        at_offset, _ = rounds.irls_round(rounds.Rows(X, y, w, edges, fam), None,
                                         (fam.linkfun(mu), mu), null="offset")
        first, _ = rounds.irls_round(rows, beta)
        again, _ = rounds.irls_round(rows, beta, previous=first.weights)
        return start, at_offset, again, rounds.score_round(rows, beta)

    *fused, fused_score = sums()
    monkeypatch.setenv("AIA_GLM_KERNEL", "generic")
    *generic, generic_score = sums()
    for fast, slow in zip(fused, generic):
        for name in ("deviance", "pearson_chi2", "working_chi2", "n_boundary", "xtwx",
                     "xtwz", "weights", "null_deviance"):
            a, b = getattr(fast, name), getattr(slow, name)
            if b is None or np.isscalar(b) and np.isnan(b):
                assert a is None or np.isnan(a), name
                continue
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, err_msg=name)
    np.testing.assert_allclose(fused_score[0], generic_score[0], rtol=1e-11,
                               atol=1e-12 * np.abs(generic_score[0]).max())
    assert fused_score[1] == pytest.approx(generic_score[1], rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_design_sums_are_the_gram_and_the_peaks(tiny_blocks, weighted):
    """The design check's one pass (`rounds.design_sums`) gives the gram of sqrt(w) X and
    `x_peaks` of X, over several blocks and a short last one, X in C or F order."""
    rng = np.random.default_rng(11)
    n, p = 5 * rounds.block_rows(9) + 13, 9
    X = rng.normal(size=(n, p)) * rng.uniform(0.1, 10, p)
    w = rng.uniform(0, 3, n) if weighted else None
    root = np.ones(n) if w is None else np.sqrt(w)
    for order in ("C", "F"):
        gram, peaks = rounds.design_sums(np.asarray(X, order=order), w)
        np.testing.assert_allclose(gram, (X * root[:, None]).T @ (X * root[:, None]),
                                   rtol=1e-12, atol=1e-12 * n)
        np.testing.assert_array_equal(peaks, rounds.x_peaks(X))
        assert peaks.shape == (-(-n // rounds.SUB_ROWS), p)
