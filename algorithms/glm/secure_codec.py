"""The encoding of `algorithms.glm.secure`: which sums each answer type carries and in
what order (`LAYOUTS`), fixed point in the ring, the masks' streams, and an answer packed into
one vector and back. The central decodes only totals; see `algorithms.glm.secure`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .design import SiteError
from .messages import Contribution

MIN_SITES = 3  #: with 2 sites, the total minus one's own sums is the other's
RING_BITS = 192
FRACTION_BITS = 96
MODULUS = 1 << RING_BITS
ENTRY_BYTES = RING_BITS // 8
KEY_BYTES = 32

# The sums of each answer type, in the order they are packed: (field, shape in p, integer).
LAYOUTS = {
    "Contribution": (("deviance", 0, False), ("pearson_chi2", 0, False),
                     ("working_chi2", 0, False), ("xtwx", 2, False), ("xtwz", 1, False),
                     ("n_boundary", 0, True), ("null_deviance", 0, False), ("nobs", 0, True),
                     ("n_ok", 0, True), ("sum_wy", 0, False), ("sum_w", 0, False),
                     ("saturated_loglike", 0, False)),
    "Score": (("score", 1, False), ("deviance", 0, False)),
    "Total": (("value", 0, False),),
    "Totals": (("values", "v", False),),  # several numbers (glm.nb's theta sums)
    # the parts of a glmnet answer (`algorithms.glm.glmnet_messages`)
    "Moments": (("sum_w", 0, False), ("xw", 1, False), ("xwx", 2, False), ("xwz", 1, False),
                ("zwz", 0, False), ("sum_wy", 0, False), ("nobs", 0, True), ("n_ok", 0, True)),
    # binomial and Poisson rounds: "v" is a variable length (`_lengths`), sent in clear
    "Sums": (("xtwx", 2, False), ("xtwz", 1, False), ("deviance", 0, False),
             ("score", 1, False), ("deviances", "v", False)),
    "Heldout": (("deviance", "v", False), ("mse", "v", False), ("misclassified", "v", False),
                ("sum_w", 0, False)),
}
#: Answers made of several parts, each of a kind of `LAYOUTS`: ``parts`` of (fit, part).
MULTIPART = ("GlmnetAnswer",)


@dataclass(frozen=True)
class Total:
    """One number a site adds to the others' (`SiteSum`)."""

    version: int
    valid: bool
    value: float = float("nan")


@dataclass(frozen=True)
class Totals:
    """Several numbers a site adds to the others' (`SiteSum` of a method giving a dict: its
    values in the order of the sorted keys)."""

    version: int
    valid: bool
    values: Any = None



# -- encoding and masks ------------------------------------------------------------------------
def entries(parts: Sequence, width: int, lengths: Sequence = ()) -> int:
    """How many ring entries an answer of ``parts`` ((fit, kind) pairs) with ``width``
    columns and variable fields of ``lengths`` ((part, field, length)) holds."""
    sizes = {(i, f): n for i, f, n in lengths}
    return sum(_size(i, field, dims, width, sizes) for i, (_, kind) in enumerate(parts)
               for field, dims, _ in LAYOUTS[kind])


def encode(values: np.ndarray, n_sites: int, site: str) -> list:
    """``values`` in fixed point in the ring, checked so that the sum over ``n_sites`` sites
    cannot wrap around."""
    limit = 2.0 ** (RING_BITS - 1 - FRACTION_BITS) / n_sites
    if not np.all(np.isfinite(values)):
        raise SiteError(f"site {site}: a sum is not finite: it cannot be sent masked")
    if values.size and np.max(np.abs(values)) >= limit:
        raise SiteError(f"site {site}: a sum is out of the range of the secure encoding "
                        f"(|value| < 2^{RING_BITS - 1 - FRACTION_BITS} / {n_sites} sites)")
    scaled = np.rint(np.ldexp(values, FRACTION_BITS))  # exact: a power of two
    return [int(v) % MODULUS for v in scaled.tolist()]


def decode(total: Sequence[int]) -> np.ndarray:
    """The ring entries of a total back to floats (correctly rounded)."""
    half = MODULUS >> 1
    return np.ldexp(np.array([float(v - MODULUS if v >= half else v) for v in total]),
                    -FRACTION_BITS)


def stream(key: bytes, label: bytes, n: int) -> list:
    """``n`` uniform ring entries: SHAKE-256 of the key and the label."""
    data = hashlib.shake_256(key + label).digest(n * ENTRY_BYTES)
    return [int.from_bytes(data[i:i + ENTRY_BYTES], "little")
            for i in range(0, len(data), ENTRY_BYTES)]


def to_bytes(values: Sequence[int]) -> bytes:
    return b"".join(v.to_bytes(ENTRY_BYTES, "little") for v in values)


def from_bytes(data: bytes) -> list:
    return [int.from_bytes(data[i:i + ENTRY_BYTES], "little")
            for i in range(0, len(data), ENTRY_BYTES)]



def _parts_of(plain: Any) -> list:
    """An answer as its (fit, part) pairs: glmnet's are several, the others one."""
    if type(plain).__name__ in MULTIPART:
        return list(plain.parts)
    return [(None, plain)]


def _width(parts: Sequence) -> int:
    """p: the length of the answer's vectors and the side of its matrices (0: none)."""
    width = 0
    for _, part in parts:
        for field, dims, _ in LAYOUTS[type(part).__name__]:
            if dims in (1, 2) and getattr(part, field) is not None:
                width = np.shape(getattr(part, field))[0]
    return width


def _lengths(plain: Any) -> tuple:
    """The lengths of the variable fields (dims "v": one entry per lambda or per solution,
    known from the query, not data), as (part, field, length) triples."""
    return tuple((i, field, len(getattr(part, field) or ()) if not isinstance(
        getattr(part, field), np.ndarray) else getattr(part, field).size)
        for i, (_, part) in enumerate(_parts_of(plain))
        for field, dims, _ in LAYOUTS[type(part).__name__] if dims == "v")


def _size(i: int, field: str, dims: Any, width: int, lengths: Mapping) -> int:
    return lengths[(i, field)] if dims == "v" else width ** dims


def _pack(plain: Any) -> tuple:
    """The sums of ``plain`` as one float vector; the absent (NaN or None) fields, as
    (part, field) pairs; p. (The variable fields' lengths: `_lengths`.)"""
    parts = _parts_of(plain)
    width = _width(parts)
    lengths = {(i, f): n for i, f, n in _lengths(plain)}
    values, absent = [], []
    for i, (_, part) in enumerate(parts):
        for field, dims, _ in LAYOUTS[type(part).__name__]:
            value = getattr(part, field)
            size = _size(i, field, dims, width, lengths)
            if value is None or (dims == 0 and np.isnan(float(value))):
                absent.append((i, field))
                values.append(np.zeros(size))
            else:
                values.append(np.asarray(value, dtype=float).reshape(size))
    return np.concatenate(values) if values else np.zeros(0), tuple(absent), width


def _unpack(first: Any, values: np.ndarray, absent: set) -> Any:
    """The decoded total (a `MaskedAnswer`'s ``values``) as the answer of one site."""
    from .gradient import Score  # gradient imports this package's site module

    at, p, rebuilt = 0, first.width, []
    lengths = {(i, f): n for i, f, n in first.lengths}
    for i, (fit, kind) in enumerate(first.parts):
        out = {}
        for field, dims, integer in LAYOUTS[kind]:
            size = _size(i, field, dims, p, lengths)
            chunk = values[at:at + size]
            at += size
            if (i, field) in absent:
                out[field] = None if dims or field in ("null_deviance", "saturated_loglike") \
                    else float("nan")
            elif dims == "v":
                out[field] = tuple(chunk.tolist()) if kind == "Sums" else chunk
            elif dims == 2:
                out[field] = chunk.reshape(p, p)
            elif dims == 1:
                out[field] = chunk
            else:
                out[field] = int(round(chunk[0])) if integer else float(chunk[0])
        rebuilt.append((fit, kind, out))
    if first.kind in MULTIPART:
        from .glmnet_messages import Moments, Sums
        from .glmnet_site import GlmnetAnswer, Heldout

        classes = {"Moments": Moments, "Sums": Sums, "Heldout": Heldout}
        return GlmnetAnswer(first.version, tuple((fit, classes[kind](**out))
                                                 for fit, kind, out in rebuilt),
                            columns=first.columns)
    out = rebuilt[0][2]
    if first.kind == "Score":
        return Score(first.version, True, **out)
    if first.kind == "Total":
        return Total(first.version, True, **out)
    if first.kind == "Totals":
        return Totals(first.version, True, **out)
    return Contribution(first.version, True, columns=first.columns, **out)


def _flags(a: Any) -> Any:
    """A site's answer without sums (a round in which some site's answer is invalid)."""
    from .gradient import Score

    if a.kind in MULTIPART:
        from .glmnet_messages import Sums
        from .glmnet_site import GlmnetAnswer

        if any(n for _, _, n in a.lengths):
            # The path takes the deviances at its earlier solutions from this round even
            # when the new sums are invalid; they cannot be decoded without the sums.
            raise ValueError(
                "secure=True: a site's glmnet sums are outside the family's range in a "
                "round that also carries the deviances of earlier solutions; this round "
                "cannot be summed securely (fit without secure=True)")
        return GlmnetAnswer(a.version, tuple((fit, Sums(None, None, float("nan"), False))
                                             for fit, _ in a.parts), site=a.site,
                            columns=a.columns)
    if a.kind == "Score":
        return Score(a.version, a.valid, site=a.site)
    if a.kind == "Total":
        return Total(a.version, a.valid)
    if a.kind == "Totals":
        return Totals(a.version, a.valid)
    return Contribution(a.version, a.valid, withheld=a.withheld, columns=a.columns,
                        site=a.site, sum_w=float("nan"), sum_wy=float("nan"))
