"""The errors of a model's description and of a site's data (raised at the site, answered to
the central as data: `algorithms.glm.site_errors`)."""

from __future__ import annotations


class FormulaError(ValueError):
    """The formula is malformed, or uses something outside the whitelist."""


class SiteError(ValueError):
    """A site cannot take part (missing column, invalid response...). The message quotes
    no data value."""
