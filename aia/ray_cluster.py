"""Workers as Ray actors: `RayCluster`, for runs over many machines.

    pip install -e ".[ray]"

    with aia.RayCluster(4) as cluster:                  # a local Ray runtime, 4 actors
        aia.start(alg, make_problem, {"epoch": 100}, cluster=cluster)
    with aia.RayCluster(16, address="auto") as cluster:  # join a running Ray cluster
        ...

Each worker is a Ray actor (``max_restarts=0``) that holds, like a local worker process, the
run's algorithm and problem and the objects of `aia.DistributedObject` built on it. The central
calls actor methods; each call returns an ``ObjectRef`` and `RayRun.wait` waits on the
outstanding ones with ``ray.wait`` and a deadline::

    central                                        actor of worker pid
    -------                                        -------------------
    setup.remote(run, algorithm, problem)   --->   builds the problem (or takes the stored one)
    answer.remote(run, packed q)            --->   ("ok", packed a) | ("error", remote error)
    end.remote(run)                         --->   drops the run's algorithm and problem
    store / apply / free (obj_id, ...)      --->   DistributedObject, as on a local worker

- Queries and answers are pickled by aia (cloudpickle, protocol 5): the large buffers of numpy
  arrays travel out of band as arrays of bytes, so Ray moves them through its object store
  (a query broadcast to every worker is put there once). The receiver copies each buffer into
  its own memory, so the arrays it gets are writable, as with `aia.LocalCluster` (Ray's own
  zero-copy arrays are read-only).
- Exceptions come back as values: (type name, message, traceback text), so an exception whose
  class cannot be unpickled on the central still arrives. An actor that dies (its process
  killed, its node lost, ``ray.kill``) is a failure that names the worker, its actor, its
  process id and its node.
- Every query carries its run id and the central waits only on the answers of the current
  run. A query of an ended run still queued on an actor returns at once without calling
  ``answer``; an ``answer`` already running finishes first (Ray does not interrupt a running
  task of a regular actor, where a local worker gets SIGUSR1), so the next run's set-up on
  that actor waits for it, within ``stopat["time"]`` if there is one.
- Without an ``address``, `RayCluster` starts a Ray runtime on this machine bound to loopback
  only (127.0.0.1) and stops it when closed; with one (``"auto"``, ``"host:port"``,
  ``"ray://host:port"``) it joins that cluster, and closing it kills its actors and disconnects.

This module imports Ray only when a `RayCluster` is created, so ``import aia`` never does.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import uuid
import weakref
from typing import Any, Optional, Sequence

from . import requests
from .ray_actor import _import_ray, _remote_worker, _unpack
from .ray_connect import _connect, _release
from .ray_handle import Actor, RayRequest, call_event, summary
from .ray_run import BROADCAST_PUT, RayRun
from .cluster import Cluster, Failed, ObjectStore, raise_failures
from .shield import SHIELD as _SHIELD

log = logging.getLogger("aia")

START_TIMEOUT = 120.0  # seconds for the actors to be placed and come up
PING_TIMEOUT = 0.2  # seconds `alive` waits for the actors' replies
STOP_TIMEOUT = 10.0  # seconds `close` waits for killed actors to be reported dead

_clusters: "weakref.WeakSet[RayCluster]" = weakref.WeakSet()


class RayCluster(Cluster, ObjectStore):
    """``n_workers`` workers, each a Ray actor, ids 1..n.

    ``address`` None starts a Ray runtime on this machine (loopback only, no dashboard unless
    asked, stopped when the cluster closes), unless ``RAY_ADDRESS`` is set (as in a job of
    ``ray job submit``); ``"auto"``, ``"host:port"`` or ``"ray://host:port"`` joins a
    running Ray cluster. Other keyword arguments go to
    ``ray.init`` (``num_cpus``, ``runtime_env``, ``log_to_driver``, ...). If this process is
    already connected to Ray, the cluster uses that connection (and takes no address).

    ``n_workers`` None: one worker per CPU of the Ray cluster. ``actor_options`` go to each
    actor's ``.options(...)`` (``num_cpus``, ``resources``, ``scheduling_strategy``; the
    default spreads the actors over the nodes). ``blas_threads`` caps each actor's BLAS
    threads (default: the CPUs of its node divided among the actors on that node).

    Use as a context manager (or call ``close``): the actors are killed at the end, and a
    runtime the cluster started is stopped.
    """

    replaces_workers = True

    def __init__(self, n_workers: Optional[int] = None, address: Optional[str] = None, *,
                 actor_options: Optional[dict] = None, blas_threads: Optional[int] = None,
                 start_timeout: float = START_TIMEOUT, **ray_init_kwargs):
        if n_workers is not None and (isinstance(n_workers, bool)
                                      or not isinstance(n_workers, int) or n_workers < 1):
            raise ValueError(f"n_workers: expected a positive int or None, got {n_workers!r}")
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address: expected None, 'auto', 'host:port' or "
                            f"'ray://host:port', got {address!r}")
        if blas_threads is not None and (not isinstance(blas_threads, int) or blas_threads < 1):
            raise ValueError(f"blas_threads: expected a positive int or None, got "
                             f"{blas_threads!r}")
        if "name" in (actor_options or {}):
            raise ValueError("actor_options: the actors are named by RayCluster (each name "
                             "must be unique); leave out 'name'")
        ray = _import_ray()
        self._ray = ray
        self._actors: dict[int, Actor] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._connection: Optional[int] = None
        self.address = address
        self._connection = _connect(ray, address, ray_init_kwargs)
        _clusters.add(self)
        try:
            n = n_workers if n_workers is not None else max(
                1, int(ray.cluster_resources().get("CPU", 1)))
            self._start(n, dict(actor_options or {}), blas_threads, start_timeout)
        except BaseException:
            self.close()
            raise

    # -- life cycle ---------------------------------------------------------------------
    def _start(self, n: int, actor_options: dict, blas_threads: Optional[int],
               timeout: float) -> None:
        self._tag = uuid.uuid4().hex[:8]
        self._options = {"scheduling_strategy": "SPREAD", **actor_options}
        self._blas_threads = blas_threads
        self._start_timeout = timeout
        for pid in range(1, n + 1):
            self._actors[pid] = self._spawn(pid)
        actors = list(self._actors.values())
        self._await_started(actors)
        self._limit_blas(actors)
        log.debug("started %d Ray actors on %d node(s)", n,
                  len({a.node_id for a in self._actors.values()}))

    def _spawn(self, pid: int, generation: int = 0) -> Actor:
        name = f"aia-{self._tag}-worker-{pid}" + (f"-{generation}" if generation else "")
        handle = _remote_worker().options(name=name, **self._options).remote(pid)
        return Actor(pid, handle, name, generation)

    def _await_started(self, actors: list) -> None:
        """Wait for the actors to be placed and up; learn where they run."""
        ray, timeout = self._ray, self._start_timeout
        refs = {a.handle.info.remote(): a for a in actors}
        ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        if waiting:
            pids = sorted(refs[r].pid for r in waiting)
            raise TimeoutError(
                f"the Ray actors of workers {pids} did not start within {timeout:.0f} s: the "
                f"cluster may lack the resources they ask for ({self._options}; its "
                f"resources: {ray.available_resources()})")
        for ref in ready:
            actor = refs[ref]
            try:
                info = ray.get(ref)
            except ray.exceptions.RayError as exc:
                raise RuntimeError(f"worker {actor.pid} failed to start: "
                                   f"{summary(exc)}") from None
            actor.os_pid, actor.ip = info["os_pid"], info["ip"]
            actor.host, actor.node_id = info["host"], info["node_id"]

    def _replace(self, old: Actor, why: str = "is still busy with an answer of an ended "
                 "run") -> Actor:
        """Kill an actor stuck in an ended run's answer (a running actor task cannot be
        interrupted), or one that failed (``replace_failed``), and start a fresh one in its
        slot. Its distributed objects are lost (see `generation`)."""
        log.warning("aia: worker %d (%s) %s; restarting it (its distributed objects are "
                    "lost)", old.pid, old.where(), why)
        try:
            self._ray.kill(old.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - it may have died meanwhile
            pass
        old.dead = True
        fresh = self._spawn(old.pid, old.generation + 1)
        self._actors[old.pid] = fresh
        try:
            self._await_started([fresh])
            self._limit_blas([fresh])
        except BaseException:
            fresh.dead = True
            self._ray.kill(fresh.handle, no_restart=True)
            raise
        return fresh

    def generation(self, pid: int) -> int:
        """How many times worker ``pid``'s actor was replaced (its objects die each time)."""
        return self._actors[pid].generation

    def _limit_blas(self, actors: list) -> None:
        """Cap the BLAS threads of ``actors``: ``blas_threads``, or the CPUs of each node
        divided among this cluster's actors on it."""
        ray, threads = self._ray, self._blas_threads
        cpus = {node["NodeID"]: node.get("Resources", {}).get("CPU", 1)
                for node in ray.nodes() if node.get("Alive")}
        per_node: dict = {}
        for a in self._actors.values():
            per_node[a.node_id] = per_node.get(a.node_id, 0) + 1
        refs = []
        for a in actors:
            n = threads or max(1, int(cpus.get(a.node_id, 1) // per_node[a.node_id]))
            refs.append(a.handle.limit_blas.remote(n))
        ray.wait(refs, num_returns=len(refs), timeout=self._start_timeout)

    @property
    def pids(self) -> list:
        return list(self._actors)

    def alive(self) -> list:
        """The workers whose actor is not known to be dead (each is pinged; an actor busy
        with an answer counts as alive)."""
        if self._closed:
            return []
        ray = self._ray
        pings = {a.handle.ping.remote(): a for a in self._actors.values() if not a.dead}
        if pings:
            ready, _ = ray.wait(list(pings), num_returns=len(pings), timeout=PING_TIMEOUT)
            for ref in ready:
                try:
                    ray.get(ref)
                except ray.exceptions.ActorDiedError:
                    pings[ref].dead = True
                except ray.exceptions.RayError:
                    pass
        return [pid for pid, a in self._actors.items() if not a.dead]

    def os_pids(self) -> dict:
        """``{worker id: operating-system process id of its actor}``."""
        return {pid: a.os_pid for pid, a in self._actors.items()}

    def nodes(self) -> dict:
        """``{worker id: address of the node its actor runs on}``."""
        return {pid: a.ip for pid, a in self._actors.items()}

    def actor(self, pid: int):
        """The Ray actor handle of worker ``pid`` (e.g. for ``ray.kill``)."""
        return self._actors[pid].handle

    def close(self) -> None:
        """Kill the actors and wait until Ray reports them dead; stop the runtime this
        cluster started (or disconnect from the one it joined). Idempotent."""
        if self._closed:
            return
        self._closed = True
        ray = self._ray
        try:
            # Every actor is killed even through a Ctrl-C (raised once they are; a Ctrl-C
            # skips the wait for Ray's report of their deaths).
            with _SHIELD:
                if ray.is_initialized():
                    handles = [a.handle for a in self._actors.values()]
                    for handle in handles:
                        try:
                            ray.kill(handle, no_restart=True)
                        except Exception:  # noqa: BLE001 - already dead, or Ray going away
                            pass
                    if not _SHIELD.hit:
                        self._await_dead(handles)
        finally:
            for a in self._actors.values():
                a.dead = True
            if self._connection is not None:
                generation, self._connection = self._connection, None
                _release(ray, generation)

    def _await_dead(self, handles) -> None:
        ray = self._ray
        try:
            refs = [h.ping.remote() for h in handles]
            ray.wait(refs, num_returns=len(refs), timeout=STOP_TIMEOUT)
        except Exception:  # noqa: BLE001 - best effort: the actors were killed
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._actors)} actors"
        where = self.address or "local runtime"
        return f"RayCluster({len(self._actors)} workers, {state}, {where})"

    # -- results of actor calls ---------------------------------------------------------------
    def _actor(self, pid: int) -> Actor:
        if self._closed:
            raise RuntimeError("this RayCluster is closed")
        return self._actors[pid]

    def _event(self, actor: Actor, ref):
        """An `Answer` or a `Failed` of one actor call (None: a stale answer)."""
        return call_event(self._ray, actor, ref)

    def _request(self, pids: Sequence[int], call, deadline: Optional[float] = None,
                 tolerate: Optional[int] = None) -> dict:
        """``call(actor handle)`` on each of ``pids``; ``{pid: ("ok", value) | Failed}``,
        by the rules of `aia.requests.request` (an actor still busy with the answer of an
        ended run gets its patience, then a fresh actor takes the call; with ``tolerate``,
        a set-up far slower than the others' fails)."""
        return requests.request(RayRequest(self, call), pids, deadline, tolerate)

    # -- the Cluster interface --------------------------------------------------------------
    def open_run(self, algorithm: bytes, problem: tuple, pids: Sequence[int],
                 deadline: Optional[float]) -> tuple:
        return self.open_run_tolerating(algorithm, problem, pids, deadline, None)

    def open_run_tolerating(self, algorithm: bytes, problem: tuple, pids: Sequence[int],
                            deadline: Optional[float], tolerate: Optional[int]) -> tuple:
        run = next(self._ids)
        shared = self._shared(algorithm, len(pids))
        results = self._request(pids, lambda h: h.setup.remote(run, shared, problem), deadline,
                                tolerate)
        failed = [r for r in results.values() if isinstance(r, Failed)]
        live = [pid for pid in pids if not isinstance(results[pid], Failed)]
        return RayRun(self, run, live), failed

    def _shared(self, data: bytes, n: int):
        """``data`` for ``n`` actors: put once in the object store when it is large."""
        return self._ray.put(data) if n > 1 and len(data) >= BROADCAST_PUT else data

    def store(self, obj_id: int, make: bytes, pids: Sequence[int]) -> None:
        make = self._shared(make, len(pids))
        raise_failures(self._request(pids, lambda h: h.store.remote(obj_id, make)),
                        "building the object")

    def apply(self, obj_id: int, pid: int, fn: bytes) -> Any:
        return self.apply_all(obj_id, [pid], fn)[pid]

    def apply_all(self, obj_id: int, pids: Sequence[int], fn: bytes) -> dict:
        fn = self._shared(fn, len(pids))
        results = self._request(pids, lambda h: h.apply.remote(obj_id, fn))
        raise_failures(results, "applying the function")
        return {pid: _unpack(value) for pid, (_, value) in results.items()}

    def free(self, obj_id: int, pids: Sequence[int]) -> None:
        if self._closed or not self._ray.is_initialized():
            return
        for pid in pids:
            actor = self._actors.get(pid)
            if actor is not None and not actor.dead:
                try:
                    actor.handle.free.remote(obj_id)
                except Exception:  # noqa: BLE001 - a finalizer: never raise
                    pass


@atexit.register
def _close_all() -> None:
    """Kill the actors of clusters the user forgot to close (before Ray's own exit hook)."""
    for cluster in list(_clusters):
        try:
            cluster.close()
        except (Exception, KeyboardInterrupt):  # noqa: BLE001 - exiting anyway
            pass
