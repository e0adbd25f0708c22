"""The history as data: `History.to_frame`, `History.plot`, `History.save` / `aia.load_history`,
on the histories of real runs (local worker processes, SGD on a least-squares problem)."""

from __future__ import annotations

import sys
import zipfile

import numpy as np
import pytest

import aia
from algorithms import LRMSE, SGD, make_lrmse_problem

from .failure_helpers import FailOnce, pid_problem

MAKE = make_lrmse_problem(n_rows=50, n_features=4, seed=3)
POOLED = LRMSE(np.vstack([MAKE(p).A for p in (1, 2)]), np.concatenate([MAKE(p).b for p in (1, 2)]))


class LossSGD(SGD):
    """SGD that records the pooled loss at each checkpoint and reports values of every kind."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.losses = []

    def savevalues(self):
        self.losses.append(POOLED.loss(self.x))

    def report(self):
        return {"loss": self.losses,                 # one number per checkpoint: a column
                "final_loss": self.losses[-1],       # a scalar: frame.attrs
                "best": np.float32(min(self.losses)),  # a numpy scalar: attrs, dtype kept
                "solver": "sgd",
                "x_final": self.x.copy(),            # an array: on the history only
                "pair": (1, [2.5, None]),
                "by_worker": {1: np.arange(3), 2: {"ok": True}}}


class Point:
    """A query that is no number or array."""

    def __init__(self, v):
        self.v = v


class PointWalk(aia.AbstractAlgorithm):
    def initialize(self, problem):
        return Point(0)

    def answer(self, q, problem):
        return 1

    def central_step(self, a, worker, problem):
        return Point(a)


def run(synchronous=False, **kwargs):
    options = dict(saveat={"iteration": 5}, save_answers=True, cluster=2, verbose=0,
                   synchronous=synchronous)
    options.update(kwargs)
    return aia.start(LossSGD(0.02, seed=1), MAKE, {"iteration": 20}, **options)


def assert_same(a, b, where="history"):
    """Equal values of the same types, arrays with their dtype and shape."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), where
        assert np.array_equal(a, b), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    else:
        assert a == b, where


def assert_round_trip(h, path):
    h.save(path)
    g = aia.load_history(path)
    assert isinstance(g, aia.History)
    for field in h.keys():
        assert_same(h[field], g[field], field)
    assert g.keys() == h.keys()
    return g


def test_to_frame_one_row_per_checkpoint_and_scalars_in_attrs():
    h = run()
    frame = h.to_frame()
    assert list(frame.columns) == ["iteration", "epoch", "time", "loss"]
    assert frame["iteration"].tolist() == h.iterations == [0, 5, 10, 15, 20]
    assert frame["epoch"].tolist() == h.epochs
    assert frame["time"].tolist() == h.timestamps
    # The column is the loss of each checkpoint's query, computed here independently.
    assert np.allclose(frame["loss"], [POOLED.loss(q) for q in h.queries], rtol=1e-12)
    assert frame.attrs == {"final_loss": h.final_loss, "best": h.best, "solver": "sgd"}


def test_to_frame_refuses_a_report_value_named_like_a_column():
    h = aia.History()
    h.iterations, h.epochs, h.timestamps = [0, 1], [0, 1], [0.0, 0.1]
    h.add_report({"time": [1.0, 2.0]})
    with pytest.raises(ValueError, match="'time' names a column"):
        h.to_frame()


@pytest.mark.parametrize("synchronous", [False, True], ids=["async", "sync"])
def test_save_and_load_history_round_trip(tmp_path, synchronous):
    h = run(synchronous)
    assert len(h.answers) == len(h.queries) - 1 > 0
    assert sum(len(v) for v in h.staleness.values()) == sum(h.answer_count.values()) > 0
    g = assert_round_trip(h, tmp_path / "run.npz")
    assert_same(h.x_final, g.x_final)
    assert g.best.dtype == np.float32
    assert g.to_frame().equals(h.to_frame()) and g.to_frame().attrs == h.to_frame().attrs


def test_round_trip_keeps_the_failures(tmp_path):
    h = aia.start(FailOnce("raise"), pid_problem, {"iteration": 20}, cluster=2,
                  resilience=1, verbose=0)
    assert len(h.failures) == 1 and h.failures[0].traceback
    g = assert_round_trip(h, tmp_path / "failed.npz")
    assert g.failures == h.failures and isinstance(g.failures[0], aia.Failure)


def test_the_file_holds_no_pickle(tmp_path):
    path = tmp_path / "run.npz"
    run().save(path)
    with np.load(path, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)


def test_a_non_numeric_query_is_a_clear_error_and_no_file(tmp_path):
    h = aia.start(PointWalk(), pid_problem, {"iteration": 3}, cluster=2, verbose=0)
    path = tmp_path / "run.npz"
    with pytest.raises(TypeError, match=r"queries\[0\] is a .*Point; only numbers"):
        h.save(path)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_an_object_array_is_a_clear_error():
    h = aia.History()
    h.add_report({"mixed": np.array([1, "a"], dtype=object)})
    with pytest.raises(TypeError, match="report value 'mixed' is a numpy array of dtype object"):
        h.save("never-written.npz")


def test_load_history_refuses_other_files(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, x=np.arange(3))
    with pytest.raises(ValueError, match="not a history written by History.save"):
        aia.load_history(other)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __history__=np.array([{"format": "aia.History"}], dtype=object))
    with pytest.raises(ValueError, match="not a history"):  # never unpickled
        aia.load_history(pickled)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a history"):
        aia.load_history(text)
    assert not zipfile.is_zipfile(text)


def test_plot_returns_a_figure_of_the_values():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = run()
    fig = h.plot(x="iteration", logy=True)
    try:
        (line,) = fig.axes[0].get_lines()
        assert line.get_xdata().tolist() == h.iterations
        assert line.get_ydata().tolist() == h.loss
        assert fig.axes[0].get_yscale() == "log" and fig.axes[0].get_ylabel() == "loss"
        with pytest.raises(ValueError, match="no per-checkpoint value named"):
            h.plot(y="precision")
    finally:
        plt.close("all")


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    h = aia.History()
    with pytest.raises(ImportError, match=r"pip install 'aia\[plot\]'"):
        h.plot()


def test_a_file_of_an_earlier_version_names_the_process_pid(tmp_path):
    """Files written before ``Failure.pid`` became ``os_pid`` still load, with the id."""
    import json

    from aia import history as history_module

    h = aia.start(FailOnce("raise"), pid_problem, {"iteration": 20}, cluster=2,
                  resilience=1, verbose=0)
    path = tmp_path / "new.npz"
    h.save(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    key = history_module._DOC
    doc = json.loads(arrays[key].tobytes().decode("utf-8"))
    for failure in doc["failures"]:
        failure["pid"] = failure.pop("os_pid")
    arrays[key] = np.frombuffer(json.dumps(doc).encode("utf-8"), dtype=np.uint8)
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)
    g = aia.load_history(old)
    assert g.failures == h.failures and g.failures[0].os_pid == h.failures[0].os_pid > 0
