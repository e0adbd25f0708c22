"""The transport: pickle protocol 5 frames over a socket, arrays out of band."""

from __future__ import annotations

import threading

import numpy as np
import pytest

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
