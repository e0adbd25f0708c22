"""aia: asynchronous and synchronous distributed iterative algorithms.

Write an algorithm as a subclass of `AbstractAlgorithm` and run it with `start`; workers are
local processes (`LocalCluster`) by default, or Ray actors (`RayCluster`, with the ``ray``
extra), sites sharing a folder (`FolderCluster`), or objects in this process
(`InMemoryCluster`, the fast way to test an algorithm). See the README for a tour.

Architecture, from the user's code down::

    algorithm protocol     aia.algorithm (AbstractAlgorithm), aia.wrappers (+ averaging,
          |                wrapper_base)
          |
    run and recording      aia.run (start: the central loop), aia.recording, aia.history,
          |                aia.progress, aia.checks (argument checks)
    cluster seam           aia.cluster: Cluster / Run (the contract run.py relies on),
          |                ObjectStore (the capability aia.distributed needs), Answer/Failed,
          |                BuildProblem/StoredProblem (the typed problem spec)
    worker's side, once    aia.worker_state (WorkerState: set-up, answer, end, objects),
          |                aia.requests (one request loop: set-up bounds, replacement)
    engines                aia.memory (InMemoryCluster); aia.local (+ local_handle,
          |                local_run, local_stop, poller, _worker); aia.ray_cluster (+
          |                ray_actor, ray_connect, ray_handle, ray_run); aia.folder
          |                (central, folder_run, site, site_answers: a site's runs are
          |                WorkerStates, registry); aia.shield (clean-up through a Ctrl-C)
    transport              aia.transport (channels: sending), aia.receive (receiving),
                           aia.frames (the frame, pickling), aia.arena (shared memory),
                           aia.interrupts (Ctrl-C and channels), aia.folder.codec/layout

`aia` imports nothing from the applications built on it (`algorithms`): the algorithms a
folder site offers by name come from the entry points of group ``aia.folder``.

Exceptions: see `aia.errors` for the whole tree. `WorkerFailedError` (a RuntimeError: one
failure more than ``resilience``; its ``failures`` are `Failure` records) caused by a
`RemoteError` (a worker's exception as text).
"""

from .algorithm import AbstractAlgorithm
from .cluster import Cluster, ObjectStore
from .distributed import DistributedObject
from .errors import Failure, RemoteError, WorkerFailedError
from .folder import FolderCluster
from .history import History, load_history
from .local import LocalCluster
from .checkpoint import resume
from .memory import InMemoryCluster
from .run import start
from .wrappers import AggregationAlgorithm, AveragingAlgorithm

__all__ = sorted([
    "AbstractAlgorithm",
    "AggregationAlgorithm",
    "AveragingAlgorithm",
    "Cluster",
    "DistributedObject",
    "Failure",
    "FolderCluster",
    "History",
    "InMemoryCluster",
    "LocalCluster",
    "ObjectStore",
    "RayCluster",
    "RemoteError",
    "WorkerFailedError",
    "load_history",
    "resume",
    "start",
])

__version__ = "0.1.0"


def __getattr__(name):
    # RayCluster is imported on first use: `import aia` must not import Ray (heavy, optional).
    if name == "RayCluster":
        from .ray_cluster import RayCluster

        return RayCluster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
