"""Convolutions on the cuDNN frontend: forward, data gradient and weight gradient.

Covers ``convolution`` (plain and transposed, 1-d/2-d/3-d, groups, stride, padding,
dilation) and ``_conv_weight_grad`` for float32, float16 and bfloat16, in the NC(D)HW
layout or channels-last, as the input arrives. 1-d convs run as 2-d ones over a height of 1.

The three cuDNN operations map onto the op's three products::

    conv:        y  = fprop(x, w)      dx = dgrad(dy, w)     dw = wgrad(x, dy)
    transposed:  y  = dgrad(x, w)      dx = fprop(dy, w)     dw = wgrad(dy, x)

Layouts: the output follows the input's layout (channels-last in, channels-last out), and
the weight and output gradient are brought to that layout when they differ, because cuDNN
supports few mixed-layout graphs. Weight gradients are produced in the I/O dtype: a
bfloat16 ``dw`` picks 72 us wgrad kernels where a float32 one picked 1.9 ms (GPU.md), and
autocast's cast node accumulates it into the float32 master weight anyway.

Anything cuDNN rejects (a config, an odd stride) returns ``NotImplemented`` and the generic
im2col path runs.
"""
from __future__ import annotations

import math
from typing import Any

from ember.backend.cuda_ops import _cudnn
from ember.backend.cuda_ops import _layout as L
from ember.backend.cuda_ops import _nvrtc
from ember.ops.nn_conv import ntuple, out_size

_DTYPES = ("float32", "float16", "bfloat16")
_FAST: dict = {}   # operand geometry -> (built graph, output dims, layout, nd, exact, device)


# ---------------------------------------------------------------------- layouts
def _dense(shape: tuple, order: list) -> list:
    """Packed element strides of ``shape`` with axes nested outermost-first as ``order``."""
    st = [0] * len(shape)
    acc = 1
    for ax in reversed(order):
        st[ax] = acc
        acc *= shape[ax]
    return st


def _order(kind: str, ndim: int) -> list:
    return list(range(ndim)) if kind == "c" else [0] + list(range(2, ndim)) + [1]


def _layout(a: Any) -> tuple:
    """``("c" | "cl", packed strides)`` when ``a`` is NC(D)HW- or channels-last-packed.

    Strides of size-1 dims are ignored (CuPy may report anything there) and the canonical
    ones are declared to cuDNN instead, which address the same elements. Cached per
    geometry: a conv backward asks three times (~5 us of Python each).
    """
    key = (a.shape, a.strides, a.itemsize)
    hit = _LAYOUTS.get(key)
    if hit is not None:
        return hit
    es = _cudnn.elem_strides(a)
    res: tuple = (None, None)
    for kind in ("c", "cl"):
        want = _dense(a.shape, _order(kind, a.ndim))
        if all(n == 1 or s == w for n, s, w in zip(a.shape, es, want)):
            res = (kind, want)
            break
    if len(_LAYOUTS) > 4096:
        _LAYOUTS.clear()
    _LAYOUTS[key] = res
    return res


_LAYOUTS: dict = {}
_SIGS: dict = {}      # CudnnConvolution.forward's call signature -> (s, p, d, op, out shape, ...)
_PLAIN = (tuple, int)  # argument types a signature may hold (a Tensor's values could change)
_CL_EMPTY: dict = {}   # (logical shape, dtype) -> a channels-last array's (strides, bytes)


def _empty(cp: Any, shape: tuple, kind: str, dtype: Any) -> Any:
    """A new array of logical ``shape`` stored in layout ``kind``."""
    if kind == "c":
        return cp.ndarray(shape, dtype)
    plan = _CL_EMPTY.get((shape, dtype))
    if plan is not None:
        return L.from_plan(cp, shape, dtype, plan)
    return L.planned_empty(cp, _CL_EMPTY, (shape, dtype), shape, dtype, _order("cl", len(shape)))


def _is_layout(a: Any, kind: str) -> list | None:
    """The canonical packed strides of layout ``kind`` when ``a`` is in it (an array can be
    in both: a 1x1 kernel, a 1x1 image, one channel), else None."""
    es = _cudnn.elem_strides(a)
    want = _dense(a.shape, _order(kind, a.ndim))
    return want if all(n == 1 or s == w for n, s, w in zip(a.shape, es, want)) else None


def _to(cp: Any, a: Any, kind: str) -> tuple:
    """``a`` in layout ``kind`` (a copy only when it is not already), with its strides."""
    st = _is_layout(a, kind)
    if st is not None and a.data.ptr % 16 == 0:
        return a, st
    out = _empty(cp, a.shape, kind, a.dtype)
    out[...] = a
    return out, _dense(a.shape, _order(kind, a.ndim))


def _as_nd(a: Any) -> Any:
    """1-d operands ``(N, C, L)`` as 2-d ``(N, C, 1, L)`` views."""
    return a[:, :, None, :] if a.ndim == 3 else a


def _params_nd(nd: int, *vals: tuple) -> list:
    """Stride/padding/dilation tuples for the cuDNN graph (1-d gets a leading height 1)."""
    if nd == 1:
        fill = {0: 1, 1: 0, 2: 1}
        return [[fill[i]] + list(v) for i, v in enumerate(vals)]
    return [list(v) for v in vals]


# ---------------------------------------------------------------------- graph builders
def _declare(g: Any, name: str, a_shape: tuple, strides: list, dt: Any) -> Any:
    return g.tensor(name=name, dim=list(a_shape), stride=list(strides), data_type=dt)


def _build(kind: str, h: Any, dt: Any, shapes: tuple, strides: tuple, s: list, p: list,
           d: list, exact: bool) -> _cudnn.Built:
    """Build one conv graph; ``shapes``/``strides`` are (in0, in1, out) in graph order."""
    g = _cudnn.new_graph(h, dt)
    a = _declare(g, "A", shapes[0], strides[0], dt)
    b = _declare(g, "B", shapes[1], strides[1], dt)
    if kind == "fprop":
        out = g.conv_fprop(image=a, weight=b, padding=p, stride=s, dilation=d)
    elif kind == "dgrad":
        out = g.conv_dgrad(loss=a, filter=b, padding=p, stride=s, dilation=d)
    else:
        out = g.conv_wgrad(image=a, loss=b, padding=p, stride=s, dilation=d)
    out.set_output(True).set_data_type(dt).set_dim(list(shapes[2])).set_stride(list(strides[2]))
    _cudnn.finalize(g, exact)
    return _cudnn.Built(g, [a, b, out])


def _run(cp: Any, kind: str, a: Any, b: Any, out_shape: tuple, s: tuple, p: tuple,
         d: tuple, layout: str | None = None) -> Any:
    """Run one conv product; ``None`` when cuDNN does not take this configuration.

    ``a``/``b`` are the graph's operands: (x, w) for fprop, (dy, w) for dgrad, (x, dy) for
    wgrad. The result is in the layout of ``a`` (or ``layout``).
    """
    # Fast path: operands already in the graph's layouts (the steady state of a training
    # loop) skip the layout analysis and key building below (~40 us of Python per call).
    fkey = (kind, a.shape, a.strides, b.shape, b.strides, out_shape, a.dtype, b.dtype, s, p,
            d, layout, a.data.ptr % 16 == 0 and b.data.ptr % 16 == 0)
    hit = _FAST.get(fkey)
    if hit is not None and hit[4] == _cudnn.exact_fp32(a.dtype) and \
            hit[5] == cp.cuda.runtime.getDevice():
        built, out_nd, lay, nd = hit[:4]
        out = _empty(cp, out_nd, lay, a.dtype)
        built.execute(cp, _cudnn.handle(cp), [a.data.ptr, b.data.ptr, out.data.ptr])
        return out[:, :, 0] if nd == 1 else out
    dt = _cudnn.data_type(a.dtype)
    if dt is None or a.dtype != b.dtype or not a.size or not b.size or not math.prod(out_shape):
        return None
    nd = a.ndim - 2
    a4, b4 = _as_nd(a), _as_nd(b)
    kind_a, _ = _layout(a4)
    lay = layout or kind_a or "c"
    a4, sa = _to(cp, a4, lay)
    b4, sb = _to(cp, b4, lay)
    out_nd = tuple(out_shape[:2]) + ((1,) if nd == 1 else ()) + tuple(out_shape[2:])
    out = _empty(cp, out_nd, lay, a.dtype)
    so = _dense(out_nd, _order(lay, len(out_nd)))
    s4, p4, d4 = _params_nd(nd, s, p, d)
    dev = cp.cuda.runtime.getDevice()
    exact = _cudnn.exact_fp32(a.dtype)
    key = (kind, a4.shape, tuple(sa), b4.shape, tuple(sb), out_nd, tuple(so), a.dtype.str,
           tuple(s4), tuple(p4), tuple(d4), exact, dev)
    h = _cudnn.handle(cp)
    built = _cudnn.cached(key, lambda: _build(kind, h, dt, (a4.shape, b4.shape, out_nd),
                                              (sa, sb, so), s4, p4, d4, exact))
    if built is None:
        return None
    if a4.data.ptr == a.data.ptr and b4.data.ptr == b.data.ptr and fkey[-1]:
        _FAST[fkey] = (built, out_nd, lay, nd, exact, dev)  # no layout copy was needed
    built.execute(cp, h, [a4.data.ptr, b4.data.ptr, out.data.ptr])
    return out[:, :, 0] if nd == 1 else out


def _wlayout(w: Any) -> str:
    kind, _ = _layout(_as_nd(w))
    return kind or "c"


def conv_out_shape(x_shape: tuple, w_shape: tuple, s: tuple, p: tuple, d: tuple) -> tuple:
    nd = len(w_shape) - 2
    return (x_shape[0], w_shape[0]) + tuple(
        out_size(x_shape[2 + i], w_shape[2 + i], s[i], p[i], d[i]) for i in range(nd))


def transposed_out_shape(x_shape: tuple, w_shape: tuple, groups: int, s: tuple, p: tuple,
                         d: tuple, op: tuple) -> tuple:
    nd = len(w_shape) - 2
    return (x_shape[0], w_shape[1] * groups) + tuple(
        (x_shape[2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (w_shape[2 + i] - 1) + op[i] + 1
        for i in range(nd))


def _wgrad(cp: Any, x: Any, dy: Any, w_shape: tuple, s: tuple, p: tuple, d: tuple,
           w_layout: str) -> Any:
    """Weight gradient in the weight's layout (computed in the activations' layout)."""
    dw = _run(cp, "wgrad", x, dy, tuple(w_shape), s, p, d)
    if dw is None:
        return None
    if _wlayout(dw) != w_layout:
        dw, _ = _to(cp, dw, w_layout)
    return dw


def _usable(*arrays: Any) -> bool:
    a0 = arrays[0]
    return _nvrtc.dtype_name(a0.dtype) in _DTYPES and 3 <= a0.ndim <= 5 and \
        all(a.dtype == a0.dtype and a.ndim == a0.ndim for a in arrays)


# ---------------------------------------------------------------------- op implementations
class CudnnConvolution:
    """``convolution`` on cuDNN; saves what the generic backward reads (input, weight,
    no im2col columns) so double backward can run the generic formulas."""

    def forward(ctx, xp, input, weight, bias, stride, padding, dilation, transposed,
                output_padding, groups):
        # a training loop repeats its calls: their normalised arguments and output shape are
        # kept per signature (the checks and shape arithmetic cost ~10 us of Python a call)
        key = hit = None
        if type(stride) in _PLAIN and type(padding) in _PLAIN and type(dilation) in _PLAIN \
                and type(output_padding) in _PLAIN:   # (F's calls pass tuples of ints)
            key = (input.shape, weight.shape, input.dtype, weight.dtype, stride, padding,
                   dilation, transposed, output_padding, groups)
            try:
                hit = _SIGS.get(key)
            except TypeError:   # an unhashable item inside a tuple: the long way, uncached
                key = None
        if hit is None:
            if not _usable(input, weight):
                return NotImplemented
            nd = weight.ndim - 2
            s, p, d = ntuple(stride, nd), ntuple(padding, nd), ntuple(dilation, nd)
            op = ntuple(output_padding, nd)
            if transposed:
                shape = transposed_out_shape(input.shape, weight.shape, groups, s, p, d, op)
            else:
                shape = conv_out_shape(input.shape, weight.shape, s, p, d)
            hit = (s, p, d, op, shape, nd, "dgrad" if transposed else "fprop")
            if key is not None:
                if len(_SIGS) > 4096:
                    _SIGS.clear()
                _SIGS[key] = hit
        s, p, d, op, shape, nd, kind = hit
        y = _run(xp, kind, input, weight, shape, s, p, d)
        if y is None:
            return NotImplemented
        if bias is not None:
            y += bias.astype(y.dtype, copy=False).reshape((1, -1) + (1,) * nd)
        ctx.p = (s, p, d, op, groups, bool(transposed), bias is not None)
        ctx.save(input, weight, None)
        return y

    def backward(ctx, grad):
        x, w, _ = ctx.saved
        s, p, d, op, groups, transposed, has_bias = ctx.p
        need = ctx.needs_input_grad
        cp = _cudnn_xp(grad)
        g, xa, wa = grad._data, x._data, w._data
        lay = _layout(_as_nd(xa))[0] or "c"
        gx = gw = None
        if g.dtype != xa.dtype:
            return _generic(ctx, grad)
        if need[0]:
            if transposed:
                gx = _run(cp, "fprop", g, wa, tuple(xa.shape), s, p, d, layout=lay)
            else:
                gx = _run(cp, "dgrad", g, wa, tuple(xa.shape), s, p, d, layout=lay)
            if gx is None:
                return _generic(ctx, grad)
        if need[1]:
            if transposed:
                gw = _wgrad(cp, g, xa, wa.shape, s, p, d, _wlayout(wa))
            else:
                gw = _wgrad(cp, xa, g, wa.shape, s, p, d, _wlayout(wa))
            if gw is None:
                return _generic(ctx, grad)
        gb = None
        if has_bias and need[2]:
            gb = grad.sum([0] + list(range(2, grad.ndim)))
        return (_wrap(gx, x), _wrap(gw, w), gb, None, None, None, None, None, None)


class CudnnConvWeightGrad:
    """``_conv_weight_grad`` (used by double backward) on cuDNN's wgrad."""

    def forward(ctx, xp, input, grad, ksize, stride, padding, dilation, groups, cols):
        if not _usable(input, grad):
            return NotImplemented
        c = input.shape[1]
        w_shape = (grad.shape[1], c // groups) + tuple(ksize)
        dw = _wgrad(xp, input, grad, w_shape, tuple(stride), tuple(padding), tuple(dilation),
                    "c")
        if dw is None:
            return NotImplemented
        ctx.p = (stride, padding, dilation, groups)
        ctx.save(input, grad)
        return dw

    def backward(ctx, ggw):
        from ember.ops.registry import OPS
        return OPS["_conv_weight_grad"].backward(ctx, ggw)


def _generic(ctx: Any, grad: Any) -> tuple:
    """The op's own backward (its convolutions dispatch back here where cuDNN can)."""
    from ember.ops.registry import OPS
    return OPS["convolution"].backward(ctx, grad)


def _cudnn_xp(t: Any) -> Any:
    if not _LAZY:
        _load()
    return _LAZY[0](t._device)


def _wrap(arr: Any, like: Any) -> Any:
    if arr is None:
        return None
    if not _LAZY:
        _load()
    return _LAZY[1](arr, like._dtype, like._device)


# (ember.backend.get_xp, ember.tensor._make), bound on first use: an import statement per
# call cost ~1 us, three a convolution's backward
_LAZY: list = []


def _load() -> None:
    from ember.backend import get_xp
    from ember.tensor import _make
    _LAZY[:] = [get_xp, _make]


IMPLS = {"convolution": CudnnConvolution, "_conv_weight_grad": CudnnConvWeightGrad} \
    if _cudnn.available() else {}
