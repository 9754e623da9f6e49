"""``ember.utils``: ``data``, ``checkpoint``, ``safetensors`` ... (loaded on first use)."""
import importlib as _importlib
from typing import Any as _Any


def __getattr__(name: str) -> _Any:
    try:
        mod = _importlib.import_module(f"ember.utils.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"ember.utils.{name}":
            raise AttributeError(f"module 'ember.utils' has no attribute '{name}'") from None
        raise
    globals()[name] = mod
    return mod
