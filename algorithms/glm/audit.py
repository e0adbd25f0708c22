"""A site's audit log and its budget of models.

Every model a site answers is one line of JSON appended to a file its operator reads (never
in a shared folder): the time, the session and run when known, the formula, family, link
and columns of the model, the rows it used, and the categorical levels the site sent to the
central. Refusals are logged too, with the guard that refused.

The log is also the budget's memory: a site answers at most ``GLM_MAX_MODELS_PER_SESSION``
distinct models in one session (one `Site` object: one ``aia-glm site`` process) and
``GLM_MAX_MODELS_PER_DAY`` in a calendar day (UTC), counted from the log, so a site started
again keeps its count. Asking for the same model again (a central that resumes, the
intercept-only fit behind a null deviance) does not count twice. The budget bounds
differencing: fits that differ by one row's worth of design, whose sums subtract to that row.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from .guards import ENVIRONMENT, Guards, PrivacyError

log = logging.getLogger(__name__)

#: The environment variable that names a site's audit log (``aia-glm site --audit-log``).
AUDIT_LOG = "GLM_AUDIT_LOG"


def today() -> str:
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


class Audit:
    """The audit log of one site (``path`` None: nothing written, the session budget only)."""

    def __init__(self, path: Optional[Any] = None):
        self.path = None if path in (None, "") else Path(path).expanduser()
        self.session: set = set()  # the models answered by this site object
        self.context: dict = {}  # session and run of the folder, when the site serves one
        self._day: Optional[str] = None
        self._today: set = set()

    def admit(self, key: str, guards: Guards, entry: dict) -> bool:
        """Count model ``key`` against the budget (a `PrivacyError` past it) and log it the
        first time; returns whether it is new to this site object."""
        if key in self.session:
            return False
        day = self._models_today()
        if len(self.session) >= guards.max_models_per_session:
            self._refused(entry, ENVIRONMENT["max_models_per_session"])
            raise PrivacyError(ENVIRONMENT["max_models_per_session"],
                               guards.max_models_per_session,
                               "this site has answered its budget of models for this session")
        if key not in day and len(day) >= guards.max_models_per_day:
            self._refused(entry, ENVIRONMENT["max_models_per_day"])
            raise PrivacyError(ENVIRONMENT["max_models_per_day"], guards.max_models_per_day,
                               "this site has answered its budget of models for today")
        self.session.add(key)
        day.add(key)
        self.write({"event": "model", "model": key, **entry})
        return True

    def levels_sent(self, key: str, levels: dict) -> None:
        if levels:
            self.write({"event": "levels sent", "model": key,
                        "levels": {c: [_plain(v) for v in lv] for c, lv in levels.items()}})

    def refused(self, key: Optional[str], error: PrivacyError) -> None:
        self.write({"event": "refused", "model": key, "guard": error.guard,
                    "detail": error.detail})

    def _refused(self, entry: dict, guard: str) -> None:
        self.write({"event": "refused", "guard": guard, **entry})

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        line = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                **self.context, **record}
        data = (json.dumps(line, sort_keys=True, default=str) + "\n").encode("utf-8")
        # O_APPEND: one write per line, so lines of concurrent sites never interleave.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _models_today(self) -> set:
        day = today()
        if self._day != day:
            self._day, self._today = day, self._read_day(day)
        return self._today

    def _read_day(self, day: str) -> set:
        """The models the log records for ``day`` (a log that cannot be read is an error:
        the budget must not silently reset)."""
        if self.path is None or not self.path.exists():
            return set()
        models = set()
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a torn last line
                if isinstance(record, dict) and record.get("event") == "model" \
                        and str(record.get("time", "")).startswith(day):
                    models.add(str(record.get("model")))
        return models


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
