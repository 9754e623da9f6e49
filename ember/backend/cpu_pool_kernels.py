"""Max-pooling kernels for the CPU (float32 and float64), compiled by numba.

NumPy's max pooling copies the windows into one contiguous plane per kernel element, then
finds the max and the first index holding it with several passes of compares and small-int
adds (LeNet's first pool: ~0.8 ms forward, ~0.34 ms backward). Here: the 2x2 stride-2
windows as planes in one pass, one pass selecting max, first-max index and flat input
position over the 4 planes (vectorized: contiguous loads, selects as blends), and the
gradient's scatter as one loop.

Measured and dropped: a kernel reading the windows straight from the input. Its stride-2
loads kept LLVM from vectorizing, and x86 lowers scalar float selects to branches (even
with ``!unpredictable``), mispredicted on every other window: 1.26-1.5 ms.

Uses ``cpu_simd``'s no-wraparound load/store intrinsics; numba is imported on first
use, and without it (or with ``EMBER_NUMBA=0``) every function here returns None.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from ember.backend import cpu_simd
from ember.backend.cpu_kernels import LazyKernels

# the intrinsics, as module globals (numba's on-disk cache does not take closure variables)
_LD: Any = None
_ST: Any = None


def _build() -> SimpleNamespace:
    import numba

    global _LD, _ST
    v = cpu_simd.intrinsics()
    _LD, _ST = v.ld, v.st
    jit = numba.njit(cache=True, nogil=True, error_model="numpy", boundscheck=False)

    # any float dtype (plain scalar code, which LLVM vectorizes: contiguous loads and no
    # integer division or modulo in the loop. A kernel reading the windows straight from the
    # input (stride-2 loads) stayed scalar, its selects became unpredictable branches:
    # 1.5 ms for LeNet's first pool, twice NumPy's time)
    @jit
    def max_pool_4(pl4, base, off, y, idx, planes, P):  # pragma: no cover - compiled
        # pl4 flat (4, planes * P): the windows' 4 elements as contiguous planes; base (P,):
        # each window's first flat input position; off (4,): each element's offset in it.
        # torch's CPU rule: a later element wins when greater or NaN (the last NaN wins)
        M = planes * P
        o1 = off[1]
        o2 = off[2]
        o3 = off[3]
        for pl in range(planes):
            for q in range(P):
                i = pl * P + q
                best = _LD(pl4, i)
                bi = np.int64(0)
                v = _LD(pl4, M + i)
                t = (v > best) | (v != v)
                best = v if t else best
                bi = o1 if t else bi
                v = _LD(pl4, 2 * M + i)
                t = (v > best) | (v != v)
                best = v if t else best
                bi = o2 if t else bi
                v = _LD(pl4, 3 * M + i)
                t = (v > best) | (v != v)
                best = v if t else best
                bi = o3 if t else bi
                _ST(y, i, best)
                _ST(idx, i, _LD(base, q) + bi)

    @jit
    def planes_2x2(x, H, W, out, OH, OW, planes):  # pragma: no cover - compiled
        # the 4 elements of each 2x2 stride-2 window as contiguous planes out (4, planes,
        # OH, OW), in one pass (NumPy's two strided copies took 1.7x longer)
        M = planes * OH * OW
        for pl in range(planes):
            for oh in range(OH):
                r0 = pl * H * W + 2 * oh * W
                i0 = (pl * OH + oh) * OW
                for ow in range(OW):
                    p = r0 + 2 * ow
                    _ST(out, i0 + ow, _LD(x, p))
                    _ST(out, M + i0 + ow, _LD(x, p + 1))
                    _ST(out, 2 * M + i0 + ow, _LD(x, p + W))
                    _ST(out, 3 * M + i0 + ow, _LD(x, p + W + 1))

    @jit
    def pool_scatter(g, idx, out, size, per, planes):  # pragma: no cover - compiled
        # out flat (planes, size), zeroed: += g at each plane's flat positions idx (nested
        # loops: a division per element to find the plane cost 4x)
        for pl in range(planes):
            ob = pl * size
            gb = pl * per
            for j in range(per):
                k = gb + j
                o = ob + _LD(idx, k)
                _ST(out, o, _LD(out, o) + _LD(g, k))

    return SimpleNamespace(max_pool_4=max_pool_4, planes_2x2=planes_2x2,
                           pool_scatter=pool_scatter)


kernels = LazyKernels(_build)   # the compiled namespace, or None


def max_pool_planes(planes: np.ndarray, base: np.ndarray, offsets: np.ndarray) -> tuple | None:
    """(values, flat input indices (int64)) of max pooling from the windows' elements as
    contiguous planes ``(4, N, C, *out)`` (the 2x2 windows of LeNet's pools); ``base`` is
    each window's first flat input position (shape ``out``), ``offsets`` each element's
    offset. None without the kernels, or for other window sizes and dtypes."""
    kern = kernels()
    if kern is None or planes.shape[0] != 4 or planes.dtype not in (np.float32, np.float64) \
            or not planes.flags.c_contiguous:
        return None
    shape = planes.shape[1:]
    nplanes = shape[0] * shape[1]
    p = planes[0].size // max(nplanes, 1)
    y = np.empty(shape, planes.dtype)
    idx = np.empty(shape, np.int64)
    kern.max_pool_4(planes.reshape(-1), np.ascontiguousarray(base, np.int64).reshape(-1),
                    np.ascontiguousarray(offsets, np.int64), y.reshape(-1), idx.reshape(-1),
                    nplanes, p)
    return y, idx


def planes_2x2(x: np.ndarray, out: tuple) -> np.ndarray | None:
    """The windows of a 2x2, stride-2, unpadded pooling of ``x (N, C, H, W)`` as contiguous
    planes ``(4, N, C, *out)`` (windows inside the input); None without the kernels."""
    kern = kernels()
    if kern is None or x.ndim != 4 or x.dtype not in (np.float32, np.float64) or \
            2 * out[0] > x.shape[2] or 2 * out[1] > x.shape[3]:
        return None
    n, c, h, w = x.shape
    planes = np.empty((4, n, c) + tuple(out), x.dtype)
    kern.planes_2x2(np.ascontiguousarray(x).reshape(-1), h, w, planes.reshape(-1), out[0],
                    out[1], n * c)
    return planes


def pool_scatter(g: np.ndarray, idx: np.ndarray, shape: tuple) -> np.ndarray | None:
    """Zeros of ``shape (N, C, *sp)`` with ``g`` added at the flat spatial ``idx`` (in range:
    from the forward); None without the kernels or for other dtypes."""
    kern = kernels()
    if kern is None or g.dtype not in (np.float32, np.float64) or g.shape != idx.shape or \
            len(shape) < 3:
        return None
    out = np.zeros(shape, g.dtype)
    planes = shape[0] * shape[1]
    if planes:
        kern.pool_scatter(np.ascontiguousarray(g).reshape(-1),
                          np.ascontiguousarray(idx, np.int64).reshape(-1), out.reshape(-1),
                          int(np.prod(shape[2:])), g.size // planes, planes)
    return out
