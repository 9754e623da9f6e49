"""2-d max pooling (``_max_pool`` over ``(N, C, H, W)``), forward and backward kernels.

The generic code builds one plane per kernel element and compares them (about 2k full-size
passes for a 3x3 window) and checks for NaN with a device-to-host sync; here one thread per
output element scans its window (torch's rule: the first maximum wins, a NaN wins and the
last NaN is kept) and writes the value and the flat index ``h * W + w``. The input may have
any strides; the output is channels-last when the input is, else NCHW, and threads walk it in
memory order (coalesced stores). Backward gathers: one thread per input element adds the
gradients of the (at most ceil(k/s)^2) windows whose saved index points at it, so there are
no atomics and the sum order is fixed.
"""
from __future__ import annotations

from typing import Any

from ember.backend.cuda_ops import _layout as L
from ember.backend.cuda_ops import _nvrtc as K
from ember.ops.nn_conv import ntuple
from ember.ops.nn_pool import pool_out

_SRC = r"""
// flat index i of an (N, C, A, B) array stored NCHW (cl = 0) or NHWC (cl = 1); 32-bit
// divisions while the array has fewer than 2**31 elements (64-bit ones cost ~4x more)
__device__ __forceinline__ void decode(long long i, int cl, int C, int A, int B, long long& n,
                                       int& c, int& a, int& b) {
    if (i < 2147483647LL) {
        unsigned int u = (unsigned int)i, t;
        if (cl) {
            c = (int)(u % C); t = u / C;
            b = (int)(t % B); t /= B;
            a = (int)(t % A); n = t / A;
        } else {
            b = (int)(u % B); t = u / B;
            a = (int)(t % A); t /= A;
            c = (int)(t % C); n = t / C;
        }
        return;
    }
    if (cl) {
        c = (int)(i % C); long long t = i / C;
        b = (int)(t % B); t /= B;
        a = (int)(t % A); n = t / A;
    } else {
        b = (int)(i % B); long long t = i / B;
        a = (int)(t % A); t /= A;
        c = (int)(t % C); n = t / C;
    }
}

template <typename T>
__global__ void maxpool2d_fwd(const T* __restrict__ x, T* __restrict__ y,
                              long long* __restrict__ idx, long long total, int C, int H, int W,
                              int OH, int OW, long long sn, long long sc, long long sh,
                              long long sw, int cl, int kh, int kw, int sth, int stw, int ph,
                              int pw, int dh, int dw) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += stride) {
        long long n; int c, oh, ow;
        decode(i, cl, C, OH, OW, n, c, oh, ow);
        const T* base = x + n * sn + c * sc;
        int h0 = oh * sth - ph, w0 = ow * stw - pw;
        float best = -INFINITY;
        long long bi = -1;
        for (int a = 0; a < kh; ++a) {
            int h = h0 + a * dh;
            if (h < 0 || h >= H) continue;
            for (int b = 0; b < kw; ++b) {
                int w = w0 + b * dw;
                if (w < 0 || w >= W) continue;
                float v = ld(base, h * sh + w * sw);
                if (bi < 0 || v > best || v != v) { best = v; bi = (long long)h * W + w; }
            }
        }
        st(y, i, best);
        idx[i] = bi;
    }
}

// Calls f(oh, ow) for each output window (any stride, padding, dilation) that covers input
// position (h, w): the windows a max-pool backward gathers from.
template <typename F>
__device__ __forceinline__ void windows_of(int h, int w, int OH, int OW, int kh, int kw,
                                           int sth, int stw, int ph, int pw, int dh, int dw,
                                           F f) {
    for (int a = 0; a < kh; ++a) {
        int t = h + ph - a * dh;
        if (t < 0 || t % sth) continue;
        int oh = t / sth;
        if (oh >= OH) continue;
        for (int b = 0; b < kw; ++b) {
            int u = w + pw - b * dw;
            if (u < 0 || u % stw) continue;
            int ow = u / stw;
            if (ow >= OW) continue;
            f(oh, ow);
        }
    }
}

// g and idx share one layout (element strides gn, gc, gh, gw); dx is written in memory order
template <typename T>
__global__ void maxpool2d_bwd(const T* __restrict__ g, const long long* __restrict__ idx,
                              T* __restrict__ dx, long long total, int C, int H, int W, int OH,
                              int OW, long long gn, long long gc, long long gh, long long gw,
                              int cl, int kh, int kw, int sth, int stw, int ph, int pw, int dh,
                              int dw) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += stride) {
        long long n; int c, h, w;
        decode(i, cl, C, H, W, n, c, h, w);
        long long me = (long long)h * W + w, off = n * gn + c * gc;
        float acc = 0.f;
        if (dh == 1 && dw == 1) {
            // the windows holding (h, w): oh in [ceil((h + ph - kh + 1) / sth), (h + ph) / sth]
            int th = h + ph - kh + 1, tw = w + pw - kw + 1;
            int oh0 = th <= 0 ? 0 : (th + sth - 1) / sth, oh1 = (h + ph) / sth;
            int ow0 = tw <= 0 ? 0 : (tw + stw - 1) / stw, ow1 = (w + pw) / stw;
            if (oh1 >= OH) oh1 = OH - 1;
            if (ow1 >= OW) ow1 = OW - 1;
            for (int oh = oh0; oh <= oh1; ++oh)
                for (int ow = ow0; ow <= ow1; ++ow) {
                    long long o = off + oh * gh + ow * gw;
                    if (idx[o] == me) acc += ld(g, o);
                }
            st(dx, i, acc);
            continue;
        }
        windows_of(h, w, OH, OW, kh, kw, sth, stw, ph, pw, dh, dw, [&](int oh, int ow) {
            long long o = off + oh * gh + ow * gw;
            if (idx[o] == me) acc += ld(g, o);
        });
        st(dx, i, acc);
    }
}

// Dense channels-last (NHWC memory, C % N == 0, 16-byte aligned): one thread per N = VW<T>::n
// neighbouring channels of one output (forward) or input (backward) position, with 16-byte
// loads and stores, and one index decode per N elements instead of one per element. Unit u
// is (n, a, b, channel group) in memory order; same comparison rule as above.
__device__ __forceinline__ void decode_cl(long long u, int G, int A, int B, long long& n,
                                          int& a, int& b, int& cg) {
    if (u < 2147483647LL) {
        unsigned int v = (unsigned int)u, t;
        cg = (int)(v % G); t = v / G;
        b = (int)(t % B); t /= B;
        a = (int)(t % A); n = t / A;
        return;
    }
    cg = (int)(u % G); long long t = u / G;
    b = (int)(t % B); t /= B;
    a = (int)(t % A); n = t / A;
}

template <typename T>
__global__ void maxpool2d_fwd_clv(const T* __restrict__ x, T* __restrict__ y,
                                  long long* __restrict__ idx, long long units, int C, int H,
                                  int W, int OH, int OW, int kh, int kw, int sth, int stw,
                                  int ph, int pw, int dh, int dw) {
    constexpr int N = VW<T>::n;
    int G = C / N;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long u = (long long)blockIdx.x * blockDim.x + threadIdx.x; u < units;
         u += stride) {
        long long n; int oh, ow, cg;
        decode_cl(u, G, OH, OW, n, oh, ow, cg);
        const T* base = x + n * H * W * C + cg * N;
        int h0 = oh * sth - ph, w0 = ow * stw - pw;
        float best[N];
        long long bi[N];
#pragma unroll
        for (int j = 0; j < N; ++j) { best[j] = -INFINITY; bi[j] = -1; }
        for (int a = 0; a < kh; ++a) {
            int h = h0 + a * dh;
            if (h < 0 || h >= H) continue;
            for (int b = 0; b < kw; ++b) {
                int w = w0 + b * dw;
                if (w < 0 || w >= W) continue;
                float v[N];
                long long me = (long long)h * W + w;
                ldv(base + me * C, v);
#pragma unroll
                for (int j = 0; j < N; ++j)
                    if (bi[j] < 0 || v[j] > best[j] || v[j] != v[j]) { best[j] = v[j]; bi[j] = me; }
            }
        }
        stv(y + u * N, best);
#pragma unroll
        for (int j = 0; j < N; ++j) idx[u * N + j] = bi[j];
    }
}

// g and idx dense channels-last of (N, OH, OW, C); dx dense channels-last of (N, H, W, C)
template <typename T>
__global__ void maxpool2d_bwd_clv(const T* __restrict__ g, const long long* __restrict__ idx,
                                  T* __restrict__ dx, long long units, int C, int H, int W,
                                  int OH, int OW, int kh, int kw, int sth, int stw, int ph,
                                  int pw, int dh, int dw) {
    constexpr int N = VW<T>::n;
    int G = C / N;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long u = (long long)blockIdx.x * blockDim.x + threadIdx.x; u < units;
         u += stride) {
        long long n; int h, w, cg;
        decode_cl(u, G, H, W, n, h, w, cg);
        long long me = (long long)h * W + w, off = n * OH * OW * C + cg * N;
        float acc[N];
#pragma unroll
        for (int j = 0; j < N; ++j) acc[j] = 0.f;
        windows_of(h, w, OH, OW, kh, kw, sth, stw, ph, pw, dh, dw, [&](int oh, int ow) {
            long long o = off + ((long long)oh * OW + ow) * C;
            float gv[N];
            ldv(g + o, gv);
#pragma unroll
            for (int j = 0; j < N; ++j)
                if (idx[o + j] == me) acc[j] += gv[j];
        });
        stv(dx + u * N, acc);
    }
}
"""

K.define("pool", _SRC, ("maxpool2d_fwd", "maxpool2d_bwd", "maxpool2d_fwd_clv",
                          "maxpool2d_bwd_clv"))


def _elem(a) -> list:
    return [s // a.itemsize for s in a.strides]


def _dense_cl_vec(c: int, *arrays: Any) -> int:
    """Elements per 16-byte vector when every array is dense channels-last (NHWC memory),
    16-byte aligned, and C is a multiple of the vector width (the vector kernels), else 0."""
    a0 = arrays[0]
    n = 16 // a0.itemsize
    if c % n:
        return 0
    for a in arrays:
        nb, cb, hb, wb = a.shape
        e = a.itemsize
        if a.strides != (hb * wb * cb * e, e, wb * cb * e, cb * e) or a.data.ptr % 16:
            return 0
    return n


class MaxPoolImpl:
    """``_max_pool`` for 2-d pooling of a 4-d input; saves what the generic backward reads."""

    def forward(ctx, xp, input, kernel_size, stride, padding, dilation, ceil_mode):
        ct = K.ctype(input)
        if ct is None or input.ndim != 4 or input.size == 0 or \
                any(s < 0 for s in input.strides):
            return NotImplemented
        k = ntuple(kernel_size, 2)
        s = ntuple(stride if stride is not None and stride != [] and stride != () else k, 2)
        p, d = ntuple(padding, 2), ntuple(dilation, 2)
        n, c, h, w = input.shape
        out = tuple(pool_out((h, w)[i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(2))
        if min(out) <= 0:
            return NotImplemented
        cl = L.is_channels_last(input) and not input.flags.c_contiguous
        shape = (n, c) + out
        if cl:
            y = xp.empty((n, out[0], out[1], c), input.dtype).transpose(0, 3, 1, 2)
            idx = xp.empty((n, out[0], out[1], c), xp.int64).transpose(0, 3, 1, 2)
        else:
            y = xp.empty(shape, input.dtype)
            idx = xp.empty(shape, xp.int64)
        geom = tuple(K.i32(v) for v in (*k, *s, *p, *d))
        nvec = _dense_cl_vec(c, input, y) if cl else 0
        if nvec:
            units = y.size // nvec
            grid, block = K.flat_grid(units, 256, 2)
            K.function("pool", "maxpool2d_fwd_clv", ct)(
                grid, block, (input, y, idx, K.i64(units), K.i32(c), K.i32(h), K.i32(w),
                              K.i32(out[0]), K.i32(out[1]), *geom))
        else:
            total = y.size
            grid, block = K.flat_grid(total, 256, 2)
            K.function("pool", "maxpool2d_fwd", ct)(
                grid, block, (input, y, idx, K.i64(total), K.i32(c), K.i32(h), K.i32(w),
                              K.i32(out[0]), K.i32(out[1]), *(K.i64(v) for v in _elem(input)),
                              K.i32(cl), *geom))
        ctx.p = (input.shape, all(s[i] >= d[i] * (k[i] - 1) + 1 for i in range(2)))
        ctx.pool = (k, s, p, d)
        ctx.save(idx)
        return y, idx

    def backward(ctx, g, _gi=None):
        import cupy as xp  # noqa: PLC0415 - only reached on the GPU
        (idx,) = ctx.saved
        shape, _ = ctx.p
        k, s, p, d = ctx.pool
        ia = idx._data
        ct = K.ctype(g._data)
        if ct is None:
            from ember.ops.registry import OPS
            return OPS["_max_pool"].backward(ctx, g)
        ga = L.as_layout(xp, g._data, ia, g._data.dtype)
        n, c, h, w = shape
        cl = L.is_channels_last(ia) and not ia.flags.c_contiguous
        if cl:
            dx = xp.empty((n, h, w, c), ga.dtype).transpose(0, 3, 1, 2)
        else:
            dx = xp.empty(shape, ga.dtype)
        geom = tuple(K.i32(v) for v in (*k, *s, *p, *d))
        nvec = _dense_cl_vec(c, ga, ia, dx) if cl else 0
        if nvec:
            units = dx.size // nvec
            grid, block = K.flat_grid(units, 256, 2)
            K.function("pool", "maxpool2d_bwd_clv", ct)(
                grid, block, (ga, ia, dx, K.i64(units), K.i32(c), K.i32(h), K.i32(w),
                              K.i32(ia.shape[2]), K.i32(ia.shape[3]), *geom))
        else:
            total = dx.size
            grid, block = K.flat_grid(total, 256, 2)
            K.function("pool", "maxpool2d_bwd", ct)(
                grid, block, (ga, ia, dx, K.i64(total), K.i32(c), K.i32(h), K.i32(w),
                              K.i32(ia.shape[2]), K.i32(ia.shape[3]),
                              *(K.i64(v) for v in _elem(ga)), K.i32(cl), *geom))
        return K.wrap(dx, g.device), None, None, None, None, None

IMPLS = {"_max_pool": MaxPoolImpl}
