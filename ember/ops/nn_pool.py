"""Pooling primitives: N-d max pooling (with indices), average pooling, adaptive max pooling,
and the index scatter/gather pair their gradients are made of.

Windows come from one ``as_strided`` view of the padded input, ``(N, C, *kernel, *out)``.
Max pooling records, per output, the flat index into the input's spatial dims (torch's
``return_indices`` format); its gradient scatters into those positions (``_pool_scatter``),
whose own gradient is the matching gather (``_pool_gather``), so double backward works.
Average pooling and its gradient (``_avg_pool_backward``) are linear adjoints of each other.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from ember._state import _State
from ember.backend import cpu_pool_kernels
from ember.errors import check, make
from ember.ops.nn_conv import ntuple, pad_spatial, windows, work_dtype
from ember.ops.registry import OPS, OpDef, TensorMeta, apply, register
from ember.tensor import Tensor, _make


# ---------------------------------------------------------------------- shapes
def pool_out(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling output size (a ceil-mode window must start inside the input or left pad)."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool_params(name: str, input: Any, kernel_size: Any, stride: Any, padding: Any,
                dilation: Any, ceil_mode: bool, nd: int) -> tuple:
    """Validated (kernel, stride, padding, dilation, out) for an ``(N, C, *spatial)`` input."""
    check(isinstance(input, Tensor), name, f"argument 'input' must be Tensor, not "
                                           f"{type(input).__name__}", TypeError)
    xs = input._data.shape
    check(len(xs) == nd + 2, name, f"expected a batched {nd + 2}-d input (N, C, *spatial), got "
                                   f"shape {tuple(xs)}")
    k = ntuple(kernel_size, nd, "kernel_size", name)
    s = ntuple(stride if stride is not None and stride != [] and stride != () else k, nd,
               "stride", name)
    p = ntuple(padding, nd, "padding", name)
    d = ntuple(dilation, nd, "dilation", name)
    check(all(v > 0 for v in k), name, f"kernel_size must be greater than zero, but got "
                                       f"{list(k)}")
    check(all(v > 0 for v in s), name, f"stride must be greater than zero, but got {list(s)}")
    check(all(v > 0 for v in d), name, f"dilation must be greater than zero, but got {list(d)}")
    for i in range(nd):
        check(0 <= p[i] <= (d[i] * (k[i] - 1) + 1) // 2, name,
              f"pad should be at most half of effective kernel size, but got pad={p[i]}, "
              f"kernel_size={k[i]} and dilation={d[i]} (input {tuple(xs)})")
    out = tuple(pool_out(xs[2 + i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(nd))
    if any(o <= 0 for o in out):
        raise make(RuntimeError, name,
                   f"Given input size: {tuple(xs[1:])}. Calculated output size: "
                   f"{(xs[1],) + out}. Output size is too small",
                   hint="use a smaller kernel_size or add padding")
    return k, s, p, d, out


def _pads(sp: tuple, k: tuple, s: tuple, p: tuple, d: tuple, out: tuple) -> list:
    """(before, after) pads: ``p`` on both sides, plus what the last ceil-mode window needs."""
    pads = []
    for i in range(len(sp)):
        reach = (out[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1
        pads.append((p[i], max(p[i], reach - sp[i] - p[i])))
    return pads


def _float_meta(name: str, input: Tensor) -> None:
    check(input._dtype.category >= 2 and not input._dtype.is_complex, name,
          f'"{name}" not implemented for \'{input._dtype.name}\' (input {tuple(input.shape)})',
          hint="convert the input with .float()")


# ---------------------------------------------------------------------- scatter / gather
def scatter_add(xp: Any, g: Any, idx: Any, size: int, unique: bool) -> Any:
    """``out (N, C, size)`` with ``g (N, C, M)`` added at flat spatial positions ``idx``."""
    n, c = g.shape[:2]
    rows = (xp.arange(n * c, dtype=xp.int64) * size).reshape(n, c, 1)
    lin = (idx.reshape(n, c, -1) + rows).reshape(-1)
    vals = g.reshape(-1)
    out = xp.zeros(n * c * size, dtype=g.dtype)
    if unique:
        out[lin] = vals  # windows don't overlap: each position receives one value
    elif xp is np:
        out = np.bincount(lin, weights=vals, minlength=n * c * size).astype(g.dtype)
    else:
        import cupyx
        cupyx.scatter_add(out, lin, vals)
    return out.reshape(n, c, size)


def _scatter_meta(op: Any, grad: Any, indices: Any, shape: tuple, unique: bool) -> TensorMeta:
    check(grad._data.shape == indices._data.shape, "max_unpool",
          f"Expected shape of indices to be same as that of the input tensor "
          f"({tuple(grad._data.shape)}) but got indices tensor with shape "
          f"{tuple(indices._data.shape)}")
    return TensorMeta(tuple(shape))


@register("_pool_scatter", meta=_scatter_meta, method=False, function=False)
class PoolScatter(OpDef):
    """Zeros of ``shape (N, C, *spatial)`` with ``grad`` summed at the flat spatial ``indices``.

    ``unique``: the indices don't repeat (or repeats carry one value, as in max_unpool), so a
    plain assignment replaces the scatter-add.
    """

    def forward(ctx, xp, grad, indices, shape, unique):
        n, c = shape[:2]
        size = math.prod(shape[2:])
        ctx.indices = indices
        if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= size):
            bad = int(indices.max()) if int(indices.max()) >= size else int(indices.min())
            raise make(RuntimeError, "max_unpool", f"Found an invalid max index: {bad} (output "
                                                   f"volumes are of size {size})")
        out = scatter_add(xp, work_dtype(xp, grad), indices, size, unique)
        return out.astype(grad.dtype, copy=False).reshape(shape)

    def backward(ctx, gg):
        from ember.tensor import _make
        import ember
        idx = _make(ctx.indices, ember.int64, gg.device)
        return apply(OPS["_pool_gather"], (gg, idx)), None, None, None


@register("_pool_gather", meta=None, method=False, function=False)
class PoolGather(OpDef):
    """``out[n, c, j...] = input[n, c, flat index indices[n, c, j...]]``."""

    def forward(ctx, xp, input, indices):
        n, c = input.shape[:2]
        ctx.shape = input.shape
        ctx.indices = indices
        flat = input.reshape(n, c, -1)
        return xp.take_along_axis(flat, indices.reshape(n, c, -1), axis=2).reshape(indices.shape)

    def backward(ctx, g):
        from ember.tensor import _make
        import ember
        idx = _make(ctx.indices, ember.int64, g.device)
        return apply(OPS["_pool_scatter"], (g, idx, ctx.shape, False)), None


# ---------------------------------------------------------------------- max pooling
def _max_meta(op: Any, input: Any, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
              ceil_mode: bool) -> tuple:
    nd = max(input._data.ndim - 2, 1) if isinstance(input, Tensor) else 1
    name = f"max_pool{nd}d"
    k, s, p, d, out = pool_params(name, input, kernel_size, stride, padding, dilation,
                                  ceil_mode, nd)
    _float_meta(name, input)
    shape = input._data.shape[:2] + out
    return TensorMeta(shape), TensorMeta(shape)


def _positions(xp: Any, k: tuple, s: tuple, p: tuple, d: tuple, out: tuple,
               sp: tuple) -> tuple:
    """(flat input position of each window's first element, shape ``out``; flat offset of
    each kernel element within a window, an int64 array of ``prod(k)``)."""
    base, offsets = _positions_np(tuple(k), tuple(s), tuple(p), tuple(d), tuple(out), tuple(sp))
    if xp is np:
        return base, offsets
    return xp.asarray(base), xp.asarray(offsets)


@functools.lru_cache(maxsize=128)
def _positions_np(k: tuple, s: tuple, p: tuple, d: tuple, out: tuple, sp: tuple) -> tuple:
    # cached (read-only NumPy arrays): building them took ~60 us of Python per pooling call
    nd = len(k)
    base = np.zeros(out, dtype=np.int64)
    for i in range(nd):
        shape = [1] * nd
        shape[i] = out[i]
        base += ((np.arange(out[i], dtype=np.int64) * s[i] - p[i]) *
                 math.prod(sp[i + 1:])).reshape(shape)
    offsets = np.array([sum(kidx[i] * d[i] * math.prod(sp[i + 1:]) for i in range(nd))
                        for kidx in np.ndindex(*k)], dtype=np.int64)
    base.setflags(write=False)
    offsets.setflags(write=False)
    return base, offsets


# Kernel-element planes bigger than this stay strided views instead of one contiguous copy.
_PLANES_BYTES = 64 * 2 ** 20


def _kernel_planes(xp: Any, v: Any, nd: int) -> Any:
    """The window view ``(N, C, *k, *out)`` as one ``(K, N, C, *out)`` plane per kernel element.

    One copy makes every later pass contiguous (SIMD; NumPy's strided loops are 3-5x slower
    and run once per comparison); when that copy would be big (heavily overlapping windows),
    a list of strided views is used instead.
    """
    k = v.shape[2:2 + nd]
    if v.size * v.itemsize <= _PLANES_BYTES and nd == 2 and k[1] > 1 and \
            v.strides[3] == v.itemsize and v.strides[5] == k[1] * v.itemsize:
        # Windows side by side along contiguous rows (stride = kernel, no dilation: LeNet's
        # 2x2 pools). A direct copy reads ``out[1]``-element runs with a stride; two copies
        # with long loops measured faster (1.1x at (64, 6, 28, 28), 1.7x at (64, 16, 10, 10)):
        # first whole rows of windows (ow * kw contiguous elements) per kernel row, then the
        # kernel columns apart, one long strided run each.
        rows = xp.ascontiguousarray(v.transpose(2, 0, 1, 4, 5, 3))  # (kh, N, C, oh, ow, kw)
        planes = xp.ascontiguousarray(rows.reshape(k[0], -1, k[1]).transpose(0, 2, 1))
        return planes.reshape((-1,) + v.shape[:2] + v.shape[4:])
    if v.size * v.itemsize <= _PLANES_BYTES:
        axes = tuple(range(2, 2 + nd)) + (0, 1) + tuple(range(2 + nd, 2 + 2 * nd))
        planes = xp.ascontiguousarray(v.transpose(axes))
        return planes.reshape((-1,) + planes.shape[nd:])
    return [v[(slice(None), slice(None)) + kidx] for kidx in np.ndindex(*k)]


def _first_max(xp: Any, planes: Any) -> tuple:
    """(max over the planes, index of the first plane holding it; in a window with NaN, the
    last NaN's plane: torch's rule that a later element wins when greater or NaN)."""
    kk = len(planes)
    y = planes[0].copy()
    for j in range(1, kk):
        xp.maximum(y, planes[j], out=y)  # propagates NaN, like torch
    ct = xp.uint8 if kk <= 255 else xp.int32
    # The first plane equal to the max is the number of leading planes that differ from it:
    # sum over j of "planes 0..j all differ". Bool ands and small-int adds: NumPy's where and
    # masked writes are several times slower.
    run = planes[0] != y
    code = run.astype(ct)
    for j in range(1, kk - 1):
        run &= planes[j] != y
        code += run
    if bool(xp.isnan(y).any()):
        for j in range(kk):
            nan = planes[j] != planes[j]
            code -= (code - ct(j)) * nan  # ascending: the last NaN wins (modular arithmetic)
    return y, code


@register("_max_pool", meta=_max_meta, method=False, function=False, nondiff_outputs=(1,),
          onnx="MaxPool")
class MaxPool(OpDef):
    """N-d max pooling over ``(N, C, *spatial)``; returns (values, flat spatial indices)."""

    def forward(ctx, xp, input, kernel_size, stride, padding, dilation, ceil_mode):
        nd = input.ndim - 2
        k = ntuple(kernel_size, nd)
        s = ntuple(stride if stride is not None and stride != [] and stride != () else k, nd)
        p, d = ntuple(padding, nd), ntuple(dilation, nd)
        sp = input.shape[2:]
        out = tuple(pool_out(sp[i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(nd))
        x = work_dtype(xp, input)
        unique = all(s[i] >= d[i] * (k[i] - 1) + 1 for i in range(nd))
        xpad = pad_spatial(xp, x, _pads(sp, k, s, p, d, out), -xp.inf)
        v = windows(xp, xpad, k, s, d, out)
        base, offsets = _positions(xp, k, s, p, d, out, sp)
        planes = None
        if xp is np and nd == 2 and k == (2, 2) and s == (2, 2) and p == (0, 0) and \
                d == (1, 1):
            planes = cpu_pool_kernels.planes_2x2(x, out)
        if planes is None:
            planes = _kernel_planes(xp, v, nd)
        res = cpu_pool_kernels.max_pool_planes(planes, base, offsets) \
            if xp is np and isinstance(planes, np.ndarray) and len(planes) == 4 else None
        if res is not None:
            # 2x2 windows: max, first-max index and flat position in one numba pass
            # (LeNet's first pool: ~0.55 ms of NumPy passes -> ~0.08 ms)
            ctx.p = (input.shape, unique)
            ctx.save(res[1])
            return res[0].astype(input.dtype, copy=False), res[1]
        y, code = _first_max(xp, planes)
        # flat input index of each window's max. NumPy: the gather from int32 offsets with
        # the small-int codes, widened by the add, measured ~1.7x faster than casting the
        # codes to intp and gathering int64 (LeNet's pool1: ~200 -> ~120 us)
        if xp is np and offsets.size and int(offsets[-1]) < 2 ** 31:
            idx = np.add(offsets.astype(np.int32).take(code), base)
        else:
            idx = offsets.take(code.astype(xp.intp))
            idx += base
        ctx.p = (input.shape, unique)
        ctx.save(idx)
        return y.astype(input.dtype, copy=False), idx

    def backward(ctx, g, _gi=None):
        (idx,) = ctx.saved
        shape, unique = ctx.p
        ga = g._data
        if not _State.enabled and type(ga) is np.ndarray:
            # no graph of the backward wanted (the engine's usual mode): the scatter on the
            # arrays, without the dispatcher and the index range check that
            # ``_pool_scatter`` runs for max_unpool's user indices (two passes over them:
            # these come from the forward)
            gw = work_dtype(np, ga)
            out = cpu_pool_kernels.pool_scatter(gw, idx._data, tuple(shape))
            if out is None:
                out = scatter_add(np, gw, idx._data, math.prod(shape[2:]), unique)
            gx = _make(out.astype(ga.dtype, copy=False).reshape(shape), g._dtype, g._device)
            return gx, None, None, None, None, None
        return apply(OPS["_pool_scatter"], (g, idx, shape, unique)), None, None, None, None, None


def _adaptive_windows(size: int, out: int) -> tuple:
    """Start/end of each adaptive window (torch: floor(i*L/O) .. ceil((i+1)*L/O))."""
    starts = [(i * size) // out for i in range(out)]
    ends = [-(-((i + 1) * size) // out) for i in range(out)]
    return starts, ends


def _adaptive_max_meta(op: Any, input: Any, output_size: tuple) -> tuple:
    check(isinstance(input, Tensor), "adaptive_max_pool", f"argument 'input' must be Tensor, not "
                                                          f"{type(input).__name__}", TypeError)
    nd = len(output_size)
    name = f"adaptive_max_pool{nd}d"
    xs = input._data.shape
    check(len(xs) == nd + 2, name, f"expected a batched {nd + 2}-d input (N, C, *spatial), got "
                                   f"shape {tuple(xs)}")
    check(all(s > 0 for s in xs[2:]), name,
          f"Expected input to have non-zero size for non-batch dimensions, but input has sizes "
          f"{list(xs)} with dimension {[i for i, s in enumerate(xs) if s == 0][-1:]} being empty")
    check(all(o >= 0 for o in output_size), name, f"output_size must be non-negative, got "
                                                  f"{list(output_size)}")
    _float_meta(name, input)
    shape = xs[:2] + tuple(output_size)
    return TensorMeta(shape), TensorMeta(shape)


@register("_adaptive_max_pool", meta=_adaptive_max_meta, method=False, function=False,
          nondiff_outputs=(1,))
class AdaptiveMaxPool(OpDef):
    """N-d adaptive max pooling to ``output_size``; returns (values, flat spatial indices)."""

    def forward(ctx, xp, input, output_size):
        nd = len(output_size)
        sp = input.shape[2:]
        out = tuple(output_size)
        # Window i of dim j covers [start, end); pad each to the largest window by repeating its
        # last element, which changes neither the max nor the first argmax.
        idxs = []
        for j in range(nd):
            st, en = _adaptive_windows(sp[j], out[j])
            kmax = max((e - s for s, e in zip(st, en)), default=1)
            ar = np.arange(kmax)
            idx = np.minimum(np.array(st)[:, None] + ar[None, :], np.array(en)[:, None] - 1)
            idxs.append(xp.asarray(idx))
        grids = []
        for j in range(nd):
            shape = [1] * (2 * nd)
            shape[j] = out[j]
            shape[nd + j] = idxs[j].shape[1]
            grids.append(idxs[j].reshape(shape))
        x = work_dtype(xp, input)
        win = x[(slice(None), slice(None)) + tuple(grids)]  # (N, C, *out, *kmax)
        flat = win.reshape(input.shape[:2] + out + (-1,))
        am = flat.argmax(-1)
        y = xp.take_along_axis(flat, am[..., None], -1)[..., 0]
        lin = None
        rem = am
        for j in reversed(range(nd)):
            kj = idxs[j].shape[1]
            sel = rem % kj
            rem = rem // kj
            shape = [1] * nd
            shape[j] = out[j]
            pos = idxs[j][xp.arange(out[j]).reshape(shape), sel]
            term = pos * math.prod(sp[j + 1:])
            lin = term if lin is None else lin + term
        ctx.p = input.shape
        ctx.save(lin)
        return y.astype(input.dtype, copy=False), lin

    def backward(ctx, g, _gi=None):
        (idx,) = ctx.saved
        return apply(OPS["_pool_scatter"], (g, idx, ctx.p, False)), None


# ---------------------------------------------------------------------- average pooling
def _avg_meta(op: Any, input: Any, kernel_size: Any, stride: Any, padding: Any, ceil_mode: bool,
              count_include_pad: bool, divisor_override: Any) -> TensorMeta:
    nd = max(input._data.ndim - 2, 1) if isinstance(input, Tensor) else 1
    name = f"avg_pool{nd}d"
    k, s, p, d, out = pool_params(name, input, kernel_size, stride, padding, 1, ceil_mode, nd)
    _float_meta(name, input)
    check(divisor_override is None or divisor_override != 0, name,
          "divisor must be not zero", RuntimeError)
    return TensorMeta(input._data.shape[:2] + out)


def _divisor(xp: Any, sp: tuple, k: tuple, s: tuple, p: tuple, out: tuple,
             count_include_pad: bool, divisor_override: Any, dtype: Any) -> Any:
    """Per-output divisor, broadcastable to ``(N, C, *out)`` (torch's rules)."""
    if divisor_override:
        return divisor_override
    nd = len(sp)
    div = None
    for i in range(nd):
        o = np.arange(out[i])
        start = o * s[i] - p[i]
        end = np.minimum(start + k[i], sp[i] + p[i])
        size = end - start
        if not count_include_pad:
            size = np.minimum(end, sp[i]) - np.maximum(start, 0)
        shape = [1] * nd
        shape[i] = out[i]
        term = size.reshape(shape)
        div = term if div is None else div * term
    return xp.asarray(div.astype(dtype))


def _avg_args(input_shape: tuple, kernel_size: Any, stride: Any, padding: Any,
              ceil_mode: bool) -> tuple:
    nd = len(input_shape) - 2
    k = ntuple(kernel_size, nd)
    s = ntuple(stride if stride is not None and stride != [] and stride != () else k, nd)
    p = ntuple(padding, nd)
    sp = tuple(input_shape[2:])
    out = tuple(pool_out(sp[i], k[i], s[i], p[i], 1, ceil_mode) for i in range(nd))
    return k, s, p, sp, out


@register("_avg_pool", meta=_avg_meta, method=False, function=False, onnx="AveragePool")
class AvgPool(OpDef):
    """N-d average pooling over ``(N, C, *spatial)``."""

    def forward(ctx, xp, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                divisor_override):
        k, s, p, sp, out = _avg_args(input.shape, kernel_size, stride, padding, ceil_mode)
        nd = len(k)
        x = work_dtype(xp, input)
        xpad = pad_spatial(xp, x, _pads(sp, k, s, p, (1,) * nd, out), 0)
        v = windows(xp, xpad, k, s, (1,) * nd, out)
        total = None
        for kidx in np.ndindex(*k):  # per-element adds beat a multi-axis sum of the view
            vals = v[(slice(None), slice(None)) + kidx]
            total = vals.copy() if total is None else xp.add(total, vals, out=total)
        y = total / _divisor(xp, sp, k, s, p, out, count_include_pad, divisor_override, x.dtype)
        ctx.p = (input.shape, k, s, p, ceil_mode, count_include_pad, divisor_override)
        return y.astype(input.dtype, copy=False)

    def backward(ctx, g):
        shape, k, s, p, ceil_mode, cip, div = ctx.p
        gi = apply(OPS["_avg_pool_backward"], (g, shape, k, s, p, ceil_mode, cip, div))
        return gi, None, None, None, None, None, None


@register("_avg_pool_backward", meta=None, method=False, function=False)
class AvgPoolBackward(OpDef):
    """Adjoint of average pooling: spread each output gradient over its window."""

    def forward(ctx, xp, grad, input_shape, kernel_size, stride, padding, ceil_mode,
                count_include_pad, divisor_override):
        k, s, p, sp, out = _avg_args(input_shape, kernel_size, stride, padding, ceil_mode)
        nd = len(k)
        g = work_dtype(xp, grad)
        g = g / _divisor(xp, sp, k, s, p, out, count_include_pad, divisor_override, g.dtype)
        pads = _pads(sp, k, s, p, (1,) * nd, out)
        padded = tuple(sp[i] + a + b for i, (a, b) in enumerate(pads))
        dx = xp.zeros(tuple(input_shape[:2]) + padded, dtype=g.dtype)
        for kidx in np.ndindex(*k):
            sl = tuple(slice(kidx[i], kidx[i] + s[i] * (out[i] - 1) + 1, s[i]) for i in range(nd))
            dx[(slice(None), slice(None)) + sl] += g
        crop = tuple(slice(pads[i][0], pads[i][0] + sp[i]) for i in range(nd))
        ctx.p = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        return xp.ascontiguousarray(dx[(slice(None), slice(None)) + crop]).astype(grad.dtype,
                                                                                  copy=False)

    def backward(ctx, gg):
        return (apply(OPS["_avg_pool"], (gg,) + ctx.p),) + (None,) * 7


# ---------------------------------------------------------------------- torch.* aliases
def _top_level() -> None:
    from ember.ops.nn_conv import _lazy_functional
    from ember.ops.registry import PUBLIC_FUNCTIONS
    for name in ("max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
                 "avg_pool1d", "adaptive_avg_pool1d"):
        PUBLIC_FUNCTIONS[name] = _lazy_functional(name)

    def adaptive_max_pool1d(input: Tensor, output_size: Any) -> tuple:
        """torch.adaptive_max_pool1d: (values, indices)."""
        from ember.nn import functional as F
        return F.adaptive_max_pool1d(input, output_size, True)
    PUBLIC_FUNCTIONS["adaptive_max_pool1d"] = adaptive_max_pool1d


_top_level()
