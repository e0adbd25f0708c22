"""The values a folder file carries, as JSON trees and numeric arrays (`aia.folder.codec`
puts them in checked envelopes).

A value is None, a bool, int, float, str, list, dict, a numeric numpy array, or a registered
dataclass (`aia.folder.register_message`); tuples, non-finite floats, bytes, complex numbers,
dicts with other keys and the rest are tagged objects with one ``$`` key
(``{"$tuple": [...]}``, ``{"$array": 0}``, ``{"$message": "glm.Query", "fields": {...}}``).
Decoding runs no code: a tag names one of these kinds or a registered message, nothing else.
"""

from __future__ import annotations

import base64
import math
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np

from . import registry

_ARRAY_KINDS = "biufc"  # bool, signed, unsigned, float, complex: no objects, no records


class Rejected(ValueError):
    """A file of the folder that is not used: unreadable, forged, or not the one expected."""


class Undecodable(Rejected):
    """A file whose envelope is valid but whose body this end cannot decode (e.g. a message
    type it lacks): the reader may answer with an error instead of ignoring it."""

    def __init__(self, message: str, envelope: dict):
        super().__init__(message)
        self.envelope = envelope


class _Encoder:
    def __init__(self, inline: bool):
        self.inline = inline  # arrays as base64 inside the JSON, or as members of an npz
        self.arrays: list = []

    def encode(self, v: Any) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return float(v) if math.isfinite(v) else {"$float": repr(float(v))}
        if isinstance(v, np.ndarray):
            return self.array(v)
        if isinstance(v, np.generic):
            if v.dtype.kind not in _ARRAY_KINDS:
                raise _unsendable(v)
            return self.encode(v.item())
        if isinstance(v, complex):
            return {"$complex": [self.encode(v.real), self.encode(v.imag)]}
        if isinstance(v, (bytes, bytearray)):
            return {"$bytes": base64.b64encode(bytes(v)).decode("ascii")}
        if isinstance(v, list):
            return [self.encode(x) for x in v]
        if isinstance(v, tuple) and type(v) is tuple:
            return {"$tuple": [self.encode(x) for x in v]}
        if isinstance(v, dict) and type(v) is dict:
            if all(isinstance(k, str) and not k.startswith("$") for k in v):
                return {k: self.encode(x) for k, x in v.items()}
            return {"$dict": [[self.encode(k), self.encode(x)] for k, x in v.items()]}
        if is_dataclass(v) and not isinstance(v, type):
            name = registry.message_name(type(v))
            if name is None:
                raise _unsendable(v, " (register the dataclass with "
                                     "aia.folder.register_message)")
            return {"$message": name,
                    "fields": {f.name: self.encode(getattr(v, f.name)) for f in fields(v)}}
        raise _unsendable(v)

    def array(self, a: np.ndarray) -> Any:
        if a.dtype.kind not in _ARRAY_KINDS or a.dtype.fields is not None:
            raise _unsendable(a, f" (arrays of dtype {a.dtype} cannot be sent; numbers only)")
        a = np.ascontiguousarray(a)
        if self.inline:
            return {"$array": {"dtype": a.dtype.str, "shape": list(a.shape),
                               "base64": base64.b64encode(a.tobytes()).decode("ascii")}}
        self.arrays.append(a)
        return {"$array": len(self.arrays) - 1}


def _unsendable(v: Any, extra: str = "") -> TypeError:
    return TypeError(
        f"cannot send an object of type {type(v).__name__!r} through a folder{extra}: queries "
        "and answers must be made of None, bools, numbers, strings, numeric numpy arrays, "
        "lists, tuples, dicts and registered dataclasses (nothing is pickled)")


def encode(value: Any, inline: bool = False) -> tuple:
    """``(tree, arrays)``: ``value`` as JSON-able data, and its arrays when not inline."""
    enc = _Encoder(inline)
    return enc.encode(value), enc.arrays


def decode(tree: Any, arrays: list = ()) -> Any:
    """The value encoded as ``tree``; raises `Rejected` on anything unexpected."""
    try:
        return _decode(tree, arrays)
    except Rejected:
        raise
    except (KeyError, ValueError, TypeError, IndexError, RecursionError) as exc:
        raise Rejected(f"malformed value: {type(exc).__name__}: {exc}") from None


def _decode(t: Any, arrays) -> Any:
    if t is None or isinstance(t, (bool, int, float, str)):
        return t
    if isinstance(t, list):
        return [_decode(x, arrays) for x in t]
    if not isinstance(t, dict):
        raise Rejected(f"malformed value of type {type(t).__name__}")
    tags = [k for k in t if k.startswith("$")]
    if not tags:
        return {k: _decode(x, arrays) for k, x in t.items()}
    tag = tags[0]
    if tag == "$message":
        if set(t) != {"$message", "fields"} or not isinstance(t["fields"], dict):
            raise Rejected("malformed message")
        try:
            cls = registry.message_class(t["$message"])
        except KeyError:
            raise Rejected(f"unknown message type {t['$message']!r} (not registered at this "
                           "end)") from None
        allowed = {f.name for f in fields(cls)}
        unknown = set(t["fields"]) - allowed
        if unknown:
            raise Rejected(f"message {t['$message']!r} has unknown fields {sorted(unknown)}")
        return cls(**{k: _decode(x, arrays) for k, x in t["fields"].items()})
    if len(t) != 1:
        raise Rejected(f"malformed tagged value {sorted(t)}")
    x = t[tag]
    if tag == "$array":
        if isinstance(x, int) and not isinstance(x, bool):
            return arrays[x]
        return _inline_array(x)
    if tag == "$tuple":
        return tuple(_decode(v, arrays) for v in x)
    if tag == "$dict":
        return {_hashable(_decode(k, arrays)): _decode(v, arrays) for k, v in x}
    if tag == "$float":
        if x not in ("nan", "inf", "-inf"):
            raise Rejected(f"malformed float {x!r}")
        return float(x)
    if tag == "$complex":
        return complex(float(_decode(x[0], arrays)), float(_decode(x[1], arrays)))
    if tag == "$bytes":
        return base64.b64decode(x, validate=True)
    raise Rejected(f"unknown tag {tag!r}")


def _hashable(k: Any) -> Any:
    hash(k)
    return k


def _dtype(text: Any) -> np.dtype:
    if not isinstance(text, str) or len(text) > 8:
        raise Rejected(f"malformed dtype {text!r}")
    dtype = np.dtype(text)
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype:
        raise Rejected(f"arrays of dtype {text!r} are refused (numbers only)")
    return dtype


def _shape(shape: Any) -> tuple:
    if not (isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool)
                                            and n >= 0 for n in shape)):
        raise Rejected(f"malformed shape {shape!r}")
    return tuple(shape)


def _inline_array(x: Any) -> np.ndarray:
    if not isinstance(x, dict) or set(x) != {"dtype", "shape", "base64"}:
        raise Rejected("malformed inline array")
    dtype, shape = _dtype(x["dtype"]), _shape(x["shape"])
    raw = base64.b64decode(x["base64"], validate=True)
    if len(raw) != dtype.itemsize * math.prod(shape):
        raise Rejected("an inline array's size does not match its shape")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


# -- envelopes -------------------------------------------------------------------------------
