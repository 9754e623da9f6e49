"""Fused numba kernels for float32 scaled dot-product attention on the CPU (no mask other
than ``is_causal``, no dropout, head sizes a multiple of 8), built on first use like
``cpu_kernels`` (None without numba or with ``EMBER_NUMBA=0``).

Why: the NumPy path runs each (batch, head)'s products as per-matrix BLAS calls on small
matrices (64 x 64 x 32 in the tiny GPT) plus a softmax pass and the glue between; at that
size the calls and their packing cost more than the arithmetic. Here one compiled loop does
a head at a time in cache: its q, k, v are copied into small zero-padded contiguous buffers
(they arrive as strided views of a fused qkv projection), and every product is a sequence
of 8x8 register tiles (``cpu_simd``'s vector type: eight accumulators, one vector load and
eight broadcasts per step). A plain loop version, vectorized by LLVM, ran ~2x slower than
the NumPy path: each short row loop paid its setup (alias checks, remainders) once per
eight multiply-adds.

The causal mask (query ``i`` sees keys ``j <= i``, torch's top-left alignment) only bounds
the loops: a block of 8 queries visits the key blocks up to its last row. The forward keeps
the attention weights ``p`` (batch, heads, Lp, Sp) (L and S rounded up to 8, zero outside
the visible keys), the backward reads them: ``dv = p^T dO``, ``dp = dO v^T``,
``ds = p (dp - sum_j p dp) scale``, ``dq = ds k``, ``dk = ds^T q``.

``EMBER_ATTN_KERNELS=0`` keeps scaled_dot_product_attention on the NumPy path (an A/B switch).
numba's cache does not see edits of ``cpu_simd``: after editing it delete
``ember/backend/__pycache__/cpu_attention_kernels*.nb*`` too.
"""
from __future__ import annotations

from typing import Any

from ember.backend import cpu_simd
from ember.backend.cpu_kernels import LazyKernels, _exp_neg, _spread as spread_kernels

# set by _build, module globals rather than closure variables (numba's on-disk cache does
# not take closure variables that are jitted functions)
_EXP_NEG: Any = None
_VLOAD: Any = None
_VSTORE: Any = None
_VBCAST: Any = None
_VFMA: Any = None
_VZERO: Any = None
_LD: Any = None
_ST: Any = None
_TILE: Any = None
_SOFTMAX_ROW: Any = None
_ROWS: Any = None
_COLS: Any = None
_HEAD: Any = None

_MIN_HEADS = 4  # heads a thread gets at least (a 64 x 64 x 32 causal head: ~10 us forward)


def _spread(n: int, piece: Any) -> None:
    """``piece(lo, hi)`` over the ``n`` heads through ``cpu_kernels._spread``: on the spare
    cores, but serially beside OpenBLAS's spinning workers (as after the qkv projection in a
    training step). Heads on two threads beside the spinning workers measured 0.977x and
    0.960x of serial on the tiny-GPT step alternating in one process, but 1.14x and 1.04x
    in two processes taking turns (``bench.gpt_pieces ab``, the setting of the paired
    benchmarks against torch), so serial it is."""
    spread_kernels(n, piece, _MIN_HEADS)


def _build() -> Any:
    import numba
    import numpy as np

    global _EXP_NEG, _VLOAD, _VSTORE, _VBCAST, _VFMA, _VZERO, _LD, _ST, _TILE, _SOFTMAX_ROW
    global _ROWS, _COLS, _HEAD
    _EXP_NEG = _exp_neg(numba, np)
    vi = cpu_simd.intrinsics()
    _VLOAD, _VSTORE, _VBCAST, _VFMA, _VZERO = vi.vload, vi.vstore, vi.vbcast, vi.vfma, vi.vzero
    _LD, _ST = vi.ld, vi.st
    # row loops: reductions reassociated (vectorized), multiply-adds fused
    jit = numba.njit(fastmath={"reassoc", "contract"}, cache=True, nogil=True,
                     error_model="numpy")

    @numba.njit(inline="always", error_model="numpy")
    def tile(a, a0, ars, acs, b, b0, ldb, t0, t1, c, c0, ldc):  # pragma: no cover
        # c[c0 + r*ldc : +8] = sum_{t0 <= t < t1} a[a0 + r*ars + t*acs] * b[b0 + t*ldb : +8]
        # for the 8 rows r (flat element offsets into each array's data)
        x0 = _VZERO()
        x1 = _VZERO()
        x2 = _VZERO()
        x3 = _VZERO()
        x4 = _VZERO()
        x5 = _VZERO()
        x6 = _VZERO()
        x7 = _VZERO()
        for t in range(t0, t1):
            bv = _VLOAD(b, b0 + t * ldb)
            at = a0 + t * acs
            x0 = _VFMA(_VBCAST(a, at), bv, x0)
            x1 = _VFMA(_VBCAST(a, at + ars), bv, x1)
            x2 = _VFMA(_VBCAST(a, at + 2 * ars), bv, x2)
            x3 = _VFMA(_VBCAST(a, at + 3 * ars), bv, x3)
            x4 = _VFMA(_VBCAST(a, at + 4 * ars), bv, x4)
            x5 = _VFMA(_VBCAST(a, at + 5 * ars), bv, x5)
            x6 = _VFMA(_VBCAST(a, at + 6 * ars), bv, x6)
            x7 = _VFMA(_VBCAST(a, at + 7 * ars), bv, x7)
        _VSTORE(c, c0, x0)
        _VSTORE(c, c0 + ldc, x1)
        _VSTORE(c, c0 + 2 * ldc, x2)
        _VSTORE(c, c0 + 3 * ldc, x3)
        _VSTORE(c, c0 + 4 * ldc, x4)
        _VSTORE(c, c0 + 5 * ldc, x5)
        _VSTORE(c, c0 + 6 * ldc, x6)
        _VSTORE(c, c0 + 7 * ldc, x7)

    _TILE = tile

    @numba.njit(inline="always", error_model="numpy")
    def rows(dst, d0, dstride, src, s0, sstride, r0, r1, width):  # pragma: no cover
        # dst[d0 + r*dstride : +width] = src[s0 + r*sstride : +width] for r0 <= r < r1, in
        # 8-float vectors (width a multiple of 8): a head's rows into or out of scratch
        for r in range(r0, r1):
            for e in range(0, width, 8):
                _VSTORE(dst, d0 + r * dstride + e, _VLOAD(src, s0 + r * sstride + e))

    _ROWS = rows

    @numba.njit(inline="always", error_model="numpy")
    def cols(dst, dstride, src, s0, sstride, n, width):  # pragma: no cover - compiled
        # dst[e * dstride + j] = src[s0 + j * sstride + e]: n rows of a head transposed into
        # scratch, so a score tile loads 8 keys at once
        for j in range(n):
            for e in range(width):
                _ST(dst, e * dstride + j, _LD(src, s0 + j * sstride + e))

    @numba.njit(inline="always")
    def head(st, b, h):  # pragma: no cover - compiled
        # element offset of (batch b, head h) for element strides st
        return b * st[0] + h * st[1]

    _COLS, _HEAD = cols, head

    @numba.njit(inline="always", fastmath={"reassoc", "contract"}, error_model="numpy")
    def softmax_row(pr, n, scale):  # pragma: no cover - compiled
        # pr[:n] <- softmax(pr[:n] * scale), pr[n:] <- 0. The max skips NaN; a NaN score
        # then makes the whole row NaN through exp and the sum, as in torch
        m = np.float32(-np.inf)
        for j in range(n):
            x = pr[j] * scale
            pr[j] = x
            m = x if x > m else m
        t = np.float32(0.0)
        for j in range(n):
            x = _EXP_NEG(pr[j] - m)
            pr[j] = x
            t += x
        inv = np.float32(1.0) / t
        for j in range(n):
            pr[j] *= inv
        for j in range(n, pr.size):
            pr[j] = np.float32(0.0)

    _SOFTMAX_ROW = softmax_row

    @jit
    def fwd(q, k, v, out, p, qst, kst, vst, ost, scale, causal, lo, hi):  # pragma: no cover
        # heads lo..hi-1 of the flattened (batch, head) index. q (B, H, L, E), k (B, H, S, E),
        # v (B, H, S, Ev), out (B, H, L, Ev): unit stride along the last axis, element strides
        # of the other three in qst, kst, vst, ost; p (B, H, Lp, Sp) C-contiguous
        nh, L, E = q.shape[1], q.shape[2], q.shape[3]
        S, Ev = k.shape[2], v.shape[3]
        Lp, Sp = p.shape[2], p.shape[3]
        qh = np.zeros((Lp, E), np.float32)    # zero padding rows/columns stay zero
        kt = np.zeros((E, Sp), np.float32)    # k transposed: a score tile loads 8 keys
        vh = np.zeros((Sp, Ev), np.float32)
        oh = np.zeros((Lp, Ev), np.float32)
        for bh in range(lo, hi):
            b = bh // nh
            h = bh - b * nh
            ob = _HEAD(ost, b, h)
            pb = bh * Lp * Sp
            _ROWS(qh, 0, E, q, _HEAD(qst, b, h), qst[2], 0, L, E)
            _ROWS(vh, 0, Ev, v, _HEAD(vst, b, h), vst[2], 0, S, Ev)
            _COLS(kt, Sp, k, _HEAD(kst, b, h), kst[2], S, E)
            for i0 in range(0, L, 8):
                kmax = min(i0 + 8, S) if causal else S
                for j0 in range(0, kmax, 8):  # scores of 8 queries x 8 keys
                    _TILE(qh, i0 * E, E, 1, kt, j0, Sp, 0, E, p, pb + i0 * Sp + j0, Sp)
                for i in range(i0, min(i0 + 8, L)):
                    _SOFTMAX_ROW(p[b, h, i], min(i + 1, S) if causal else S, scale)
                for i in range(L, i0 + 8):
                    p[b, h, i, :] = np.float32(0.0)
                for c0 in range(0, Ev, 8):    # out = p v over the visible keys
                    _TILE(p, pb + i0 * Sp, Sp, 1, vh, c0, Ev, 0, kmax, oh, i0 * Ev + c0, Ev)
                _ROWS(out, ob, ost[2], oh, 0, Ev, i0, min(i0 + 8, L), Ev)

    @jit
    def bwd(q, k, v, g, p, dq, dk, dv, qst, kst, vst, gst, dqst, dkst, dvst, scale, causal,
            lo, hi):  # pragma: no cover - compiled
        # gradients of heads lo..hi-1 into dq, dk, dv (element strides dqst, dkst, dvst);
        # g is the output's gradient (element strides gst)
        nh, L, E = q.shape[1], q.shape[2], q.shape[3]
        S, Ev = k.shape[2], v.shape[3]
        Lp, Sp = p.shape[2], p.shape[3]
        qh = np.zeros((Lp, E), np.float32)
        kh = np.zeros((Sp, E), np.float32)
        vt = np.zeros((Ev, Sp), np.float32)   # v transposed: a dp tile loads 8 keys
        gh = np.zeros((Lp, Ev), np.float32)
        ds = np.zeros((Lp, Sp), np.float32)
        dqh = np.zeros((Lp, E), np.float32)
        dkh = np.zeros((Sp, E), np.float32)
        dvh = np.zeros((Sp, Ev), np.float32)
        for bh in range(lo, hi):
            b = bh // nh
            h = bh - b * nh
            dqb, dkb, dvb = _HEAD(dqst, b, h), _HEAD(dkst, b, h), _HEAD(dvst, b, h)
            pb = bh * Lp * Sp
            _ROWS(qh, 0, E, q, _HEAD(qst, b, h), qst[2], 0, L, E)
            _ROWS(gh, 0, Ev, g, _HEAD(gst, b, h), gst[2], 0, L, Ev)
            _ROWS(kh, 0, E, k, _HEAD(kst, b, h), kst[2], 0, S, E)
            _COLS(vt, Sp, v, _HEAD(vst, b, h), vst[2], S, Ev)
            for i0 in range(0, L, 8):
                kmax = min(i0 + 8, S) if causal else S
                for j0 in range(0, kmax, 8):  # dp = dO v^T
                    _TILE(gh, i0 * Ev, Ev, 1, vt, j0, Sp, 0, Ev, ds, i0 * Sp + j0, Sp)
                for i in range(i0, min(i0 + 8, L)):
                    n = min(i + 1, S) if causal else S
                    pr = p[b, h, i]
                    dr = ds[i]
                    d = np.float32(0.0)
                    for j in range(n):
                        d += pr[j] * dr[j]
                    for j in range(n):
                        dr[j] = pr[j] * (dr[j] - d) * scale
                    for j in range(n, Sp):
                        dr[j] = np.float32(0.0)
                for c0 in range(0, E, 8):     # dq = ds k
                    _TILE(ds, i0 * Sp, Sp, 1, kh, c0, E, 0, kmax, dqh, i0 * E + c0, E)
                _ROWS(dq, dqb, dqst[2], dqh, 0, E, i0, min(i0 + 8, L), E)
            for j0 in range(0, S, 8):
                t0 = j0 if causal else 0      # rows that see key block j0
                for c0 in range(0, Ev, 8):    # dv = p^T dO
                    _TILE(p, pb + j0, 1, Sp, gh, c0, Ev, t0, L, dvh, j0 * Ev + c0, Ev)
                for c0 in range(0, E, 8):     # dk = ds^T q
                    _TILE(ds, j0, 1, Sp, qh, c0, E, t0, L, dkh, j0 * E + c0, E)
                _ROWS(dk, dkb, dkst[2], dkh, 0, E, j0, min(j0 + 8, S), E)
                _ROWS(dv, dvb, dvst[2], dvh, 0, Ev, j0, min(j0 + 8, S), Ev)

    return _Kernels(fwd, bwd)


def _elem_strides(a: Any) -> tuple | None:
    """The element strides of a 4-D float32 array's first three axes, or None unless its
    last axis is unit-stride and every stride is non-negative."""
    st = a.strides
    if st[3] != 4 or any(s < 0 or s % 4 for s in st[:3]):
        return None
    return st[0] // 4, st[1] // 4, st[2] // 4


def usable(q: Any, k: Any, v: Any) -> bool:
    """Whether the kernels take these NumPy operands: float32, 4-D of one (batch, heads),
    head sizes a multiple of 8, at least one query and one key, unit stride along the last
    axis."""
    import numpy as np
    if not (type(q) is np.ndarray and type(k) is np.ndarray and type(v) is np.ndarray):
        return False
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4 or q.dtype != np.float32 or \
            k.dtype != np.float32 or v.dtype != np.float32:
        return False
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or \
            q.shape[3] != k.shape[3]:
        return False
    if q.shape[3] % 8 or v.shape[3] % 8 or not q.shape[3] or not v.shape[3] or \
            not q.shape[2] or not k.shape[2]:
        return False
    return all(_elem_strides(a) is not None for a in (q, k, v))


class _Kernels:
    """The compiled attention kernels behind Python entry points that cut the heads over
    ember's row threads (:func:`_spread`)."""

    def __init__(self, fwd: Any, bwd: Any) -> None:
        self._fwd, self._bwd = fwd, bwd

    def forward(self, q: Any, k: Any, v: Any, out: Any, scale: float, causal: bool) -> Any:
        """Attention of ``q``, ``k``, ``v`` (:func:`usable`) into ``out`` (B, H, L, Ev),
        unit-stride last axis; returns the weights ``p`` for :meth:`backward`."""
        import numpy as np
        B, H, L = q.shape[:3]
        S = k.shape[2]
        p = np.empty((B, H, -(-L // 8) * 8, -(-S // 8) * 8), np.float32)
        s = np.float32(scale)
        st = (_elem_strides(q), _elem_strides(k), _elem_strides(v), _elem_strides(out))
        fwd = self._fwd

        def piece(lo: int, hi: int) -> None:
            fwd(q, k, v, out, p, *st, s, causal, lo, hi)
        _spread(B * H, piece)
        return p

    def backward(self, q: Any, k: Any, v: Any, g: Any, p: Any, dq: Any, dk: Any, dv: Any,
                 scale: float, causal: bool) -> None:
        """Gradients of :meth:`forward`'s output into ``dq``, ``dk``, ``dv`` (float32, shaped
        like ``q``, ``k``, ``v``); the upstream ``g`` (float32, shaped like the output) and
        the gradient buffers need a unit-stride last axis and non-negative strides
        (:func:`strided_ok`)."""
        import numpy as np
        s = np.float32(scale)
        st = tuple(_elem_strides(a) for a in (q, k, v, g, dq, dk, dv))
        bwd = self._bwd

        def piece(lo: int, hi: int) -> None:
            bwd(q, k, v, g, p, dq, dk, dv, *st, s, causal, lo, hi)
        _spread(q.shape[0] * q.shape[1], piece)


def strided_ok(a: Any) -> bool:
    """Whether a 4-D float32 array's layout suits the kernels (unit-stride last axis,
    non-negative strides)."""
    return _elem_strides(a) is not None


kernels = LazyKernels(_build)   # the compiled namespace, or None
