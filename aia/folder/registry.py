"""What a site may run, by name: algorithms, their problems, and the message types they send.

A run's description names its algorithm (``"sgd"``, ``"glm.fisher"``...) and gives its
constructor parameters as plain data; a site builds the algorithm only if the name is
registered in its own installation (and allowed by its operator), and builds its problem
from its own data file with the loader registered beside the algorithm. Nothing in the
folder can name a class or a function directly.

    register(name, cls, *, params=None, build=None, problem=None, failed=None)
    register_message(name, dataclass)      # dataclasses sent as queries or answers

``params(algorithm) -> dict`` describes an algorithm at the central; ``build(dict)`` makes
the site's copy. The defaults fit a class whose constructor parameters are kept as attributes
of the same names (``SGD(stepsize, x0, seed)`` keeps ``self.stepsize``, ``self.x0``...):
``params`` reads them, ``build`` is ``cls(**params)``. ``problem(path, site) -> problem``
loads the site's data; `npz_problem` makes one from a class built from the arrays of an
``.npz`` file (``LRMSE(A=..., b=...)``). ``failed(answer) -> bool`` tells an answer that
reports a refusal as data (a GLM site's guard): like an error, a central that starts again
does not replay it but asks the site again.

Names are matched on the exact class: a subclass is a different algorithm and needs its own
name.

Packages offer algorithms to sites through entry points of the group ``aia.folder`` (the
packaging convention; `aia` itself imports no application): an entry point named ``glm``
is a module imported, on first use only, when a name ``glm`` or ``glm.<anything>`` is looked
up, and its import registers those names. A package declares them in its ``pyproject.toml``:

    [project.entry-points."aia.folder"]
    glm = "algorithms.glm.folder_protocol"
    sgd = "algorithms.folder"
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import threading
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

#: The entry-point group of the packages that offer algorithms to folder sites.
GROUP = "aia.folder"
log = logging.getLogger(__name__)

_lock = threading.RLock()
_entries: dict = {}
_messages: dict = {}
_message_names: dict = {}


@dataclass
class Entry:
    """One registered algorithm."""

    name: str
    cls: Union[type, str]  # a class, or "module:attribute", resolved on first use
    params: Optional[Callable[[Any], dict]] = None
    build: Optional[Callable[[dict], Any]] = None
    problem: Optional[Callable[[Optional[str], str], Any]] = None
    failed: Optional[Callable[[Any], bool]] = None
    _resolved: Optional[type] = field(default=None, repr=False)

    def resolve(self) -> type:
        if self._resolved is None:
            self._resolved = _import(self.cls) if isinstance(self.cls, str) else self.cls
        return self._resolved

    def describe(self, algorithm: Any) -> dict:
        """The constructor parameters of ``algorithm`` (central side)."""
        if self.params is not None:
            return dict(self.params(algorithm))
        return constructor_params(algorithm)

    def make(self, params: dict) -> Any:
        """The site's copy of the algorithm."""
        if not isinstance(params, dict):
            raise TypeError(f"the parameters of {self.name!r} must be a mapping")
        if self.build is not None:
            return self.build(params)
        return self.resolve()(**params)

    def load_problem(self, path: Optional[str], site: str, **options) -> Any:
        """The site's problem from its data file; ``options`` (the site's settings, such as
        an audit log) go to a loader that takes them by name."""
        if self.problem is None:
            raise ValueError(f"algorithm {self.name!r} has no problem loader registered")
        try:
            parameters = inspect.signature(self.problem).parameters
        except (TypeError, ValueError):
            parameters = {}
        takes_all = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
        given = {k: v for k, v in options.items() if takes_all or k in parameters}
        return self.problem(path, site, **given)


def register(name: str, cls: Union[type, str], *, params=None, build=None,
             problem=None, failed=None) -> Entry:
    """Allow ``cls`` to run on sites under ``name`` (register it at the central and at every
    site). See the module docstring for ``params``, ``build``, ``problem`` and ``failed``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty string, got {name!r}")
    entry = Entry(name, cls, params, build, problem, failed)
    with _lock:
        _entries[name] = entry
    return entry


def register_message(name: str, cls: type) -> None:
    """Let instances of the dataclass ``cls`` travel as queries and answers, as ``name``.

    Its fields must hold values the folder can carry (numbers, strings, arrays, lists, dicts
    and other registered messages); a reader builds it with ``cls(**fields)``."""
    if not (isinstance(cls, type) and is_dataclass(cls)):
        raise TypeError(f"register_message: {cls!r} is not a dataclass")
    with _lock:
        _messages[name] = cls
        _message_names[cls] = name


def lookup(name: str) -> Entry:
    """The entry registered as ``name`` (importing its provider if need be); KeyError."""
    with _lock:
        if name not in _entries:
            _load_provider(name)
        return _entries[name]


def names() -> list:
    """Every registered algorithm name (after importing the providers)."""
    load_providers()
    with _lock:
        return sorted(_entries)


def entry_for(algorithm: Any) -> Entry:
    """The entry of ``algorithm``'s exact class (central side); TypeError if none."""
    cls = type(algorithm)
    for attempt in range(2):
        with _lock:
            entries = list(_entries.values())
        for entry in entries:
            try:
                registered = entry.resolve()
            except ImportError:
                continue
            # A class defined in a script travels by value: its copy is another class object
            # with the same module and name.
            if registered is cls or (registered.__module__, registered.__qualname__) == (
                    cls.__module__, cls.__qualname__):
                return entry
        if attempt == 0:
            load_providers()
    raise TypeError(
        f"algorithm {cls.__qualname__!r} is not registered for folder runs: sites run only "
        f"algorithms installed on them, by name. Register it at the central and at every site "
        f"with aia.folder.register('a-name', {cls.__qualname__}, problem=...); registered: "
        f"{sorted(_entries)}")


def message_class(name: str) -> type:
    with _lock:
        if name not in _messages:
            _load_provider(name)
        return _messages[name]


def message_name(cls: type) -> Optional[str]:
    with _lock:
        found = _message_names.get(cls)
    if found is None:
        load_providers()
        with _lock:
            found = _message_names.get(cls)
    return found


def load_providers() -> None:
    """Import every provider of the ``aia.folder`` entry points."""
    for point in _providers():
        _load(point)


def _load_provider(name: str) -> None:
    """Import the providers of ``name``: the entry points named as its first dotted part."""
    head = name.split(".", 1)[0]
    for point in _providers():
        if point.name == head:
            _load(point)


def _providers() -> list:
    return sorted(importlib.metadata.entry_points(group=GROUP), key=lambda p: p.name)


def _load(point) -> None:
    try:
        point.load()
    except ImportError as exc:  # an optional provider not installed here: its names stay
        log.debug("aia.folder: provider %s (%s) not loaded: %s", point.name, point.value, exc)


def _import(path: str) -> Any:
    module, _, attribute = path.partition(":")
    obj = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def constructor_params(algorithm: Any) -> dict:
    """The constructor parameters of ``algorithm``, read from attributes of the same names."""
    cls = type(algorithm)
    out = {}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{cls.__qualname__}.__init__ takes *args/**kwargs: register it "
                            f"with params=... and build=...")
        if not hasattr(algorithm, p.name):
            raise TypeError(
                f"{cls.__qualname__} does not keep its constructor parameter {p.name!r} as "
                f"an attribute: register it with params=... and build=...")
        out[p.name] = getattr(algorithm, p.name)
    return out


def load_npz(path: Union[str, Path]) -> dict:
    """The arrays of a site's own ``.npz`` file (never with pickles)."""
    import numpy as np  # noqa: PLC0415

    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def npz_problem(cls: Union[type, str]) -> Callable:
    """A problem loader: ``cls(**arrays of the site's .npz file)``."""

    def load(path: Optional[str], site: str) -> Any:
        if path is None:
            raise ValueError(f"site {site}: this algorithm needs a data file (--data x.npz)")
        target = _import(cls) if isinstance(cls, str) else cls
        return target(**load_npz(path))

    load.__qualname__ = f"npz_problem({cls if isinstance(cls, str) else cls.__qualname__})"
    return load
