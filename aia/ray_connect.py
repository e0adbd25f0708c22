"""This process's connection to Ray, shared by the `aia.RayCluster` s that use it: started
on loopback or joined at an address, and shut down by the last cluster that made it."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Optional

LOOPBACK = "127.0.0.1"

_lock = threading.RLock()
# The Ray connection this process holds when a RayCluster made it (started a runtime or joined
# an address): how many clusters use it, and which connection it is (``ray.shutdown`` by hand
# and a new connection must not let a cluster of the old one close the new one).
_connection: dict = {"users": 0, "generation": 0}


@contextlib.contextmanager
def _ray_addresses(loopback: bool):
    """Ray's choice of the node address, during ``ray.init``.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when it is imported; when the
    variable is 0 every address it picks is 127.0.0.1, else it takes the machine's network
    address even for ``_node_ip_address="127.0.0.1"``, and its servers listen on every
    interface. ``loopback`` sets the variable (for the processes the runtime starts) and the
    constant (for this process); otherwise the constant follows the variable as it is now,
    in case Ray was imported before it was set.
    """
    from ray._private import ray_constants  # noqa: PLC0415

    var = getattr(ray_constants, "ENABLE_RAY_CLUSTERS_ENV_VAR",
                  "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    saved_env = os.environ.get(var)
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if loopback:
        os.environ[var] = "0"
    value = os.environ.get(var)
    if value is not None and saved is not None:
        ray_constants.ENABLE_RAY_CLUSTER = value.lower() in ("1", "true")
    try:
        yield
    finally:
        if loopback:
            if saved_env is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = saved_env
        if saved is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved


_JOIN_HINT = (
    "If the cluster runs, check: a head started with token authentication (the default of "
    "`ray start --head`) needs RAY_AUTH_MODE=token in this process's environment and the "
    "cluster's token (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH); a head bound "
    "to 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) is reachable only by a driver with "
    "the same variable set")


def _connect(ray, address: Optional[str], kwargs: dict) -> Optional[int]:
    """Connect this process to Ray. Returns the generation of the connection if a RayCluster
    made it (this cluster then takes part in closing it), None for the user's own."""
    with _lock:
        if ray.is_initialized():
            if address is not None or kwargs:
                raise RuntimeError(
                    "this process is already connected to Ray: RayCluster uses that "
                    "connection, and takes no address or ray.init arguments then (close the "
                    "other RayCluster or call ray.shutdown() first to connect elsewhere)")
            if _connection["users"] > 0:
                _connection["users"] += 1
                return _connection["generation"]
            return None  # the user's own ray.init: theirs to shut down
        kwargs = dict(kwargs)
        # A driver run by `ray job submit` (or told so) finds its cluster in RAY_ADDRESS.
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address is None:
            kwargs.setdefault("include_dashboard", False)
            loopback = "_node_ip_address" not in kwargs
            if loopback:
                kwargs["_node_ip_address"] = LOOPBACK
            with _ray_addresses(loopback):
                try:
                    with _interrupt_after():
                        ray.init(**kwargs)
                except BaseException:  # an error, or Ctrl-C held off until the init ended
                    _shutdown_quietly(ray)
                    raise
        else:
            with _ray_addresses(False):
                try:
                    ray.init(address=address, **kwargs)
                except ConnectionError as exc:
                    raise ConnectionError(f"{exc}. {_JOIN_HINT}") from exc
        _connection["generation"] += 1
        _connection["users"] = 1
        return _connection["generation"]


@contextlib.contextmanager
def _interrupt_after():
    """Hold Ctrl-C off while ``ray.init`` starts a local runtime (a second or two), then
    raise it: an init interrupted part way leaves processes it no longer knows (the
    raylet's agents, which outlive it with parent 1), a finished one is shut down whole.
    In the main thread only (elsewhere signals do not arrive)."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None):
        yield  # (Ctrl-C ignored, or a handler not set from Python: left as it is)
        return
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda *_: pressed.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt  # with the runtime up: `_connect`'s caller shuts it down


def _shutdown_quietly(ray) -> None:
    """``ray.shutdown()`` after a failed ``ray.init``; Ray's own errors held off (the
    init's error is the one to see)."""
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001
        pass


def _release(ray, generation: int) -> None:
    """One cluster less on the connection ``generation``; the last one shuts it down."""
    with _lock:
        if generation != _connection["generation"] or _connection["users"] <= 0:
            return  # shut down by hand since: not ours any more
        _connection["users"] -= 1
        if _connection["users"] == 0:
            ray.shutdown()


# -- the cluster -----------------------------------------------------------------------------
