"""Optional fused CPU kernels compiled by numba (``pip install ember[cpu]``).

NumPy runs an elementwise chain as one call per operation; every call hands the GIL back, so
chains split over Python threads barely scale past one core, while torch runs one fused loop
per op on every core. These kernels are that fused loop: one pass per element, ``prange`` over
cache-sized chunks on numba's own thread pool. numba is imported on the first call of a covered
op, never by ``import ember``; without numba, or with ``EMBER_NUMBA=0``, :func:`kernels`
returns None and callers keep their NumPy code. Kernels are compiled with ``cache=True`` (the
compiled code lands in ``__pycache__``) and for few signatures (1-D float32 arrays).
"""
from __future__ import annotations

import math
import os
from types import SimpleNamespace
from typing import Any

_CHUNK = 1 << 12  # elements a prange iteration handles: ~16 KB of float32 per array
_state: dict = {"kernels": None, "tried": False}


def enabled() -> bool:
    """Whether the numba kernels may be used (``EMBER_NUMBA=0`` turns them off at any time)."""
    return os.environ.get("EMBER_NUMBA", "1") != "0"


def kernels() -> Any:
    """The compiled kernel namespace, or None (numba missing or switched off)."""
    if not enabled():
        return None
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _state["kernels"] = _build()
        except ImportError:
            _state["kernels"] = None
    return _state["kernels"]


def set_threads(chunks: int) -> None:
    """Use as many numba threads as :func:`ember.backend.cpu.row_threads` gives for ``chunks``
    pieces, so the kernels take only the cores other processes leave free. They run between
    GEMMs, never beside one, so they do not compete with OpenBLAS's threads."""
    import numba

    from ember.backend.cpu import row_threads
    numba.set_num_threads(max(1, min(row_threads(chunks, 1), numba.config.NUMBA_NUM_THREADS)))


def _build() -> SimpleNamespace:
    import numba
    import numpy as np
    from numba import prange

    from ember.ops.nn_activation import _GELU_K, _GELU_R

    jit = numba.njit(parallel=True, fastmath=False, cache=True, nogil=True)
    chunk = _CHUNK
    r0, r1, r2, r3, r4, r5, r6, r7 = _GELU_R
    isp = 1.0 / math.sqrt(2.0 * math.pi)

    @jit
    def gelu(x, y, d, want_grad):  # pragma: no cover - compiled
        # The erfc fit of ember.ops.nn_activation (libm's erfc per element is ~4x slower):
        # h = Phi(-|x|) = t exp(-x^2/2) R(t), t = 1/(1 + K|x|); Phi(x) = 1 - h for x > 0.
        n = x.size
        one = np.float32(1.0)
        k = np.float32(_GELU_K)
        half = np.float32(-0.5)
        c0, c1, c2, c3 = np.float32(r0), np.float32(r1), np.float32(r2), np.float32(r3)
        c4, c5, c6, c7 = np.float32(r4), np.float32(r5), np.float32(r6), np.float32(r7)
        s = np.float32(isp)
        for c in prange((n + chunk - 1) // chunk):
            for i in range(c * chunk, min(n, c * chunk + chunk)):
                v = x[i]
                a = abs(v)
                t = one / (one + k * a)
                e = math.exp(half * a * a)
                h = t * e * (((((((c0 * t + c1) * t + c2) * t + c3) * t + c4) * t + c5) * t
                              + c6) * t + c7)
                p = one - h if v > 0 else h
                if v == math.inf:  # inf * 0 in h
                    y[i] = v
                    if want_grad:
                        d[i] = one
                    continue
                y[i] = v * p
                if want_grad:
                    d[i] = p + v * e * s

    def gelu_f(flat: Any, y: Any, d: Any) -> None:
        """float32 GELU of the 1-D contiguous ``flat`` into ``y`` and, unless ``d`` is None,
        its derivative into ``d`` (float32 only: the fit is float32-accurate)."""
        set_threads(-(-flat.size // chunk))
        gelu(flat, y, d if d is not None else y[:0], d is not None)

    return SimpleNamespace(gelu=gelu_f)
