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


_available: list = []


def is_available() -> bool:
    """True when CuPy imports and sees at least one GPU (checked once, then cached)."""
    if _available:
        return _available[0]
    cp = _load()
    ok = False
    if cp is not None:
        try:
            ok = cp.cuda.runtime.getDeviceCount() > 0
        except Exception:
            ok = False
    _available.append(ok)
    if ok:
        from ember.backend import cuda_ops  # noqa: PLC0415 - only once CUDA is known to work
        cuda_ops.install()
    return ok


def xp() -> Any:
    """The CuPy module; called on every CUDA op, so the common path is two lookups."""
    if _available and _available[0]:
        return _cupy
    cp = _load()
    if cp is None or not is_available():
        raise RuntimeError(
            "Torch not compiled with CUDA enabled: ember found no usable CuPy/GPU. "
            "Install the 'cuda' extra (pip install ember[cuda]) on a machine with an NVIDIA GPU.")
    return cp


def stream_capturing(stream: Any = None) -> bool:
    """Whether ``stream`` (default: CuPy's current stream) is being captured into a CUDA
    graph (the legacy null stream never is, and is not asked: that query can fail while
    another stream captures)."""
    s = xp().cuda.get_current_stream() if stream is None else stream
    return s.ptr != 0 and s.is_capturing()
