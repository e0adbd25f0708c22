"""The Ray side of a worker: the actor (a `aia.worker_state.WorkerState`) and what crosses
between it and the central (`_pack`: cloudpickle protocol 5, large buffers out of band)."""

from __future__ import annotations

import os
import pickle
from typing import Any

import cloudpickle
import numpy as np

from .worker_state import WorkerState, limit_blas, remote_error


def _import_ray():
    try:
        import ray  # noqa: PLC0415 - Ray is optional and heavy: imported on first use
    except ImportError as exc:
        raise ImportError(
            "aia.RayCluster needs Ray: pip install \"aia[ray]\" (or pip install -e \".[ray]\" "
            "in a clone), on this machine and on every node of the Ray cluster") from exc
    return ray


def _pack(obj: Any) -> tuple:
    """``obj`` pickled (cloudpickle, protocol 5), with its large buffers as byte arrays that
    Ray moves through its object store without copying them into the pickle stream."""
    buffers: list = []
    try:
        data = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:
        raise TypeError(
            f"cannot send an object of type {type(obj).__name__!r} to another process: {exc}. "
            "What crosses between processes must be picklable (numbers, arrays, lists, "
            "dicts, classes; not open files, locks, sockets or generators).") from exc
    return data, [np.frombuffer(b.raw(), dtype=np.uint8) for b in buffers]


def _unpack(packed: tuple) -> Any:
    """The object of `_pack`; each buffer is copied into a ``bytearray`` so that the arrays
    built on it are writable (Ray hands out read-only views of its object store)."""
    data, buffers = packed
    return pickle.loads(data, buffers=[bytearray(b) for b in buffers])


def _nbytes(packed: tuple) -> int:
    data, buffers = packed
    return len(data) + sum(b.nbytes for b in buffers)


def _call(compute) -> tuple:
    """``("ok", compute())``, or ``("error", (type name, message, traceback))``: an exception
    returned as text, never raised, so that any exception reaches the central."""
    try:
        return "ok", compute()
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the central
        return "error", remote_error(exc)


class _Worker(WorkerState):
    """One worker (`aia.worker_state.WorkerState`, as a local worker process holds it), in
    an actor: each method is a call of the central, its result a tagged value."""

    def info(self) -> dict:
        import socket  # noqa: PLC0415

        import ray  # noqa: PLC0415 - the actor runs in a Ray worker process

        return {"os_pid": os.getpid(), "host": socket.gethostname(),
                "ip": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id()}

    def limit_blas(self, threads: int) -> bool:
        limit_blas(threads)
        return True

    def ping(self) -> bool:
        return True

    def setup(self, run: int, algorithm: bytes, problem: tuple) -> tuple:
        self.begin(run)
        return _call(lambda: super(_Worker, self).setup(run, algorithm, problem))

    def answer(self, run: int, packed: tuple) -> tuple:
        if run != self.run:
            return "stale", None  # a query of a run that has ended
        return _call(lambda: _pack(super(_Worker, self).answer(run, self._query(packed))))

    @staticmethod
    def _query(packed: tuple) -> Any:
        try:
            return _unpack(packed)
        except Exception as exc:
            raise RuntimeError(f"the worker cannot unpickle what the central sent: "
                               f"{type(exc).__name__}: {exc}") from exc

    def store(self, obj_id: int, make: bytes) -> tuple:
        return _call(lambda: super(_Worker, self).store(obj_id, cloudpickle.loads(make)))

    def apply(self, obj_id: int, fn: bytes) -> tuple:
        return _call(lambda: _pack(super(_Worker, self).apply(obj_id, cloudpickle.loads(fn))))


_actor_class = None


def _remote_worker():
    """The actor class, made once Ray is imported."""
    global _actor_class
    if _actor_class is None:
        ray = _import_ray()
        _actor_class = ray.remote(max_restarts=0, max_task_retries=0)(_Worker)
    return _actor_class
