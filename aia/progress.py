"""The progress bar of the central (tqdm), and with ``verbose=2`` the values below it.

Where the output goes decides the form: a terminal gets tqdm's bar, a Jupyter kernel the
notebook bar (``tqdm.auto``), and a file or a pipe that is not a terminal (a CI log,
``nohup``, ``2> run.log``) one plain line every `LINE_INTERVAL` seconds and at the end, with
no carriage return and no escape code. A file object without a descriptor (an
``io.StringIO`` given as ``progress_file``) gets tqdm's text, as a terminal would.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

from tqdm import tqdm as _tqdm

RESOLUTION = 1000  # the bar counts thousandths of completion
INTERVAL = 0.1  # seconds between updates: progress() and showvalues() cost, the loop must not
LINE_INTERVAL = 5.0  # seconds between the plain lines written where there is no terminal


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
        self.lines: Optional[_Lines] = None
        if verbose >= 1 and _plain(self.file):
            self.lines = _Lines(self.file, with_values=verbose >= 2)
            return
        bar = _notebook_bar() if file is None and verbose >= 1 else None
        if bar is not None:  # a Jupyter kernel: widgets, one bar (values in its postfix)
            self.bar = bar(total=RESOLUTION, desc="aia", mininterval=INTERVAL)
            return
        if verbose >= 1:
            self.bar = _Bar(total=RESOLUTION, file=self.file, leave=True, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| [{elapsed}<{remaining}{postfix}]",
                            desc="aia", mininterval=INTERVAL)
        if verbose >= 2:
            self.values = _Bar(total=0, file=self.file, position=1, leave=True,
                               bar_format="{desc}", mininterval=INTERVAL)

    def update(self, force: bool = False) -> None:
        if self.bar is None and self.lines is None:
            return
        now = time.perf_counter()
        if not force and now < self.next_update:
            return
        self.next_update = now + INTERVAL
        r = self.recorder
        # Monotone, even if a custom progress() goes back.
        self.shown = max(self.shown, int(r.progress() * RESOLUTION))
        if self.lines is not None:
            self.lines.show(self, force)
            return
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
        if self.lines is not None:
            if completed:
                self.update(force=True)
                self.shown = RESOLUTION
            self.lines.show(self, True, final=True)
            return
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


def _plain(file) -> bool:
    """Whether ``file`` is a real file or pipe that is not a terminal (plain lines there)."""
    try:
        file.fileno()
    except (AttributeError, OSError, ValueError):  # io.StringIO and the like: tqdm's text
        return False
    try:
        return not file.isatty()
    except (AttributeError, OSError, ValueError):
        return True


def _notebook_bar():
    """tqdm's notebook bar under a Jupyter kernel (with ipywidgets), else None."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if type(shell).__name__ != "ZMQInteractiveShell":
        return None
    try:
        from tqdm.notebook import tqdm as notebook  # needs ipywidgets
        return notebook
    except ImportError:
        return None


class _Lines:
    """Progress as plain lines: ``aia: 40% iteration=120 epoch=3 elapsed 2.1 s``, one every
    `LINE_INTERVAL` seconds and one at the end (where no terminal redraws a bar)."""

    def __init__(self, file, with_values: bool):
        self.file = file
        self.with_values = with_values
        self.began = time.perf_counter()
        self.next_line = self.began + LINE_INTERVAL
        self.closed = False

    def show(self, progress: "Progress", force: bool, final: bool = False) -> None:
        now = time.perf_counter()
        if self.closed or (now < self.next_line and not final):
            return
        self.next_line = now + LINE_INTERVAL
        r = progress.recorder
        text = (f"aia: {progress.shown * 100 // RESOLUTION}% iteration={r.iteration} "
                f"epoch={r.epoch} elapsed {now - self.began:.1f} s")
        if self.with_values:
            try:
                text += "  " + progress._values_text()
            except Exception:  # noqa: BLE001 - the run's own error, if any, is on its way up
                if not final:
                    raise
        self.file.write(text + "\n")
        self.file.flush()
        self.closed = final
