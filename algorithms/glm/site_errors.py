"""A site's errors as data: what a site answers instead of raising, and the error the central
raises from it, naming the site.

A site refuses (a privacy guard: `PrivacyError`) or cannot answer (its formula, its data,
its file: `FormulaError`, `SiteError`, `OSError`) for reasons that are the user's to fix, not
a crash of its worker. It answers with `error_data` of the exception, and the central raises
`site_error` of that answer: the same exception type, its message prefixed with the site.
Local workers and folder sites send the same data (a folder site sends no pickles)."""

from __future__ import annotations

import builtins
from typing import Any, Mapping

from .design import FormulaError, SiteError
from .guards import PrivacyError
from .site import site_label

#: The exceptions a site answers as data (everything else is a failure of its worker).
SITE_ERRORS = (PrivacyError, FormulaError, SiteError, OSError)

def error_data(exc: BaseException) -> dict:
    """``exc`` (one of `SITE_ERRORS`) as plain data."""
    if isinstance(exc, PrivacyError):
        return {"type": "PrivacyError", "guard": exc.guard, "threshold": exc.threshold,
                "detail": exc.detail}
    return {"type": type(exc).__name__, "message": str(exc)}


def site_error(error: Mapping, site: Any) -> Exception:
    """The exception of a site's `error_data` ``error``, naming ``site``."""
    kind = error.get("type")
    if kind == "PrivacyError":
        return PrivacyError(error.get("guard"), error.get("threshold"), error.get("detail"),
                            site=site)
    cls = _known(kind) or _os_error(kind) or RuntimeError
    message = str(error.get("message", ""))
    label = site_label(site)  # prefixed with the site unless the message names it already
    return cls(message if label in message else f"{label}: {message}")


def _known(name: Any):
    """The `FormulaError` or `SiteError` class (or subclass, e.g. `BuildLimitError`) of
    that name."""
    todo = [FormulaError, SiteError]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        todo.extend(cls.__subclasses__())
    return None


def _os_error(name: Any):
    cls = getattr(builtins, name, None) if isinstance(name, str) else None
    return cls if isinstance(cls, type) and issubclass(cls, OSError) else None
