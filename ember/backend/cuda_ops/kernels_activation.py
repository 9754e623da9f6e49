"""Fused gelu (exact and tanh), silu and relu, forward and backward, one kernel each way, and
``_add_relu`` (a ResNet block's ``relu(out + identity)``) in one kernel.

The generic CuPy code runs five to eight array expressions per call (each a kernel launch
and a full-size temporary; half types also pay two casts; relu's backward is a comparison
and a product); these kernels read the input (and the gradient) once and write once,
computing in fp32. Covered: float32, bfloat16, float16. The kernels run flat over memory:
a dense input of any layout (channels-last included) is used as it is and the output keeps
its layout, as torch's; the gradient is brought to that layout; other inputs are copied to
C order first.
"""
from __future__ import annotations

from typing import Any

from ember.backend.cuda_ops import _layout as L
from ember.backend.cuda_ops import _nvrtc as K

_SRC = r"""
// mode 0: gelu (erf), 1: gelu (tanh), 2: silu, 3: relu (NaN stays NaN, as torch)
__device__ __forceinline__ float act(float x, int mode) {
    if (mode == 3) return x > 0.f ? x : (x == x ? 0.f : x);
    if (mode == 0) return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    if (mode == 1) {
        float inner = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        return 0.5f * x * (1.f + tanhf(inner));
    }
    return x / (1.f + expf(-x));
}

__device__ __forceinline__ float dact(float x, int mode) {
    if (mode == 0) {
        float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
        float pdf = expf(-0.5f * x * x) * 0.39894228040143268f;
        return cdf + x * pdf;
    }
    if (mode == 1) {
        float inner = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        float t = tanhf(inner);
        float d_inner = 0.79788456080286536f * (1.f + 3.f * 0.044715f * x * x);
        return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * d_inner;
    }
    float s = 1.f / (1.f + expf(-x));
    return s * (1.f + x * (1.f - s));
}

// relu (mode 3) gets its output y, not x: torch's threshold_backward, 0 where y <= 0 and the
// gradient elsewhere -- a NaN output passes it -- (a select, not a product: an inf or NaN
// gradient of a clipped element gives 0)
__device__ __forceinline__ float dgrad(float g, float x, int mode) {
    if (mode == 3) return x <= 0.f ? 0.f : g;
    return g * dact(x, mode);
}

// Grid-stride over 16-byte vectors (vec: the arrays are 16-byte aligned), then a scalar tail.
template <typename T>
__global__ void act_fwd(const T* __restrict__ x, T* __restrict__ y, long long n, int mode,
                        int vec) {
    constexpr int N = VW<T>::n;
    long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long nt = (long long)gridDim.x * blockDim.x;
    long long nv = vec ? n / N : 0;
    for (long long k = tid; k < nv; k += nt) {
        float v[N];
        ldv(x + k * N, v);
#pragma unroll
        for (int j = 0; j < N; ++j) v[j] = act(v[j], mode);
        stv(y + k * N, v);
    }
    for (long long i = nv * N + tid; i < n; i += nt) st(y, i, act(ld(x, i), mode));
}

template <typename T>
__global__ void act_bwd(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ dx,
                        long long n, int mode, int vec) {
    constexpr int N = VW<T>::n;
    long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long nt = (long long)gridDim.x * blockDim.x;
    long long nv = vec ? n / N : 0;
    for (long long k = tid; k < nv; k += nt) {
        float u[N], v[N];
        ldv(g + k * N, u);
        ldv(x + k * N, v);
#pragma unroll
        for (int j = 0; j < N; ++j) u[j] = dgrad(u[j], v[j], mode);
        stv(dx + k * N, u);
    }
    for (long long i = nv * N + tid; i < n; i += nt) st(dx, i, dgrad(ld(g, i), ld(x, i), mode));
}

// act(a + b) of two arrays of one layout, the sum in fp32; _add_relu runs mode 3 (rounding
// the sum to T first, as the unfused add does, gives the same result: rounding keeps signs)
template <typename T>
__global__ void add_act_fwd(const T* __restrict__ a, const T* __restrict__ b,
                            T* __restrict__ y, long long n, int mode, int vec) {
    constexpr int N = VW<T>::n;
    long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long nt = (long long)gridDim.x * blockDim.x;
    long long nv = vec ? n / N : 0;
    for (long long k = tid; k < nv; k += nt) {
        float u[N], v[N];
        ldv(a + k * N, u);
        ldv(b + k * N, v);
#pragma unroll
        for (int j = 0; j < N; ++j) u[j] = act(u[j] + v[j], mode);
        stv(y + k * N, u);
    }
    for (long long i = nv * N + tid; i < n; i += nt) st(y, i, act(ld(a, i) + ld(b, i), mode));
}
"""

K.define("activation", _SRC, ("act_fwd", "act_bwd", "add_act_fwd"))


def _dense(xp: Any, a: Any) -> Any:
    """``a`` itself when dense (any layout), else a C-contiguous copy."""
    return a if L.dense_order(a) is not None else xp.ascontiguousarray(a)


def _run(xp: Any, name: str, arrays: tuple, out_like: Any, mode: int, out: Any = None) -> Any:
    """One flat kernel over ``arrays`` (dense, one layout); the output has that layout
    (``out``, when given, is written: each thread reads and writes only its own elements)."""
    if out is None:
        out = L.empty_like(xp, out_like)
    n = out.size
    if n:
        grid, block = K.flat_grid(max(n // 8, 1), 256)
        K.function("activation", name, K.ctype(out_like))(
            grid, block, arrays + (out, K.i64(n), K.i32(mode), K.aligned(out, *arrays)))
    return out


def _forward(ctx: Any, xp: Any, input: Any, mode: int) -> Any:
    if K.ctype(input) is None:
        return NotImplemented
    x = _dense(xp, input)
    y = _run(xp, "act_fwd", (x,), x, mode)
    # the generic backward's layout: relu saves its output, the others their input
    ctx.save(y if mode == 3 else input)
    return y


def _backward(ctx: Any, grad: Any, mode: int) -> Any:
    import cupy as xp  # noqa: PLC0415 - only reached on the GPU
    (x,) = ctx.saved
    xa = _dense(xp, x._data)
    g = L.as_layout(xp, grad._data, xa, xa.dtype)
    return K.wrap(_run(xp, "act_bwd", (g, xa), xa, mode), x.device)


class GeluImpl:
    """``gelu(input, approximate)`` (``'none'``: erf, ``'tanh'``: the tanh approximation)."""

    def forward(ctx, xp, input, approximate):
        if approximate not in ("none", "tanh"):
            return NotImplemented   # the generic forward raises torch's error
        ctx.approximate = approximate
        return _forward(ctx, xp, input, 0 if approximate == "none" else 1)

    def backward(ctx, grad):
        return _backward(ctx, grad, 0 if ctx.approximate == "none" else 1), None


class SiluImpl:
    """``silu(input) = input * sigmoid(input)``."""

    def forward(ctx, xp, input):
        return _forward(ctx, xp, input, 2)

    def backward(ctx, grad):
        return _backward(ctx, grad, 2)


class ReluImpl:
    """``relu(input)``; saves its output (the generic backward's layout)."""

    def forward(ctx, xp, input):
        return _forward(ctx, xp, input, 3)

    def forward_into(ctx, xp, dest, input):
        """``relu_``: written into ``dest`` (self's array) when the input is that dense array;
        the saved output is then ``dest`` (the registry aliases it to self)."""
        if input is not dest or K.ctype(input) is None or L.dense_order(input) is None:
            return ReluImpl.forward(ctx, xp, input)
        y = _run(xp, "act_fwd", (input,), input, 3, out=dest)
        ctx.save(y)
        return y

    def backward(ctx, grad):
        return _backward(ctx, grad, 3)


class AddReluImpl:
    """``_add_relu(input, other)``: one kernel when both are dense arrays of one dtype, shape
    and layout (a ResNet block's residual tail), else the generic code. Saves the output."""

    def forward(ctx, xp, input, other):
        if K.ctype(input) is None or type(other) is not type(input) or \
                other.dtype != input.dtype or other.shape != input.shape or \
                other.strides != input.strides or L.dense_order(input) is None:
            return NotImplemented
        y = _run(xp, "add_act_fwd", (input, other), input, 3)
        ctx.save(y)
        return y

    def backward(ctx, grad):
        g = _backward(ctx, grad, 3)
        return g, g


IMPLS = {"gelu": GeluImpl, "silu": SiluImpl, "relu": ReluImpl, "_add_relu": AddReluImpl}
