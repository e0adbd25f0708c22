"""Where a fit's sites live: one per worker of a cluster (a `aia.DistributedObject` whose
objects are the `Site` s, each reading its own file), or all in this process
(``cluster="inprocess"``); `_Placed` is the ``sites`` interface of `fit_steps` for both."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pandas as pd

import aia
from aia.checks import check_cluster

from .base import DesignMismatchError
from .design import Design
from .fisher import FisherScoring
from .site import Site, SiteGroup
from .site_errors import SITE_ERRORS, error_data, site_error


def _site_list(sites: Any) -> tuple[list, list]:
    if isinstance(sites, (str, Path, pd.DataFrame)):
        raise TypeError("sites: expected a list (or dict) of sites, one entry per site")
    if isinstance(sites, Mapping):
        names, sources = [str(k) for k in sites], list(sites.values())
    else:
        sources = list(sites)
        names = [Path(s).name if isinstance(s, (str, Path)) else f"site {i + 1}"
                 for i, s in enumerate(sources)]
        if len(set(names)) < len(names):
            names = [f"site {i + 1} ({n})" for i, n in enumerate(names)]
    if not sources:
        raise ValueError("sites: expected at least one site")
    for s in sources:
        if not isinstance(s, (str, Path, pd.DataFrame)):
            raise TypeError(f"sites: expected paths or DataFrames, got {type(s).__name__}")
    return names, sources


def _call(method: str, args: tuple, site: Optional[Site]):
    """Run a site method where the site lives; its refusals and errors come back as data."""
    if site is None:
        return None
    try:
        return ("ok", getattr(site, method)(*args))
    except SITE_ERRORS as exc:
        return ("error", error_data(exc))


def _unwrap(results: Mapping, order: Sequence, names: Sequence[str]) -> list:
    out = []
    for key, name in zip(order, names):
        status, value = results[key]
        if status == "error":
            raise site_error(value, name)
        out.append(value)
    return out


def _new_site(paths: dict, names: dict, pid: int) -> Optional[Site]:
    return Site(paths.get(pid), names[pid]) if pid in names else None


def _set_table(table: pd.DataFrame, site: Site) -> None:
    site.set_table(table)


class _Placed:
    """The sites, wherever they live, and how to reach them: the ``sites`` of `fit_steps`
    for workers of a cluster or sites in this process (a synced folder's are
    `algorithms.glm.folder._FolderSites`)."""

    def __init__(self, handle, pids: list, names: list, cluster, problem=None):
        self.handle, self.pids, self.names, self.cluster = handle, pids, names, cluster
        self.problem = handle if problem is None else problem

    def call(self, method: str, *args) -> list:
        """``site.method(*args)`` on every site, in site order."""
        results = self.handle.map(functools.partial(_call, method, args))
        return _unwrap(results, self.pids, self.names)

    @staticmethod
    def prepare(design: Design) -> Design:
        return design

    def run(self, alg: FisherScoring, stopat: dict, synchronous: bool, verbose: int,
            resilience: int = 0):
        if self.cluster is None:  # in process
            return aia.start(alg, lambda pid: self.problem, stopat, pids=[0],
                             synchronous=True, verbose=verbose)
        return aia.start(alg, self.problem, stopat, pids=self.pids, cluster=self.cluster,
                         synchronous=synchronous, verbose=verbose, resilience=resilience)

    def without(self, failed) -> "_Placed":
        """These sites but the ``failed`` workers (which are asked nothing more)."""
        keep = [i for i, pid in enumerate(self.pids) if pid not in failed]
        return _Placed(self.handle, [self.pids[i] for i in keep],
                       [self.names[i] for i in keep], self.cluster, self.problem)


class _InProcess:
    """`aia.DistributedObject`'s ``map`` for sites held by this process."""

    def __init__(self, sites: list):
        self.sites = sites

    def map(self, fn) -> dict:
        return {i + 1: fn(site) for i, site in enumerate(self.sites)}


@contextlib.contextmanager
def _placed(sources: list, names: list, cluster: Any):
    n = len(sources)
    if cluster != "inprocess":
        try:  # aia.start's check, so that the same mistake reads the same everywhere
            check_cluster(cluster)
        except TypeError as exc:
            raise TypeError(f"{exc}; or 'inprocess' (every site in this process)") from None
    if isinstance(cluster, str):
        sites = [Site(src, name) for src, name in zip(sources, names)]
        yield _Placed(_InProcess(sites), list(range(1, n + 1)), names, None, SiteGroup(sites))
        return
    with contextlib.ExitStack() as stack:
        if cluster is None or isinstance(cluster, int) and not isinstance(cluster, bool):
            cluster = stack.enter_context(aia.LocalCluster(n if cluster is None else cluster))
        if len(cluster.pids) < n:
            raise ValueError(f"cluster: {n} sites need {n} workers, the cluster has "
                             f"{len(cluster.pids)}")
        pids = list(cluster.pids[:n])
        by_pid = dict(zip(pids, names))
        paths = {pid: src for pid, src in zip(pids, sources) if not isinstance(src, pd.DataFrame)}
        handle = aia.DistributedObject(functools.partial(_new_site, paths, by_pid), cluster)
        stack.callback(handle.free)  # the sites' rows leave the workers with the fit
        for pid, src in zip(pids, sources):
            if isinstance(src, pd.DataFrame):  # sent to its worker only
                handle.apply(pid, functools.partial(_set_table, src))
        yield _Placed(handle, pids, names, cluster)


def _same_columns(columns: list, names: list) -> None:
    if any(c != columns[0] for c in columns):
        detail = "; ".join(f"{n}: {list(c)}" for n, c in zip(names, columns))
        raise DesignMismatchError(f"the sites built different design columns ({detail})")
