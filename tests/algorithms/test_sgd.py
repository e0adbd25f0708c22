"""`algorithms.SGD(staleness_aware=True)`: each step divided by 1 + its answer's staleness."""

from __future__ import annotations

import numpy as np
import pytest

import aia
from algorithms import SGD, make_lrmse_problem

MAKE = make_lrmse_problem(n_rows=50, n_features=4, seed=2)


def test_central_step_divides_the_answer_by_one_plus_its_staleness():
    alg = SGD(0.1, x0=np.ones(3), staleness_aware=True)
    x0 = alg.initialize(None).copy()
    a = np.array([4.0, 8.0, -2.0])
    alg.staleness = 3
    assert np.array_equal(alg.central_step(a, 1, None), x0 - a / 4)
    plain = SGD(0.1, x0=np.ones(3))
    plain.initialize(None)
    plain.staleness = 3
    assert np.array_equal(plain.central_step(a, 1, None), x0 - a)


def test_a_folder_site_rebuilds_the_option():
    """The folder engine describes an algorithm by its constructor parameters, read from
    attributes of the same names: the option survives a run, which sets ``self.staleness``."""
    from aia.folder import registry

    for aware in (True, False):
        sgd = SGD(0.1, seed=1, staleness_aware=aware)
        sgd.staleness = 4  # as after a run
        entry = registry.entry_for(sgd)
        copy = entry.make(entry.describe(sgd))
        assert type(copy) is SGD and copy.staleness_aware is aware and copy.seed == 1


def test_staleness_must_be_a_bool():
    with pytest.raises(TypeError, match="staleness_aware must be True or False.*got 'yes'"):
        SGD(0.1, staleness_aware="yes")


@pytest.mark.parametrize("aware", [True, False])
def test_each_step_of_a_real_asynchronous_run(aware):
    """Replay the run from its history: every step is the answer over 1 + its staleness."""
    h = aia.start(SGD(0.02, seed=1, staleness_aware=aware), MAKE, {"iteration": 40},
                  saveat={"iteration": 1}, save_answers=True, cluster=3, verbose=0)
    assert h.iterations == list(range(41))
    taken = {w: iter(s) for w, s in h.staleness.items()}  # each worker's answers, in order
    stale_steps = 0
    for k in range(1, 41):
        s = next(taken[h.answers_origin[k - 1]])
        stale_steps += s > 0
        divisor = 1 + s if aware else 1
        assert np.array_equal(h.queries[k], h.queries[k - 1] - h.answers[k - 1] / divisor)
    assert stale_steps > 0  # otherwise the check could not tell the two apart


def test_synchronous_steps_are_unchanged():
    runs = [aia.start(SGD(0.02, seed=1, staleness_aware=aware), MAKE, {"iteration": 10},
                      synchronous=True, cluster=2, verbose=0) for aware in (True, False)]
    assert np.array_equal(runs[0].queries[-1], runs[1].queries[-1])
