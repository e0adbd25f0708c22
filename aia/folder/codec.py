"""What crosses the folder: plain values in checked envelopes, written atomically.

Nothing read from the folder is unpickled or executed. A file is JSON (``.json``) or a zip
of ``.npy`` arrays (``.npz``), read with ``allow_pickle=False``::

    name.json   {"aia-folder": 1, "kind": ..., "session": ..., "run": ..., "site": ...,
                 "iteration": ..., "body": <value>, "sha256": ...}
    name.npz    envelope.json   the same envelope, plus "arrays": [[dtype, shape], ...]
                a0.npy, a1.npy  the arrays of the body, in order

A value is a tree of plain values and numeric arrays (`aia.folder.values`: None, bools,
numbers, strings, lists, dicts, arrays, registered dataclasses; the rest tagged).

The digest (``sha256``, or ``hmac-sha256`` when the session has a key) covers the canonical
JSON of the envelope without it, then the bytes of each array. A reader checks the schema,
the digest, and that kind, session, run, site and iteration are the ones it expects; any
failure is `Rejected`, and the file is ignored. Without a key the digest catches truncated,
corrupted and misplaced files; with a key (shared out of band, never in the folder) it also
keeps out files written by anyone who lacks it.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import safefs
from .values import Rejected, Undecodable, _dtype, _shape, decode, encode  # noqa: F401

SCHEMA = 1
#: The largest file a reader accepts (bytes), and the most a zip may expand to.
MAX_BYTES = 256 * 2**20
#: The largest control file (``.json``) and the largest envelope inside an ``.npz``: they
#: are parsed before their digest can be checked, so they are kept small.
MAX_CONTROL_BYTES = 2**20
#: The deepest nesting of a value (a reader refuses deeper ones before recursing into them).
MAX_DEPTH = 64
_ENVELOPE = "envelope.json"


def canonical(envelope: dict) -> bytes:
    """The canonical JSON of ``envelope`` (sorted keys, no spaces, ASCII)."""
    return json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _digest(envelope: dict, arrays: list, key: Optional[bytes]) -> str:
    h = hmac.new(key, digestmod=hashlib.sha256) if key else hashlib.sha256()
    h.update(canonical(envelope))
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def digest_field(key: Optional[bytes]) -> str:
    """The envelope field that holds the digest."""
    return "hmac-sha256" if key else "sha256"


def dumps(kind: str, where: dict, body: Any = None, *, fmt: str,
          key: Optional[bytes] = None, extra: Optional[dict] = None,
          encoded: Optional[tuple] = None) -> tuple:
    """The bytes of a file holding ``body``, and its digest. The same arguments give the
    same bytes.

    ``where`` gives ``session``, ``run``, ``site`` and ``iteration`` (None where they do not
    apply); ``extra`` adds envelope fields (e.g. the digest of the query an answer is for).
    ``fmt`` is ``"json"`` (arrays inline) or ``"npz"``; ``encoded`` is ``encode(body)``
    done once for several files."""
    tree, arrays = encoded if encoded is not None else encode(body, inline=(fmt == "json"))
    envelope = {"aia-folder": SCHEMA, "kind": kind, "session": where.get("session"),
                "run": where.get("run"), "site": where.get("site"),
                "iteration": where.get("iteration"), "body": tree, **(extra or {})}
    if fmt == "npz":
        envelope["arrays"] = [[a.dtype.str, list(a.shape)] for a in arrays]
    digest = _digest(envelope, arrays, key)
    envelope[digest_field(key)] = digest
    text = canonical(envelope)
    if fmt == "json":
        return text, digest
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(_member(_ENVELOPE), text)
        for i, a in enumerate(arrays):
            with z.open(_member(f"a{i}.npy"), "w", force_zip64=True) as f:
                np.lib.format.write_array(f, a, allow_pickle=False)
    return out.getvalue(), digest


def _member(name: str) -> zipfile.ZipInfo:
    # A fixed date: the same content gives the same bytes (a central that starts again
    # compares the queries it would write with those already in the folder).
    return zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))


def loads(data: bytes, expect: dict, *, fmt: str, key: Optional[bytes] = None,
          max_bytes: int = MAX_BYTES) -> tuple:
    """``(envelope, body)`` of a file's bytes, after every check; `Rejected` otherwise.

    ``expect`` maps envelope fields (kind, session, run, site, iteration) to the values they
    must have."""
    try:
        return _loads(data, expect, fmt, key, max_bytes)
    except Rejected:
        raise
    except Exception as exc:  # zipfile, json, numpy, a value too deep: a file to ignore
        raise Rejected(f"unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None


def _loads(data: bytes, expect: dict, fmt: str, key: Optional[bytes], max_bytes: int):
    if fmt == "json":
        if len(data) > MAX_CONTROL_BYTES:
            raise Rejected(f"a control file larger than {MAX_CONTROL_BYTES} bytes")
        envelope, arrays = _parse_json(data), []
    else:
        envelope, arrays = _parse_npz(data, max_bytes)
    if not isinstance(envelope, dict) or envelope.get("aia-folder") != SCHEMA:
        raise Rejected(f"not an aia-folder file of schema {SCHEMA}")
    field = digest_field(key)
    claimed = envelope.pop(field, None)
    if not isinstance(claimed, str):
        other = digest_field(None if key else b"k")
        why = ("it is not signed with the session's key" if key and other in envelope else
               "it is signed with a key this reader lacks" if other in envelope else
               "it has no digest")
        raise Rejected(f"{why}")
    if not hmac.compare_digest(claimed, _digest(envelope, arrays, key)):
        raise Rejected("its digest does not match its content (corrupt, truncated or forged)")
    for name, value in expect.items():
        if envelope.get(name) != value:
            raise Rejected(f"its {name} is {envelope.get(name)!r}, expected {value!r}")
    envelope[field] = claimed
    try:
        return envelope, decode(envelope.get("body"), arrays)
    except Rejected as exc:
        raise Undecodable(str(exc), envelope) from None


def _no_constants(name: str):
    raise ValueError(f"the JSON constant {name} is not allowed")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: JSON says nothing of it, Python reads inf
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def _parse_json(data: bytes) -> Any:
    value = json.loads(data.decode("utf-8"), parse_constant=_no_constants,
                       parse_float=_finite, parse_int=_bounded_int)
    _check_depth(value)
    return value


def _bounded_int(text: str) -> int:
    if len(text) > 30:  # Python would take quadratic time on huge literals
        raise ValueError("an integer of more than 30 digits")
    return int(text)


def _check_depth(value: Any) -> None:
    """Refuse values nested deeper than `MAX_DEPTH` (without recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise Rejected(f"a value nested more than {MAX_DEPTH} deep")
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)


def _parse_npz(data: bytes, max_bytes: int) -> tuple:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = {i.filename: i for i in z.infolist()}
        if _ENVELOPE not in infos or len(infos) != len(z.infolist()):
            raise Rejected("not an aia-folder npz (no envelope)")
        if any(i.compress_type != zipfile.ZIP_STORED for i in infos.values()):
            raise Rejected("compressed members (the writer stores them)")
        if sum(i.file_size for i in infos.values()) > max_bytes:
            raise Rejected(f"larger than {max_bytes} bytes once unpacked")
        if infos[_ENVELOPE].file_size > MAX_CONTROL_BYTES:
            raise Rejected(f"an envelope larger than {MAX_CONTROL_BYTES} bytes")
        envelope = _parse_json(z.read(_ENVELOPE))
        specs = envelope.get("arrays") if isinstance(envelope, dict) else None
        if not isinstance(specs, list):
            raise Rejected("malformed envelope (no list of arrays)")
        members = {_ENVELOPE} | {f"a{i}.npy" for i in range(len(specs))}
        if set(infos) != members:
            raise Rejected(f"unexpected members {sorted(set(infos) ^ members)}")
        arrays = []
        for i, spec in enumerate(specs):
            if not (isinstance(spec, list) and len(spec) == 2):
                raise Rejected("malformed array description")
            dtype, shape = _dtype(spec[0]), _shape(spec[1])
            info = infos[f"a{i}.npy"]
            with z.open(info) as f:  # the header first: no allocation larger than the file
                version = np.lib.format.read_magic(f)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)(f)
            if header[0] != shape or header[2] != dtype \
                    or dtype.itemsize * math.prod(shape) > info.file_size:
                raise Rejected(f"array {i} is not the {spec[0]} {shape} its envelope says")
            with z.open(info) as f:
                # allow_pickle=False: an object array raises instead of being unpickled.
                a = np.lib.format.read_array(f, allow_pickle=False)
            if a.dtype != dtype or a.shape != shape:
                raise Rejected(f"array {i} is not the {spec[0]} {shape} its envelope says")
            arrays.append(a)
    return envelope, arrays


# -- files -----------------------------------------------------------------------------------
# Every file of the folder is read and written through `aia.folder.safefs`: never through a
# link, only regular files, sizes checked before reading. ``root`` is the folder's root (by
# default the file's own directory).
def write_atomic(path: Path, data: bytes, root: Optional[Path] = None,
                 durable: bool = True) -> None:
    """Write ``data`` under a temporary name in the same folder, then rename it into place:
    a reader sees the whole file or none. The ``.~`` prefix keeps Dropbox from syncing the
    temporary file. ``durable=False`` skips the fsync (see `safefs.write_atomic`)."""
    path = Path(path)
    if root is None:
        path.parent.mkdir(parents=True, exist_ok=True)
    safefs.write_atomic(Path(root or path.parent), path, data, durable)


def signature(path: Path, root: Optional[Path] = None) -> Optional[tuple]:
    """What identifies one version of a file on this machine (None if absent). Compared only
    with itself over time, never with another machine's clock."""
    path = Path(path)
    return safefs.signature(Path(root or path.parent), path)


def read_bytes(path: Path, max_bytes: int = MAX_BYTES,
               root: Optional[Path] = None) -> Optional[bytes]:
    """The bytes of ``path`` (None if absent); `Rejected` if it is too large, a link or not
    a regular file."""
    path = Path(path)
    try:
        return safefs.read(Path(root or path.parent), path, max_bytes)
    except safefs.UnsafePath as exc:
        raise Rejected(str(exc)) from None
