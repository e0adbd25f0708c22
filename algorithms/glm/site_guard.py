"""`_guarded`: a site method lets this package's errors through and replaces any other by
a message without data (a pandas or formulaic message may quote a value)."""

from __future__ import annotations

import functools
import logging

from .design import Design
from .errors import FormulaError, SiteError
from .guards import PrivacyError

log = logging.getLogger("algorithms.glm.site")


def _guarded(method):
    """Let this package's errors through; replace any other by a message without data."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except PrivacyError as exc:
            design = args[0] if args and isinstance(args[0], Design) else None
            self.audit.refused(None if design is None else design.model_key, exc)
            raise
        except (FormulaError, SiteError, OSError):
            raise
        except Exception as exc:
            log.exception("site %s: %s failed", self.name, method.__name__)
            raise SiteError(
                f"{type(exc).__name__} in {method.__name__} at site {self.name or ''} "
                "(details are logged at the site, not sent: they may quote data)"
            ) from None

    return wrapper
