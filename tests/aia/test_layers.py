"""The layers: `aia` depends on no application, finds folder algorithms through entry
points, and its public names (and the GLM's) are all in ``__all__``."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import pytest

import aia
from algorithms import glm

AIA = Path(aia.__file__).resolve().parent


def _imports(path: Path) -> list:
    """The modules ``path`` imports, and the ``"module:attribute"`` strings it names."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append(node.module or "")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and ":" in node.value and " " not in node.value:
            found.append(node.value.split(":", 1)[0])  # an import path such as "m.sub:Class"
    return found


def test_aia_imports_nothing_from_the_applications_built_on_it():
    offenders = {str(p.relative_to(AIA)): name for p in AIA.rglob("*.py")
                 for name in _imports(p) if name.split(".")[0] == "algorithms"}
    assert not offenders, f"aia imports from algorithms: {offenders}"


def test_the_check_above_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('from algorithms import SGD\nregister("x", "algorithms.sgd:SGD")\n')
    assert _imports(bad) == ["algorithms", "algorithms.sgd"]


@pytest.mark.timeout(60)
def test_folder_algorithms_are_found_through_entry_points_on_first_use():
    script = (
        "import sys, importlib.metadata as md\n"
        "from aia.folder import registry\n"
        "assert 'algorithms' not in sys.modules, 'imported before first use'\n"
        "points = {p.name: p.value for p in md.entry_points(group='aia.folder')}\n"
        "assert points == {'glm': 'algorithms.glm.folder_protocol', 'sgd': 'algorithms.folder'}, points\n"
        "registry.lookup('sgd')\n"
        "assert 'algorithms.glm.folder_protocol' not in sys.modules, 'a name loads its provider only'\n"
        "names = registry.names()\n"
        "assert {'sgd', 'glm.fisher', 'glm.gradient', 'glm.glmnet'} <= set(names), names\n"
        "try:\n"
        "    registry.lookup('nope')\n"
        "except KeyError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('an unknown name must be a KeyError')\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=50)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("package", [aia, glm], ids=["aia", "glm"])
def test_all_lists_every_public_name_and_only_names_that_exist(package):
    public = {n for n in dir(package) if not n.startswith("_")
              and not isinstance(getattr(package, n), types.ModuleType)
              and getattr(getattr(package, n), "__module__", package.__name__) != "__future__"}
    public.discard("annotations")  # `from __future__ import annotations`
    listed = set(package.__all__)
    assert public <= listed, f"public but not in __all__: {sorted(public - listed)}"
    for name in listed:  # lazy names (aia.RayCluster) resolve on access
        assert getattr(package, name) is not None


def _exceptions(package: str) -> dict:
    """Every exception class defined in the package's modules: name -> module."""
    import importlib
    import pkgutil

    root = importlib.import_module(package)
    found = {}
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, BaseException) \
                    and value.__module__ == info.name:
                found[name] = info.name
    return found


@pytest.mark.parametrize("package,tree", [("aia", "aia.errors"), ("algorithms.glm",
                                                                  "algorithms.glm")])
def test_the_exception_trees_name_every_exception(package, tree):
    """The trees drawn in `aia.errors` and `algorithms.glm` are complete."""
    import importlib

    doc = importlib.import_module(tree).__doc__
    found = _exceptions(package)
    assert len(found) >= 6  # the check finds them
    missing = {name: module for name, module in found.items() if name not in doc}
    assert not missing, f"not in the tree of {tree}'s docstring: {missing}"
