"""Gradient descent's messages: the central's `GradientQuery`, a site's `Score`, and how a
site computes it (`site_score`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import numpy as np

from . import rounds
from .design import Design
from .guards import PrivacyError
from .site import Site, _guarded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GradientQuery:
    """The central's request to a site.

    ``full`` asks for the site's sums X'WX, X'Wz, deviance and Pearson chi-square (a
    `Contribution`, as in Fisher scoring: the first round, at R's starting values when
    ``beta`` is None, and the final round); otherwise the site answers with its `Score`.
    ``null`` and ``hold`` are as in `Query`.
    """

    version: int
    beta: Optional[np.ndarray] = None
    full: bool = False
    null: Union[None, float, str] = None
    hold: float = 0.0


@dataclass(frozen=True)
class Score:
    """One site's score (the gradient of its log-likelihood, p numbers) and deviance at the
    coefficients of query ``version``; ``valid`` False (and no score) when they give fitted
    values outside the family's range or a non-finite deviance, or ``withheld`` (the
    coefficients failed the round's privacy checks, `rounds.check_score`)."""

    version: int
    valid: bool
    score: Optional[np.ndarray] = None
    deviance: float = float("nan")
    site: Optional[str] = None
    repeat: bool = False
    withheld: bool = False

    def again(self) -> "Score":
        """This answer sent once more (asynchronous hold): nothing new in it."""
        return replace(self, repeat=True)


@_guarded
def site_score(site: Site, design: Design, query: GradientQuery,
               subset: Optional[Sequence[str]] = None) -> Score:
    """A site's score ``X'W g'(mu) (y - mu)`` (prior weights in W) and deviance at
    ``query.beta``: the same model, guards and family as `Site.contribution`, p numbers."""
    m = site.model(design)  # built (and guarded) once per design
    cols = None if subset is None else [m.names.index(c) for c in subset]
    rows = site._rows(design, m, cols)
    mass = rounds.RowMass()
    with np.errstate(all="ignore"):
        found = rounds.score_round(rows, query.beta, mass=mass)
    if found is None:
        return Score(query.version, False, site=site.name)
    try:  # the coefficients choose the weights: they must not single out a row
        rounds.check_score(site.round_guards(design), rows, mass)
    except PrivacyError as exc:  # as a Fisher round withholds: the line search steps back
        site.audit.refused(design.model_key, exc)
        log.warning("%s: score withheld at coefficients %d: %s", site.label,
                    query.version, exc)
        return Score(query.version, False, site=site.name, withheld=True)
    if subset is None:
        site._passed(design, query.beta)  # the estimate's log-likelihood and meat
    return Score(query.version, True, score=found[0], deviance=found[1], site=site.name)
