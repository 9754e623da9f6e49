"""Fused softmax and log_softmax over the last dim (NVRTC kernels, forward and backward).

Forward reads each row twice: an online pass for the running max and the sum of
``exp(x - max)`` (Milakov and Gimelshein, "Online normalizer calculation for softmax", 2018),
then a pass writing ``exp(x - max) / sum`` (or ``x - max - log(sum)``). Backward reads the
gradient and the saved output once for the row's dot product and once to write. Everything
accumulates in fp32; float32, bfloat16 and float16 rows are read and written in place, with
16-byte vector loads and stores where the arrays are aligned.

Covered: contiguous input, ``dim`` the last dim, ``dtype=None`` (or the input's own dtype).
Anything else returns ``NotImplemented`` and the generic CuPy code runs.
"""
from __future__ import annotations

from typing import Any

from ember.backend.cuda_ops import _nvrtc as K

_SRC = r"""
template <typename T>
__global__ void softmax_fwd(const T* __restrict__ x, T* __restrict__ y, long long rows,
                            int cols, int log_mode, int vec) {
    __shared__ float shm[32], shs[32];
    long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;      // uniform per row: a whole warp, or the whole block
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    float m = -INFINITY, s = 0.f;
    row_each(xr, cols, vec, [&](int, float v) { ms_add(m, s, v); });
    row_ms(m, s, shm, shs);
    if (log_mode) {
        float lse = m + logf(s);
        row_map(xr, yr, cols, vec, [&](int, float v) { return v - lse; });
    } else {
        float inv = 1.f / s;
        row_map(xr, yr, cols, vec, [&](int, float v) { return expf(v - m) * inv; });
    }
}

// softmax:     dx = y * (g - sum(g * y))
// log_softmax: dx = g - exp(y) * sum(g)
template <typename T>
__global__ void softmax_bwd(const T* __restrict__ g, const T* __restrict__ y,
                            T* __restrict__ dx, long long rows, int cols, int log_mode,
                            int vec) {
    __shared__ float sh[32];
    long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;
    const T* gr = g + row * cols;
    const T* yr = y + row * cols;
    T* dr = dx + row * cols;
    float acc = 0.f;
    row_each2(gr, yr, cols, vec, [&](int, float gv, float yv) {
        acc += log_mode ? gv : gv * yv;
    });
    acc = row_sum(acc, sh);
    row_map2(gr, yr, dr, cols, vec, [&](int, float gv, float yv) {
        return log_mode ? gv - expf(yv) * acc : yv * (gv - acc);
    });
}
"""

K.define("softmax", _SRC, ("softmax_fwd", "softmax_bwd"))


def _covered(input: Any, dim: int, dtype: Any) -> str | None:
    """The storage type when the fused kernels handle this call, else None."""
    if input.ndim == 0 or input.size == 0 or not input.flags.c_contiguous:
        return None
    if dim % input.ndim != input.ndim - 1:
        return None
    if dtype is not None:
        from ember import dtypes as _dt
        if _dt.to_dtype(dtype).np != input.dtype:
            return None
    return K.ctype(input)


def _forward(ctx: Any, xp: Any, input: Any, dim: int, dtype: Any, log_mode: int) -> Any:
    ct = _covered(input, dim, dtype)
    if ct is None:
        return NotImplemented
    cols = input.shape[-1]
    rows = input.size // cols
    y = xp.empty_like(input)
    grid, block = K.row_config(rows, cols)
    K.function("softmax", "softmax_fwd", ct)(
        grid, block, (input, y, K.i64(rows), K.i32(cols), K.i32(log_mode),
                      K.aligned(input, y)))
    ctx.dim = input.ndim - 1      # the generic backward's layout: ctx.dim and the output
    ctx.save(y)
    return y


def _backward(ctx: Any, grad: Any, log_mode: int) -> tuple:
    (y,) = ctx.saved
    ya = y._data
    import cupy as xp  # noqa: PLC0415 - only reached on the GPU
    g = K.contiguous(xp, grad._data, ya.dtype)
    cols = ya.shape[-1]
    rows = ya.size // cols
    dx = xp.empty_like(ya)
    grid, block = K.row_config(rows, cols)
    K.function("softmax", "softmax_bwd", K.ctype(ya))(
        grid, block, (g, ya, dx, K.i64(rows), K.i32(cols), K.i32(log_mode),
                      K.aligned(g, ya, dx)))
    return K.wrap(dx, y.device), None, None


class SoftmaxImpl:
    """``softmax(input, dim=-1)`` as one NVRTC kernel each way."""

    def forward(ctx, xp, input, dim, dtype):
        return _forward(ctx, xp, input, dim, dtype, 0)

    def backward(ctx, grad):
        return _backward(ctx, grad, 0)


class LogSoftmaxImpl:
    """``log_softmax(input, dim=-1)`` as one NVRTC kernel each way."""

    def forward(ctx, xp, input, dim, dtype):
        return _forward(ctx, xp, input, dim, dtype, 1)

    def backward(ctx, grad):
        return _backward(ctx, grad, 1)


IMPLS = {"softmax": SoftmaxImpl, "log_softmax": LogSoftmaxImpl}
