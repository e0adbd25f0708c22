"""A Parquet site builds its design out of the columns it read, deleting each once copied
(`design._direct_design`, consume): what it fits afterwards must not notice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from algorithms import glm
from algorithms.glm.design import Design
from algorithms.glm.site import Site

from .conftest import read, v6_sites


@pytest.fixture
def parquet_sites(tmp_path):
    frames = read(v6_sites("binomial"))
    rng = np.random.default_rng(5)
    frames = [f.assign(w=rng.integers(1, 3, len(f)).astype(float)) for f in frames]
    paths = []
    for i, f in enumerate(frames):
        paths.append(tmp_path / f"site{i}.parquet")
        f.to_parquet(paths[-1])
    return frames, paths


MODELS = [  # each reuses columns the one before moved into its design
    ("admit ~ gre + gpa", {}),
    ("admit ~ gre + gpa + rank", {"weights": "w"}),
    ("admit ~ gre + w", {"weights": "w"}),           # a column both weight and predictor
    ("admit ~ I(gre / 100) + gpa", {}),               # expressions: built by formulaic
    ("admit ~ gre + gpa", {}),
]


def test_models_in_sequence_on_parquet_sites_equal_dataframe_sites(parquet_sites):
    frames, paths = parquet_sites
    for formula, kwargs in MODELS:
        a = glm.fit(formula, paths, family="binomial", cluster="inprocess", **kwargs)
        b = glm.fit(formula, frames, family="binomial", cluster="inprocess", **kwargs)
        np.testing.assert_allclose(a.params, b.params, rtol=1e-12)
        assert a.deviance == pytest.approx(b.deviance, rel=1e-12)


def test_one_site_answers_several_designs_after_consuming_its_columns(parquet_sites):
    """One Site object (as a worker holds it) across designs: the consumed columns are read
    again from the file, never taken from the emptied frame."""
    frames, paths = parquet_sites
    site = Site(paths[0])
    for formula, kwargs in MODELS:
        design = Design.make(formula, "binomial", **kwargs)
        m = site.model(design)
        reference = Site(frames[0]).model(design)
        np.testing.assert_array_equal(m.X, reference.X)
        np.testing.assert_array_equal(m.y, reference.y)
        np.testing.assert_array_equal(m.weights, reference.weights)
    assert len(pd.read_parquet(paths[0]).columns) == 5  # the file itself is untouched
