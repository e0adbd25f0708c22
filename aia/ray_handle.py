"""The central's side of one Ray actor: its handle and clock (`Actor`), what an actor call
came to (`call_result`, `call_event`), and the request loop's Ray part (`RayRequest`, for
`aia.requests.request`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

from . import requests
from .cluster import Answer, Failed, WorkerClock
from .ray_actor import _unpack

if TYPE_CHECKING:
    from .ray_cluster import RayCluster


class Actor(WorkerClock):
    """The central's view of one actor."""

    def __init__(self, pid: int, handle, name: str, generation: int = 0):
        self.pid = pid
        self.handle = handle
        self.name = name
        self.generation = generation
        self.os_pid: Optional[int] = None
        self.ip: Optional[str] = None
        self.host: Optional[str] = None
        self.node_id: Optional[str] = None
        self.dead = False
        # abandoned: (answer ref, when) of an ended run still answering when the run ended.
        WorkerClock.__init__(self)

    def stuck(self, ray, now: float) -> Optional[bool]:
        """None: not busy with an ended run; False: still within its patience (or back from
        that answer, which clears it); True: out of patience."""
        if self.abandoned is None:
            return None
        if ray.wait([self.abandoned[0]], timeout=0)[0]:
            self.abandoned = None
            return None
        return now >= self.give_up_at()

    def where(self) -> str:
        place = f"process {self.os_pid}" if self.os_pid else "process unknown"
        if self.ip:
            place += f" on {self.host} ({self.ip})" if self.host else f" on {self.ip}"
        return f"Ray actor {self.name}, {place}"


def call_result(ray, actor: Actor, ref):
    """The outcome of one actor call: ``("ok", value)``, a `Failed`, or None (the answer
    of a run that has ended)."""
    try:
        tag, value = ray.get(ref)
    except ray.exceptions.ActorDiedError as exc:
        actor.dead = True
        return Failed(actor.pid, f"its {actor.where()} died: {summary(exc)}", None,
                      actor.os_pid)
    except ray.exceptions.RayActorError as exc:
        return Failed(actor.pid, f"its {actor.where()} is unreachable: {summary(exc)}",
                      None, actor.os_pid)
    except ray.exceptions.RayError as exc:
        return Failed(actor.pid, f"its {actor.where()} lost a result: "
                      f"{type(exc).__name__}: {summary(exc)}", None, actor.os_pid)
    if tag == "error":
        return Failed.raised(actor.pid, value, actor.os_pid)
    if tag == "stale":
        return None
    return "ok", value

def call_event(ray, actor: Actor, ref):
    """An `Answer` or a `Failed` (None: a stale answer)."""
    result = call_result(ray, actor, ref)
    if not isinstance(result, tuple):
        return result
    try:
        return Answer(actor.pid, _unpack(result[1]))
    except Exception as exc:
        return Failed(actor.pid, f"sent a message the central cannot unpickle "
                      f"({type(exc).__name__}: {exc}); answers must be made of classes "
                      f"importable on the central", None, actor.os_pid)


class RayRequest(requests.Requester):
    """An actor call on workers of a `RayCluster` (`aia.requests.request`)."""

    def __init__(self, cluster: "RayCluster", call):
        self.cluster, self.call = cluster, call
        self.pending: dict = {}  # pid -> the ref of its call

    def prepare(self, pid: int) -> Actor:
        return self.cluster._actor(pid)

    def dead(self, actor: Actor) -> Optional[Failed]:
        if not actor.dead:
            return None
        return Failed(actor.pid, f"its {actor.where()} is dead", None, actor.os_pid)

    def post(self, actor: Actor) -> Optional[Failed]:
        self.pending[actor.pid] = (self.call(actor.handle), actor)
        return None

    def token(self, actor: Actor):
        return self.pending[actor.pid][0]

    def collect(self, actors: list, limit: Optional[float]) -> list:
        ray = self.cluster._ray
        refs = {self.pending[a.pid][0]: a for a in actors}
        timeout = None if limit is None else max(0.0, limit - time.monotonic())
        ready, rest = ray.wait(list(refs), num_returns=1, timeout=timeout)
        if ready and rest:  # and whatever else is in already
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return [(refs[ref], call_result(ray, refs[ref], ref)) for ref in ready]

    def replace(self, actor: Actor, why: Optional[str] = None) -> Actor:
        return self.cluster._replace(actor) if why is None else self.cluster._replace(actor, why)

    def refresh(self, actor: Actor) -> None:
        actor.stuck(self.cluster._ray, time.monotonic())  # clears it once back


def summary(exc: BaseException) -> str:
    """The gist of a Ray error: its message without the indented actor details."""
    lines = [line.strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not line.startswith(
        ("class_name:", "actor_id:", "pid:", "name:", "namespace:", "ip:"))]
    text = " ".join(lines[1:] if len(lines) > 1 else lines)
    return text if len(text) <= 400 else text[:397] + "..."
