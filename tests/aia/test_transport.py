"""The transport: pickle protocol 5 frames over a socket, arrays out of band."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

import aia
from aia import transport


def roundtrip(obj):
    a, b = transport.pipe()
    try:
        sender = threading.Thread(target=a.send, args=(transport.QUERY, obj, 42))
        sender.start()
        kind, run, got = b.recv()
        sender.join(10)
        assert (kind, run) == (transport.QUERY, 42)
        return got
    finally:
        a.close()
        b.close()


def test_large_arrays_arrive_equal_writable_and_aligned():
    x = np.random.default_rng(0).normal(size=(1000, 300))
    got = roundtrip({"x": x, "s": "text", "n": 3})
    np.testing.assert_array_equal(got["x"], x)
    assert got["x"].flags.writeable and got["x"].flags.aligned
    assert got["s"] == "text" and got["n"] == 3


def test_arrays_are_sent_out_of_band():
    x = np.arange(10_000.0)
    data, buffers = transport.dumps(x)
    assert len(buffers) == 1 and buffers[0].nbytes == x.nbytes
    assert len(data) < 1000  # the pickle stream does not hold the array's bytes


def test_non_contiguous_and_mixed_objects():
    x = np.arange(24.0).reshape(4, 6)[:, ::2]
    got = roundtrip([x, np.float32(1.5), None, (1, 2)])
    np.testing.assert_array_equal(got[0], x)
    assert got[1:] == [np.float32(1.5), None, (1, 2)]


def test_lambdas_fall_back_to_cloudpickle():
    f = roundtrip(lambda v: v + 1)
    assert f(1) == 2


def test_unpicklable_object_is_a_type_error_naming_the_type():
    with pytest.raises(TypeError, match="type 'lock'"):
        transport.dumps(threading.Lock())


def test_closed_peer_is_channel_closed():
    a, b = transport.pipe()
    a.close()
    with pytest.raises(transport.ChannelClosed):
        b.recv()
    b.close()


# -- large buffers through shared memory ------------------------------------------------
shared_memory = pytest.mark.skipif(transport.SHARED_MIN is None,
                                   reason="no memfd_create/send_fds on this platform")


def _pipes(n):
    pairs = [transport.pipe() for _ in range(n)]
    for a, b in pairs:  # a large frame sent in band to nobody reading fails, not hangs
        a.sock.settimeout(10)
        b.sock.settimeout(10)
    return [a for a, _ in pairs], [b for _, b in pairs]


def _close(*channels):
    for c in channels:
        c.close()


def _big(seed, n=200_000):
    return np.random.default_rng(seed).normal(size=n)  # 1.6 MB: over SHARED_MIN


@shared_memory
def test_large_arrays_go_through_shared_memory_and_arrive_private_and_writable():
    (a,), (b,) = _pipes(1)
    try:
        x = _big(1)
        a.send(transport.QUERY, {"x": x, "y": x[::-1].copy()}, 7)
        kind, run, got = b.recv()
        assert (kind, run) == (transport.QUERY, 7)
        np.testing.assert_array_equal(got["x"], x)
        np.testing.assert_array_equal(got["y"], x[::-1])
        assert got["x"].flags.writeable and got["x"].flags.aligned
        (arena,) = [ar for ar in transport._pool.arenas if a in ar.known_by]
        assert len(b._arenas) == 1  # the receiver mapped the sender's arena once
        got["x"][:] = 0  # the receiver's copy is its own: the sender's arena is unchanged
        shared = np.frombuffer(arena.map, dtype=float, count=x.size)
        np.testing.assert_array_equal(shared, x)
    finally:
        _close(a, b)


@shared_memory
def test_broadcast_writes_a_message_once_for_every_receiver(monkeypatch):
    senders, receivers = _pipes(3)
    writes = []
    original = transport.Arena.write
    monkeypatch.setattr(transport.Arena, "write",
                        lambda self, buffers: writes.append(self) or original(self, buffers))
    try:
        x = _big(2)
        message = transport.encode(x)
        for s in senders:
            s.send_message(transport.QUERY, 1, message)
        got = [r.recv()[2] for r in receivers]
        assert len(writes) == 1 and writes[0].known_by == set(senders)
        for g in got:
            np.testing.assert_array_equal(g, x)
        got[0][:] = -1  # each receiver has memory of its own
        np.testing.assert_array_equal(got[1], x)
    finally:
        _close(*senders, *receivers)


@shared_memory
def test_an_arena_is_reused_only_after_the_receiver_acknowledged_it():
    (a,), (b,) = _pipes(1)
    try:
        x1, x2, x3 = _big(3), _big(4), _big(5)
        a.send(transport.QUERY, x1)
        a.send(transport.QUERY, x2)  # the first is not acknowledged: another arena
        used = [ar for ar in transport._pool.arenas if a in ar.known_by]
        assert len(used) == 2
        np.testing.assert_array_equal(b.recv()[2], x1)  # intact: nothing wrote over it
        np.testing.assert_array_equal(b.recv()[2], x2)
        b.send(transport.ANSWER, "got both")  # acknowledges both frames
        assert a.recv()[2] == "got both"
        a.send(transport.QUERY, x3)  # reuses one of the two: no third arena
        assert [ar for ar in transport._pool.arenas if a in ar.known_by] == used
        np.testing.assert_array_equal(b.recv()[2], x3)
    finally:
        _close(a, b)


@shared_memory
def test_a_larger_message_replaces_a_free_arena_and_the_receiver_unmaps_the_old_one():
    (a,), (b,) = _pipes(1)
    try:
        a.send(transport.QUERY, _big(6))
        b.recv()
        (first,) = b._arenas
        b.send(transport.ANSWER, None)
        a.recv()
        big = _big(7, n=1_000_000)  # 8 MB: more than the 2 MiB arena holds
        a.send(transport.QUERY, big)
        a.send(transport.QUERY, _big(8))  # tells the receiver the first arena is retired
        np.testing.assert_array_equal(b.recv()[2], big)
        b.recv()
        assert first not in b._arenas  # unmapped
        assert set(b._arenas) == {ar.ident for ar in transport._pool.arenas if a in ar.known_by}
    finally:
        _close(a, b)


@shared_memory
def test_closing_the_channels_closes_their_arenas():
    (a,), (b,) = _pipes(1)
    a.send(transport.QUERY, _big(9))
    b.recv()
    arena = next(ar for ar in transport._pool.arenas if a in ar.known_by)
    _close(a, b)
    assert arena.closed and arena not in transport._pool.arenas


def test_without_shared_memory_large_arrays_travel_in_the_frame(monkeypatch):
    monkeypatch.setattr(transport, "SHARED_MIN", None)
    x = _big(10)
    got = roundtrip(x)
    np.testing.assert_array_equal(got, x)
    assert got.flags.writeable


class Scale(aia.AbstractAlgorithm):
    """Workers answer pid * query; the central sums the round."""

    def __init__(self, n):
        self.n = n

    def initialize(self, problem):
        return np.arange(self.n, dtype=float)

    def answer(self, q, problem):
        return problem * q

    def sync_central_step(self, answers, workers, problem):
        return sum(answers) / sum(workers)

    def central_step(self, a, worker, problem):
        return a / worker


@pytest.mark.parametrize("synchronous", [True, False])
def test_large_queries_and_answers_between_real_processes(synchronous):
    n = 300_000  # 2.4 MB each way
    h = aia.start(Scale(n), lambda pid: pid, {"iteration": 12}, cluster=3, verbose=0,
                  synchronous=synchronous, save_answers=True)
    for answers, workers, q in zip(h.answers, h.answers_origin, h.queries):
        answers = answers if synchronous else [answers]
        workers = workers if synchronous else [workers]
        for a, w in zip(answers, workers):
            np.testing.assert_array_equal(a, w * np.arange(n, dtype=float))
    np.testing.assert_array_equal(h.queries[-1], np.arange(n, dtype=float))


def _arena_holdings(queue):
    """In a child: how many aia arenas it maps or holds a descriptor of."""
    import os as _os

    maps = open("/proc/self/maps").read().count("aia-arena")
    fds = sum("aia-arena" in _os.readlink(f"/proc/self/fd/{fd}")
              for fd in _os.listdir("/proc/self/fd")
              if _os.path.exists(f"/proc/self/fd/{fd}"))
    queue.put((maps, fds))


@shared_memory
def test_a_forked_child_drops_the_arenas_it_inherited():
    import multiprocessing as mp

    (a,), (b,) = _pipes(1)
    try:
        a.send(transport.QUERY, _big(11))  # an arena of ours, and
        b.recv()  # a mapping of the peer's (here: the same process)
        mine = open("/proc/self/maps").read().count("aia-arena")
        assert mine >= 2
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_arena_holdings, args=(queue,))
        child.start()
        assert queue.get(timeout=30) == (0, 0)
        child.join(10)
    finally:
        _close(a, b)


def test_the_central_polls_only_while_answers_come_fast():
    import socket
    import time

    from aia.local import SPIN, _Poller

    a, b = socket.socketpair()
    poller = _Poller()
    try:
        poller.register(b.fileno(), "b")
        a.send(b"x")
        assert poller.poll(None) == ["b"]  # at once: a fast answer, the next wait may poll
        b.recv(1)
        fast = poller._fast
        cpu = time.process_time()
        assert poller.poll(0.3) == []  # nothing comes: one poll of SPIN, then sleep
        assert poller._fast is False
        cpu_slow = time.process_time()
        assert poller.poll(0.3) == []  # after a slow wait it sleeps at once
        assert time.process_time() - cpu_slow < 0.05 and cpu_slow - cpu < 0.05
        assert fast is (sys.platform.startswith("linux")) or SPIN == 0
    finally:
        poller.close()
        a.close()
        b.close()
