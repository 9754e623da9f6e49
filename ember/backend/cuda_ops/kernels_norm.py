"""Fused layer_norm and rms_norm (NVRTC kernels, fwd and bwd); batch_norm is in
kernels_batchnorm.py.

layer_norm / rms_norm (rows = the leading dims, cols = the normalized dims):
- forward: one warp or block per row computes the mean (layer_norm) and ``rstd`` in fp32
  with two passes over the row (mean, then the centred sum of squares: no cancellation),
  then writes ``(x - mean) * rstd * weight + bias``; mean and rstd are saved as fp32.
- backward: one kernel per row for ``dx = rstd * (gxhat - mean(gxhat) - xhat *
  mean(gxhat * xhat))`` (``gxhat = g * weight``); dweight/dbias from a second kernel that
  writes per-(row-chunk, column) partial sums, which one small CuPy sum reduces.

Layouts saved on ``ctx`` are the generic ops' (ember/ops/nn_norm.py), so under
``create_graph`` their differentiable backwards run on the same node.
"""
from __future__ import annotations

from typing import Any

from ember.backend.cuda_ops import _norm_rows
from ember.backend.cuda_ops import _nvrtc as K

_SRC = r"""
template <typename T>
__global__ void ln_fwd(const T* __restrict__ x, const T* __restrict__ w,
                       const T* __restrict__ b, T* __restrict__ y, float* __restrict__ mean,
                       float* __restrict__ rstd, long long rows, int cols, float eps,
                       int center, int has_w, int has_b, int vec) {
    __shared__ float sh[32];
    long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    float mu = 0.f;
    if (center) {
        float acc = 0.f;
        row_each(xr, cols, vec, [&](int, float v) { acc += v; });
        mu = row_sum(acc, sh) / cols;
    }
    float acc = 0.f;
    row_each(xr, cols, vec, [&](int, float v) { acc += (v - mu) * (v - mu); });
    float r = 1.f / sqrtf(row_sum(acc, sh) / cols + eps);
    row_map(xr, yr, cols, vec, [&](int c, float v) {
        v = (v - mu) * r;
        if (has_w) v *= ld(w, c);
        if (has_b) v += ld(b, c);
        return v;
    });
    if (threadIdx.x == 0) {
        if (center) mean[row] = mu;
        rstd[row] = r;
    }
}

template <typename T>
__global__ void ln_bwd_dx(const T* __restrict__ g, const T* __restrict__ x,
                          const T* __restrict__ w, const float* __restrict__ mean,
                          const float* __restrict__ rstd, T* __restrict__ dx, long long rows,
                          int cols, int center, int has_w, int vec) {
    __shared__ float sh[32];
    long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;
    const T* xr = x + row * cols;
    const T* gr = g + row * cols;
    T* dr = dx + row * cols;
    float mu = center ? mean[row] : 0.f, r = rstd[row];
    float a = 0.f, bsum = 0.f;
    row_each2(gr, xr, cols, vec, [&](int c, float gv, float xv) {
        float gh = gv * (has_w ? ld(w, c) : 1.f);
        a += gh;
        bsum += gh * (xv - mu) * r;
    });
    a = center ? row_sum(a, sh) / cols : 0.f;
    bsum = row_sum(bsum, sh) / cols;
    row_map2(gr, xr, dr, cols, vec, [&](int c, float gv, float xv) {
        float gh = gv * (has_w ? ld(w, c) : 1.f);
        return r * (gh - a - (xv - mu) * r * bsum);
    });
}

// Partial dweight/dbias: block (32, 8) covers 32 columns of one chunk of rows.
template <typename T>
__global__ void ln_bwd_wb(const T* __restrict__ g, const T* __restrict__ x,
                          const float* __restrict__ mean, const float* __restrict__ rstd,
                          float* __restrict__ pw, float* __restrict__ pb, long long rows,
                          int cols, long long chunk, int center) {
    __shared__ float sw[8][33], sb[8][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    long long r0 = (long long)blockIdx.y * chunk;
    long long r1 = r0 + chunk < rows ? r0 + chunk : rows;
    float aw = 0.f, ab = 0.f;
    if (col < cols) {
        for (long long r = r0 + threadIdx.y; r < r1; r += 8) {
            float gv = ld(g, r * cols + col);
            float mu = center ? mean[r] : 0.f;
            aw += gv * (ld(x, r * cols + col) - mu) * rstd[r];
            ab += gv;
        }
    }
    sw[threadIdx.y][threadIdx.x] = aw;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        for (int k = 1; k < 8; ++k) { aw += sw[k][threadIdx.x]; ab += sb[k][threadIdx.x]; }
        pw[(long long)blockIdx.y * cols + col] = aw;
        pb[(long long)blockIdx.y * cols + col] = ab;
    }
}
"""

K.define("norm", _SRC, ("ln_fwd", "ln_bwd_dx", "ln_bwd_wb"))


def _same(ref: Any, *arrays: Any) -> bool:
    """Every array is None, or contiguous with ``ref``'s dtype."""
    return all(a is None or (a.dtype == ref.dtype and a.flags.c_contiguous) for a in arrays)


# ---------------------------------------------------------------------- layer / rms norm
def _row_norm_forward(ctx: Any, xp: Any, input: Any, normalized_shape: Any, weight: Any,
                      bias: Any, eps: float, center: bool) -> Any:
    ct = K.ctype(input)
    if ct is None or input.size == 0 or not input.flags.c_contiguous or \
            not _same(input, weight, bias):
        return NotImplemented
    k = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    lead = input.shape[:input.ndim - k]
    rows = 1
    for d in lead:
        rows *= d
    cols = input.size // rows
    y = xp.empty_like(input)
    mean = xp.empty(rows, xp.float32) if center else None
    rstd = xp.empty(rows, xp.float32)
    nv = _norm_rows.vectors(input, cols, y, weight, bias)
    if nv:  # the row fits a warp's registers: x is read once
        _norm_rows.forward(xp, nv, input, weight, bias, y, mean, rstd, rows, cols, eps, center)
    else:
        grid, block = K.row_config(rows, cols)
        K.function("norm", "ln_fwd", ct)(
            grid, block, (input, weight if weight is not None else input,
                          bias if bias is not None else input, y,
                          mean if center else rstd, rstd, K.i64(rows), K.i32(cols),
                          K.f32(eps), K.i32(center), K.i32(weight is not None),
                          K.i32(bias is not None), K.aligned(input, y)))
    stat_shape = lead + (1,) * k
    ctx.p = (tuple(range(input.ndim - k, input.ndim)), eps)
    ctx.save(input, weight, mean.reshape(stat_shape) if center else None,
             rstd.reshape(stat_shape))
    return y


def _row_norm_backward(ctx: Any, grad: Any, center: bool) -> tuple:
    import cupy as xp  # noqa: PLC0415 - only reached on the GPU
    saved = ctx.saved
    x, w, mean, rstd = saved[0], saved[1], saved[2], saved[3]
    xa = x._data
    ct = K.ctype(xa)
    g = K.contiguous(xp, grad._data, xa.dtype)
    rows = rstd._data.size
    cols = xa.size // rows
    mean_a = mean._data if center else rstd._data
    need = ctx.needs_input_grad
    wa = w._data if w is not None else None
    gx = gw = gb = None
    want_w = wa is not None and need[2]
    want_b = center and len(need) > 3 and need[3]
    nv = _norm_rows.vectors(xa, cols, g, wa)
    if nv:  # rows in registers: dx and the dweight/dbias partials in one pass
        dx = xp.empty_like(xa) if need[0] else None
        pw, pb = _norm_rows.backward(xp, nv, g, xa, wa, mean_a, rstd._data, dx, rows, cols,
                                     center, want_w or want_b)
        if dx is not None:
            gx = K.wrap(dx, x.device)
        shape = xa.shape[xa.ndim - len(ctx.p[0]):]
        if want_w:
            gw = K.wrap(_norm_rows.colsum(xp, nv, pw, wa.dtype).reshape(shape), x.device)
        if want_b:
            gb = K.wrap(_norm_rows.colsum(xp, nv, pb, xa.dtype).reshape(shape), x.device)
        return gx, gw, gb
    if need[0]:
        dx = xp.empty_like(xa)
        grid, block = K.row_config(rows, cols)
        K.function("norm", "ln_bwd_dx", ct)(
            grid, block, (g, xa, wa if wa is not None else xa, mean_a, rstd._data, dx,
                          K.i64(rows), K.i32(cols), K.i32(center), K.i32(wa is not None),
                          K.aligned(g, xa, dx)))
        gx = K.wrap(dx, x.device)
    if want_w or want_b:
        # enough row chunks to fill the GPU, each long enough to amortise its partial row
        chunks = max(1, min(256, (rows + 63) // 64))
        chunk = (rows + chunks - 1) // chunks
        chunks = (rows + chunk - 1) // chunk
        pw = xp.empty((chunks, cols), xp.float32)
        pb = xp.empty((chunks, cols), xp.float32)
        K.function("norm", "ln_bwd_wb", ct)(
            ((cols + 31) // 32, chunks, 1), (32, 8, 1),
            (g, xa, mean_a, rstd._data, pw, pb, K.i64(rows), K.i32(cols), K.i64(chunk),
             K.i32(center)))
        shape = xa.shape[xa.ndim - len(ctx.p[0]):]
        if want_w:
            gw = K.wrap(pw.sum(axis=0).astype(wa.dtype).reshape(shape), x.device)
        if want_b:
            gb = K.wrap(pb.sum(axis=0).astype(xa.dtype).reshape(shape), x.device)
    return gx, gw, gb


class LayerNormImpl:
    """``layer_norm`` over the trailing dims: one fused kernel forward, two backward."""

    def forward(ctx, xp, input, normalized_shape, weight=None, bias=None, eps=1e-05,
                cudnn_enable=True):
        return _row_norm_forward(ctx, xp, input, normalized_shape, weight, bias, eps, True)

    def backward(ctx, grad):
        gx, gw, gb = _row_norm_backward(ctx, grad, True)
        return gx, None, gw, gb, None, None


class RMSNormImpl:
    """``rms_norm`` over the trailing dims (``eps=None``: the dtype's machine epsilon)."""

    def forward(ctx, xp, input, normalized_shape, weight=None, eps=None):
        if eps is None:
            import ember
            from ember.dtypes import _FROM_NP
            if K.dtype_name(input.dtype) not in K.CTYPES:
                return NotImplemented
            eps = float(ember.finfo(_FROM_NP[input.dtype]).eps)
        return _row_norm_forward(ctx, xp, input, normalized_shape, weight, None, eps, False)

    def backward(ctx, grad):
        gx, gw, _ = _row_norm_backward(ctx, grad, False)
        return gx, None, gw, None


IMPLS = {"layer_norm": LayerNormImpl, "rms_norm": RMSNormImpl}
