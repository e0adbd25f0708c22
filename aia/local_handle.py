"""The central's handle on one local worker process (`aia.LocalCluster`): its process, its
channel, and how its death is seen (a pidfd on Linux), reaped and described."""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from typing import Optional

from .cluster import Failed, WorkerClock
from .transport import Channel


class _Handle(WorkerClock):
    """The central's view of one worker."""

    def __init__(self, pid: int, process, channel: Channel, generation: int = 0):
        self.pid = pid
        self.process = process
        self.channel = channel
        self.generation = generation
        self.os_pid: Optional[int] = None
        self.dead = False
        self.stopped_since: Optional[float] = None  # seen stopped (SIGSTOP) since then
        # Readable once the process has ended. A pidfd (Linux) watches the process itself:
        # the sentinel is a pipe that a child the worker forked (a process pool in answer)
        # inherits, and then its end never comes while that child lives.
        self.pidfd = _pidfd(process.pid)
        self.death_fd = process.sentinel if self.pidfd is None else self.pidfd
        # abandoned: (run, when) of an ended run whose answer it was interrupted in; cleared
        # by any message of that run (the answer, or the Interrupted error).
        WorkerClock.__init__(self)

    def exit_failure(self, wait: float = 1.0) -> Failed:
        """The failure of a worker whose process ended (or whose channel broke)."""
        torn = self.channel.torn  # cut mid-message: the process may well be alive
        code = self.reap(0 if torn else wait)
        self.dead = True
        if code is not None:  # gone for good: its shared memory and its children with it
            self.channel.release_shared()
            self.kill_children()
        cause = describe_exit(code)
        if code is None and torn:
            cause = ("its channel was cut in the middle of a message (interrupted, or the "
                     "worker stalled past the time limit); the worker is replaced")
        return Failed(self.pid, cause, None, self.os_pid, code)


    def reap(self, wait: float) -> Optional[int]:
        """The exit code, waiting up to ``wait`` seconds for the process to end (None: it
        still runs)."""
        if self.pidfd is None:
            self.process.join(wait)
        elif select.select([self.pidfd], [], [], wait)[0]:
            # Ended: reap it (its sentinel, which join waits for, may be held by a child).
            for _ in range(100):
                code = self.process.exitcode
                if code is not None:
                    return code
                time.sleep(0.001)
        return self.process.exitcode

    def kill_children(self) -> None:
        """Kill what the worker forked and left behind (its process group: see
        `_worker.main`), which would live on as orphans."""
        if self.os_pid is not None and sys.platform != "win32":
            try:
                os.killpg(self.os_pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass

    def close_pidfd(self) -> None:
        """Once the handle is done with (the process is gone)."""
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
            self.death_fd = -1  # never waited on again


def _pidfd(pid: Optional[int]) -> Optional[int]:
    """A descriptor readable when process ``pid`` ends, where the system has them."""
    if pid is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # an older kernel, or already reaped
        return None


def describe_exit(code: Optional[int]) -> str:
    """Why a worker process ended, with the likely causes, as loky says it."""
    if code is None:
        return "stopped answering (its channel closed while the process is still running)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = {
            "SIGKILL": " (killed: kill -9, or the out-of-memory killer)",
            "SIGSEGV": " (a segmentation fault in native code)",
            "SIGTERM": " (terminated)",
            "SIGABRT": " (aborted, often a failed assertion in native code)",
        }.get(name, "")
        return f"worker process was unexpectedly terminated by {name}{hint}, exit code {code}"
    return f"worker process exited unexpectedly with exit code {code} (sys.exit or os._exit)"
