"""The messages of secure aggregation (`algorithms.glm.secure`): the central's `SecureQuery`
and a site's `KeyAnswer`, `MaskedAnswer` and `Unmask`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class SecureQuery:
    """The central's request: ``phase`` "keys" (make a key pair), "sums" (answer the GLM
    algorithm's query ``inner``, masked among the sites of ``roster``: (name, public key)
    pairs in mask order) or "unmask" (reveal the self mask of round ``round``)."""

    phase: str
    session: bytes
    round: int = 0
    roster: tuple = ()
    inner: Any = None


@dataclass(frozen=True)
class KeyAnswer:
    """A site's public key for this session."""

    site: str
    public_key: bytes


@dataclass(frozen=True)
class MaskedAnswer:
    """A site's masked sums: ``payload`` holds the entries of the ``parts`` ((fit, kind of
    `LAYOUTS`) pairs) one after the other (the fields in ``absent``, (part, field) pairs of
    NaN or None values, encoded as 0), 24 bytes each, masked. ``valid``, ``withheld``,
    ``columns``, ``parts`` and ``width`` (p) are sent in clear: they are not data."""

    kind: str
    site: str
    round: int
    version: int
    valid: bool
    width: int = 0
    withheld: bool = False
    columns: Optional[tuple] = None
    absent: tuple = ()
    payload: bytes = b""
    parts: tuple = ()
    lengths: tuple = ()  # (part, field, length) of the variable fields (`secure_codec`)


@dataclass(frozen=True)
class Unmask:
    """A site's key of its self mask for round ``round``."""

    site: str
    round: int
    key: bytes
