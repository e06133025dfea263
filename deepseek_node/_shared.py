"""Target-side code that the Ansible collection and this package share, one file each.

The files live in the collection (plugins/module_utils/, stdlib only: they run on targets). Built as a wheel,
or installed editable from this tree, setup.py maps that directory to the package `deepseek_node._module_utils`;
run from a checkout that was not installed that way, the package is made here over the same directory.
Either way there is one module object per file, which deepseek_node.gpu.probe and
deepseek_node.bundle.manifest are names for.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "deepseek_node._module_utils"
# Where the collection's module_utils are in a checkout: beside the package directory.
CHECKOUT_DIR = Path(__file__).resolve().parents[1] / "plugins" / "module_utils"


def _checkout_package() -> ModuleType:
    spec = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
    spec.submodule_search_locations = [str(CHECKOUT_DIR)]
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    return package


def module_utils(name: str) -> ModuleType:
    """The collection's plugins/module_utils/<name>.py, imported as deepseek_node._module_utils.<name>."""
    try:
        importlib.import_module(PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name != PACKAGE or not (CHECKOUT_DIR / f"{name}.py").is_file():
            raise
        _checkout_package()
    return importlib.import_module(f"{PACKAGE}.{name}")
