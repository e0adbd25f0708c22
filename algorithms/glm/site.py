"""A site: one table, kept in the process that holds it, and its local computations.

Every method checks the privacy guards before it returns, and returns sums only: levels of
categorical columns and their moments at first contact (`Site.describe`), the design's
column names (`Site.build`), X'WX, X'Wz and a few scalars at each step
(`Site.contribution`), the log-likelihood at the end (`Site.loglike`), and for glm.nb's
theta a few sums at coefficients already answered (`Site.theta_sums`; these passes are
`site_passes`'). Rows with a missing
value in a used column are left out first and counted (R's ``na.omit``: `site_frame`).

Errors raised here travel to the analyst. Those this package raises (`PrivacyError`,
`FormulaError`, `SiteError`) are written never to quote a data value; any other exception
(a pandas or formulaic message may quote one) is replaced by its type, and its traceback
is logged at the site only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Collection, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from . import disclosure, limits, rounds
from .audit import AUDIT_LOG, Audit
from .design import (CONTEXT, Design, ModelData, SiteError, categorical_columns, model_data,
                     site_levels, site_moments)
from .guards import ENVIRONMENT, Guards, PrivacyError
from .messages import Contribution, Query
from .site_frame import SiteFrame
from .site_guard import _guarded
from .site_passes import SitePasses

log = logging.getLogger(__name__)

#: The environment variable of a secret key the sites share for the digests of cluster ids.
GROUPS_KEY = "GLM_GROUPS_KEY"


def read_parquet(path: Any, columns: Optional[Collection[str]] = None) -> pd.DataFrame:
    """The columns of a Parquet file that are in ``columns`` (all when None), in the file's
    order, as `pandas.read_parquet` reads them.

    Both go through pyarrow's ``Table.to_pandas`` (pandas' metadata restores the index, the
    column names and dtypes). `pandas.read_parquet` reads each column in batches, which
    ``to_pandas`` then copies into one 2-D block; here a column of one row group becomes its
    own pandas block without a copy (``split_blocks``), and the file is memory-mapped rather
    than first copied into a buffer (the values are decoded out of the mapping: the frame
    never refers to the file). pyarrow's threads stay on: two workers reading at once on two
    cores were faster with them (its pool follows ``OMP_NUM_THREADS`` when created, as an
    `aia` worker sets it).
    """
    try:
        import pyarrow.parquet as pq  # optional: CSV sites need none
    except ImportError:  # pandas may have another engine (fastparquet)
        frame = pd.read_parquet(path)
        return frame if columns is None else frame[[c for c in frame if c in columns]]
    with pq.ParquetFile(path, memory_map=True) as file:
        names = None if columns is None else [c for c in file.schema_arrow.names if c in columns]
        table = file.read(columns=names, use_pandas_metadata=True)
    return table.to_pandas(split_blocks=True)


def site_label(name: Any) -> str:
    """``"site NAME"``, or NAME itself when it already says it is a site ("site 2")."""
    text = str(name)
    return text if text.lower().startswith("site") else f"site {text}"


def _is_parquet(source: Any) -> bool:
    return isinstance(source, (str, Path)) and Path(source).suffix.lower() in (".parquet", ".pq")


class Site(SiteFrame, SitePasses):
    """One site's table. ``source`` is a path (CSV, or Parquet for ``.parquet``/``.pq``),
    read lazily by the process that holds the site, or a DataFrame. Of a Parquet file, only
    the columns a model uses are read.

    The guards come from the environment of that process (see `algorithms.glm.guards`);
    ``environ`` replaces it (for tests). ``audit_log``: the file of the site's audit log
    (`algorithms.glm.audit`; default ``GLM_AUDIT_LOG`` of that environment, else none).
    """

    def __init__(self, source: Any = None, name: Optional[str] = None,
                 environ: Optional[Mapping[str, str]] = None, audit_log: Any = None):
        self.source = source
        self.name = name or (Path(source).name if isinstance(source, (str, Path)) else None)
        env = os.environ if environ is None else environ
        self.guards = Guards.from_environment(env)
        self.audit = Audit(audit_log if audit_log is not None else env.get(AUDIT_LOG))
        self.build_seconds = limits.build_seconds(env)
        self._groups_key = env.get(GROUPS_KEY, "")
        self._queries: dict = {}  # model key -> the sums asked of it
        self._moments: dict = {}  # model key -> the moments of center()/scale() it came with
        self._table: Optional[pd.DataFrame] = source if isinstance(source, pd.DataFrame) else None
        self._some_columns: Optional[pd.DataFrame] = None  # of a Parquet source, see _columns
        self._built: Optional[tuple] = None  # (design token, ModelData)
        self._work: Optional[np.ndarray] = None  # the block buffer of the rounds, reused
        self._peaks: Optional[tuple] = None  # (design token, rounds.x_peaks of its X)
        self._facts: Optional[tuple] = None  # (ModelData, what its rounds learnt of its rows)
        self._frame_cache: Optional[tuple] = None  # (columns and guards, complete rows)
        # (design token, subset) -> the working weights of the last valid contribution
        self._working: dict = {}
        #: the rows of the latest model left out for a missing value (R's na.omit)
        self.missing_rows = 0
        # (design token, coefficients whose round passed the leverage check), for theta_sums
        self._answered: tuple = (None, set())

    def __repr__(self) -> str:
        return f"Site({self.name!r})"

    @property
    def label(self) -> str:
        """How messages name this site: "site 2" (glm.fit's default names already say it)."""
        return site_label(self.name)

    def enter_run(self, session: Optional[str], run: Optional[str]) -> None:
        """The folder session and run this site now answers (recorded in its audit log)."""
        self.audit.context = {k: v for k, v in (("session", session), ("run", run)) if v}

    def set_table(self, table: pd.DataFrame, name: Optional[str] = None) -> None:
        """Give the site its rows (a DataFrame sent to the process that holds it)."""
        self._table, self._built, self._frame_cache, self._work = table, None, None, None
        self._peaks = self._facts = None
        self._some_columns = None
        if name is not None:
            self.name = name

    @property
    def table(self) -> pd.DataFrame:
        """The whole table (read from the source on first use)."""
        if self._table is None:
            if self.source is None:
                raise SiteError("this site has no data")
            if _is_parquet(self.source):
                self._table = read_parquet(self.source)
            else:
                self._table = pd.read_csv(self.source)
        return self._table

    def _columns(self, used: set) -> pd.DataFrame:
        """A table with (at least) the columns of ``used`` that the source has.

        Of a Parquet source not read whole, only those columns are read; they are kept, and
        a later design that needs others reads them together with the ones held.
        """
        if self._table is not None or not _is_parquet(self.source):
            return self.table
        held = self._some_columns
        if held is not None and used <= set(held.columns):
            return held
        wanted = used | (set(held.columns) if held is not None else set())
        self._some_columns = read_parquet(self.source, wanted)
        return self._some_columns

    def _check_moments(self, design: Design, guards: Guards) -> None:
        """One set of moments per model in a session. The central sends the mean and sd of
        ``center()``/``scale()``; two fits of one formula with moments moved by a little
        differ, past a nonlinear function, by the rows between: refused (the budget of
        models counts formulas, not moments)."""
        if not design.moments:
            return
        given = {k: np.asarray(v, dtype=float) for k, v in design.moments.items()}
        first = self._moments.setdefault(design.model_key, given)
        # the same moments merged in another order differ in their last bits: not a change
        if first.keys() != given.keys() or not all(
                np.allclose(first[k], given[k], rtol=1e-12, atol=0.0) for k in given):
            raise PrivacyError(ENVIRONMENT["max_models_per_session"],
                               guards.max_models_per_session,
                               "this model came with other moments for center()/scale() "
                               "earlier in the session: one set of moments per model")

    def _count_query(self, design: Design, guards: Guards) -> None:
        key = design.model_key
        count = self._queries.get(key, 0) + 1
        if count > guards.max_queries_per_model:
            raise PrivacyError(ENVIRONMENT["max_queries_per_model"],
                               guards.max_queries_per_model,
                               "the model has asked this site for more sums than the maximum")
        self._queries[key] = count

    @_guarded
    def describe(self, design: Design) -> dict:
        """The categorical levels (and per-level guard) and the moments of the standardised
        columns, over the site's complete rows."""
        frame, guards = self._frame(design)
        self._admit(design, guards, frame)
        levels = {}
        for col in categorical_columns(frame, design.info):
            lv, counts = site_levels(frame[col])
            guards.check_levels(col, counts)
            levels[col] = lv
        moments = {col: site_moments(frame[col]) for col in sorted(design.info.standardized)}
        self.audit.levels_sent(design.model_key, levels)
        return {"levels": levels, "moments": moments, "missing": self.missing_rows}

    @_guarded
    def build(self, design: Design, saturated: bool = True) -> dict:
        """Build (once per design) and check the design matrices; return the column names
        and, for the families that have one and unless ``saturated`` is False (secure
        aggregation: it is a sum of the site's own), the saturated log-likelihood (a sum,
        like the deviance)."""
        m = self.model(design)
        if not saturated:
            return {"columns": tuple(m.names), "saturated_loglike": None}
        with np.errstate(all="ignore"):
            value = design.family.saturated_loglike(m.y, m.weights, m.trials, m.freq)
        return {"columns": tuple(m.names), "saturated_loglike": value}

    def model(self, design: Design) -> ModelData:
        """The design matrices of ``design`` (built and checked once per design); each call
        is one query of the model, counted against ``GLM_MAX_QUERIES_PER_MODEL``."""
        if self._built is not None and self._built[0] == design.token:
            self._count_query(design, self._built[2])
            return self._built[1]
        frame, guards = self._frame(design)
        self._admit(design, guards, frame)
        self._check_moments(design, guards)
        for col in categorical_columns(frame, design.info):
            guards.check_levels(col, frame[col].value_counts().tolist())
        def width(cast: pd.DataFrame):  # refused before it is built
            return limits.check_width(cast, design.formula, design.levels, CONTEXT,
                                      guards.check_parameters)

        consume = self._consumable(frame, design)
        with limits.time_limit(self.build_seconds):
            data = model_data(frame, design, width_check=width, consume=consume)
        if consume:  # its columns went into X: read them again if another design needs them
            self._some_columns = self._frame_cache = None
        guards.check_parameters(data.X.shape[1], len(data.y))
        problem = design.family.check_response(data.y, data.weights)
        if problem:
            raise SiteError(problem)
        disclosure.check_columns(guards, data.X, data.names, data.y, data.weights,
                                 data.offset)
        disclosure.check_design(guards, data.X, data.weights, *self._design_sums(design, data))
        disclosure.check_expressions(guards, frame, design.info.expressions,
                                     used=np.asarray(data.weights) > 0,
                                     moments=design.moments)
        self._built = (design.token, data, guards)
        self._count_query(design, guards)
        return data

    def _consumable(self, frame: pd.DataFrame, design: Design) -> bool:
        """Whether building ``design`` may empty ``frame``: it holds the columns read from
        a Parquet source for this site alone (which it can read again), and no expression
        of the formula is checked on it after the build."""
        return (_is_parquet(self.source) and self._table is None
                and frame is self._some_columns and not design.info.expressions)

    def round_guards(self, design: Design) -> Guards:
        """The guards of the model built for ``design`` (after `model`)."""
        return self._built[2]

    # -- each step ------------------------------------------------------------------------
    @_guarded
    def contribution(self, design: Design, query: Query,
                     subset: Optional[Sequence[str]] = None) -> Contribution:
        """The site's sums at ``query.beta`` (R's starting values for version 0)."""
        m = self.model(design)
        cols = None if subset is None else [m.names.index(c) for c in subset]
        rows = self._rows(design, m, cols)
        y, w = m.y, m.weights
        start = None
        if query.beta is None:
            fam = design.family.bind(m.d_star)
            with np.errstate(all="ignore"):
                mu = fam.start_mu(y, w, m.trials)
                eta = fam.linkfun(mu)
                if not fam.valid(eta, mu):
                    raise SiteError(f"cannot find valid starting values for the {fam.name} "
                                    f"family with the {fam.link_name} link at site "
                                    f"{self.name}: supply start=...")
            start = (eta, mu)
        w = m.fit_weights  # with frequency weights: a row counts as that many rows
        facts = self._model_facts(m)
        if "sums" not in facts:  # the model's own, the same in every round
            facts["sums"] = dict(nobs=m.rows, n_ok=m.rows_ok, sum_wy=float(np.sum(w * y)),
                                 sum_w=float(np.sum(w)))
        counts = dict(**facts["sums"], site=self.name,
                      columns=tuple(m.names if subset is None else subset)
                      if query.version == 0 else None)
        if getattr(query, "saturated", False):
            with np.errstate(all="ignore"):
                counts["saturated_loglike"] = design.family.saturated_loglike(
                    m.y, m.weights, m.trials, m.freq)
        key = (design.token, None if subset is None else tuple(subset))
        with np.errstate(all="ignore"):
            sums, self._work = rounds.irls_round(
                rows, query.beta, start, self._previous_weights(design, key, query.version),
                query.null, self._work)
            if sums is None:
                return Contribution(query.version, False, **counts)
            # The coefficients choose the weights: they must not single out a row.
            try:
                rounds.check_leverage(self.round_guards(design), rows, sums)
            except PrivacyError as exc:
                self.audit.refused(design.model_key, exc)
                log.warning("%s: sums withheld at coefficients %d: %s", self.label,
                            query.version, exc)
                return Contribution(query.version, False, withheld=True, **counts)
        if subset is None and query.beta is not None:
            self._passed(design, query.beta)
        self._keep_weights(key, query.version, sums.weights)
        return Contribution(
            query.version, True, deviance=sums.deviance, pearson_chi2=sums.pearson_chi2,
            working_chi2=sums.working_chi2, xtwx=sums.xtwx, xtwz=sums.xtwz,
            n_boundary=sums.n_boundary, null_deviance=sums.null_deviance, **counts,
        )

    def _design_sums(self, design: Design, m: ModelData) -> tuple:
        """(peaks, gram) for `disclosure.check_design`: `rounds.design_sums` in one pass
        over X, its peaks kept for the rounds; (None, None) for a design of one block."""
        if m.X.shape[0] <= rounds.block_rows(m.X.shape[1]):
            return None, None
        w = None if m.weights is None else np.maximum(m.weights, 0.0)
        gram, peaks = rounds.design_sums(m.X, None if w is None or np.all(w == 1.0) else w)
        self._peaks = (design.token, peaks)
        return peaks, gram

    def _design_peaks(self, design: Design, m: ModelData) -> Optional[np.ndarray]:
        """The design's `rounds.x_peaks` (kept), for the leverage bounds of a design of
        several blocks of rows (None for fewer: the exact checks cost no more there)."""
        if m.X.shape[0] <= rounds.block_rows(m.X.shape[1]):
            return None
        if self._peaks is None or self._peaks[0] != design.token:
            self._peaks = (design.token, rounds.x_peaks(m.X))
        return self._peaks[1]

    def _rows(self, design: Design, m: ModelData, cols) -> rounds.Rows:
        """The model's rows for a round (with the facts of them learnt in earlier rounds)."""
        return rounds.Rows(m.X, m.y, m.fit_weights, m.offset, design.family, m.d_star, cols,
                           self._design_peaks(design, m), self._model_facts(m))

    def _model_facts(self, m: ModelData) -> dict:
        """What the rounds of the model ``m`` learn of its rows once (kept while it is)."""
        if self._facts is None or self._facts[0] is not m:
            self._facts = (m, {})
        return self._facts[1]

    def _previous_weights(self, design: Design, key: tuple,
                          version: int) -> Optional[np.ndarray]:
        """The working weights of the site's previous valid contribution to this model
        (R's last IRLS iteration), for ``summary.glm``'s ``sum(w_work * r_work^2)``."""
        if any(k[0] != design.token for k in self._working):
            self._working = {}
        return self._held_previous(key, version)

    def _held_previous(self, key: tuple, version: int) -> Optional[np.ndarray]:
        held = self._working.get(key, (None, None, None))
        # The same coefficients again (a secure round redone among fewer sites): the weights
        # of the iteration before stay the previous ones.
        return held[2] if held[0] == version else held[1]

    def _keep_weights(self, key: tuple, version: int, weights: np.ndarray) -> None:
        """Keep these coefficients' working weights and the previous ones, with the version
        of these coefficients: the next contribution and the sandwich's meat at these
        coefficients (`meat`, R's ``weights(fit, "working")``) use them."""
        previous = self._held_previous(key, version)
        self._working[key] = (version, weights, previous)

    def _last_weights(self, design: Design, version: Optional[int]) -> Optional[np.ndarray]:
        """The working weights of R's last iteration for the coefficients of ``version``
        (those of the contribution before), when this site still holds them."""
        held = self._working.get((design.token, None))
        if version is None or held is None or held[0] != version:
            return None
        return held[2]


class SiteGroup:
    """Several sites held by one process, answered one after another (in-process fits)."""

    def __init__(self, sites: Sequence[Site]):
        self.sites = list(sites)
