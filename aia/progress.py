"""The progress bar of the central (tqdm), and with ``verbose=2`` the values below it."""

from __future__ import annotations

import sys
import time
from typing import Optional

from tqdm import tqdm as _tqdm

RESOLUTION = 1000  # the bar counts thousandths of completion
INTERVAL = 0.1  # seconds between updates: progress() and showvalues() cost, the loop must not


class _Bar(_tqdm):
    # No monitor thread: the central may fork workers later, and a forked child must not
    # inherit a thread that holds tqdm's lock.
    monitor_interval = 0


class Progress:
    """A monotone bar of the criterion nearest to stopping, updated at most every 0.1 s."""

    def __init__(self, recorder, verbose: int, file=None):
        self.recorder = recorder
        self.verbose = verbose
        self.file = file if file is not None else sys.stderr
        self.bar: Optional[_tqdm] = None
        self.values: Optional[_tqdm] = None
        self.shown = 0
        self.next_update = 0.0
        if verbose >= 1:
            self.bar = _Bar(total=RESOLUTION, file=self.file, leave=True, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| [{elapsed}<{remaining}{postfix}]",
                            desc="aia", mininterval=INTERVAL)
        if verbose >= 2:
            self.values = _Bar(total=0, file=self.file, position=1, leave=True,
                               bar_format="{desc}", mininterval=INTERVAL)

    def update(self, force: bool = False) -> None:
        if self.bar is None:
            return
        now = time.perf_counter()
        if not force and now < self.next_update:
            return
        self.next_update = now + INTERVAL
        r = self.recorder
        # Monotone, even if a custom progress() goes back.
        self.shown = max(self.shown, int(r.progress() * RESOLUTION))
        self.bar.n = self.shown
        self.bar.set_postfix_str(f"iteration={r.iteration}, epoch={r.epoch}", refresh=False)
        self.bar.refresh()
        if self.values is not None:
            self.values.set_description_str(self._values_text(), refresh=False)
            self.values.refresh()

    def _values_text(self) -> str:
        r = self.recorder
        pairs = [("iterations", r.iteration), ("epochs", r.epoch),
                 ("answers", dict(r.history.answer_count))]
        pairs += list(r.algorithm.showvalues() or [])
        return "  ".join(f"{name}: {value}" for name, value in pairs)

    def close(self, completed: bool) -> None:
        """The last update, then close the bars. After a run that failed, a ``progress()`` or
        ``showvalues()`` that raises (perhaps what ended the run) is not called to raise again:
        the error being reported must not be replaced by a second one."""
        if self.bar is None:
            return
        try:
            if completed:
                self.update(force=True)
                self.shown = self.bar.n = RESOLUTION  # whichever criterion ended the run
                self.bar.refresh()
            else:
                try:
                    self.update(force=True)
                except Exception:  # noqa: BLE001 - the run's own error is on its way up
                    pass
        finally:
            if self.values is not None:
                self.values.close()
            self.bar.close()
