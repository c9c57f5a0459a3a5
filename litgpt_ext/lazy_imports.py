"""Start-up cost that most commands never use: the torchmetrics package, which Lightning imports at import time.

``import lightning`` imports torchmetrics to read its version and its ``Metric`` / ``MetricCollection`` classes (type
hints and isinstance checks); importing the torchmetrics package imports every metric family, BERTScore among them,
which imports transformers' auto classes. Measured here: ``import lightning`` 6.2 s / 379 MB, of which torchmetrics
3.0 s / 147 MB — before a command has done anything, a large part of a short command's run and of a small model's
peak memory (transformers is never needed to train a litgpt model).

:func:`defer_torchmetrics` installs a stand-in package in ``sys.modules``. It carries the version, imports the two
classes Lightning needs from their own submodules (``torchmetrics.metric``, ``torchmetrics.collections``, with what
they import), and everything else makes it the real package first: any other attribute (``from torchmetrics import
RunningMean``) or any other submodule import (``from torchmetrics.functional.text import ...``, through a finder on
``sys.meta_path``) imports the real ``torchmetrics/__init__`` — which reuses the submodules already imported, so each
class exists once — and then proceeds. Code that uses torchmetrics works unchanged, only later. The CLI installs it
before a command's module is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import logging
import sys
import types
from pathlib import Path

PACKAGE = "torchmetrics"
LIGHT = {"Metric": "torchmetrics.metric", "MetricCollection": "torchmetrics.collections"}
"""The names Lightning imports from torchmetrics at import time, and the submodule each lives in."""


class _DeferredModule(types.ModuleType):
    """The stand-in (see the module docstring)."""

    _light_imports = 0
    """> 0 while a :data:`LIGHT` submodule is imported: its own imports pass through as plain submodule imports."""

    def __getattr__(self, name: str):
        if name in LIGHT and self.__dict__.get("_real_module") is None:
            try:
                value = getattr(_light_import(LIGHT[name]), name)
            except Exception:  # another torchmetrics layout: no shortcut, the real package
                _forget_submodules()
                return getattr(self._real(), name)
            setattr(self, name, value)
            return value
        return getattr(self._real(), name)

    def __dir__(self):
        return dir(self._real())

    def _real(self) -> types.ModuleType:
        real = self.__dict__.get("_real_module")
        if real is None:
            if sys.modules.get(PACKAGE) is self:
                del sys.modules[PACKAGE]
            self.__dict__["_loading"] = True  # the real __init__'s own submodule imports pass through
            try:
                real = importlib.import_module(PACKAGE)
            finally:
                self.__dict__["_loading"] = False
            self.__dict__["_real_module"] = real
        return real


def _light_import(name: str, utilities_first: bool = True) -> types.ModuleType:
    """Import one torchmetrics submodule without the package's ``__init__`` (its own imports pass through)."""
    _DeferredModule._light_imports += 1
    try:
        if utilities_first:  # torchmetrics' own order: utilities (which import torch), then the rest
            importlib.import_module(f"{PACKAGE}.utilities")
        return importlib.import_module(name)
    finally:
        _DeferredModule._light_imports -= 1


def _forget_submodules() -> None:
    for name in [m for m in sys.modules if m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


class _AlreadyImported(importlib.abc.Loader):
    """Hands the import system a module the real package's ``__init__`` has just imported (no second copy)."""

    def create_module(self, spec):
        return sys.modules[spec.name]

    def exec_module(self, module) -> None:
        pass


class _RealPackageFirst(importlib.abc.MetaPathFinder):
    """Any submodule import but the light ones imports the real package first (see the module docstring)."""

    def __init__(self, stand_in: _DeferredModule) -> None:
        self.stand_in = stand_in

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(PACKAGE + ".") or _DeferredModule._light_imports:
            return None
        if self.stand_in.__dict__.get("_loading"):
            return None
        if self.stand_in.__dict__.get("_real_module") is not None:
            sys.meta_path.remove(self)  # done: the real package is imported
            return None
        self.stand_in._real()
        if fullname in sys.modules:
            return importlib.machinery.ModuleSpec(fullname, _AlreadyImported())
        return None


def defer_torchmetrics() -> bool:
    """Install the stand-in unless torchmetrics is already imported or not installed; True when installed."""
    if PACKAGE in sys.modules:
        return False
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    spec = find_spec(PACKAGE)  # locates the package without importing it
    if spec is None or spec.submodule_search_locations is None:
        return False
    try:
        stand_in = _DeferredModule(PACKAGE)
        stand_in.__version__ = version(PACKAGE)
    except PackageNotFoundError:
        return False
    # what introspection reads without meaning to use the package (inspect.getmodule scans every module's __file__;
    # `from X import Y` checks __path__) is answered by the stand-in itself
    stand_in.__spec__, stand_in.__loader__, stand_in.__file__ = spec, spec.loader, spec.origin
    stand_in.__path__, stand_in.__package__ = list(spec.submodule_search_locations), PACKAGE
    # the names torchmetrics/__init__ defines before importing its submodules, which they read back from it
    root = Path(spec.origin).parent
    stand_in._logger = logging.getLogger(PACKAGE)  # the real __init__ adds its handler when it runs
    stand_in._PACKAGE_ROOT, stand_in._PROJECT_ROOT = str(root), str(root.parent)
    sys.modules[PACKAGE] = stand_in
    sys.meta_path.insert(0, _RealPackageFirst(stand_in))
    try:
        about = _light_import(f"{PACKAGE}.__about__", utilities_first=False)
    except Exception:  # another layout: leave torchmetrics to be imported as usual
        sys.meta_path.remove(sys.meta_path[0])
        del sys.modules[PACKAGE]
        _forget_submodules()
        return False
    stand_in.__dict__.update({k: v for k, v in vars(about).items() if not k.startswith("__") or k == "__version__"})
    return True
