"""A hostile member of the synced folder against real site processes (``python -m aia.folder
site``): files built to hang, exhaust or steer a site, links planted where a site writes, a
forged end, invented sites. Each time the site neither blocks, nor crashes, nor writes
outside the folder, and a valid run on the same processes still gives the right answer."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import aia
from aia.folder import layout

from .test_folder import POLL, Sites, _local_reference, _sgd

pytestmark = pytest.mark.timeout(90)
KEY = b"a secret shared out of band"


@pytest.fixture
def sites(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    s = Sites(folder)
    yield s
    s.stop()


def snapshot(root: Path) -> dict:
    """Every file under ``root`` with its content: what 'nothing written there' compares."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def plant_hostile_sessions(folder: Path, outside: Path) -> None:
    """Sessions whose description would hang, exhaust or confuse a site that scans for
    models (one without ``--session``)."""
    def session(name: str) -> Path:
        d = folder / name
        d.mkdir()
        return d / "session.json"

    os.mkfifo(session("a-fifo"))  # opening it for reading would block forever
    with open(session("b-huge"), "w") as f:  # 32 MiB: refused by its size, never read
        f.write('{"aia-folder": 1, "body": [' + "0," * (16 << 20) + "0]}")
    session("c-deep").write_text("[" * 100_000 + "]" * 100_000)
    session("d-inf").write_text('{"aia-folder": 1, "kind": "session", "body": 1e999}')
    session("e-list").write_text('[1, 2, 3]')
    session("f-unknown").write_text('{"aia-folder": 1, "kind": "pwn", "body": {}}')
    session("g-control").write_bytes(b"\x00\xff" * 1000)
    # A session that lists the sites, reached through a link to a folder outside: a site
    # that followed it would join it and write there.
    (outside / "linked").mkdir()
    layout.write(outside / "linked" / "session.json", "session", {"session": "h-link"},
                 {"sites": ["s1", "s2", "s3"]}, None)
    os.symlink(outside / "linked", folder / "h-link")
    # A description that is itself a link to a valid one outside.
    d = folder / "i-file-link"
    d.mkdir()
    layout.write(outside / "i.json", "session", {"session": "i-file-link"},
                 {"sites": ["s1", "s2", "s3"]}, None)
    os.symlink(outside / "i.json", d / "session.json")


def peak_rss(procs: list, stop: threading.Event, peak: dict) -> None:
    while not stop.is_set():
        for name, p in procs:
            try:
                peak[name] = max(peak.get(name, 0), psutil.Process(p.pid).memory_info().rss)
            except psutil.Error:
                pass
        time.sleep(0.01)


def test_hostile_sessions_neither_block_nor_steer_a_scanning_site(sites, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    plant_hostile_sessions(sites.folder, outside)
    before = snapshot(outside)
    sites.start("s1", "s2", "s3")  # no --session: they scan every session of the folder
    stop, peak = threading.Event(), {}
    watcher = threading.Thread(target=peak_rss, args=(list(sites.procs.items()), stop, peak))
    watcher.start()
    time.sleep(1.0)  # many polls over the hostile sessions before a valid one appears
    try:
        started = time.monotonic()
        with aia.FolderCluster(sites.folder, ["s1", "s2", "s3"], session="z-good", poll=POLL,
                               timeout=30) as cluster:
            h = aia.start(_sgd(), lambda pid: None, {"iteration": 5}, cluster=cluster,
                          synchronous=True, verbose=0)
        took = time.monotonic() - started
        assert sites.wait() == {"s1": 0, "s2": 0, "s3": 0}
    finally:
        stop.set()
        watcher.join(5)
    assert np.array_equal(h.queries[-1], _local_reference(5))
    assert took < 15, took  # no site was held by the FIFO or the 32 MiB file
    assert snapshot(outside) == before  # nothing joined or written through the links
    assert not (outside / "linked" / "sites").exists()
    assert max(peak.values()) < 400e6, peak  # the huge file was never loaded
    log = sites.log("s1")
    for name in ("b-huge", "c-deep", "d-inf", "e-list", "g-control", "i-file-link"):
        assert f"{name}/session.json" in log, name  # each reported
    assert "joined model z-good" in log and "joined model h-link" not in log
    # reported once, not at every poll
    assert sum("b-huge/session.json" in line for line in log.splitlines()) == 1


def _wait_for(path_of, timeout: float = 20) -> Path:
    deadline = time.monotonic() + timeout
    while True:
        try:
            path = path_of()
            if path.exists():
                return path
        except IndexError:
            pass
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.005)


def test_links_and_a_forged_end_planted_mid_run_change_nothing(sites, tmp_path):
    """With a key: an unsigned end.json for the session and for the run, and links planted
    at the names the site and the central write next, pointing outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("must stay as it is")
    key = tmp_path / "key"
    key.write_bytes(KEY)
    sites.start("s1", "s2", "s3", extra=("--key-file", str(key), "--session", "signed"))
    cluster = aia.FolderCluster(sites.folder, ["s1", "s2", "s3"], session="signed", poll=POLL,
                                timeout=40, key=KEY)
    lay = layout.Session(sites.folder, "signed")
    result: dict = {}

    def central():
        try:
            result["h"] = aia.start(_sgd(), lambda pid: None, {"iteration": 30},
                                    cluster=cluster, synchronous=True, verbose=0)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=central)
    thread.start()
    _wait_for(lambda: lay.query(lay.runs()[0], "s1", 1))
    run = lay.runs()[0]
    forged = b'{"aia-folder": 1, "kind": "end", "session": "signed", "body": {"state": "finished"}}'
    (lay.dir / "end.json.tmp").write_bytes(forged)
    os.replace(lay.dir / "end.json.tmp", lay.end)
    (lay.run_dir(run) / "end.json").write_bytes(forged)
    for site in ("s1", "s2"):
        for seq in range(5, 30):
            for path in (lay.answer(run, site, seq), lay.query(run, site, seq)):
                try:
                    os.symlink(outside / "victim", path)
                except (FileExistsError, FileNotFoundError):
                    pass  # written already, or the run (fast on file events) is over
    thread.join(60)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    assert np.array_equal(result["h"].queries[-1], _local_reference(30))
    cluster.finish()
    assert sites.wait() == {"s1": 0, "s2": 0, "s3": 0}
    assert (outside / "victim").read_text() == "must stay as it is"
    assert sorted(os.listdir(outside)) == ["victim"]
    assert "ignoring" in sites.log("s1") and "end.json" in sites.log("s1")


def test_invented_sites_do_not_make_up_a_sites_minimum(sites, tmp_path):
    """A central that holds the key lists one real site and two invented ones, and forges
    their join files: a site that names its peers (``--peers``) counts only them, and refuses
    a run it would answer alone (whose sums would then be its own)."""
    key = tmp_path / "key"
    key.write_bytes(KEY)
    sites.start("s1", extra=("--key-file", str(key), "--session", "ghosts", "--peers",
                             "s2,s3", "--min-sites", "3"))
    cluster = aia.FolderCluster(sites.folder, ["s1", "ghost1", "ghost2"], session="ghosts",
                                poll=POLL, timeout=20, key=KEY)
    lay = layout.Session(sites.folder, "ghosts")
    for ghost in ("ghost1", "ghost2"):
        lay.write(lay.joined(ghost), "joined", {"session": "ghosts", "site": ghost},
                  {"state": "joined", "allow": None, "min_sites": 1}, KEY)
    with pytest.raises(Exception, match="at least 3 sites it can verify") as info:
        aia.start(_sgd(), lambda pid: None, {"iteration": 3}, cluster=cluster,
                  synchronous=True, verbose=0)
    assert "s1" in str(info.value)
    assert not any(lay.numbered(lay.runs()[0], "s1", layout.ANSWER))  # no sums were sent
    cluster.cancel()
    assert sites.wait() == {"s1": 0}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux has every dir_fd call")
def test_the_folder_is_walked_by_directory_descriptors_on_linux(tmp_path):
    """Not the path-based fallback, whose checks race with a link planted between the check
    and the open (CPython lists os.rename, not os.replace, in supports_dir_fd)."""
    from aia.folder import safefs  # noqa: PLC0415

    assert safefs._DIR_FD
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "d", tmp_path / "link")
    with pytest.raises(safefs.UnsafePath):  # O_NOFOLLOW on the directory itself
        safefs.write_atomic(tmp_path, tmp_path / "link" / "x.json", b"{}")
    assert not (tmp_path / "d" / "x.json").exists()
