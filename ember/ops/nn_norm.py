"""Normalization primitives: batch_norm, layer_norm, group_norm and rms_norm.

Each forward is fused on ``xp`` (statistics, normalization and the affine in a few passes) and
saves the input and the statistics (mean, 1/std). The backward uses the closed forms

    xhat = (x - mean) * rstd,   gxhat = grad * weight
    grad_x = rstd * (gxhat - mean(gxhat) - xhat * mean(gxhat * xhat))      (means over the
    normalized axes; rms_norm drops the mean(gxhat) term)

written in ember ops. Under ``create_graph`` the statistics are recomputed from ``x`` with
ember ops, so that the second derivative sees their dependence on ``x``; otherwise the
saved values are used as constants.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

import ember
from ember._state import _State
from ember.backend import cpu_kernels
from ember.backend.cpu import parallel_rows
from ember.errors import check, make
from ember.ops.nn_conv import work_dtype
from ember.ops.registry import OpDef, TensorMeta, register
from ember.tensor import Tensor, _make
from ember.dtypes import _FROM_NP


def _stats_t(x: Tensor, axes: tuple, center: bool, eps: float) -> tuple:
    """(mean or None, rstd) of ``x`` over ``axes``, differentiable (ember ops)."""
    if center:
        mean = x.mean(axes, keepdim=True)
        xc = x - mean
    else:
        mean, xc = None, x
    rstd = ((xc * xc).mean(axes, keepdim=True) + eps).rsqrt()
    return mean, rstd


def _norm_grad(x: Tensor, g: Tensor, w: Tensor | None, w_shape: tuple, mean: Tensor | None,
               rstd: Tensor, axes: tuple) -> tuple:
    """(grad_x, xhat) for normalization over ``axes``; ``w`` broadcasts as ``w_shape``."""
    xhat = (x - mean) * rstd if mean is not None else x * rstd
    gxhat = g * w.reshape(w_shape) if w is not None else g
    inner = gxhat - xhat * (gxhat * xhat).mean(axes, keepdim=True)
    if mean is not None:
        inner = inner - gxhat.mean(axes, keepdim=True)
    return rstd * inner, xhat


def _sum_lead(t: Tensor, k: int) -> Tensor:
    """Sum over all but the trailing ``k`` dims (none to sum: ``t`` itself; dim=() would sum
    everything)."""
    lead = tuple(range(t.ndim - k))
    return t.sum(lead) if lead else t


def _stats(ctx: Any, x: Tensor, axes: tuple, center: bool, eps: float) -> tuple:
    """The statistics for backward: recomputed (differentiable) under create_graph."""
    if ember.is_grad_enabled():
        return _stats_t(x, axes, center, eps)
    saved = ctx.saved
    return (saved[2] if center else None), saved[3]


def _up(*ts: Any) -> tuple:
    """Half-precision tensors as float32: the backward computes like the forward (the engine
    casts each gradient back to its input's dtype)."""
    return tuple(t.float() if isinstance(t, Tensor) and t.dtype.itemsize == 2 else t
                 for t in ts)


# The checks test first and format their message only on failure (meta rules run on every
# call: eager f-strings with shapes cost ~10 us of a layer norm)
def _check_t(name: str, argname: str, t: Any, shape: tuple) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise make(TypeError, name, f"argument '{argname}' must be Tensor or None, not "
                                    f"{type(t).__name__}")
    if t._data.shape != shape:
        raise make(RuntimeError, name,
                   f"Expected {argname} to be of shape {list(shape)}, but got {argname} of "
                   f"shape {list(t._data.shape)}")


def _float(name: str, input: Any) -> None:
    if not isinstance(input, Tensor):
        raise make(TypeError, name, f"argument 'input' must be Tensor, not "
                                    f"{type(input).__name__}")
    dt = input._dtype
    if dt.category < 2 or dt.is_complex:
        raise make(RuntimeError, name, f'"{name}" not implemented for \'{dt.name}\' (input '
                                       f'{tuple(input.shape)})',
                   "convert the input with .float()")


# ---------------------------------------------------------------------- batch norm
def _bn_meta(op: Any, input: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any,
             training: bool, eps: float) -> tuple:
    _float("batch_norm", input)
    xs = input._data.shape
    if len(xs) < 2:   # (messages are built only on failure: this runs per BN call)
        raise make(RuntimeError, "batch_norm",
                   f"expected input with at least 2 dims (N, C, ...), got shape {tuple(xs)}")
    c = xs[1]
    cs = (c,)
    if (weight is not None and weight._data.shape != cs) or \
            (bias is not None and bias._data.shape != cs) or \
            (running_mean is not None and running_mean._data.shape != cs) or \
            (running_var is not None and running_var._data.shape != cs):
        for argname, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                           ("running_var", running_var)):
            if t is not None and t._data.shape != cs:
                raise make(RuntimeError, "batch_norm",
                           f"{argname} should contain {c} elements (input channels, input "
                           f"shape {tuple(xs)}) not {t._data.size} (shape "
                           f"{tuple(t._data.shape)})")
    if not training and (running_mean is None or running_var is None):
        raise make(RuntimeError, "batch_norm",
                   "running_mean and running_var must be defined in evaluation mode")
    return TensorMeta(xs), TensorMeta(cs), TensorMeta(cs)


@register("_batch_norm", meta=_bn_meta, method=False, function=False, nondiff_outputs=(1, 2),
          onnx="BatchNormalization")
class BatchNorm(OpDef):
    """Batch normalization over ``(N, C, *)``; returns (y, batch mean, biased batch var).

    In training the batch statistics normalize; in evaluation the running ones do (the
    running statistics are updated by ``F.batch_norm``, not here).
    """

    def forward(ctx, xp, input, weight, bias, running_mean, running_var, training, eps):
        x = work_dtype(xp, input)
        c = x.shape[1]
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = (1, c) + (1,) * (x.ndim - 2)
        if training:
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
        else:
            mean = work_dtype(xp, running_mean).astype(x.dtype, copy=False)
            var = work_dtype(xp, running_var).astype(x.dtype, copy=False)
        rstd = 1.0 / xp.sqrt(var + eps)
        scale = rstd if weight is None else rstd * work_dtype(xp, weight)
        shift = -mean * scale
        if bias is not None:
            shift = shift + work_dtype(xp, bias)
        y = x * scale.reshape(bshape) + shift.reshape(bshape)
        ctx.p = (bool(training), eps, axes, bshape)
        ctx.save(input, weight, mean.reshape(bshape), rstd.reshape(bshape))
        dt = input.dtype
        return y.astype(dt, copy=False), mean.astype(dt, copy=False), var.astype(dt, copy=False)

    def backward(ctx, g, _gm=None, _gv=None):
        training, eps, axes, bshape = ctx.p
        saved = ctx.saved
        x, w = saved[0], saved[1]
        x, w, g = _up(x, w, g)
        need = ctx.needs_input_grad
        if g is None:
            return (None,) * 7
        if training:
            mean, rstd = _stats(ctx, x, axes, True, eps)
            gx, xhat = _norm_grad(x, g, w, bshape, mean, rstd, axes)
        else:
            mean, rstd = saved[2], saved[3]
            xhat = (x - mean) * rstd
            gx = g * rstd * (w.reshape(bshape) if w is not None else 1)
        gw = (g * xhat).sum(axes) if w is not None and need[1] else None
        gb = g.sum(axes) if need[2] else None
        return (gx if need[0] else None), gw, gb, None, None, None, None


# ---------------------------------------------------------------------- layer norm
def _ln_meta(op: Any, input: Any, normalized_shape: Any, weight: Any = None, bias: Any = None,
             eps: float = 1e-5, cudnn_enable: bool = True) -> TensorMeta:
    _float("layer_norm", input)
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    xs = tuple(input._data.shape)
    k = len(ns)
    if k == 0 or len(xs) < k or xs[len(xs) - k:] != ns:
        raise make(RuntimeError, "layer_norm",
                   f"Given normalized_shape={list(ns)}, expected input with shape [*, "
                   f"{', '.join(map(str, ns))}], but got input of size{list(xs)}",
                   hint="normalized_shape must equal the trailing dims of the input")
    _check_t("layer_norm", "weight", weight, ns)
    _check_t("layer_norm", "bias", bias, ns)
    return TensorMeta(xs)


@register("layer_norm", meta=_ln_meta, method=False, onnx="LayerNormalization")
class LayerNorm(OpDef):
    """Normalize over the trailing ``normalized_shape`` dims, then ``* weight + bias``."""

    def forward(ctx, xp, input, normalized_shape, weight=None, bias=None, eps=1e-05,
                cudnn_enable=True):
        x = work_dtype(xp, input)
        k = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
        axes = tuple(range(x.ndim - k, x.ndim))
        ctx.p = (axes, eps)
        if xp is np and x.size:
            y, mean, rstd, xhat = _ln_cpu(x, k, work_dtype(xp, weight) if weight is not None
                                          else None,
                                          work_dtype(xp, bias) if bias is not None else None, eps)
            ctx.save(input, weight, mean, rstd)
            if xhat is not None and (ctx.needs_input_grad[0] or ctx.needs_input_grad[2]) \
                    and (weight is not None or bias is not None):  # else xhat is the output
                ctx.xhat = xhat  # NumPy path: backward's first two passes, already computed
            return y.astype(input.dtype, copy=False)
        mean = x.mean(axis=axes, keepdims=True)
        xc = x - mean
        rstd = 1.0 / xp.sqrt((xc * xc).mean(axis=axes, keepdims=True) + eps)
        y = xc * rstd
        if weight is not None:
            y *= work_dtype(xp, weight)
        if bias is not None:
            y += work_dtype(xp, bias)
        ctx.save(input, weight, mean, rstd)
        return y.astype(input.dtype, copy=False)

    def backward(ctx, g):
        axes, eps = ctx.p
        saved = ctx.saved
        x, w = saved[0], saved[1]
        need = ctx.needs_input_grad
        if not _State.enabled and x._data.size and type(x._data) is np.ndarray:
            return _ln_backward_cpu(x, w, g, saved[2], saved[3], len(axes), need,
                                    ctx.__dict__.get("xhat"))
        x, w, g = _up(x, w, g)
        mean, rstd = _stats(ctx, x, axes, True, eps)
        gx, xhat = _norm_grad(x, g, w, tuple(w.shape) if w is not None else (), mean, rstd, axes)
        gw = _sum_lead(g * xhat, len(axes)) if w is not None and need[2] else None
        gb = _sum_lead(g, len(axes)) if need[3] else None
        return (gx if need[0] else None), None, gw, gb, None, None


# Layer norm on NumPy arrays, rows of n. Row means are GEMVs against a (n, 1) column of 1/n
# and column sums GEMVs against a row of ones: BLAS reduces a (1024, 128) float32 array
# ~3x faster than ``mean(axis=-1)``. Everything else runs in place. Blocks of rows run on the
# cores other processes leave free (backend.cpu.parallel_rows; NumPy releases the GIL).
_LN_BLOCK_ROWS = 256
# Below this many elements the rows stay on one thread: a (1024, 128) layer norm measured no
# faster on two free cores (its ~10 NumPy calls per block wait on the GIL in turn).
_LN_PARALLEL_ELEMS = 1 << 19


def _ln_min_rows(rows: int, n: int) -> int:
    return _LN_BLOCK_ROWS if rows * n >= _LN_PARALLEL_ELEMS else max(rows, 1)


def _row_mean(a: Any, out: Any = None) -> Any:
    n = a.shape[1]
    return np.matmul(a, np.full((n, 1), 1.0 / n, a.dtype), out=out)


def _col_sum(a: Any) -> Any:
    return (np.ones((1, a.shape[0]), a.dtype) @ a).reshape(a.shape[1:])


def _ln_cpu(x: Any, k: int, w: Any, b: Any, eps: float) -> tuple:
    """``(y, mean, rstd, xhat)``; the statistics shaped like ``x.mean(axes, keepdims=True)``,
    ``xhat`` (rows, n) (``y`` itself when there is no affine), None from the numba kernel."""
    n = math.prod(x.shape[x.ndim - k:])
    x2 = x.reshape(-1, n)
    rows = x2.shape[0]
    mean = np.empty((rows, 1), x.dtype)
    rstd = np.empty((rows, 1), x.dtype)
    affine = w is not None or b is not None
    w1 = w.reshape(-1) if w is not None else None
    b1 = b.reshape(-1) if b is not None else None
    stat_shape = x.shape[:x.ndim - k] + (1,) * k
    nb = cpu_kernels.kernels() if x.dtype in (np.float32, np.float64) else None
    if nb is not None and (w1 is None or w1.dtype == x.dtype) and \
            (b1 is None or b1.dtype == x.dtype):
        # one fused visit per row, every spare core; no xhat (the kernel backward
        # recomputes it from x and the statistics)
        c = np.ascontiguousarray
        y = np.empty((rows, n), x.dtype)
        nb.layer_norm(c(x2), None if w1 is None else c(w1), None if b1 is None else c(b1), eps,
                      y, mean.reshape(-1), rstd.reshape(-1))
        return y.reshape(x.shape), mean.reshape(stat_shape), rstd.reshape(stat_shape), None
    xhat = np.empty((rows, n), x.dtype)
    y = np.empty((rows, n), x.dtype) if affine else xhat

    def block(lo: int, hi: int) -> None:
        xh, m, r = xhat[lo:hi], mean[lo:hi], rstd[lo:hi]
        sq = y[lo:hi] if affine else np.empty_like(xh)
        _row_mean(x2[lo:hi], out=m)
        np.subtract(x2[lo:hi], m, out=xh)
        np.multiply(xh, xh, out=sq)
        _row_mean(sq, out=r)
        r += eps
        np.sqrt(r, out=r)
        np.reciprocal(r, out=r)
        xh *= r
        if w1 is not None:
            np.multiply(xh, w1, out=sq)
            if b1 is not None:
                sq += b1
        elif b1 is not None:
            np.add(xh, b1, out=sq)

    parallel_rows(rows, block, min_rows=_ln_min_rows(rows, n))
    return y.reshape(x.shape), mean.reshape(stat_shape), rstd.reshape(stat_shape), xhat


def _add_in_order(parts: dict) -> Any:
    keys = sorted(parts)
    total = parts[keys[0]]
    for key in keys[1:]:
        total = total + parts[key]
    return total


def _ln_backward_cpu(x: Tensor, w: Tensor | None, g: Tensor, mean: Tensor, rstd: Tensor,
                     k: int, need: Any, xhat: Any = None) -> tuple:
    """Layer norm's gradients on arrays (no graph of the backward wanted)."""
    dt = x._dtype
    work = np.float32 if dt.itemsize == 2 else x._data.dtype
    shape = x._data.shape
    n = math.prod(shape[len(shape) - k:])
    x2 = x._data.reshape(-1, n).astype(work, copy=False)
    g2 = g._data.reshape(-1, n).astype(work, copy=False)
    m2 = mean._data.reshape(-1, 1).astype(work, copy=False)
    r2 = rstd._data.reshape(-1, 1).astype(work, copy=False)
    w1 = w._data.reshape(-1).astype(work, copy=False) if w is not None else None
    have_xhat = xhat is not None and xhat.dtype == work
    want_gw, want_gb = w is not None and need[2], bool(need[3])
    rows = x2.shape[0]

    def wrap(arr: Any, like: Tensor) -> Tensor:
        return _make(arr.astype(like._dtype.np, copy=False), like._dtype, like._device)

    ns = shape[len(shape) - k:]
    nb = cpu_kernels.kernels() if work in (np.float32, np.float64) else None
    if nb is not None:  # one fused visit per row (xhat recomputed from x), spare cores
        c = np.ascontiguousarray
        w_k = np.ones(n, work) if w1 is None else c(w1)
        gx, gw, gb = nb.layer_norm_backward(c(x2), c(g2), w_k, c(m2.reshape(-1)),
                                            c(r2.reshape(-1)), bool(need[0]))
        return (wrap(gx.reshape(shape), x) if gx is not None else None, None,
                wrap(gw.reshape(ns), w) if want_gw else None,
                wrap(gb.reshape(ns), w if w is not None else x) if want_gb else None,
                None, None)
    gx = np.empty((rows, n), work) if need[0] else None
    partial_gw: dict = {}  # block start -> column sums, added in row order (deterministic)
    partial_gb: dict = {}

    def block(lo: int, hi: int) -> None:
        if have_xhat:
            xh = xhat[lo:hi]
        else:
            xh = x2[lo:hi] - m2[lo:hi]
            xh *= r2[lo:hi]
        g_ = g2[lo:hi]
        tmp = np.empty_like(xh)
        if want_gw:
            np.multiply(g_, xh, out=tmp)
            partial_gw[lo] = _col_sum(tmp)
        if want_gb:
            partial_gb[lo] = _col_sum(g_)
        if gx is not None:
            # grad_x = rstd * (gxhat - mean(gxhat) - xhat * mean(gxhat * xhat)), gxhat = g * w
            gxhat = gx[lo:hi]
            if w1 is not None:
                np.multiply(g_, w1, out=gxhat)
            else:
                gxhat[...] = g_
            np.multiply(gxhat, xh, out=tmp)
            a = _row_mean(tmp)
            c = _row_mean(gxhat)
            np.multiply(xh, a, out=tmp)
            gxhat -= tmp
            gxhat -= c
            gxhat *= r2[lo:hi]

    parallel_rows(rows, block, min_rows=_ln_min_rows(rows, n))
    gw = _add_in_order(partial_gw).reshape(ns) if want_gw else None
    gb = _add_in_order(partial_gb).reshape(ns) if want_gb else None
    return (wrap(gx.reshape(shape), x) if gx is not None else None, None,
            wrap(gw, w) if gw is not None else None,
            wrap(gb, w if w is not None else x) if gb is not None else None, None, None)


# ---------------------------------------------------------------------- group norm
def _gn_meta(op: Any, input: Any, num_groups: int, weight: Any = None, bias: Any = None,
             eps: float = 1e-5, cudnn_enabled: bool = True) -> TensorMeta:
    _float("group_norm", input)
    xs = tuple(input._data.shape)
    check(len(xs) >= 2, "group_norm", f"Expected at least 2 dimensions for input tensor but "
                                      f"received {len(xs)} (shape {xs})")
    c = xs[1]
    check(isinstance(num_groups, int) and num_groups > 0 and c % num_groups == 0, "group_norm",
          f"Expected number of channels in input to be divisible by num_groups, but got input "
          f"of shape {list(xs)} and num_groups={num_groups}")
    _check_t("group_norm", "weight", weight, (c,))
    _check_t("group_norm", "bias", bias, (c,))
    return TensorMeta(xs)


@register("group_norm", meta=_gn_meta, method=False, onnx="GroupNormalization")
class GroupNorm(OpDef):
    """Normalize ``(N, C, *)`` over each group of ``C / num_groups`` channels and the spatial
    dims, then a per-channel ``* weight + bias``."""

    def forward(ctx, xp, input, num_groups, weight=None, bias=None, eps=1e-05,
                cudnn_enabled=True):
        x = work_dtype(xp, input)
        n, c = x.shape[:2]
        xr = x.reshape(n, num_groups, -1)
        mean = xr.mean(axis=2, keepdims=True)
        xc = xr - mean
        rstd = 1.0 / xp.sqrt((xc * xc).mean(axis=2, keepdims=True) + eps)
        y = (xc * rstd).reshape(x.shape)
        cshape = (1, c) + (1,) * (x.ndim - 2)
        if weight is not None:
            y *= work_dtype(xp, weight).reshape(cshape)
        if bias is not None:
            y += work_dtype(xp, bias).reshape(cshape)
        ctx.p = (num_groups, eps, cshape)
        ctx.save(input, weight, mean, rstd)
        return y.astype(input.dtype, copy=False)

    def backward(ctx, g):
        groups, eps, cshape = ctx.p
        saved = ctx.saved
        x, w = saved[0], saved[1]
        x, w, g = _up(x, w, g)
        need = ctx.needs_input_grad
        n = x.shape[0]
        xr = x.reshape(n, groups, -1)
        mean, rstd = _stats(ctx, xr, (2,), True, eps)
        gxhat = g * w.reshape(cshape) if w is not None else g
        gx, xhat = _norm_grad(xr, gxhat.reshape(n, groups, -1), None, (), mean, rstd, (2,))
        red = (0,) + tuple(range(2, x.ndim))
        gw = (g * xhat.reshape(x.shape)).sum(red) if w is not None and need[2] else None
        gb = g.sum(red) if need[3] else None
        return (gx.reshape(x.shape) if need[0] else None), None, gw, gb, None, None


# ---------------------------------------------------------------------- rms norm
def _rms_meta(op: Any, input: Any, normalized_shape: Any, weight: Any = None,
              eps: Any = None) -> TensorMeta:
    _float("rms_norm", input)
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    xs = tuple(input._data.shape)
    k = len(ns)
    if k == 0 or len(xs) < k or xs[len(xs) - k:] != ns:
        raise make(RuntimeError, "rms_norm",
                   f"Given normalized_shape={list(ns)}, expected input with shape [*, "
                   f"{', '.join(map(str, ns))}], but got input of size{list(xs)}")
    _check_t("rms_norm", "weight", weight, ns)
    return TensorMeta(xs)


@register("rms_norm", meta=_rms_meta, method=False, onnx="RMSNormalization")
class RMSNorm(OpDef):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the trailing ``normalized_shape`` dims.

    ``eps=None`` uses ``finfo(input.dtype).eps``, as torch does.
    """

    def forward(ctx, xp, input, normalized_shape, weight=None, eps=None):
        x = work_dtype(xp, input)
        k = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
        axes = tuple(range(x.ndim - k, x.ndim))
        if eps is None:
            eps = float(ember.finfo(_FROM_NP[input.dtype]).eps)
        rstd = 1.0 / xp.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
        y = x * rstd
        if weight is not None:
            y *= work_dtype(xp, weight)
        ctx.p = (axes, eps)
        ctx.save(input, weight, None, rstd)
        return y.astype(input.dtype, copy=False)

    def backward(ctx, g):
        axes, eps = ctx.p
        saved = ctx.saved
        x, w = saved[0], saved[1]
        x, w, g = _up(x, w, g)
        need = ctx.needs_input_grad
        _, rstd = _stats(ctx, x, axes, False, eps)
        gx, xhat = _norm_grad(x, g, w, tuple(w.shape) if w is not None else (), None, rstd, axes)
        gw = _sum_lead(g * xhat, len(axes)) if w is not None and need[2] else None
        return (gx if need[0] else None), None, gw, None



# ---------------------------------------------------------------------- torch.* aliases
def batch_norm(input: Tensor, weight: Tensor | None, bias: Tensor | None,
               running_mean: Tensor | None, running_var: Tensor | None, training: bool,
               momentum: float, eps: float, cudnn_enabled: bool = True) -> Tensor:
    """``torch.batch_norm`` (the argument order differs from ``F.batch_norm``)."""
    from ember.nn import functional as F
    return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


def instance_norm(input: Tensor, weight: Tensor | None, bias: Tensor | None,
                  running_mean: Tensor | None, running_var: Tensor | None,
                  use_input_stats: bool, momentum: float, eps: float,
                  cudnn_enabled: bool = True) -> Tensor:
    """``torch.instance_norm`` (the argument order differs from ``F.instance_norm``)."""
    from ember.nn import functional as F
    return F.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats,
                           momentum, eps)


def _top_level() -> None:
    from ember.ops.registry import PUBLIC_FUNCTIONS
    PUBLIC_FUNCTIONS["batch_norm"] = batch_norm
    PUBLIC_FUNCTIONS["instance_norm"] = instance_norm


_top_level()
