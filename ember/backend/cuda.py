"""CUDA backend: CuPy, imported lazily so that ``import ember`` never initialises CUDA."""
from __future__ import annotations

from typing import Any

_cupy: Any = None
_checked = False


def _load() -> Any:
    global _cupy, _checked
    if not _checked:
        _checked = True
        try:
            import cupy  # noqa: PLC0415 - lazy on purpose
            _cupy = cupy
        except Exception:  # ImportError, or a broken CUDA install
            _cupy = None
    return _cupy


def is_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    cp = _load()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def xp() -> Any:
    cp = _load()
    if cp is None or not is_available():
        raise RuntimeError(
            "Torch not compiled with CUDA enabled: ember found no usable CuPy/GPU. "
            "Install the 'cuda' extra (pip install ember[cuda]) on a machine with an NVIDIA GPU.")
    return cp
