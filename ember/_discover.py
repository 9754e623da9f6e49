"""Package assembly: re-export the public names of every submodule of a package.

Families live in their own files (one per family, DESIGN.md); a package's ``__init__``
calls :func:`export_all` so adding a file needs no edit elsewhere.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def export_all(package_name: str, path: list, namespace: dict, skip: tuple = ()) -> list:
    """Import each submodule (sorted) and copy the names in its ``__all__`` into ``namespace``."""
    names: list = []
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in skip:
            continue
        mod = importlib.import_module(f"{package_name}.{info.name}")
        for name in getattr(mod, "__all__", ()):
            namespace[name] = getattr(mod, name)
            names.append(name)
    return names
