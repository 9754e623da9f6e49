"""Direct 2-D convolution kernels for the CPU, compiled by numba.

The im2col + GEMM path (``ops/nn_conv.py``) spends most of a small conv's time outside the
GEMM: copying the columns (25x the input for a 5x5 kernel), the transposes around it, and
col2im's adds. At LeNet's sizes (C_in 1 or 6, C_out 6 or 16) OpenBLAS also runs the thin
GEMMs at 20-60 GFLOP/s. These kernels (float32) read the input in place and keep a tile of
outputs in AVX registers for a whole reduction:

* forward: output channels as the vector lanes, a tile of 8 pixels x 8 channels (transposed
  in registers and stored as one vector per channel) or 4 pixels x 16 channels, one
  broadcast of an input value and one weight-vector load per tap;
* weight gradient: a tile of taps x 8 or 16 output channels over every output pixel (the
  output gradient transposed to pixel-major first), or, for stride-1 rows of >= 8 pixels
  when that fills the lanes better (LeNet's conv1), 8 pixels of a row as the lanes and
  tiles of 2 channels x 4 taps, reading the gradient as it is;
* input gradient: each output pixel's gradient scattered through a tile of taps into a
  pixel-major (channel-vector) padded input gradient, then cropped and transposed; with
  the weight gradient, :func:`conv2d_backward` balances the two over two threads.

They are used for small convs only (``_MAX_OUT``, ``_MAX_TAPS``: where they were measured
faster); larger ones, groups, float64 and other dims keep im2col. Max pooling's kernels
are in ``cpu_pool_kernels``.

The kernels use ``cpu_simd``'s ``F32x8`` vector type (LLVM's ``<8 x float>``) and its
load/broadcast/fma/store intrinsics: numba's vectorizers did not keep per-lane accumulators
in registers.

All kernels are serial, release the GIL (``nogil``), and work over a range of samples (or of
weight taps), so the callers spread them over spare cores with ``backend.cpu.parallel_rows``
like the rest of the CPU conv. numba is imported on first use; without it (or with
``EMBER_NUMBA=0``) :func:`kernels` returns None and the callers keep their NumPy paths.
Tiles past an edge are moved back to overlap the previous one (recomputing a few outputs
rather than running a scalar remainder loop); accumulating kernels then add only the
moved-back tile's new part.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import numpy as np

from ember.backend import cpu_simd
from ember.backend.cpu import parallel_rows
from ember.backend.cpu_kernels import LazyKernels, blas_spinning

# intrinsics the kernels call (cpu_simd): module globals, since numba's on-disk cache does
# not take closure variables
_VLOAD: Any = None
_VSTORE: Any = None
_VBCAST: Any = None
_VFMA: Any = None
_VADD: Any = None
_LD: Any = None
_ST: Any = None
_VZERO: Any = None
_VSTORE_T8: Any = None
_VSTORE_T4: Any = None
_VTAIL: Any = None


def _build() -> SimpleNamespace:
    import numba

    global _VLOAD, _VSTORE, _VBCAST, _VFMA, _VADD, _LD, _ST, _VZERO, _VTAIL, _VSTORE_T8
    global _VSTORE_T4
    v = cpu_simd.intrinsics()
    _VLOAD, _VSTORE, _VBCAST, _VFMA, _VADD = v.vload, v.vstore, v.vbcast, v.vfma, v.vadd
    _LD, _ST, _VZERO, _VTAIL = v.ld, v.st, v.vzero, v.vtail
    _VSTORE_T8, _VSTORE_T4 = v.vstore_t8, v.vstore_t4
    jit = numba.njit(cache=True, nogil=True, error_model="numpy", boundscheck=False)

    # ------------------------------------------------------------------ forward
    # x: padded input, flat (N, C, Hp, Wp); toff (T,): each tap's offset (c, kh, kw) from a
    # pixel's base; pbase (P,): each output pixel's base (oh*sh*Wp + ow*sw); w: (T, Op)
    # taps x output channels (zero lanes past O); b: (Op,); y: flat (N, O, P).
    @jit
    def fwd16(x, plane, toff, pbase, w, b, y, O, Op, n0, n1):  # pragma: no cover - compiled
        # 4 pixels x 16 channels: 2 weight vectors and 4 broadcasts per tap for 8 FMAs
        T, P = toff.size, pbase.size
        for n in range(n0, n1):
            xn = n * plane
            for o0 in range(0, Op, 16):
                b0 = _VLOAD(b, o0)
                b1 = _VLOAD(b, o0 + 8)
                q0 = 0
                while q0 < P:
                    if q0 + 4 > P:
                        q0 = P - 4
                    p0 = xn + _LD(pbase, q0)
                    p1 = xn + _LD(pbase, q0 + 1)
                    p2 = xn + _LD(pbase, q0 + 2)
                    p3 = xn + _LD(pbase, q0 + 3)
                    a00 = b0
                    a01 = b1
                    a10 = b0
                    a11 = b1
                    a20 = b0
                    a21 = b1
                    a30 = b0
                    a31 = b1
                    for k in range(T):
                        off = _LD(toff, k)
                        w0 = _VLOAD(w, k * Op + o0)
                        w1 = _VLOAD(w, k * Op + o0 + 8)
                        v = _VBCAST(x, p0 + off)
                        a00 = _VFMA(v, w0, a00)
                        a01 = _VFMA(v, w1, a01)
                        v = _VBCAST(x, p1 + off)
                        a10 = _VFMA(v, w0, a10)
                        a11 = _VFMA(v, w1, a11)
                        v = _VBCAST(x, p2 + off)
                        a20 = _VFMA(v, w0, a20)
                        a21 = _VFMA(v, w1, a21)
                        v = _VBCAST(x, p3 + off)
                        a30 = _VFMA(v, w0, a30)
                        a31 = _VFMA(v, w1, a31)
                    # each channel's 4 pixels as one 4-float store (transposed in
                    # registers, as fwd8)
                    yb = (n * O + o0) * P + q0
                    _VSTORE_T4(y, yb, P, min(8, O - o0), a00, a10, a20, a30)
                    _VSTORE_T4(y, yb + 8 * P, P, O - o0 - 8, a01, a11, a21, a31)
                    q0 += 4

    @jit
    def fwd8(x, plane, toff, pbase, w, b, y, O, Op, n0, n1):  # pragma: no cover - compiled
        # 8 pixels x 8 channels (O <= 8, e.g. LeNet's conv1): 1 weight vector and 8
        # broadcasts per tap for 8 FMAs
        T, P = toff.size, pbase.size
        for n in range(n0, n1):
            xn = n * plane
            for o0 in range(0, Op, 8):
                b0 = _VLOAD(b, o0)
                q0 = 0
                while q0 < P:
                    if q0 + 8 > P:
                        q0 = P - 8
                    p0 = xn + _LD(pbase, q0)
                    p1 = xn + _LD(pbase, q0 + 1)
                    p2 = xn + _LD(pbase, q0 + 2)
                    p3 = xn + _LD(pbase, q0 + 3)
                    p4 = xn + _LD(pbase, q0 + 4)
                    p5 = xn + _LD(pbase, q0 + 5)
                    p6 = xn + _LD(pbase, q0 + 6)
                    p7 = xn + _LD(pbase, q0 + 7)
                    a0 = b0
                    a1 = b0
                    a2 = b0
                    a3 = b0
                    a4 = b0
                    a5 = b0
                    a6 = b0
                    a7 = b0
                    for k in range(T):
                        off = _LD(toff, k)
                        w0 = _VLOAD(w, k * Op + o0)
                        a0 = _VFMA(_VBCAST(x, p0 + off), w0, a0)
                        a1 = _VFMA(_VBCAST(x, p1 + off), w0, a1)
                        a2 = _VFMA(_VBCAST(x, p2 + off), w0, a2)
                        a3 = _VFMA(_VBCAST(x, p3 + off), w0, a3)
                        a4 = _VFMA(_VBCAST(x, p4 + off), w0, a4)
                        a5 = _VFMA(_VBCAST(x, p5 + off), w0, a5)
                        a6 = _VFMA(_VBCAST(x, p6 + off), w0, a6)
                        a7 = _VFMA(_VBCAST(x, p7 + off), w0, a7)
                    # channel j's 8 pixels are one row of the transposed tile, stored
                    # as a vector (scalar stores per lane were ~30% of the kernel)
                    _VSTORE_T8(y, (n * O + o0) * P + q0, P, min(8, O - o0), a0, a1, a2, a3,
                               a4, a5, a6, a7)
                    q0 += 8


    # ------------------------------------------------------------------ weight gradient
    # x, toff, pbase as the forward's; gt: flat (N, P, Op) output gradient, pixel-major with
    # zero lanes past O; dw: flat (T, Op). Tiles of taps [k0, k0 + R) over every pixel of
    # every sample; tiles i0..i1 (a tile past T moves back to end at T and stores only its
    # new taps).
    @jit
    def wgrad16(x, plane, toff, pbase, gt, dw, Op, N, i0, i1):  # pragma: no cover - compiled
        # 4 taps x 16 channels: 2 gradient vectors and 4 broadcasts per pixel for 8 FMAs
        T, P = toff.size, pbase.size
        t = np.empty(64, np.float32)
        for i in range(i0, i1):
            k0 = min(i * 4, T - 4)
            f0 = toff[k0]
            f1 = toff[k0 + 1]
            f2 = toff[k0 + 2]
            f3 = toff[k0 + 3]
            for o0 in range(0, Op, 16):
                z = _VZERO()
                a00 = z
                a01 = z
                a10 = z
                a11 = z
                a20 = z
                a21 = z
                a30 = z
                a31 = z
                for n in range(N):
                    xn = n * plane
                    gn = n * P * Op + o0
                    for q in range(P):
                        p = xn + _LD(pbase, q)
                        g0 = _VLOAD(gt, gn + q * Op)
                        g1 = _VLOAD(gt, gn + q * Op + 8)
                        v = _VBCAST(x, p + f0)
                        a00 = _VFMA(v, g0, a00)
                        a01 = _VFMA(v, g1, a01)
                        v = _VBCAST(x, p + f1)
                        a10 = _VFMA(v, g0, a10)
                        a11 = _VFMA(v, g1, a11)
                        v = _VBCAST(x, p + f2)
                        a20 = _VFMA(v, g0, a20)
                        a21 = _VFMA(v, g1, a21)
                        v = _VBCAST(x, p + f3)
                        a30 = _VFMA(v, g0, a30)
                        a31 = _VFMA(v, g1, a31)
                _VSTORE(t, 0, a00)
                _VSTORE(t, 8, a01)
                _VSTORE(t, 16, a10)
                _VSTORE(t, 24, a11)
                _VSTORE(t, 32, a20)
                _VSTORE(t, 40, a21)
                _VSTORE(t, 48, a30)
                _VSTORE(t, 56, a31)
                for r in range(i * 4 - k0, 4):
                    for j in range(16):
                        dw[(k0 + r) * Op + o0 + j] = t[r * 16 + j]

    @jit
    def wgrad8(x, plane, toff, pbase, gt, dw, Op, N, i0, i1):  # pragma: no cover - compiled
        # 8 taps x 8 channels: 1 gradient vector and 8 broadcasts per pixel for 8 FMAs
        T, P = toff.size, pbase.size
        t = np.empty(64, np.float32)
        for i in range(i0, i1):
            k0 = min(i * 8, T - 8)
            f0 = toff[k0]
            f1 = toff[k0 + 1]
            f2 = toff[k0 + 2]
            f3 = toff[k0 + 3]
            f4 = toff[k0 + 4]
            f5 = toff[k0 + 5]
            f6 = toff[k0 + 6]
            f7 = toff[k0 + 7]
            for o0 in range(0, Op, 8):
                z = _VZERO()
                a0 = z
                a1 = z
                a2 = z
                a3 = z
                a4 = z
                a5 = z
                a6 = z
                a7 = z
                for n in range(N):
                    xn = n * plane
                    gn = n * P * Op + o0
                    for q in range(P):
                        p = xn + _LD(pbase, q)
                        g0 = _VLOAD(gt, gn + q * Op)
                        a0 = _VFMA(_VBCAST(x, p + f0), g0, a0)
                        a1 = _VFMA(_VBCAST(x, p + f1), g0, a1)
                        a2 = _VFMA(_VBCAST(x, p + f2), g0, a2)
                        a3 = _VFMA(_VBCAST(x, p + f3), g0, a3)
                        a4 = _VFMA(_VBCAST(x, p + f4), g0, a4)
                        a5 = _VFMA(_VBCAST(x, p + f5), g0, a5)
                        a6 = _VFMA(_VBCAST(x, p + f6), g0, a6)
                        a7 = _VFMA(_VBCAST(x, p + f7), g0, a7)
                _VSTORE(t, 0, a0)
                _VSTORE(t, 8, a1)
                _VSTORE(t, 16, a2)
                _VSTORE(t, 24, a3)
                _VSTORE(t, 32, a4)
                _VSTORE(t, 40, a5)
                _VSTORE(t, 48, a6)
                _VSTORE(t, 56, a7)
                for r in range(i * 8 - k0, 8):
                    for j in range(8):
                        dw[(k0 + r) * Op + o0 + j] = t[r * 8 + j]

    # reassociated sums vectorize (a strict left-to-right float sum is one add per 4
    # cycles: the bias sums of LeNet's conv1 took 0.3 ms)
    @numba.njit(cache=True, nogil=True, error_model="numpy", boundscheck=False,
                fastmath={"reassoc"})
    def span_sum(a, lo, hi):  # pragma: no cover - compiled
        s = np.float32(0.0)
        for i in range(lo, hi):
            s += a[i]
        return s

    @jit
    def wgrad_px(x, plane, rowstep, toff, g, O, OH, OW, acc, db, n0, n1):
        # pragma: no cover - compiled
        # stride-1 rows, pixels as the lanes (no transposed gradient: LeNet's conv1, whose
        # 6 channels would fill 6 of 8 lanes and whose 1.2 MB gradient took ~0.5 ms to
        # transpose): tiles of 2 channels x 4 taps, 8 consecutive pixels of a row per
        # step; a row's last step moves back to end at OW, its already counted lanes
        # zeroed in both operands. acc (O, T, 8) collects per-lane sums; db += the
        # channel sums. Requires O >= 2, T >= 4, OW >= 8.
        T = toff.size
        P = OH * OW
        last = OW - 8
        over = 8 - OW % 8 if OW % 8 else 0
        for n in range(n0, n1):
            xn = n * plane
            gn = n * O * P
            for o in range(O):
                db[o] += span_sum(g, gn + o * P, gn + (o + 1) * P)
            for oi in range(0, O, 2):
                o0 = min(oi, O - 2)
                for ti in range(0, T, 4):
                    k0 = min(ti, T - 4)
                    f0 = _LD(toff, k0)
                    f1 = _LD(toff, k0 + 1)
                    f2 = _LD(toff, k0 + 2)
                    f3 = _LD(toff, k0 + 3)
                    b0 = (o0 * T + k0) * 8
                    b1 = b0 + T * 8
                    a00 = _VZERO()
                    a01 = a00
                    a02 = a00
                    a03 = a00
                    a10 = a00
                    a11 = a00
                    a12 = a00
                    a13 = a00
                    for oh in range(OH):
                        xr = xn + oh * rowstep
                        gr = gn + o0 * P + oh * OW
                        ow = 0
                        while ow <= last:
                            g0 = _VLOAD(g, gr + ow)
                            g1 = _VLOAD(g, gr + P + ow)
                            p = xr + ow
                            v = _VLOAD(x, p + f0)
                            a00 = _VFMA(v, g0, a00)
                            a10 = _VFMA(v, g1, a10)
                            v = _VLOAD(x, p + f1)
                            a01 = _VFMA(v, g0, a01)
                            a11 = _VFMA(v, g1, a11)
                            v = _VLOAD(x, p + f2)
                            a02 = _VFMA(v, g0, a02)
                            a12 = _VFMA(v, g1, a12)
                            v = _VLOAD(x, p + f3)
                            a03 = _VFMA(v, g0, a03)
                            a13 = _VFMA(v, g1, a13)
                            ow += 8
                        if over:
                            g0 = _VTAIL(_VLOAD(g, gr + last), over)
                            g1 = _VTAIL(_VLOAD(g, gr + P + last), over)
                            p = xr + last
                            v = _VTAIL(_VLOAD(x, p + f0), over)
                            a00 = _VFMA(v, g0, a00)
                            a10 = _VFMA(v, g1, a10)
                            v = _VTAIL(_VLOAD(x, p + f1), over)
                            a01 = _VFMA(v, g0, a01)
                            a11 = _VFMA(v, g1, a11)
                            v = _VTAIL(_VLOAD(x, p + f2), over)
                            a02 = _VFMA(v, g0, a02)
                            a12 = _VFMA(v, g1, a12)
                            v = _VTAIL(_VLOAD(x, p + f3), over)
                            a03 = _VFMA(v, g0, a03)
                            a13 = _VFMA(v, g1, a13)
                    # only the (channel, tap) pairs this tile adds first: the moved-back
                    # tiles' others are counted by an earlier tile
                    r0 = ti - k0
                    if oi == o0:
                        if r0 == 0:
                            _VSTORE(acc, b0, _VADD(_VLOAD(acc, b0), a00))
                        if r0 <= 1:
                            _VSTORE(acc, b0 + 8, _VADD(_VLOAD(acc, b0 + 8), a01))
                        if r0 <= 2:
                            _VSTORE(acc, b0 + 16, _VADD(_VLOAD(acc, b0 + 16), a02))
                        _VSTORE(acc, b0 + 24, _VADD(_VLOAD(acc, b0 + 24), a03))
                    if r0 == 0:
                        _VSTORE(acc, b1, _VADD(_VLOAD(acc, b1), a10))
                    if r0 <= 1:
                        _VSTORE(acc, b1 + 8, _VADD(_VLOAD(acc, b1 + 8), a11))
                    if r0 <= 2:
                        _VSTORE(acc, b1 + 16, _VADD(_VLOAD(acc, b1 + 16), a12))
                    _VSTORE(acc, b1 + 24, _VADD(_VLOAD(acc, b1 + 24), a13))

    @jit
    def to_pixel_major(g, gt, db, O, Op, P, n0, n1):  # pragma: no cover - compiled
        # g flat (N, O, P) -> gt flat (N, P, Op) (lanes past O are left as they are:
        # zeros), and db[o] += this range's sum of channel o (per-sample partial sums
        # first). Pixel-outer, as 3-d arrays: ~2x faster than channel-outer flat indexing,
        # and writing the zero lanes here too cost more than a zeroed array (conv1 sizes)
        g3 = g.reshape(-1, O, P)
        gt3 = gt.reshape(-1, P, Op)
        for n in range(n0, n1):
            for o in range(O):
                db[o] += span_sum(g, (n * O + o) * P, (n * O + o + 1) * P)
            for q in range(P):
                for o in range(O):
                    gt3[n, q, o] = g3[n, o, q]

    # ------------------------------------------------------------------ input gradient
    # g: flat (N, O, P) output gradient; pbase (P,): each output pixel's base in the padded
    # input-gradient planes (oh*sh*Wr + ow*sw); toff (KK,): each tap's (kh*dh*Wr + kw*dw);
    # w: flat (O, KK, Cp), the weight with its input channels as lanes (zeros past C);
    # dx: flat (N, Hr*Wr, Cp), pixel-major, zeroed: each (pixel, tap) adds its sum over
    # the output channels.
    @jit
    def igrad(g, O, pbase, toff, w, dx, Cp, plane, n0, n1):  # pragma: no cover - compiled
        # 2 pixels x 4 taps x 8 input channels: 2 broadcasts and 4 weight vectors per
        # output channel for 8 FMAs; a tile past the pixels or taps moves back and adds
        # only its new (pixel, tap) pairs
        P, KK = pbase.size, toff.size
        for n in range(n0, n1):
            gb = n * O * P
            db = n * plane
            for c0 in range(0, Cp, 8):
                for qi in range(0, P, 2):
                    q0 = min(qi, P - 2)
                    new_q = qi - q0
                    d0 = (db + _LD(pbase, q0)) * Cp + c0
                    d1 = (db + _LD(pbase, q0 + 1)) * Cp + c0
                    for ki in range(0, KK, 4):
                        k0 = min(ki, KK - 4)
                        new_k = ki - k0
                        a00 = _VZERO()
                        a01 = a00
                        a02 = a00
                        a03 = a00
                        a10 = a00
                        a11 = a00
                        a12 = a00
                        a13 = a00
                        for o in range(O):
                            g0 = _VBCAST(g, gb + o * P + q0)
                            g1 = _VBCAST(g, gb + o * P + q0 + 1)
                            wb = (o * KK + k0) * Cp + c0
                            w0 = _VLOAD(w, wb)
                            w1 = _VLOAD(w, wb + Cp)
                            w2 = _VLOAD(w, wb + 2 * Cp)
                            w3 = _VLOAD(w, wb + 3 * Cp)
                            a00 = _VFMA(g0, w0, a00)
                            a01 = _VFMA(g0, w1, a01)
                            a02 = _VFMA(g0, w2, a02)
                            a03 = _VFMA(g0, w3, a03)
                            a10 = _VFMA(g1, w0, a10)
                            a11 = _VFMA(g1, w1, a11)
                            a12 = _VFMA(g1, w2, a12)
                            a13 = _VFMA(g1, w3, a13)
                        f0 = _LD(toff, k0) * Cp
                        f1 = _LD(toff, k0 + 1) * Cp
                        f2 = _LD(toff, k0 + 2) * Cp
                        f3 = _LD(toff, k0 + 3) * Cp
                        if new_q == 0:
                            if new_k == 0:
                                _VSTORE(dx, d0 + f0, _VADD(_VLOAD(dx, d0 + f0), a00))
                            if new_k <= 1:
                                _VSTORE(dx, d0 + f1, _VADD(_VLOAD(dx, d0 + f1), a01))
                            if new_k <= 2:
                                _VSTORE(dx, d0 + f2, _VADD(_VLOAD(dx, d0 + f2), a02))
                            _VSTORE(dx, d0 + f3, _VADD(_VLOAD(dx, d0 + f3), a03))
                        if new_k == 0:
                            _VSTORE(dx, d1 + f0, _VADD(_VLOAD(dx, d1 + f0), a10))
                        if new_k <= 1:
                            _VSTORE(dx, d1 + f1, _VADD(_VLOAD(dx, d1 + f1), a11))
                        if new_k <= 2:
                            _VSTORE(dx, d1 + f2, _VADD(_VLOAD(dx, d1 + f2), a12))
                        _VSTORE(dx, d1 + f3, _VADD(_VLOAD(dx, d1 + f3), a13))

    @jit
    def igrad5(g, O, pbase, toff, w, dx, Cp, plane, n0, n1):  # pragma: no cover - compiled
        # igrad with tiles of 5 taps (2 pixels x 5 taps: 10 accumulators), for tap counts
        # that 5 divides better than 4 (5x5 kernels: no moved-back tile)
        P, KK = pbase.size, toff.size
        for n in range(n0, n1):
            gb = n * O * P
            db = n * plane
            for c0 in range(0, Cp, 8):
                for qi in range(0, P, 2):
                    q0 = min(qi, P - 2)
                    new_q = qi - q0
                    d0 = (db + _LD(pbase, q0)) * Cp + c0
                    d1 = (db + _LD(pbase, q0 + 1)) * Cp + c0
                    for ki in range(0, KK, 5):
                        k0 = min(ki, KK - 5)
                        new_k = ki - k0
                        a00 = _VZERO()
                        a01 = a00
                        a02 = a00
                        a03 = a00
                        a04 = a00
                        a10 = a00
                        a11 = a00
                        a12 = a00
                        a13 = a00
                        a14 = a00
                        for o in range(O):
                            g0 = _VBCAST(g, gb + o * P + q0)
                            g1 = _VBCAST(g, gb + o * P + q0 + 1)
                            wb = (o * KK + k0) * Cp + c0
                            w0 = _VLOAD(w, wb + 0 * Cp)
                            a00 = _VFMA(g0, w0, a00)
                            a10 = _VFMA(g1, w0, a10)
                            w1 = _VLOAD(w, wb + 1 * Cp)
                            a01 = _VFMA(g0, w1, a01)
                            a11 = _VFMA(g1, w1, a11)
                            w2 = _VLOAD(w, wb + 2 * Cp)
                            a02 = _VFMA(g0, w2, a02)
                            a12 = _VFMA(g1, w2, a12)
                            w3 = _VLOAD(w, wb + 3 * Cp)
                            a03 = _VFMA(g0, w3, a03)
                            a13 = _VFMA(g1, w3, a13)
                            w4 = _VLOAD(w, wb + 4 * Cp)
                            a04 = _VFMA(g0, w4, a04)
                            a14 = _VFMA(g1, w4, a14)
                        f0 = _LD(toff, k0 + 0) * Cp
                        f1 = _LD(toff, k0 + 1) * Cp
                        f2 = _LD(toff, k0 + 2) * Cp
                        f3 = _LD(toff, k0 + 3) * Cp
                        f4 = _LD(toff, k0 + 4) * Cp
                        if new_q == 0:
                            if new_k <= 0:
                                _VSTORE(dx, d0 + f0, _VADD(_VLOAD(dx, d0 + f0), a00))
                            if new_k <= 1:
                                _VSTORE(dx, d0 + f1, _VADD(_VLOAD(dx, d0 + f1), a01))
                            if new_k <= 2:
                                _VSTORE(dx, d0 + f2, _VADD(_VLOAD(dx, d0 + f2), a02))
                            if new_k <= 3:
                                _VSTORE(dx, d0 + f3, _VADD(_VLOAD(dx, d0 + f3), a03))
                            _VSTORE(dx, d0 + f4, _VADD(_VLOAD(dx, d0 + f4), a04))
                        if new_k <= 0:
                            _VSTORE(dx, d1 + f0, _VADD(_VLOAD(dx, d1 + f0), a10))
                        if new_k <= 1:
                            _VSTORE(dx, d1 + f1, _VADD(_VLOAD(dx, d1 + f1), a11))
                        if new_k <= 2:
                            _VSTORE(dx, d1 + f2, _VADD(_VLOAD(dx, d1 + f2), a12))
                        if new_k <= 3:
                            _VSTORE(dx, d1 + f3, _VADD(_VLOAD(dx, d1 + f3), a13))
                        _VSTORE(dx, d1 + f4, _VADD(_VLOAD(dx, d1 + f4), a14))

    @jit
    def from_pixel_major(dx, out, C, Cp, H, W, Hr, Wr, ph, pw, n0, n1):  # pragma: no cover
        # out flat (N, C, H, W) = dx flat (N, Hr, Wr, Cp) cropped by the padding
        for n in range(n0, n1):
            for c in range(C):
                for i in range(H):
                    src = ((n * Hr + i + ph) * Wr + pw) * Cp + c
                    dst = ((n * C + c) * H + i) * W
                    for j in range(W):
                        out[dst + j] = dx[src + j * Cp]

    return SimpleNamespace(fwd16=fwd16, fwd8=fwd8, wgrad16=wgrad16, wgrad8=wgrad8,
                           to_pixel_major=to_pixel_major, igrad=igrad, igrad5=igrad5,
                           wgrad_px=wgrad_px,
                           from_pixel_major=from_pixel_major)


kernels = LazyKernels(_build)   # the compiled namespace, or None


# ---------------------------------------------------------------------- callers
def _tap_offsets(c: int, hp: int, wp: int, ksize: tuple, dilation: tuple) -> np.ndarray:
    """Offset of each tap (c, kh, kw) in a padded (C, Hp, Wp) sample from a pixel's base."""
    ci, i, j = np.meshgrid(np.arange(c), np.arange(ksize[0]), np.arange(ksize[1]),
                           indexing="ij")
    return (((ci * hp + i * dilation[0]) * wp) + j * dilation[1]).ravel().astype(np.int64)


@functools.lru_cache(maxsize=64)
def _fwd_tables(c: int, hp: int, wp: int, ksize: tuple, stride: tuple, dilation: tuple,
                out: tuple) -> tuple:
    """(tap offsets, pixel bases) of a forward geometry (cached: ~20 us of NumPy)."""
    pbase = (np.arange(out[0])[:, None] * (stride[0] * wp) +
             np.arange(out[1])[None, :] * stride[1]).ravel().astype(np.int64)
    return _tap_offsets(c, hp, wp, ksize, dilation), pbase


def _padded(x: np.ndarray, padding: tuple) -> np.ndarray:
    """``x`` zero-padded (C-contiguous) in its two spatial dims."""
    ph, pw = padding
    if not (ph or pw):
        return np.ascontiguousarray(x)
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), np.float32)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    return xp


def _split(n: int, fn: Any, min_rows: int) -> None:
    """``fn(lo, hi)`` over the samples, on the spare cores unless OpenBLAS's workers are
    spinning (then a second thread of ours would only wait for them)."""
    if blas_spinning():
        fn(0, n)
    else:
        parallel_rows(n, fn, min_rows)


# The kernels are taken for small convs only, where they were measured faster: few output
# channels and taps per output. At (N, C, H, O) = (32, 64, 16, 64) 3x3, im2col + OpenBLAS
# ran the weight and input gradients 2x faster (8.1 vs 14.7 ms, 8.5 vs 17.7 ms: the tap
# tiles re-read the whole gradient), the forward about even; (8, 3, 64, 32) 3x3 about even.
_MAX_OUT = 16
_MAX_TAPS = 256


def _small(o: int, taps: int) -> bool:
    return o <= _MAX_OUT and taps <= _MAX_TAPS


def forward_fits(x: np.ndarray, w: np.ndarray, groups: int) -> bool:
    """Whether :func:`conv2d_forward` takes this conv (a small float32 2-D conv of one
    group; the plane must also hold one full pixel tile, checked there)."""
    if x.ndim != 4 or groups != 1 or x.dtype != np.float32 or w.dtype != np.float32:
        return False
    return _small(w.shape[0], w.shape[1] * w.shape[2] * w.shape[3]) and kernels() is not None


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple,
                   padding: tuple, dilation: tuple) -> np.ndarray | None:
    """``conv2d(x, w, b)`` for float32 ``x (N, C, H, W)``, ``w (O, C, KH, KW)``; None when
    the output plane is smaller than a tile (the caller's path then runs)."""
    k = kernels()
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    wide = o > 8
    if oh * ow < (4 if wide else 8) or n == 0:
        return None
    lanes = 16 if wide else 8
    op = -(-o // lanes) * lanes
    xp = _padded(x, padding)
    toff, pbase = _fwd_tables(c, xp.shape[2], xp.shape[3], (kh, kw), tuple(stride),
                              tuple(dilation), (oh, ow))
    wv = np.zeros((c * kh * kw, op), np.float32)
    wv[:, :o] = w.reshape(o, -1).T
    bv = np.zeros(op, np.float32)
    if b is not None:
        bv[:o] = b
    y = np.empty((n, o, oh, ow), np.float32)
    kern = k.fwd16 if wide else k.fwd8
    xf, yf, plane = xp.reshape(-1), y.reshape(-1), c * xp.shape[2] * xp.shape[3]

    def run(lo: int, hi: int) -> None:
        kern(xf, plane, toff, pbase, wv, bv, yf, o, op, lo, hi)

    _split(n, run, 8)
    return y


def weight_grad_fits(x: np.ndarray, g: np.ndarray, ksize: tuple, groups: int) -> bool:
    """Whether :func:`conv2d_weight_grad` takes this conv."""
    if x.ndim != 4 or groups != 1 or x.dtype != np.float32 or g.dtype != np.float32:
        return False
    taps = x.shape[1] * ksize[0] * ksize[1]
    return taps >= (4 if g.shape[1] > 8 else 8) and _small(g.shape[1], taps) and \
        kernels() is not None


def conv2d_weight_grad(x: np.ndarray, g: np.ndarray, ksize: tuple, stride: tuple,
                       padding: tuple, dilation: tuple, with_bias: bool = False,
                       serial: bool = False) -> Any:
    """Weight gradient ``(O, C, KH, KW)`` of ``conv2d(x, w)`` for output gradient ``g``;
    with ``with_bias`` the pair (weight grad, bias grad). ``serial``: on this thread only
    (a task beside another one)."""
    k = kernels()
    n, c = x.shape[:2]
    o, oh, ow = g.shape[1:]
    if _pixel_lanes(o, ow, stride, c * ksize[0] * ksize[1]):
        return _weight_grad_px(k, x, g, ksize, stride, padding, dilation, with_bias, serial)
    wide = o > 8
    lanes = 16 if wide else 8
    op = -(-o // lanes) * lanes
    xp = _padded(x, padding)
    toff, pbase = _fwd_tables(c, xp.shape[2], xp.shape[3], tuple(ksize), tuple(stride),
                              tuple(dilation), (oh, ow))
    p = oh * ow
    gt = np.zeros((n, p, op), np.float32)
    db = np.zeros(o, np.float32)
    gf = np.ascontiguousarray(g).reshape(-1)
    k.to_pixel_major(gf, gt.reshape(-1), db, o, op, p, 0, n)
    taps = toff.size
    tile = 4 if wide else 8
    dw = np.empty((taps, op), np.float32)
    kern = k.wgrad16 if wide else k.wgrad8
    xf, gtf, dwf, plane = xp.reshape(-1), gt.reshape(-1), dw.reshape(-1), xp[0].size

    def run(lo: int, hi: int) -> None:
        kern(xf, plane, toff, pbase, gtf, dwf, op, n, lo, hi)

    tiles = -(-taps // tile)
    if serial:
        run(0, tiles)
    else:
        _split(tiles, run, 1)
    dw = np.ascontiguousarray(dw[:, :o].T).reshape((o, c) + tuple(ksize))
    return (dw, db) if with_bias else dw


def _pixel_lanes(o: int, ow: int, stride: tuple, taps: int) -> bool:
    """Whether the weight gradient takes pixels as its lanes (stride-1 rows of >= 8) rather
    than output channels: when that fills more of each vector (LeNet's conv1: 28 of 32
    pixels vs 6 of 8 channels) and saves the gradient's transposition."""
    if stride[1] != 1 or ow < 8 or o < 2 or taps < 4:
        return False
    return ow / (8 * -(-ow // 8)) >= o / (-(-o // 8) * 8 if o <= 8 else -(-o // 16) * 16)


def _weight_grad_px(k: Any, x: np.ndarray, g: np.ndarray, ksize: tuple, stride: tuple,
                    padding: tuple, dilation: tuple, with_bias: bool, serial: bool) -> Any:
    n, c = x.shape[:2]
    o, oh, ow = g.shape[1:]
    xp = _padded(x, padding)
    wp = xp.shape[3]
    toff, _ = _fwd_tables(c, xp.shape[2], wp, tuple(ksize), tuple(stride), tuple(dilation),
                          (oh, ow))
    xf = xp.reshape(-1)
    gf = np.ascontiguousarray(g).reshape(-1)
    taps = toff.size
    parts: list = []

    def run(lo: int, hi: int) -> None:
        acc = np.zeros((o, taps, 8), np.float32)
        db = np.zeros(o, np.float32)
        k.wgrad_px(xf, xp[0].size, stride[0] * wp, toff, gf, o, oh, ow, acc.reshape(-1), db,
                   lo, hi)
        parts.append((acc, db))

    if serial:
        run(0, n)
    else:
        _split(n, run, 8)
    acc, db = parts[0]
    for a, b in parts[1:]:
        acc += a
        db += b
    dw = acc.sum(axis=2).reshape((o, c) + tuple(ksize))
    return (dw, db) if with_bias else dw


@functools.lru_cache(maxsize=64)
def _igrad_tables(hr: int, wr: int, ksize: tuple, stride: tuple, dilation: tuple,
                  out: tuple) -> tuple:
    """(pixel bases, tap offsets) of an input gradient in pixel units of (Hr, Wr) planes."""
    pbase = (np.arange(out[0])[:, None] * (stride[0] * wr) +
             np.arange(out[1])[None, :] * stride[1]).ravel().astype(np.int64)
    i, j = np.meshgrid(np.arange(ksize[0]), np.arange(ksize[1]), indexing="ij")
    toff = (i * dilation[0] * wr + j * dilation[1]).ravel().astype(np.int64)
    return pbase, toff


def input_grad_fits(g: np.ndarray, w: np.ndarray, groups: int) -> bool:
    """Whether :func:`conv2d_input_grad` takes this conv."""
    # input channels are the vector lanes: below 4 of 8 the im2col path wins (LeNet's
    # conv1, C=1: 6.8 vs 1.9 ms)
    return (g.dtype == np.float32 and w.dtype == np.float32 and g.ndim == 4 and groups == 1
            and 4 <= w.shape[1] <= _MAX_OUT and w.shape[2] * w.shape[3] >= 4
            and _small(w.shape[0], w.shape[1] * w.shape[2] * w.shape[3])
            and g.shape[2] * g.shape[3] >= 2 and kernels() is not None)


def _input_grad_plan(g: np.ndarray, w: np.ndarray, sp: tuple, stride: tuple,
                     padding: tuple, dilation: tuple) -> tuple:
    """(``run(lo, hi)``: the input gradient of samples lo..hi, the output it writes)."""
    k = kernels()
    n, o, oh, ow = g.shape
    c, kh, kw = w.shape[1:]
    cp = -(-c // 8) * 8
    # the padded planes also hold the reach of the last window (a transposed conv's
    # output_padding leaves input rows no window reads)
    hr = max(sp[0] + 2 * padding[0], dilation[0] * (kh - 1) + stride[0] * (oh - 1) + 1)
    wr = max(sp[1] + 2 * padding[1], dilation[1] * (kw - 1) + stride[1] * (ow - 1) + 1)
    pbase, toff = _igrad_tables(hr, wr, (kh, kw), tuple(stride), tuple(dilation), (oh, ow))
    wv = np.zeros((o, kh * kw, cp), np.float32)
    wv[:, :, :c] = w.reshape(o, c, -1).transpose(0, 2, 1)
    dxt = np.zeros((n, hr * wr, cp), np.float32)
    out = np.empty((n, c) + tuple(sp), np.float32)
    gf, wf, dxf, of = np.ascontiguousarray(g).reshape(-1), wv.reshape(-1), dxt.reshape(-1), \
        out.reshape(-1)

    kk = kh * kw
    kern = k.igrad5 if kk >= 5 and -(-kk // 5) * 5 < -(-kk // 4) * 4 else k.igrad

    def run(lo: int, hi: int) -> None:
        if hi > lo:
            kern(gf, o, pbase, toff, wf, dxf, cp, hr * wr, lo, hi)
            k.from_pixel_major(dxf, of, c, cp, sp[0], sp[1], hr, wr, padding[0], padding[1],
                               lo, hi)
    return run, out


def conv2d_input_grad(g: np.ndarray, w: np.ndarray, sp: tuple, stride: tuple,
                      padding: tuple, dilation: tuple, serial: bool = False) -> np.ndarray:
    """Input gradient ``(N, C, *sp)`` of ``conv2d(x, w)`` for output gradient ``g`` (also the
    transposed conv of ``g``)."""
    run, out = _input_grad_plan(g, w, sp, stride, padding, dilation)
    if serial:
        run(0, g.shape[0])
    else:
        _split(g.shape[0], run, 8)
    return out


def conv2d_backward(g: np.ndarray, x: np.ndarray, w: np.ndarray, stride: tuple,
                    padding: tuple, dilation: tuple, with_bias: bool) -> tuple:
    """(input grad, weight grad, bias grad or None) of ``conv2d(x, w)`` for output gradient
    ``g``, where both gradient kernels apply, balanced over two threads when two cores are
    free: one thread takes the first part of the input gradient, the other the rest and the
    weight gradient. (Input and weight gradient as two tasks left the thread of the input
    gradient, ~2x the other's work at LeNet's conv2, running alone: 1.79 ms; each split in
    halves one after the other: 1.72 ms; ~1.2 ms expected from this split.)"""
    n, o, oh, ow = g.shape
    c, kh, kw = w.shape[1:]
    run_ig, dx = _input_grad_plan(g, w, tuple(x.shape[2:]), stride, padding, dilation)
    # work estimates in vector multiply-adds: the input gradient's tap tiles (4 or 5) and
    # channel vectors of 8; the weight gradient's per one measured about the same time
    # (LeNet conv2, one core: 0.9 ms input grad, 0.73 ms weight grad)
    p, kk = oh * ow, kh * kw
    tile = 5 if kk >= 5 and -(-kk // 5) * 5 < -(-kk // 4) * 4 else 4
    ig = p * kk * o * -(-c // 8) * 8 * (tile * -(-kk // tile) / kk)
    wg = p * c * kk * (-(-o // 8) * 8)
    cut = min(n, max(n // 2, round(n * (ig + wg) / (2 * ig))))
    res: list = [None]

    def task(lo: int, hi: int) -> None:
        if lo == 0:
            run_ig(0, cut)
        if hi == 2:
            run_ig(cut, n)
            res[0] = conv2d_weight_grad(x, g, (kh, kw), stride, padding, dilation, with_bias,
                                        serial=True)

    if blas_spinning():
        task(0, 2)
    else:
        parallel_rows(2, task)
    dw = res[0]
    db = None
    if with_bias:
        dw, db = dw
    return dx, dw, db
