"""The test process's children, read safely while they come and go."""

from __future__ import annotations

import multiprocessing.forkserver
import multiprocessing.resource_tracker

import psutil


def living_children() -> list:
    """This process's descendants that are running (not zombies), but for multiprocessing's
    forkserver and resource tracker: servers meant to live as long as this process, started
    by the first forkserver LocalCluster (the workers it forks are still listed, as its
    children).

    A child that exits while it is being looked at (psutil's NoSuchProcess between listing
    and reading its status) is simply not running: the check must not fail on the race it
    is there to watch."""
    servers = {getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
               getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)}
    living = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid not in servers and p.status() != psutil.STATUS_ZOMBIE:
                living.append(p)
        except psutil.Error:
            pass
    return living
