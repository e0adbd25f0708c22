"""What the secure rounds refuse, in one place: the requirements of ``secure=True`` checked
before any process starts (`check_secure`), and the differencing guard's ledger of each
site (`query_key`, `ledger_of`: a site reveals its self mask for given coefficients for one set
of sites only; see `algorithms.glm.secure`)."""

from __future__ import annotations

import hashlib
import weakref
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .secure_codec import MIN_SITES


def query_key(design: Any, subset: Any, inner: Any) -> bytes:
    """What identifies the coefficients of a query for the differencing guard: the model,
    the subset of columns and the coefficients (None: R's starting values; glmnet's
    ``betas``: every fit's). Not the kind of sums asked: a score at beta is
    X'Wz - X'WX beta at beta."""
    h = hashlib.sha256(repr((design.token, subset)).encode())
    betas = getattr(inner, "betas", None)
    pairs = [(None, getattr(inner, "beta", None))] if betas is None else list(betas)
    if not pairs:
        h.update(b"moments:" + repr(getattr(inner, "kind", None)).encode())
    for fit, beta in pairs:
        h.update(repr(fit).encode())
        # glmnet's IRLS asks: the coefficients and the earlier solutions (not the columns:
        # a strong set's sums are part of the full sums at the same coefficients)
        at = [beta] if not hasattr(beta, "deviance_at") else [beta.beta, *beta.deviance_at]
        for b in at:
            h.update(b"none" if b is None else np.ascontiguousarray(b, dtype=float).tobytes())
    return h.digest()


#: Per site: query key -> the set of site names it revealed its self mask for. A site read
#: from a file keeps its ledger for the life of the process that holds it (a worker serves
#: many fits); a site given as a DataFrame, for the life of the `Site` object.
_LEDGERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LEDGERS_BY_FILE: dict = {}


def ledger_of(site: Any) -> dict:
    source = getattr(site, "source", None)
    if isinstance(source, (str, Path)):
        return _LEDGERS_BY_FILE.setdefault((site.name, str(Path(source).resolve())), {})
    return _LEDGERS.setdefault(site, {})


# -- checks before any process ---------------------------------------------------------------
def check_secure(n_sites: int, synchronous: bool, cluster: Any, resilience: int,
                 cov_type: str = "nonrobust", groups: Optional[str] = None) -> None:
    """``secure=True``'s requirements, checked before any process starts."""
    if cov_type in ("HC2", "HC3"):
        raise ValueError(f"secure=True: cov_type={cov_type!r} sends every site the fit's "
                         "unscaled covariance (X'WX)^-1 for its hat values, the pooled sums "
                         "secure aggregation keeps from the sites; expected cov_type "
                         "'nonrobust', 'HC0', 'HC1' or 'cluster'")
    if cov_type == "cluster" and groups is not None:
        raise ValueError("secure=True: cov_type='cluster' with groups sends each site's "
                         "digests of its cluster ids (to refuse an id at two sites); expected "
                         "cov_type 'nonrobust', 'HC0', 'HC1' or 'cluster' without groups "
                         "(each site one cluster)")
    if n_sites < MIN_SITES:
        raise ValueError(f"secure=True: expected at least {MIN_SITES} sites, got {n_sites}: "
                         "with 2, the pooled sums minus one site's own give the other's")
    if n_sites - resilience < MIN_SITES:
        raise ValueError(f"secure=True with resilience={resilience}: {n_sites} sites could "
                         f"fall to {n_sites - resilience}, below the {MIN_SITES} the secure "
                         "sums need")
    if not synchronous:
        raise ValueError("secure=True: expected synchronous=True; asynchronous mode is "
                         "refused by design: the masks cancel only in the sum of every "
                         "site's answer to the same query, so no single answer the "
                         "asynchronous central steps on could be decoded")
    if isinstance(cluster, str):
        raise ValueError("secure=True: expected one worker per site (cluster=None, an int or "
                         f"a cluster), got cluster={cluster!r}: sites in one process share "
                         "their sums anyway")
