"""``add`` of two tensors that share one dense layout (channels-last activations, gradients),
and float32/bfloat16/float16 casts.

CuPy walks operands in logical order, so adding two channels-last tensors reads both with
a stride of C elements between neighbouring threads and writes a C-ordered result, which the
next op must transpose back; its bfloat16 add also ran at ~0.7 TB/s even on contiguous
arrays. When both operands have one shape, dtype and dense layout, the sum runs flat over
their memory (an NVRTC kernel for float32/bfloat16/float16; CuPy's add on the memory-order
views for other dtypes) and the result keeps that layout, as torch's. Everything else
(broadcasting, ``alpha``, mixed layouts) returns ``NotImplemented``.

Operands of two float dtypes (a float32 residual stream plus a bfloat16 sublayer output under
autocast) add in one kernel into the float32 result, with no cast of the low-precision operand
first: the dispatcher asks :meth:`AddImpl.takes_mixed` and then skips its promotion cast. The
sum is torch's (the bf16/fp16 -> fp32 widening is exact, one fp32 add); the low-precision
operand's gradient is cast to its dtype by the engine, as the cast's backward did.
"""
from __future__ import annotations

from typing import Any

from ember import dtypes as _dt
from ember.backend import device_of_array
from ember.backend.cuda_ops import _layout as L
from ember.backend.cuda_ops import _nvrtc as K

_SRC = r"""
// out = a + b over 16-byte vectors (vec: all three 16-byte aligned), then a scalar tail
template <typename T>
__global__ void add_flat(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                         long long n, int vec) {
    constexpr int N = VW<T>::n;
    long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long nt = (long long)gridDim.x * blockDim.x;
    long long nv = vec ? n / N : 0;
    for (long long k = tid; k < nv; k += nt) {
        float u[N], v[N];
        ldv(a + k * N, u);
        ldv(b + k * N, v);
#pragma unroll
        for (int j = 0; j < N; ++j) u[j] += v[j];
        stv(out + k * N, u);
    }
    for (long long i = nv * N + tid; i < n; i += nt) st(out, i, ld(a, i) + ld(b, i));
}
"""

K.define("pointwise", _SRC, ("add_flat",))

_MIXED_SRC = r"""
// out = a + b into float32 for operands of two storage types, flat over one dense layout
template <typename A, typename B>
__global__ void add_mixed(const A* __restrict__ a, const B* __restrict__ b,
                          float* __restrict__ out, long long n) {
    long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long nt = (long long)gridDim.x * blockDim.x;
    for (long long i = tid; i < n; i += nt) out[i] = ld(a, i) + ld(b, i);
}
"""

K.define("pointwise_mixed", _MIXED_SRC, ("add_mixed",))

_CAST_SRC = r"""
// out[i] = (Tout) a[i] through fp32 (exact from bf16/fp16; round-to-nearest-even into them)
template <typename Tin, typename Tout>
__global__ void cast_flat(const Tin* __restrict__ a, Tout* __restrict__ out, long long n) {
    long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long nt = (long long)gridDim.x * blockDim.x;
    for (long long i = tid; i < n; i += nt) st(out, i, ld(a, i));
}
"""

K.define("cast", _CAST_SRC, ("cast_flat",))


def cast(xp, arr, dtype):
    """``arr.astype(dtype)`` for dense float32/bfloat16/float16 arrays as one NVRTC
    kernel: CuPy's ``astype`` into or out of ml_dtypes' bfloat16 costs ~28 us of host time
    a call (measured in a GPT-2 step: ~290 autocast casts), the kernel launch ~5 us.
    Anything else (other dtypes, strided views) is CuPy's ``astype``."""
    key = (arr.shape, arr.strides, arr.dtype, dtype, xp.cuda.runtime.getDevice())
    plan = _CASTS.get(key)
    if plan is None:
        plan = _cast_plan(xp, arr, dtype)
        if len(_CASTS) > 4096:
            _CASTS.clear()
        _CASTS[key] = plan
    if plan is False:
        return arr.astype(dtype)
    fn, shape, axes, dt, grid, block, n = plan
    out = xp.ndarray(shape, dt)   # (cupy.empty adds a Python frame: ~1 us)
    if axes is not None:
        out = out.transpose(axes)
    fn(grid, block, (arr, out, n))
    return out


_CASTS: dict = {}   # (shape, strides, dtypes, device) -> _cast_plan's result


def _cast_plan(xp, arr, dtype):
    """How :func:`cast` makes one geometry's cast: ``(kernel, physical output shape, axes
    back to the logical order or None, dtype, grid, block, element count)``, or False for
    CuPy's ``astype``."""
    dtype = xp.dtype(dtype)
    src, dst = K.dtype_ctype(arr.dtype), K.dtype_ctype(dtype)
    if src is None or dst is None or src == dst or arr.size == 0:
        return False
    shape, axes = arr.shape, None
    if not arr.flags.c_contiguous:
        # dense in another memory order (channels-last conv weights and their gradients):
        # cast flat over memory into an output of the same layout, as astype's order='K'
        order = L.dense_order(arr)
        if order is None:
            return False
        if order != sorted(order):
            shape, axes = tuple(arr.shape[i] for i in order), L.inverse(order)
    n = arr.size
    grid, block = K.flat_grid(n, 256, 4)
    return (K.function("cast", "cast_flat", f"{src}, {dst}"), shape, axes, dtype, grid, block,
            K.i64(n))


_ALIGN = 128   # elements: each bulk-cast copy starts 256-byte aligned (bf16/fp16), as a
               # fresh allocation does (cuBLASLt and cuDNN plans are made on such pointers)


def bulk_cast(xp, arrays, dtype) -> list:
    """``[a.astype(dtype) for a in arrays]`` for float32 arrays into float16/bfloat16, in
    one allocation and one launch (autocast's weight casts, made together at a region's
    first cast). Each result keeps its array's layout; None for an array this does not take
    (another dtype, empty, not dense)."""
    out: list = [None] * len(arrays)
    if K.dtype_ctype(xp.dtype(dtype)) not in K.HALF_CTYPES:
        return out
    picks, total = [], 0
    for i, a in enumerate(arrays):
        if K.dtype_ctype(a.dtype) != "float" or a.size == 0:
            continue
        if not a.flags.c_contiguous and L.dense_order(a) is None:
            continue
        picks.append((i, a, total))
        total += (a.size + _ALIGN - 1) // _ALIGN * _ALIGN
    if not picks:
        return out
    flat = xp.empty(total, dtype)
    # Each result is an array over its part of ``flat`` made directly (its memory pointer
    # keeps ``flat`` alive), with the source's element strides: C order, or dense in another
    # order (a channels-last conv weight). Slicing ``flat`` and reshaping took 4.8 us a
    # result against 2.1 (bench.cupy_overhead, H100 host), for ~100 weights a GPT-2 step.
    size = flat.itemsize
    base = flat.data
    nd = xp.ndarray
    srcs, dsts = [], []
    for i, a, off in picks:
        d = nd(a.shape, dtype, base + off * size,
               None if a.flags.c_contiguous else tuple(st // 4 * size for st in a.strides))
        out[i] = d
        srcs.append(a)
        dsts.append(d)
    from ember.backend.cuda_ops.kernels_optim import multi_cast  # noqa: PLC0415
    multi_cast(srcs, dsts)
    return out


def cast_all(xp: Any, arrays: list, dtype: Any) -> list:
    """``[a.astype(dtype) for a in arrays]`` (arrays of one dtype), each result a fresh
    allocation in its array's layout: the dense ones in one launch, any other on its own
    (the engine's deferred weight-gradient casts back to float32)."""
    outs: list = [None] * len(arrays)
    srcs, dsts = [], []
    floats = ("float", "double") + K.HALF_CTYPES
    dst = K.dtype_ctype(xp.dtype(dtype)) in floats
    for i, a in enumerate(arrays):
        if dst and a.size and K.dtype_ctype(a.dtype) in floats and \
                (a.flags.c_contiguous or L.dense_order(a) is not None):
            d = outs[i] = L.empty_like(xp, a, dtype)
            srcs.append(a)
            dsts.append(d)
        else:
            outs[i] = cast(xp, a, dtype)
    if srcs:
        from ember.backend.cuda_ops.kernels_optim import multi_cast  # noqa: PLC0415
        multi_cast(srcs, dsts, keep=False)
    return outs


class AddImpl:
    """``add(input, other, alpha=1)`` for operands of one shape, dtype and dense layout
    (computed in fp32, rounded once to the storage type, as CuPy's)."""

    @staticmethod
    def takes_mixed(arrays: tuple) -> bool:
        """The dispatcher's question before promoting: does :meth:`forward` add these
        operands of two float dtypes as they are (same shape and dense layout, ``alpha``
        1), into float32?"""
        a, b, alpha = arrays[0], arrays[1], arrays[2] if len(arrays) > 2 else 1
        if alpha != 1 or type(a) is not type(b) or not hasattr(a, "data") or \
                a.shape != b.shape or a.dtype == b.dtype:
            return False
        ca, cb = K.ctype(a), K.ctype(b)
        return ca is not None and cb is not None and "float" in (ca, cb) and \
            L.same_layout(a, b) is not None

    def forward(ctx, xp, input, other, alpha):
        if alpha != 1 or not isinstance(input, xp.ndarray) or not isinstance(other, xp.ndarray) \
                or input.shape != other.shape:
            return NotImplemented
        if input.dtype != other.dtype:
            # only reached for operands takes_mixed() took (the dispatcher promotes the others)
            out = L.empty_like(xp, input, xp.float32)
            n = out.size
            grid, block = K.flat_grid(n, 256, 4)
            K.function("pointwise_mixed", "add_mixed", f"{K.ctype(input)}, {K.ctype(other)}")(
                grid, block, (input, other, out, K.i64(n)))
            ctx.alpha = 1
            return out
        ct = K.ctype(input)
        if ct is None and input.flags.c_contiguous:
            return NotImplemented   # CuPy's own add is right for these
        order = L.same_layout(input, other)
        if order is None:
            return NotImplemented
        out = L.empty_like(xp, input, order=order)
        if ct is not None:   # CuPy's bfloat16 add ran at ~0.7 TB/s; this at memory speed
            n = out.size
            grid, block = K.flat_grid(max(n // 8, 1), 256)
            K.function("pointwise", "add_flat", ct)(
                grid, block, (input, other, out, K.i64(n), K.aligned(input, other, out)))
        else:
            xp.add(input.transpose(order), other.transpose(order), out=out.transpose(order))
        ctx.alpha = 1
        return out

    def forward_into(ctx, xp, dest, input, other, alpha):
        """``add_``: written into ``dest`` (self's array) when the input is that array and
        ``other`` either is it too or shares none of its memory (a partial overlap, as in
        ``x[1:] += x[:-1]``, would read elements already written)."""
        if input is not dest or not isinstance(other, xp.ndarray) or (
                other is not input and _overlap(other, input)):
            return AddImpl.forward(ctx, xp, input, other, alpha)
        if alpha != 1 or input.dtype != other.dtype or input.shape != other.shape:
            return AddImpl.forward(ctx, xp, input, other, alpha)
        ct = K.ctype(input)
        if ct is None or L.same_layout(input, other) is None:
            return AddImpl.forward(ctx, xp, input, other, alpha)
        n = input.size
        grid, block = K.flat_grid(max(n // 8, 1), 256)
        K.function("pointwise", "add_flat", ct)(
            grid, block, (input, other, input, K.i64(n), K.aligned(input, other)))
        ctx.alpha = 1
        return input

    def backward(ctx, grad):
        return grad, grad, None


def _overlap(a, b) -> bool:
    """Whether two dense arrays' memory blocks intersect."""
    a0, b0 = a.data.ptr, b.data.ptr
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes


class ToCopyImpl:
    """``_to_copy`` for a dtype cast on one device (autocast's weight casts): the backward
    casts the gradient's array back directly (layout kept) instead of dispatching another
    ``_to_copy``; device moves and complex casts take the generic op."""

    def forward(ctx, xp, input, dtype, device):
        if dtype is None or input.dtype.kind == "c" or dtype.is_complex or \
                input.dtype == dtype.np:
            return NotImplemented
        if device is not None and (device.type != "cuda" or
                                   (device.index or 0) != input.data.device_id):
            return NotImplemented
        ctx.src = (_dt._FROM_NP[input.dtype], device_of_array(input))
        return cast(xp, input, dtype.np)

    def adopt(ctx, input, out):
        """The forward of a cast already made (:func:`bulk_cast`): ``out`` is the result."""
        ctx.src = (_dt._FROM_NP[input.dtype], device_of_array(input))
        return out

    def backward(ctx, grad):
        dt, _dev = ctx.src
        if dt.category < 2:
            return None, None, None
        g = grad._data
        if g.dtype.kind == "c":
            g = g.real
        import cupy  # noqa: PLC0415 - only reached on the GPU
        return K.wrap(cast(cupy, g, dt.np), grad.device), None, None


IMPLS = {"add": AddImpl, "_to_copy": ToCopyImpl}
