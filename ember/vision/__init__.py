"""ember.vision: torchvision's API on ember (``import ember.vision as torchvision``).

Subpackages load on first use: ``datasets``, ``transforms``, ``models``, ``ops``, ``utils``,
``io``.
"""
from __future__ import annotations

import importlib as _importlib
from typing import Any as _Any

__version__ = "0.28.0"

_LAZY = {"datasets", "transforms", "models", "ops", "utils", "io"}
_IMAGE_BACKEND = ["PIL"]


def set_image_backend(backend: str) -> None:
    """Only ``'PIL'`` is available (accimage is not packaged for ember)."""
    if backend not in ("PIL", "accimage"):
        raise ValueError(f"Invalid backend '{backend}'. Options are 'PIL' and 'accimage'")
    if backend == "accimage":
        raise ValueError("accimage is not available; ember.vision loads images with Pillow")
    _IMAGE_BACKEND[0] = backend


def get_image_backend() -> str:
    return _IMAGE_BACKEND[0]


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        mod = _importlib.import_module(f"ember.vision.{name}")
        globals()[name] = mod
        return mod
    raise AttributeError(f"module 'ember.vision' has no attribute '{name}'")
