"""The direct build of the design (plain numeric columns copied into X, no model matrix) and
the Parquet reader that reads only the used columns: the same matrices as formulaic's, bit
for bit, and formulaic's path for everything else."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from algorithms import glm
from algorithms.glm import design as design_module
from algorithms.glm import matrices
from algorithms.glm import site as site_module
from algorithms.glm import site_frame
from algorithms.glm.design import Design, ModelData, direct_columns, model_data

from .conftest import close, distribglm_sites, reference, v6_sites

# (data, formula, family, extra columns): designs made of numeric columns only.
NUMERIC = [
    ("binomial", "admit ~ gre + gpa + rank", "binomial", {}),
    ("gaussian", "Volume ~ Height + Girth", "gaussian", {}),
    ("poisson", "num_awards ~ 0 + math", "poisson", {}),
    ("survival", "status ~ age + sex", "poisson", {"exposure": "eventtime"}),
    ("distribglm", "pois_y ~ x2 + x1", "poisson", {}),
    ("distribglm", "prob_y ~ x1 + x2 - 1", "gaussian", {"weights": "lambda", "offset": "x1"}),
]


#: The shared sites are small: up to half as many parameters as rows.
RELAXED = {"GLM_MAX_PCT_VARS_VS_OBS": "50"}


def sites_of(data: str) -> list:
    return distribglm_sites() if data == "distribglm" else v6_sites(data)


def assert_same(a: ModelData, b: ModelData) -> None:
    """Bit-identical arrays (same dtype, shape and memory order) and the same names."""
    for what in ("y", "X", "weights", "offset", "d_star"):
        x, y = getattr(a, what), getattr(b, what)
        if x is None or y is None:
            assert x is None and y is None, what
            continue
        assert (x.dtype, x.shape) == (y.dtype, y.shape), what
        assert x.tobytes() == y.tobytes(), what
    assert a.X.flags.f_contiguous == b.X.flags.f_contiguous
    assert a.names == b.names


def formulaic_reference(frame: pd.DataFrame, design: Design) -> ModelData:
    """formulaic's build on the complete rows of the used columns, taken independently of
    the site (``dropna`` as the site's complete cases)."""
    used = sorted(design_module.used_columns(design))
    ref = model_data(frame[used].dropna(), design, direct=False)
    assert ref.built_by == "formulaic"
    return ref


def numeric_frame(n: int = 3000, seed: int = 1) -> pd.DataFrame:
    """Numeric columns of several dtypes, with NaNs in the used ones and in one that no
    model reads."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "y": rng.poisson(2.0, n).astype(float),
        "a": rng.normal(size=n),
        "b": rng.integers(0, 10, n),
        "c": rng.normal(size=n).astype("float32"),
        "u": rng.integers(0, 5, n).astype("uint8"),
        "w": rng.uniform(0.5, 2.0, n),
        "o": rng.normal(0, 0.1, n),
        "unused": rng.normal(size=n),
    })
    for col in ("y", "a", "c", "w", "o", "unused"):
        frame.loc[rng.random(n) < 0.04, col] = np.nan
    return frame


@pytest.mark.parametrize("data,formula,family,extra", NUMERIC,
                         ids=[f"{c[0]}:{c[1]}" for c in NUMERIC])
def test_shared_data_direct_is_formulaic(data, formula, family, extra, tmp_path):
    design = Design.make(formula, family, **extra)
    for i, path in enumerate(sites_of(data)):
        frame = pd.read_csv(path)
        ref = formulaic_reference(frame, design)
        from_csv = glm.Site(path, environ=RELAXED).model(design)
        parquet = tmp_path / f"site{i}.parquet"
        frame.to_parquet(parquet)
        from_parquet = glm.Site(parquet, environ=RELAXED).model(design)
        for built in (from_csv, from_parquet):
            assert built.built_by == "direct"
            assert_same(built, ref)


@pytest.mark.parametrize("formula,extra", [
    ("y ~ c + a + b + u", {"weights": "w", "offset": "o"}),
    ("y ~ 0 + u + a", {"exposure": "w"}),
    ("y ~ 1", {}),
])
def test_rows_with_missing_values_are_dropped_as_by_formulaic(formula, extra, tmp_path):
    frame = numeric_frame()
    design = Design.make(formula, "poisson", **extra)
    ref = formulaic_reference(frame, design)
    used = sorted(design_module.used_columns(design))
    assert len(ref.y) == len(frame[used].dropna()) < len(frame)
    frame.to_parquet(tmp_path / "site.parquet")
    for source in (frame, tmp_path / "site.parquet"):
        built = glm.Site(source).model(design)
        assert built.built_by == "direct"
        assert_same(built, ref)


def test_missing_values_in_an_unused_column_keep_their_rows():
    frame = numeric_frame()
    design = Design.make("y ~ a", "poisson")
    built = glm.Site(frame).model(design)
    assert len(built.y) == len(frame[["y", "a"]].dropna()) > len(frame.dropna())


@pytest.mark.parametrize("formula", [
    "y ~ C(b)",
    "y ~ C(b) + a",
    "y ~ np.log(w)",
    "y ~ log(w) + a",
    "y ~ a:b",
    "y ~ a * b",
    "y ~ I(a ** 2)",
    "y ~ I(b > 3)",
    "y ~ g + a",        # a string column: categorical without C()
    "y ~ flag",         # bool
    "y ~ nullable",     # a pandas extension type
    "np.log(w) ~ a",    # a transformed response
])
def test_other_terms_take_formulaics_path(formula):
    rng = np.random.default_rng(2)
    n = 500
    frame = numeric_frame(n).dropna().assign(
        g=lambda f: rng.choice(["p", "q", "r"], len(f)),
        flag=lambda f: rng.random(len(f)) > 0.5,
        nullable=lambda f: pd.array(rng.integers(0, 3, len(f)), dtype="Int64"),
    )
    design = Design.make(formula, "gaussian")
    assert direct_columns(frame, design) is None
    assert glm.Site(frame).model(design).built_by == "formulaic"


def test_a_categorical_response_is_still_refused():
    frame = numeric_frame().dropna().assign(cat=lambda f: pd.Categorical(f["b"] % 2))
    design = Design.make("cat ~ a", "gaussian")
    assert direct_columns(frame, design) is None
    with pytest.raises(glm.SiteError, match="one numeric column"):
        glm.Site(frame).model(design)


def test_center_and_scale_take_formulaics_path():
    frame = numeric_frame().dropna()
    design = Design.make("y ~ center(a) + scale(b)", "gaussian").with_shared(
        {}, {"a": (0.1, 1.0), "b": (4.5, 2.9)})
    assert direct_columns(frame, design) is None
    built = glm.Site(frame).model(design)
    assert built.built_by == "formulaic"
    close(built.X[:, 1], frame["a"] - 0.1, rtol=1e-15)


def test_merged_levels_take_formulaics_path():
    frame = numeric_frame().dropna()
    design = Design.make("y ~ C(b) + a", "gaussian").with_shared(
        {"b": tuple(range(10))}, {})
    built = glm.Site(frame).model(design)
    assert built.built_by == "formulaic"
    assert built.names[:2] == ["Intercept", "C(b)[T.1]"]


def test_a_column_named_intercept_is_left_to_formulaic():
    """formulaic keeps one of two columns of the same name: its matrix is not one column per
    term, and the direct build steps aside."""
    frame = numeric_frame().dropna().rename(columns={"a": "Intercept"})
    design = Design.make("y ~ Intercept + b", "gaussian")
    assert direct_columns(frame, design) is None
    built = glm.Site(frame).model(design)
    assert built.built_by == "formulaic"
    assert_same(built, formulaic_reference(frame, design))


def test_fit_uses_the_direct_build(tmp_path, monkeypatch):
    """glm.fit on numeric Parquet sites never calls formulaic's build (so the direct one is
    not dead code), and its estimate is statsmodels' on the pooled rows."""

    def refuse(*args, **kwargs):
        raise AssertionError("formulaic's build was called")

    monkeypatch.setattr(matrices, "_formulaic_design", refuse)  # where the design is built
    paths = []
    for i, path in enumerate(v6_sites("binomial")):
        paths.append(tmp_path / f"site{i}.parquet")
        pd.read_csv(path).to_parquet(paths[-1])
    formula = "admit ~ gre + gpa + rank"
    res = glm.fit(formula, paths, family="binomial", cluster="inprocess")
    ref = reference(formula, v6_sites("binomial"), sm.families.Binomial())
    close(res.params, ref.params, rtol=1e-6)
    close(res.bse, ref.bse, rtol=1e-6)
    close(res.deviance, ref.deviance, rtol=1e-8)


def test_parquet_sites_read_only_the_used_columns(tmp_path, monkeypatch):
    read = []
    original = site_module.read_parquet

    def recording(path, columns=None):
        read.append(None if columns is None else sorted(columns))
        return original(path, columns)

    monkeypatch.setattr(site_module, "read_parquet", recording)
    path = tmp_path / "site.parquet"
    numeric_frame().to_parquet(path)
    site = glm.Site(path)
    first = Design.make("y ~ a", "poisson")
    site.describe(first)
    site.build(first)
    assert read == [["a", "y"]]
    site.build(Design.make("y ~ a + b", "poisson", weights="w"))  # the held ones and more
    assert read == [["a", "y"], ["a", "b", "w", "y"]]
    with pytest.raises(glm.SiteError, match=r"\['nope'\]"):
        site.build(Design.make("y ~ nope", "poisson"))


def test_read_parquet_is_pandas_read_parquet(tmp_path):
    rng = np.random.default_rng(3)
    n = 300
    frame = pd.DataFrame({
        "f": rng.normal(size=n),
        "i": np.arange(n),
        "f32": rng.normal(size=n).astype("float32"),
        "s": rng.choice(["a", "b", None], n),
        "cat": pd.Categorical(rng.choice(["x", "y"], n)),
        "b": rng.random(n) > 0.5,
        "I": pd.array(np.where(rng.random(n) > 0.9, None, 1), dtype="Int64"),
        "fn": np.where(rng.random(n) > 0.9, np.nan, 1.0),
    }, index=pd.Index(np.arange(n) * 2, name="idx"))
    path = tmp_path / "t.parquet"
    for table in (frame, frame.reset_index(drop=True)):
        table.to_parquet(path)
        pd.testing.assert_frame_equal(site_module.read_parquet(path), pd.read_parquet(path),
                                      check_exact=True)
        pd.testing.assert_frame_equal(site_module.read_parquet(path, {"s", "f", "I", "no"}),
                                      pd.read_parquet(path, columns=["f", "s", "I"]),
                                      check_exact=True)


@pytest.mark.parametrize("values", [
    [1.0, np.nan, 3.0, np.inf],
    np.array([1.0, np.nan], dtype="float32"),
    [1, 2, 3],
    ["a", None, "b"],
    pd.array([1, None, 3], dtype="Int64"),
    pd.array([1.0, None, np.nan], dtype="Float64"),
    pd.Categorical(["a", None, "a"]),
])
def test_non_missing_counts_as_pandas(values):
    column = pd.Series(values)
    assert site_frame._non_missing(column) == column.count()
