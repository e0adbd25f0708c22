"""Sites that share only a folder: the files, their checks, and `aia.start` on a
`FolderCluster` with real site processes on a real temporary folder."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import aia
from aia.folder import codec, layout, registry
from aia.folder.codec import Rejected
from algorithms import SGD, make_lrmse_problem

POLL = 0.02
WHERE = {"session": "s", "run": "r0001-0123456789ab", "site": "a", "iteration": 1}
EXPECT = {"kind": "query", **WHERE}


@dataclass(frozen=True)
class Note:
    """A dataclass message for the round-trip tests."""

    text: str
    values: np.ndarray = None
    inner: tuple = ()


registry.register_message("tests.Note", Note)


# -- values and envelopes --------------------------------------------------------------------
VALUES = {
    "x": np.arange(6.0).reshape(2, 3),
    "ints": np.array([1, 2, 3], dtype=np.int32),
    "flags": np.array([True, False]),
    "nested": [1, 2.5, "three", None, True, {"deep": (1, (2, 3))}],
    "nonfinite": (float("nan"), float("inf"), -float("inf")),
    3: "an int key",
    "$dollar": "a key that looks like a tag",
    "raw": b"\x00\x01",
    "z": 1 + 2j,
    "scalar": np.float32(1.5),
    "note": Note("hi", np.ones(2), (Note("inner"),)),
}


def _equal(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, float) and np.isnan(a):
        return isinstance(b, float) and np.isnan(b)
    if isinstance(a, np.generic):
        return a.item() == b
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, Note):
        return type(b) is Note and a.text == b.text and _equal(a.values, b.values) \
            and _equal(a.inner, b.inner)
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_values_round_trip_exactly(fmt):
    data, digest = codec.dumps("query", WHERE, VALUES, fmt=fmt)
    envelope, body = codec.loads(data, EXPECT, fmt=fmt)
    assert _equal(VALUES, body)
    assert envelope["sha256"] == digest
    assert codec.dumps("query", WHERE, VALUES, fmt=fmt)[0] == data  # same content, same bytes


@pytest.mark.parametrize("value", [np.array([object()]), {1, 2}, object(), len,
                                   np.array([("a", 1)], dtype=[("n", "U1"), ("v", "i4")])])
def test_what_cannot_travel_is_a_type_error_that_says_why(value):
    with pytest.raises(TypeError, match="through a folder"):
        codec.dumps("query", WHERE, {"v": value}, fmt="npz")


class _Gadget:
    """Unpickling this creates a file: what a planted pickle would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _object_array(marker: Path) -> np.ndarray:
    a = np.empty(1, dtype=object)
    a[0] = _Gadget(marker)
    return a


def _planted_files(tmp_path: Path, marker: Path) -> dict:
    """Files that run code when loaded with pickles allowed."""
    import io  # noqa: PLC0415

    npy = io.BytesIO()
    np.save(npy, _object_array(marker), allow_pickle=True)
    savez = io.BytesIO()
    np.savez(savez, a0=_object_array(marker))
    # The most convincing forgery: our own layout, with an object array as a0.npy.
    good, _ = codec.dumps("query", WHERE, {"x": np.zeros(1)}, fmt="npz")
    forged = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(forged, "w") as dst:
        dst.writestr("envelope.json", src.read("envelope.json").replace(b"<f8", b"|O"))
        dst.writestr("a0.npy", npy.getvalue())
    forged_same_dtype = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(forged_same_dtype, "w") as dst:
        dst.writestr("envelope.json", src.read("envelope.json"))
        dst.writestr("a0.npy", npy.getvalue())
    return {"npy": npy.getvalue(), "savez": savez.getvalue(), "forged": forged.getvalue(),
            "forged_same_dtype": forged_same_dtype.getvalue()}


def test_a_planted_pickle_is_rejected_and_never_unpickled(tmp_path, caplog):
    marker = tmp_path / "pwned"
    planted = _planted_files(tmp_path, marker)
    # The gadget is live: numpy with pickles allowed runs it.
    path = tmp_path / "probe.npy"
    path.write_bytes(planted["npy"])
    np.load(path, allow_pickle=True)
    assert marker.exists()
    marker.unlink()

    reader = layout.Reader("test", None)
    for name, data in planted.items():
        with pytest.raises(Rejected):
            codec.loads(data, EXPECT, fmt="npz")
        target = tmp_path / f"q-{len(name):06d}.npz"
        target.write_bytes(data)
        with caplog.at_level(logging.WARNING, logger="aia.folder"):
            assert reader.read(target, EXPECT) is None
        assert not marker.exists(), name
    assert sum("ignoring" in r.getMessage() for r in caplog.records) == len(planted)


def test_truncated_tampered_and_misplaced_files_are_rejected():
    data, _ = codec.dumps("query", WHERE, {"x": np.arange(100.0)}, fmt="npz")
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(Rejected):
            codec.loads(data[:cut], EXPECT, fmt="npz")
    tampered = bytearray(data)
    tampered[len(data) // 2] ^= 0xFF  # inside the array
    with pytest.raises(Rejected, match="digest|unreadable"):
        codec.loads(bytes(tampered), EXPECT, fmt="npz")
    with pytest.raises(Rejected, match="run"):
        codec.loads(data, {**EXPECT, "run": "r0002-0123456789ab"}, fmt="npz")
    with pytest.raises(Rejected, match="iteration"):
        codec.loads(data, {**EXPECT, "iteration": 2}, fmt="npz")
    text, _ = codec.dumps("run", WHERE, {"a": 1}, fmt="json")
    with pytest.raises(Rejected, match="digest"):
        codec.loads(text.replace(b'"a":1', b'"a":2'), {"kind": "run"}, fmt="json")
    with pytest.raises(Rejected):
        codec.loads(b'{"aia-folder": 1, "body": NaN}', {}, fmt="json")


def test_a_shared_key_keeps_out_files_written_without_it():
    signed, _ = codec.dumps("query", WHERE, 1, fmt="npz", key=b"secret")
    plain, _ = codec.dumps("query", WHERE, 1, fmt="npz")
    assert codec.loads(signed, EXPECT, fmt="npz", key=b"secret")[1] == 1
    with pytest.raises(Rejected, match="not signed"):
        codec.loads(plain, EXPECT, fmt="npz", key=b"secret")
    with pytest.raises(Rejected, match="lacks"):
        codec.loads(signed, EXPECT, fmt="npz")
    with pytest.raises(Rejected, match="digest"):
        codec.loads(signed, EXPECT, fmt="npz", key=b"another")


def test_readers_see_whole_files_and_only_their_own_names(tmp_path):
    lay = layout.Session(tmp_path, "s")
    d = lay.site_dir("r0001-0123456789ab", "a")
    layout.write(d / "q-000001.npz", "query", WHERE, 1, None)
    layout.write(d / "q-000001.npz", "query", WHERE, 2, None)  # replaced atomically
    for name in ("q-000002 (conflicted copy 2024-01-01).npz", "q-000003 (1).npz",
                 ".~q-000004.npz.1234.tmp", "q-5.npz", "q-000006.npz.part"):
        (d / name).write_bytes(b"junk")
    assert lay.numbered("r0001-0123456789ab", "a", layout.QUERY) == [1]
    assert sorted(os.listdir(d))[0] != ".~"  # no temporary file left behind
    assert not [n for n in os.listdir(d) if n.startswith(".~") and "q-000001" in n]
    for bad in ("", "..", "../x", "a/b", "runs", "-x", ".hidden", "x" * 65, "a b"):
        with pytest.raises(ValueError):
            layout.check_name("site", bad)


def test_sites_run_algorithms_by_exact_registered_class():
    class Sub(SGD):
        pass

    assert registry.entry_for(SGD(0.1, seed=1)).name == "sgd"
    assert registry.entry_for(SGD(0.1, seed=1)).describe(SGD(0.1, seed=1)) == {
        "stepsize": 0.1, "x0": None, "seed": 1, "staleness_aware": False}
    with pytest.raises(TypeError, match="not registered"):
        registry.entry_for(Sub(0.1))
    with pytest.raises(KeyError):
        registry.lookup("os.system")


# -- real site processes -----------------------------------------------------------------------
MAKE = make_lrmse_problem(n_rows=40, n_features=4, seed=0)


class Sites:
    """Site processes (``python -m aia.folder site``) on one folder, stopped at the end."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs: dict = {}
        self.logs: dict = {}
        for pid in (1, 2, 3):
            p = MAKE(pid)
            np.savez(folder / f"s{pid}.npz", A=p.A, b=p.b)

    def start(self, *names: str, extra=(), data=None, poll=POLL) -> None:
        for name in names:
            log = open(self.folder / f"{name}.log", "ab")
            self.logs[name] = log
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "aia.folder", "site", "--folder", str(self.folder),
                 "--site", name, "--data", str(data or self.folder / f"{name}.npz"),
                 "--poll", str(poll), "--timeout", "60", "--verbose", "2", *extra],
                stdout=log, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()

    def wait(self, timeout: float = 20) -> dict:
        return {n: p.wait(timeout) for n, p in self.procs.items()}

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(10)
        for f in self.logs.values():
            f.close()


@pytest.fixture
def sites(tmp_path):
    s = Sites(tmp_path)
    yield s
    s.stop()


def _sgd():
    return SGD(0.05, x0=np.zeros(4), seed=1)


def _local_reference(iterations: int) -> np.ndarray:
    h = aia.start(_sgd(), MAKE, {"iteration": iterations}, cluster=3, synchronous=True,
                  verbose=0)
    return h.queries[-1]


@pytest.mark.timeout(60)
def test_the_manual_sgd_runs_unchanged_on_folder_sites(sites, tmp_path):
    sites.start("s1", "s2", "s3")
    with aia.FolderCluster(tmp_path, ["s1", "s2", "s3"], poll=POLL, timeout=40) as cluster:
        h = aia.start(_sgd(), lambda pid: None, {"iteration": 30}, cluster=cluster,
                      synchronous=True, verbose=0)
        h_async = aia.start(_sgd(), lambda pid: None, {"epoch": 10}, cluster=cluster,
                            verbose=0)
    # Each site answers from its own .npz as a local worker does from make_problem(pid).
    assert np.array_equal(h.queries[-1], _local_reference(30))
    assert h.answer_count == {1: 30, 2: 30, 3: 30}
    assert h_async.epochs[-1] == 10 and min(h_async.answer_count.values()) >= 10
    assert sites.wait() == {"s1": 0, "s2": 0, "s3": 0}  # the session finished: they exit
    assert "answered query" in sites.log("s1") and "finished; exiting" in sites.log("s1")


@pytest.mark.timeout(60)
def test_planted_files_in_a_live_run_are_ignored(sites, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="aia.folder")
    marker = tmp_path / "pwned"
    planted = _planted_files(tmp_path, marker)
    cluster = aia.FolderCluster(tmp_path, ["s1", "s2", "s3"], session="planted", poll=POLL,
                                timeout=40)
    result = {}
    central = threading.Thread(target=lambda: result.update(h=aia.start(
        _sgd(), lambda pid: None, {"iteration": 5}, cluster=cluster, synchronous=True,
        verbose=0)))
    central.start()
    lay = layout.Session(tmp_path, "planted")
    deadline = time.monotonic() + 20
    while not lay.runs() or not lay.query(lay.runs()[0], "s1", 1).exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    run = lay.runs()[0]
    s1, s2 = lay.site_dir(run, "s1"), lay.site_dir(run, "s2")
    good = lay.query(run, "s1", 1).read_bytes()
    (s1 / "q-000002.npz").write_bytes(planted["forged_same_dtype"])  # a query from the future
    (s1 / "q-000003.npz").write_bytes(good[: len(good) // 2])  # truncated
    (s1 / "q-000001 (conflicted copy).npz").write_bytes(planted["savez"])
    (s2 / "a-000001.npz").write_bytes(planted["forged"])  # an answer for the central
    (s2 / "a-000002.npz").write_bytes(planted["npy"])
    sites.start("s1", "s2", "s3")
    central.join(40)
    cluster.finish()
    assert np.array_equal(result["h"].queries[-1], _local_reference(5))
    assert not marker.exists()
    assert sites.wait() == {"s1": 0, "s2": 0, "s3": 0}
    log1 = sites.log("s1")
    assert "ignoring" in log1 and "q-000002.npz" in log1 and "q-000003.npz" in log1
    assert "conflicted" not in log1  # never even read
    central_warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "central: ignoring" in central_warnings and "s2/a-000001.npz" in central_warnings


@pytest.mark.timeout(60)
def test_the_deadline_names_the_sites_that_never_answered(sites, tmp_path):
    sites.start("s1", "s2")
    cluster = aia.FolderCluster(tmp_path, ["s1", "s2", "s3"], session="late", poll=POLL,
                                timeout=3)
    with pytest.raises(aia.folder.SitesTimeoutError, match="s3 \\(never joined") as info:
        aia.start(_sgd(), lambda pid: None, {"iteration": 5}, cluster=cluster,
                  synchronous=True, verbose=0)
    assert info.value.sites == ["s3"]
    # The session stays open: once s3 comes, a new central resumes it.
    sites.start("s3")
    with aia.FolderCluster(tmp_path, ["s1", "s2", "s3"], session="late", poll=POLL,
                           timeout=30) as cluster:
        h = aia.start(_sgd(), lambda pid: None, {"iteration": 5}, cluster=cluster,
                      synchronous=True, verbose=0)
    assert np.array_equal(h.queries[-1], _local_reference(5))
    assert sites.wait() == {"s1": 0, "s2": 0, "s3": 0}


@pytest.mark.timeout(60)
def test_a_cancelled_session_ends_its_sites_and_cannot_be_resumed(sites, tmp_path):
    sites.start("s1", "s2", extra=("--session", "gone"))
    cluster = aia.FolderCluster(tmp_path, ["s1", "s2", "s3"], session="gone", poll=POLL)
    cluster.cancel("test over")
    assert sites.wait() == {"s1": 0, "s2": 0}
    assert "cancelled; exiting" in sites.log("s1")
    with pytest.raises(RuntimeError, match="cancelled"):
        aia.FolderCluster(tmp_path, ["s1", "s2", "s3"], session="gone")
    with pytest.raises(ValueError, match="sites"):
        aia.FolderCluster(tmp_path, ["s1", "s2"], session="gone")
    with pytest.raises(TypeError, match="cannot build objects"):
        aia.DistributedObject(lambda pid: pid, cluster)


@pytest.mark.timeout(60)
def test_a_site_runs_only_algorithms_installed_on_it(sites, tmp_path):
    class Local(SGD):
        """Registered here (the central), not at the sites."""

    registry.register("tests.local-only", Local)
    sites.start("s1", "s2", "s3")
    with aia.FolderCluster(tmp_path, ["s1", "s2", "s3"], poll=POLL, timeout=30) as cluster:
        deadline = time.monotonic() + 20
        while len(cluster.joined()) < 3:  # a site that comes after the end waits for another
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(aia.WorkerFailedError, match="not installed at site s"):
            aia.start(Local(0.1, x0=np.zeros(4)), lambda pid: None, {"iteration": 3},
                      cluster=cluster, synchronous=True, verbose=0)
        cluster.cancel()
    assert sites.wait() == {"s1": 0, "s2": 0, "s3": 0}


@pytest.mark.timeout(60)
def test_a_session_signed_with_a_shared_key(sites, tmp_path):
    key = tmp_path / "key"
    key.write_text("a secret shared out of band\n")
    sites.start("s1", "s2", "s3", extra=("--key-file", str(key)))
    with aia.FolderCluster(tmp_path, ["s1", "s2", "s3"], session="signed", poll=POLL,
                           timeout=30, key=b"a secret shared out of band") as cluster:
        h = aia.start(_sgd(), lambda pid: None, {"iteration": 3}, cluster=cluster,
                      synchronous=True, verbose=0)
    assert np.array_equal(h.queries[-1], _local_reference(3))
    answer = layout.Session(tmp_path, "signed")
    answer = answer.answer(answer.runs()[0], "s2", 3).read_bytes()
    assert b'"hmac-sha256"' in answer and b'"sha256"' not in answer
    assert sites.wait() == {"s1": 0, "s2": 0, "s3": 0}


CENTRAL = """
import sys, numpy as np, aia
from algorithms import SGD
folder, poll = sys.argv[1], float(sys.argv[2])
with aia.FolderCluster(folder, ["s1", "s2", "s3"], session="resume", poll=poll, timeout=40) as c:
    h = aia.start(SGD(0.05, x0=np.zeros(4), seed=1), lambda pid: None, {"iteration": 40},
                  cluster=c, synchronous=True, verbose=0)
np.save(folder + "/result.npy", h.queries[-1])
"""


@pytest.mark.timeout(90)
def test_a_central_started_again_resumes_from_the_last_complete_iteration(sites, tmp_path):
    script = tmp_path / "central.py"
    script.write_text(CENTRAL)
    sites.start("s1", "s2", "s3")
    first = subprocess.Popen([sys.executable, str(script), str(tmp_path), "0.1"])
    lay = layout.Session(tmp_path, "resume")
    try:
        deadline = time.monotonic() + 30
        while not (lay.runs() and lay.answer(lay.runs()[0], "s3", 10).exists()):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.01)
        first.kill()
    finally:
        first.wait(10)
    run = lay.runs()[0]
    before = {(s, k): os.stat(lay.answer(run, s, k)).st_ino
              for s in ("s1", "s2", "s3") for k in range(1, 10)}
    again = subprocess.run([sys.executable, str(script), str(tmp_path), str(POLL)], timeout=60)
    assert again.returncode == 0
    # The same run, the recorded answers reused (not asked again), the same result as an
    # uninterrupted run.
    assert lay.runs() == [run]
    assert before == {(s, k): os.stat(lay.answer(run, s, k)).st_ino
                      for s in ("s1", "s2", "s3") for k in range(1, 10)}
    assert np.array_equal(np.load(tmp_path / "result.npy"), _local_reference(40))
    assert sites.wait() == {"s1": 0, "s2": 0, "s3": 0}


@pytest.mark.timeout(60)
def test_sites_and_central_wait_on_file_events(sites, tmp_path):
    """Looks every 1000 s: only file events can carry the run (inotify on Linux)."""
    sites.start("s1", "s2", "s3", poll=1000)
    with aia.FolderCluster(tmp_path, ["s1", "s2", "s3"], session="events", poll=1000,
                           timeout=40) as cluster:
        h = aia.start(_sgd(), lambda pid: None, {"iteration": 10}, cluster=cluster,
                      synchronous=True, verbose=0)
        assert cluster.waiter.watching
    assert np.array_equal(h.queries[-1], _local_reference(10))
    assert sites.wait() == {"s1": 0, "s2": 0, "s3": 0}


@pytest.mark.timeout(60)
def test_without_file_events_the_sites_and_central_poll(sites, tmp_path):
    sites.start("s1", "s2", "s3", extra=("--no-watch",))
    with aia.FolderCluster(tmp_path, ["s1", "s2", "s3"], session="polled", poll=POLL,
                           timeout=40, watch=False) as cluster:
        h = aia.start(_sgd(), lambda pid: None, {"iteration": 5}, cluster=cluster,
                      synchronous=True, verbose=0)
        assert not cluster.waiter.watching
    assert np.array_equal(h.queries[-1], _local_reference(5))
    assert sites.wait() == {"s1": 0, "s2": 0, "s3": 0}


def test_a_waiter_wakes_on_a_replaced_file_not_on_a_temporary_one(tmp_path):
    from aia.folder.watch import Waiter  # noqa: PLC0415

    waiter = Waiter(tmp_path, "test")
    try:
        waiter.arm()  # starts the observer
        assert waiter.watching
        for _ in range(3):
            waiter.arm()
            (tmp_path / ".~a.npz.1234.tmp").write_bytes(b"x")  # a writer's own: no wake
            started = time.monotonic()
            waiter.wait(0.3)
            assert time.monotonic() - started >= 0.25
            waiter.arm()
            threading.Timer(0.05, codec.write_atomic, (tmp_path / "a.npz", b"y",
                                                       tmp_path)).start()
            started = time.monotonic()
            waiter.wait(20)
            assert time.monotonic() - started < 10  # woken by the rename, not the timeout
    finally:
        waiter.close()


@pytest.mark.timeout(60)
def test_a_site_set_up_with_a_wrong_file_is_fixed_and_a_new_central_resumes(sites, tmp_path):
    missing = subprocess.run([sys.executable, "-m", "aia.folder", "site", "--folder",
                              str(tmp_path), "--site", "s2", "--data", str(tmp_path / "no.npz")],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and "no data file" in missing.stderr  # at once
    wrong = tmp_path / "wrong.npz"
    wrong.write_text("not the arrays of an npz")
    sites.start("s1", "s3", extra=("--session", "fix"))
    sites.start("s2", extra=("--session", "fix"), data=wrong)

    def central():
        return aia.FolderCluster(tmp_path, ["s1", "s2", "s3"], session="fix", poll=POLL,
                                 timeout=30)

    for _ in range(2):  # s2 still wrong: a new central gets s2's failure for its attempt
        cluster = central()
        with pytest.raises(aia.WorkerFailedError, match="site s2 raised"):
            aia.start(_sgd(), lambda pid: None, {"iteration": 5}, cluster=cluster,
                      synchronous=True, verbose=0)
        cluster.close()
    assert sites.procs["s1"].poll() is None  # the session is open: the sites wait
    sites.procs["s2"].kill()
    sites.procs["s2"].wait(10)
    # A new central while s2 is down: s2's failed status is stale (an earlier attempt's).
    result: dict = {}

    def run():
        try:
            with central() as cluster:
                result["h"] = aia.start(_sgd(), lambda pid: None, {"iteration": 5},
                                        cluster=cluster, synchronous=True, verbose=0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive() and not result, result
    sites.start("s2", extra=("--session", "fix"))  # fixed: its own file
    thread.join(40)
    assert "error" not in result, result.get("error")
    assert np.array_equal(result["h"].queries[-1], _local_reference(5))
    assert sites.wait() == {"s1": 0, "s2": 0, "s3": 0}
