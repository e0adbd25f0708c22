"""aia: asynchronous and synchronous distributed iterative algorithms.

Write an algorithm as a subclass of `AbstractAlgorithm` and run it with `start`; workers are
local processes (`LocalCluster`) by default, or Ray actors (`RayCluster`, with the ``ray``
extra). See the README for a tour.
"""

from .algorithm import AbstractAlgorithm
from .cluster import Cluster
from .distributed import DistributedObject
from .errors import Failure, RemoteError, WorkerFailedError
from .folder import FolderCluster
from .history import History, load_history
from .local import LocalCluster
from .checkpoint import resume
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
    "LocalCluster",
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
