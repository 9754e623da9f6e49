"""CPU backend details: BLAS thread control for NumPy's GEMMs.

OpenBLAS's worker threads busy-wait. On a small machine that is also running DataLoader
workers (or anything else), a small GEMM on two spinning threads can take 50x longer than on
one (measured: a 64x400 @ 400x120 product, 46 ms with 2 threads under load vs 0.6 ms with 1).
Small products gain nothing from threads anyway, so ember runs GEMMs under ``SMALL_MACS``
multiply-adds on one thread and larger ones on the default count. Switching is one ctypes
call into the BLAS library, made only when the wanted count changes.
"""
from __future__ import annotations

from typing import Any

SMALL_MACS = 1 << 23  # ~8M multiply-adds: a few ms on one core

_state: dict = {"libs": None, "current": None, "default": None}


def _libs() -> list:
    libs = _state["libs"]
    if libs is None:
        try:
            from threadpoolctl import ThreadpoolController
            ctl = ThreadpoolController().select(user_api="blas")
            libs = list(ctl.lib_controllers)
        except Exception:  # threadpoolctl missing or no BLAS found: leave threads alone
            libs = []
        _state["libs"] = libs
        if libs:
            _state["default"] = max(lib.num_threads for lib in libs)
            _state["current"] = _state["default"]
    return libs


def gemm_threads(xp: Any, macs: int) -> None:
    """Choose the BLAS thread count for a GEMM of ``macs`` multiply-adds (CPU only)."""
    if xp.__name__ != "numpy":
        return
    libs = _libs()
    if not libs:
        return
    want = 1 if macs < SMALL_MACS else _state["default"]
    if want != _state["current"]:
        for lib in libs:
            lib.set_num_threads(want)
        _state["current"] = want


def set_default_threads(n: int) -> None:
    """The thread count large GEMMs use (``ember.set_num_threads``)."""
    _libs()
    _state["default"] = max(int(n), 1)
    _state["current"] = None
