"""A site's design matrices: its rows as the fit sees them (`ModelData`), built by formulaic
or, for formulas of plain numeric columns, directly (`direct_columns`), without copies where
it can."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection, Optional

import numpy as np
import pandas as pd
from formulaic import Formula
from formulaic.parser.types import Factor

from .errors import SiteError
from .formula_whitelist import CONTEXT
from .levels import _plain

if TYPE_CHECKING:
    from .design import Design


@dataclass
class ModelData:
    """One site's rows as the fit sees them (numpy arrays, complete cases only).
    ``built_by`` says how X was built: ``"formulaic"`` or ``"direct"`` (`direct_columns`)."""

    y: np.ndarray
    X: np.ndarray
    weights: np.ndarray
    offset: np.ndarray
    d_star: Optional[np.ndarray]
    names: list
    built_by: str = "formulaic"
    #: ``cbind(successes, failures)``: the numbers of trials (the prior weights are then
    #: the weights times the trials, as R's binomial family sets them); else None.
    trials: Optional[np.ndarray] = None
    #: the cluster ids of ``Design.groups`` (never sent), else None.
    groups: Optional[np.ndarray] = None
    #: the frequency weights of ``Design.freq_weights``, else None.
    freq: Optional[np.ndarray] = None

    @property
    def fit_weights(self) -> np.ndarray:
        """The weights of the sums: the prior weights times the frequency weights (a row
        counts as that many rows, each with its prior weight)."""
        return self.weights if self.freq is None else self.weights * self.freq

    @property
    def rows(self) -> int:
        """The observations: the rows, or the sum of their frequency weights."""
        return len(self.y) if self.freq is None else int(round(float(np.sum(self.freq))))

    @property
    def rows_ok(self) -> int:
        """The observations with a positive prior weight (R's ``n.ok``)."""
        ok = self.weights > 0
        return int(np.sum(ok)) if self.freq is None else int(round(float(np.sum(self.freq[ok]))))


def model_data(frame: pd.DataFrame, design: Design, direct: bool = True,
               width_check=None, consume: bool = False) -> ModelData:
    """Build y, X, prior weights, offset and d* from one site's complete rows.

    ``frame`` holds the complete cases of the used columns. Categorical columns are cast to
    the design's merged levels, and ``center``/``scale`` use the design's global moments.
    When formulaic's model spec says that the design is plain numeric columns of the table
    (and the intercept), X is filled from those columns directly (`direct_columns`), unless
    ``direct`` is False; the matrices are the same. ``width_check(frame)``, given the frame
    with its categorical columns cast, may refuse the design before it is built; what it
    returns, the model matrices of the first ``SPEC_ROWS`` rows (or None), spares
    `direct_columns` building them again.
    ``consume``: ``frame`` is the caller's to empty (see `_direct_design`).
    """
    info = design.info
    if design.levels is not None:
        cast = {}
        for col, levels in design.levels.items():
            if col in frame:
                values = frame[col].map(_plain)
                cat = pd.Categorical(values, categories=list(levels))
                if cat.isna().any():
                    raise SiteError(f"column {col!r} has a level missing from the merged levels")
                cast[col] = cat
        if cast:  # a new frame: the site's table is left as it is, and nothing else copied
            frame = frame.assign(**cast)
    if info.standardized and design.moments is None:
        raise SiteError("center() and scale() need the mean and standard deviation of all "
                         "sites: build the design with glm.fit or glm.prepare")
    spec = width_check(frame) if width_check is not None else None
    columns = direct_columns(frame, design, spec) if direct else None
    if columns is not None:
        y, X, names = _direct_design(frame, *columns, consume=consume,
                                     keep=set(design.extra_columns.values()))
        built_by = "direct"
    else:
        y, X, names = _formulaic_design(frame, design)
        built_by = "formulaic"
    trials = None
    if info.counts:
        y, trials = _proportions(y, whole=design.family.has_likelihood)
    n = len(y)
    w = _column(frame, design.weights, n, 1.0)
    offset = _column(frame, design.offset, n, 0.0)
    if design.exposure is not None:
        exposure = _column(frame, design.exposure, n, 1.0)
        if np.any(exposure <= 0):
            raise SiteError(f"exposure column {design.exposure!r} must be positive")
        offset = offset + np.log(exposure)
    d_star = _column(frame, design.expected, n, 0.0) if design.expected else None
    for what, values in (("response", y), ("prior weights", w), ("offset", offset)):
        if not np.all(np.isfinite(values)):
            raise SiteError(f"the {what} has non-finite values at this site")
    bad = [names[j] for j in np.flatnonzero(~np.all(np.isfinite(X), axis=0))]
    if bad:
        raise SiteError(f"design column(s) {bad} have non-finite values at this site "
                         "(e.g. the log of a non-positive value)")
    if np.any(w < 0):
        raise SiteError("prior weights must not be negative")
    if trials is not None:
        w = w * trials  # R's binomial()$initialize: weights <- weights * n
    if d_star is not None and (np.any(d_star < 0) or not np.all(np.isfinite(d_star))):
        raise SiteError(f"expected deaths column {design.expected!r} must be finite and >= 0")
    groups = None if design.groups is None else frame[design.groups].to_numpy()
    freq = None
    if design.freq_weights is not None:
        freq = _column(frame, design.freq_weights, n, 1.0)
        problem = freq_problem(freq)
        if problem:
            raise SiteError(f"freq_weights column {design.freq_weights!r}: {problem} at this "
                            "site")
    return ModelData(y, X, w, offset, d_star, names, built_by, trials, groups, freq)


def freq_problem(values) -> Optional[str]:
    """What is wrong with frequency weights (counts of rows: finite, non-negative whole
    numbers), in words without their values; None when nothing is."""
    values = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(values)):
        return "expected non-negative whole numbers (counts of rows), got non-finite values"
    if np.any(values < 0):
        return "expected non-negative whole numbers (counts of rows), got negative values"
    if np.any(values != np.round(values)):
        return "expected non-negative whole numbers (counts of rows), got non-integer values"
    return None


def _proportions(counts: np.ndarray, whole: bool = True) -> tuple:
    """The proportions of successes and the numbers of trials of a ``cbind(successes,
    failures)`` response (0 where there are no trials, as R sets them). The counts are
    whole numbers, but for the quasibinomial family (``whole=False``)."""
    if not np.all(np.isfinite(counts)):
        raise SiteError("cbind(successes, failures) has non-finite values at this site")
    if np.any(counts < 0):
        raise SiteError("cbind(successes, failures): expected non-negative counts of "
                        "successes and failures, got negative values at this site")
    if whole and np.any(counts != np.round(counts)):
        raise SiteError("cbind(successes, failures): expected counts (non-negative whole "
                        "numbers) of successes and failures, got other values at this site")
    trials = counts[:, 0] + counts[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(trials > 0, counts[:, 0] / np.where(trials > 0, trials, 1.0), 0.0)
    return y, trials


def _formulaic_design(frame: pd.DataFrame, design: Design) -> tuple:
    """y, X and the column names of X, built by formulaic."""
    mm = Formula(design.formula).get_model_matrix(frame, context=CONTEXT, na_action="ignore")
    lhs, rhs = mm.lhs, mm.rhs
    if design.info.standardized:
        state = dict(rhs.model_spec.transform_state)
        for key, value in state.items():
            col = key[key.index("(") + 1:-1]
            mean, sd = design.moments[col]
            state[key] = dict(value, center=mean, scale=sd if key.startswith("scale") else None)
        rhs = rhs.model_spec.update(transform_state=state).get_model_matrix(frame, context=CONTEXT)
    width = 2 if design.info.counts else 1
    if lhs.shape[1] != width or not all(pd.api.types.is_numeric_dtype(t) for t in lhs.dtypes):
        raise SiteError("the response must be one numeric column" if width == 1 else
                        "cbind(successes, failures) must be two numeric columns")
    y = lhs.to_numpy(dtype=float)
    y = y if design.info.counts else y.ravel()
    # pandas hands the columns over column-major; X'WX and X @ beta are as fast that way
    # (measured), so no row-major copy of the whole matrix.
    X = rhs.to_numpy(dtype=float)
    return y, X, [str(c) for c in rhs.columns]


#: The rows formulaic builds its model spec from, for `direct_columns`.
SPEC_ROWS = 5


def direct_columns(frame: pd.DataFrame, design: Design, spec=None) -> Optional[tuple]:
    """When the design is plain numeric columns of ``frame`` and the intercept: the
    response's column, the source of each column of X (a column name, None for the
    intercept) and X's column names; otherwise None.

    formulaic decides: it builds the model matrices of a few rows, and its model spec must
    show one numeric response column and, on the right, terms that are the intercept or a
    numeric column looked up by name, each giving one column of the same name. A model
    matrix (a pandas frame) then a float copy of it would move the whole table twice; filled
    from the columns directly, X is written once. ``spec``: those model matrices, when the
    caller has them already (of ``frame.head(SPEC_ROWS)``, the design's formula and context).
    """
    info = design.info
    if info.categorical or info.standardized or len(frame) == 0:
        return None
    if not all(_plain_numeric(frame, col) for col in info.variables):
        return None  # formulaic would encode (or convert) some column: leave it the work
    mm = spec if spec is not None else Formula(design.formula).get_model_matrix(
        frame.head(SPEC_ROWS), context=CONTEXT, na_action="ignore")
    response, sources = _sources(mm.lhs.model_spec), _sources(mm.rhs.model_spec)
    if response is None or len(response) != 1 or response[0] is None or sources is None:
        return None
    names = [str(c) for c in mm.rhs.columns]
    if names != [c for entry in mm.rhs.model_spec.structure for c in entry.columns]:
        return None
    return response[0], sources, names


def _plain_numeric(frame: pd.DataFrame, col: str) -> bool:
    """A column of numpy integers or floats (not bool, not a pandas extension type)."""
    column = frame.get(col)
    return (isinstance(column, pd.Series) and isinstance(column.dtype, np.dtype)
            and column.dtype.kind in "iuf")


def _sources(spec) -> Optional[list]:
    """Where each column of a model spec comes from: a column name, None for the intercept;
    None if some column is anything else (a categorical, a transform, an interaction)."""
    sources = []
    for entry in spec.structure:
        if len(entry.term.factors) != 1:
            return None
        factor = entry.term.factors[0]
        if (factor.eval_method == Factor.EvalMethod.LITERAL and factor.expr == "1"
                and list(entry.columns) == ["Intercept"]):
            sources.append(None)
        elif (factor.eval_method == Factor.EvalMethod.LOOKUP
              and spec.encoder_state.get(factor.expr, (None,))[0] == Factor.Kind.NUMERICAL
              and list(entry.columns) == [factor.expr]):
            sources.append(factor.expr)
        else:
            return None
    return sources


def _direct_design(frame: pd.DataFrame, response: str, sources: list, names: list,
                   consume: bool = False, keep: Collection[str] = ()) -> tuple:
    """y, X (column-major, as formulaic's would be) and the names, copied from ``frame``.

    ``consume``: ``frame`` is the site's own, and each column is deleted from it once
    copied (but those in ``keep``): the memory of X's columns (allocated as they are
    written) replaces theirs one by one, so the site never holds its table and its design
    at once (a Parquet site's peak memory is then about its design's)."""
    y = np.array(frame[response].to_numpy(), dtype=float)
    last = {col: j for j, col in enumerate(sources) if col is not None}
    gone = lambda col: consume and col not in keep and col in frame
    if gone(response) and response not in last:
        del frame[response]
    X = np.empty((len(frame), len(sources)), order="F")
    for j, col in enumerate(sources):
        X[:, j] = 1.0 if col is None else frame[col].to_numpy()
        if col is not None and last[col] == j and col != response and gone(col):
            del frame[col]
            _return_memory()
    return y, X, list(names)


def _return_memory() -> None:
    """Give the memory of deleted columns back to the system: pyarrow's allocator
    (mimalloc or jemalloc, where a Parquet table's columns live) keeps freed pages until
    asked (measured: 2M x 20 doubles stayed resident after every column was deleted)."""
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.default_memory_pool().release_unused()


def _column(frame: pd.DataFrame, name: Optional[str], n: int, default: float) -> np.ndarray:
    if name is None:
        return np.full(n, default)
    if not pd.api.types.is_numeric_dtype(frame[name]):
        raise SiteError(f"column {name!r} must be numeric")
    return frame[name].to_numpy(dtype=float)
