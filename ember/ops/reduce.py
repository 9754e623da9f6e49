"""Reductions: sum, mean, prod, max/min, amax/amin, argmax/argmin, std/var, logsumexp, norm,
all/any, cumsum, and ``sum_to_size`` (the engine's un-broadcast)."""
from __future__ import annotations

import math
from collections import namedtuple
from typing import Any

from ember import dtypes as _dt
from ember.errors import check, make
from ember.ops import meta as M
from ember.ops.registry import OpDef, register
from ember.tensor import Tensor

values_indices = namedtuple("values_indices", ["values", "indices"])


def return_type(name: str, fields: tuple = ("values", "indices")) -> type:
    """A named tuple printed like torch's ``torch.return_types.<name>``."""
    base = namedtuple(name, fields)

    def __repr__(self) -> str:
        body = ",\n".join(f"{f}={getattr(self, f)!r}" for f in fields)
        return f"ember.return_types.{name}(\n{body})"
    return type(name, (base,), {"__slots__": (), "__repr__": __repr__,
                                "__module__": "ember.return_types"})


max_out = return_type("max")
min_out = return_type("min")


def _axes(dim: Any, ndim: int, op: str) -> tuple:
    axes = M.wrap_dims(op, dim, ndim)
    return axes if ndim else ()  # a 0-dim tensor accepts dim 0/-1 (torch) but has no axes


def _expand_back(g: Tensor, shape: tuple, dims: tuple, keepdim: bool) -> Tensor:
    """Undo a reduction's shape: re-insert reduced dims and broadcast to ``shape``."""
    if not keepdim and len(shape) and g._data.ndim:
        kept = [1 if i in dims else s for i, s in enumerate(shape)]
        g = g.reshape(kept)
    return g.expand(shape)


def _acc_dtype(dt: Any, dtype: Any) -> Any:
    """Sum/prod of integers and bools accumulate in int64 (torch), else keep the dtype."""
    if dtype is not None:
        return _dt.to_dtype(dtype).np
    if dt.kind in "biu":
        return _dt.int64.np
    return dt


def _reduce_meta(op: Any, input: Any, dim: Any = None, keepdim: bool = False, *rest: Any) -> Any:
    check(isinstance(input, Tensor), op.name,
          f"argument 'input' must be Tensor, not {type(input).__name__}", TypeError)
    return M.reduction(op, input, dim, keepdim)


@register("sum", meta=_reduce_meta, sig="input, dim=None, keepdim=False, *, dtype=None",
          onnx="ReduceSum")
class Sum(OpDef):
    """Sum over ``dim`` (all dims when None); ints and bools sum in int64."""

    def forward(ctx, xp, input, dim, keepdim, dtype):
        axes = _axes(dim, input.ndim, "sum")
        ctx.shape, ctx.axes, ctx.keepdim = input.shape, axes, keepdim
        out_dt = _acc_dtype(input.dtype, dtype)
        if input.dtype.itemsize < 4 and input.dtype.kind == "f" and out_dt == input.dtype:
            # float16/bfloat16 accumulate in float32, as torch does
            return xp.sum(input, axis=axes, keepdims=keepdim, dtype=xp.float32).astype(out_dt)
        return xp.sum(input, axis=axes, keepdims=keepdim, dtype=out_dt)

    def backward(ctx, grad):
        return _expand_back(grad, ctx.shape, ctx.axes, ctx.keepdim), None, None, None


@register("sum_to_size", meta=None, sig="input, *size", method=True, function=False)
class SumToSize(OpDef):
    """Sum ``input`` down to ``size`` over the dims it was broadcast along."""

    def forward(ctx, xp, input, size):
        if len(size) == 1 and isinstance(size[0], (tuple, list)):
            size = tuple(size[0])
        size = tuple(size)
        ctx.shape = input.shape
        lead = input.ndim - len(size)
        if lead < 0:
            raise RuntimeError(f"size {list(size)} is not expandable to size {list(input.shape)}")
        axes = tuple(range(lead)) + tuple(
            lead + i for i, s in enumerate(size) if s == 1 and input.shape[lead + i] != 1)
        out = xp.sum(input, axis=axes, keepdims=True) if axes else input
        out = out.reshape(size)
        return out if out is not input else input.copy()

    def backward(ctx, grad):
        return grad.expand(ctx.shape), None


@register("mean", meta=_reduce_meta, sig="input, dim=None, keepdim=False, *, dtype=None",
          onnx="ReduceMean")
class Mean(OpDef):
    """Arithmetic mean over ``dim``; floating and complex inputs only (torch's rule)."""

    def forward(ctx, xp, input, dim, keepdim, dtype):
        out_dt = _dt.to_dtype(dtype).np if dtype is not None else input.dtype
        if _dt._FROM_NP[xp.dtype(out_dt)].category < 2:  # (bfloat16's NumPy kind is 'V')
            name = {"int64": "Long", "int32": "Int", "bool": "Bool", "uint8": "Byte",
                    "int16": "Short", "int8": "Char"}.get(str(xp.dtype(out_dt)), str(out_dt))
            raise RuntimeError(f"mean(): could not infer output dtype. Input dtype must be "
                               f"either a floating point or complex dtype. Got: {name}")
        axes = _axes(dim, input.ndim, "mean")
        ctx.shape, ctx.axes, ctx.keepdim = input.shape, axes, keepdim
        ctx.count = int(math.prod(input.shape[a] for a in axes))
        acc = xp.float32 if xp.dtype(out_dt).itemsize < 4 else out_dt
        return xp.mean(input, axis=axes, keepdims=keepdim, dtype=acc).astype(out_dt, copy=False)

    def backward(ctx, grad):
        g = _expand_back(grad, ctx.shape, ctx.axes, ctx.keepdim)
        return g / max(ctx.count, 1) if ctx.count else g * float("nan"), None, None, None


@register("prod", meta=_reduce_meta, sig="input, dim=None, keepdim=False, *, dtype=None",
          onnx="ReduceProd")
class Prod(OpDef):
    """Product over ``dim`` (one dim in torch; None means all)."""

    def forward(ctx, xp, input, dim, keepdim, dtype):
        axes = _axes(dim, input.ndim, "prod")
        ctx.shape, ctx.axes, ctx.keepdim = input.shape, axes, keepdim
        y = xp.prod(input, axis=axes, keepdims=keepdim, dtype=_acc_dtype(input.dtype, dtype))
        ctx.save(input, y)
        return y

    def backward(ctx, grad):
        x, y = ctx.saved
        g = _expand_back(grad, ctx.shape, ctx.axes, ctx.keepdim)
        yk = _expand_back(y, ctx.shape, ctx.axes, ctx.keepdim)
        if not bool((x == 0).any()):
            return g * yk / x, None, None, None
        # With zeros, y / x is undefined: multiply the other elements directly.
        import ember
        flat_axes = ctx.axes
        moved = x.movedim(flat_axes, tuple(range(x.ndim - len(flat_axes), x.ndim)))
        lead = moved.shape[: x.ndim - len(flat_axes)]
        m = moved.reshape(tuple(lead) + (-1,))
        n = m.shape[-1]
        cols = []
        for j in range(n):
            mask = ember.ones(n, dtype=x.dtype, device=x.device)
            mask[j] = 0
            cols.append((m * mask + (1 - mask)).prod(-1))
        others = ember.stack(cols, -1).reshape(moved.shape)
        others = others.movedim(tuple(range(x.ndim - len(flat_axes), x.ndim)), flat_axes)
        return g * others, None, None, None


def _minmax_dim(name: str, fn: str, argfn: str, out_type: Any) -> None:
    class MinMaxDim(OpDef):
        __doc__ = (f"``{name}(input)``: the {name}imum of all elements; ``{name}(input, dim)``: "
                   f"a named tuple (values, indices) along ``dim``; ``{name}(input, other)``: "
                   f"the elementwise {name}imum.")

        def forward(ctx, xp, input, dim, keepdim):
            d = M.wrap_dim(name, dim, input.ndim)
            src = input if input.ndim else input.reshape(1)
            dd = d if input.ndim else 0
            idx = getattr(xp, argfn)(src, axis=dd, keepdims=True)
            nanpos = xp.isnan(src).any(axis=dd, keepdims=True) if src.dtype.kind in "fc" else None
            if nanpos is not None and bool(nanpos.any()):
                idx = xp.where(nanpos, xp.argmax(xp.isnan(src), axis=dd, keepdims=True), idx)
            vals = xp.take_along_axis(src, idx, axis=dd)
            if not keepdim or not input.ndim:
                vals = vals.squeeze(dd) if input.ndim else vals.reshape(())
                idx = idx.squeeze(dd) if input.ndim else idx.reshape(())
            ctx.shape, ctx.dim, ctx.keepdim = input.shape, d, keepdim
            ctx.save(idx)
            return vals, idx.astype(xp.int64)

        def backward(ctx, gv, gi):
            (idx,) = ctx.saved
            import ember
            if not ctx.shape:
                return gv.reshape(()), None, None
            g = gv if ctx.keepdim else gv.unsqueeze(ctx.dim)
            i = idx if ctx.keepdim else idx.unsqueeze(ctx.dim)
            n = ctx.shape[ctx.dim]
            pos_shape = [1] * len(ctx.shape)
            pos_shape[ctx.dim] = n
            pos = ember.arange(n, device=gv.device).reshape(pos_shape)
            return g * (pos == i), None, None

    register(f"_{name}_dim", meta=M.nonempty_reduction, function=False, method=False,
             nondiff_outputs=(1,), out_type=out_type, node_name=name.capitalize())(MinMaxDim)


_minmax_dim("max", "max", "argmax", max_out)
_minmax_dim("min", "min", "argmin", min_out)


def _amax_meta(op: Any, input: Any, dim: Any = (), keepdim: bool = False) -> Any:
    return M.nonempty_reduction(op, input, None if dim == () else dim, keepdim)


def _amaxmin(name: str, fn: str, onnx: str) -> None:
    class AMaxMin(OpDef):
        __doc__ = f"The {fn} over ``dim`` (all dims when empty); ties share the gradient evenly."

        def forward(ctx, xp, input, dim, keepdim):
            axes = _axes(None if dim == () else dim, input.ndim, name)
            y = getattr(xp, fn)(input, axis=axes, keepdims=keepdim)
            ctx.shape, ctx.axes, ctx.keepdim = input.shape, axes, keepdim
            ctx.save(input, y)
            return y

        def backward(ctx, grad):
            x, y = ctx.saved
            yk = _expand_back(y, ctx.shape, ctx.axes, ctx.keepdim)
            mask = (x == yk).to(grad.dtype)
            count = mask.sum(ctx.axes, keepdim=True)
            return _expand_back(grad, ctx.shape, ctx.axes, ctx.keepdim) * mask / count, None, None

    register(name, meta=_amax_meta, sig="input, dim=(), keepdim=False", onnx=onnx)(AMaxMin)


_amaxmin("amax", "max", "ReduceMax")
_amaxmin("amin", "min", "ReduceMin")


def _argmax_meta(op: Any, input: Any, dim: Any = None, keepdim: bool = False) -> Any:
    return M.nonempty_reduction(op, input, dim, keepdim)


def _arg(name: str, fn: str) -> None:
    class Arg(OpDef):
        __doc__ = f"Index of the {fn[3:]}imum over ``dim`` (of the flattened input when None)."

        def forward(ctx, xp, input, dim=None, keepdim=False):
            if dim is None:
                flat = input.reshape(-1)
                r = getattr(xp, fn)(flat) if flat.size else xp.asarray(0)
                if flat.dtype.kind in "fc" and bool(xp.isnan(flat).any()):
                    r = xp.argmax(xp.isnan(flat))
                r = xp.asarray(r, dtype=xp.int64)
                return r.reshape((1,) * input.ndim) if keepdim else r
            d = M.wrap_dim(name, dim, input.ndim)
            src = input if input.ndim else input.reshape(1)
            r = getattr(xp, fn)(src, axis=d if input.ndim else 0, keepdims=keepdim)
            if src.dtype.kind in "fc":
                nan = xp.isnan(src)
                if bool(nan.any()):
                    r = xp.where(nan.any(axis=d, keepdims=keepdim),
                                 xp.argmax(nan, axis=d, keepdims=keepdim), r)
            r = r.astype(xp.int64)
            return r if input.ndim else r.reshape(())

    register(name, meta=_argmax_meta, differentiable=False, onnx=fn.capitalize())(Arg)


_arg("argmax", "argmax")
_arg("argmin", "argmin")


def _var_meta(op: Any, input: Any, dim: Any = None, correction: Any = 1, keepdim: bool = False) -> Any:
    check(input._dtype.category >= 2, op.name,
          f"{op.name}(): only floating-point and complex dtypes are supported, got {input._dtype}",
          RuntimeError)
    return M.reduction(op, input, dim, keepdim)


def _var_forward(ctx: Any, xp: Any, input: Any, dim: Any, correction: Any, keepdim: bool,
                 name: str) -> Any:
    axes = _axes(dim, input.ndim, name)
    n = int(math.prod(input.shape[a] for a in axes))
    corr = 1 if correction is None else correction
    ctx.shape, ctx.axes, ctx.keepdim, ctx.denom = input.shape, axes, keepdim, max(n - corr, 0)
    acc = xp.float32 if input.dtype.itemsize < 4 else input.dtype
    with_nan = xp.var(input.astype(acc, copy=False), axis=axes, keepdims=keepdim, ddof=0) \
        if n else xp.full(tuple(1 if i in axes else s for i, s in enumerate(input.shape))
                          if keepdim else tuple(s for i, s in enumerate(input.shape)
                                                if i not in axes), xp.nan, acc)
    if n and n - corr > 0:
        var = with_nan * (n / (n - corr))
    else:
        var = with_nan * xp.nan if n - corr <= 0 else with_nan
    return xp.asarray(var).astype(input.dtype if input.dtype.kind != "c" else
                                  xp.float32 if input.dtype == xp.complex64 else xp.float64)


def _correction(unbiased: Any, correction: Any) -> Any:
    return correction


@register("var", meta=_var_meta, sig="input, dim=None, correction=1, keepdim=False",
          onnx=None)
class Var(OpDef):
    """Variance over ``dim`` with Bessel's ``correction`` (1 = unbiased)."""

    def forward(ctx, xp, input, dim, correction, keepdim):
        ctx.save(input)
        return _var_forward(ctx, xp, input, dim, correction, keepdim, "var")

    def backward(ctx, grad):
        (x,) = ctx.saved
        g = _expand_back(grad, ctx.shape, ctx.axes, ctx.keepdim)
        mean = x.mean(ctx.axes, keepdim=True)
        return g * 2 * (x - mean) / ctx.denom, None, None, None


@register("std", meta=_var_meta, sig="input, dim=None, correction=1, keepdim=False")
class Std(OpDef):
    """Standard deviation over ``dim`` with Bessel's ``correction``."""

    def forward(ctx, xp, input, dim, correction, keepdim):
        y = xp.sqrt(_var_forward(ctx, xp, input, dim, correction, keepdim, "std"))
        ctx.save(input, y)
        return y

    def backward(ctx, grad):
        x, y = ctx.saved
        g = _expand_back(grad / y, ctx.shape, ctx.axes, ctx.keepdim)
        mean = x.mean(ctx.axes, keepdim=True)
        return g * (x - mean) / ctx.denom, None, None, None


def _lse_meta(op: Any, input: Any, dim: Any, keepdim: bool = False) -> Any:
    return M.reduction(op, input, dim, keepdim)


@register("logsumexp", meta=_lse_meta, promote="int_to_float", sig="input, dim, keepdim=False")
class LogSumExp(OpDef):
    """``log(sum(exp(input), dim))``, computed stably."""

    def forward(ctx, xp, input, dim, keepdim):
        axes = _axes(dim, input.ndim, "logsumexp")
        ctx.shape, ctx.axes, ctx.keepdim = input.shape, axes, keepdim
        if input.size == 0:
            y = xp.log(xp.sum(xp.exp(input), axis=axes, keepdims=keepdim))
        else:
            m = xp.max(input, axis=axes, keepdims=True)
            m = xp.where(xp.isfinite(m), m, 0)
            y = xp.log(xp.sum(xp.exp(input - m), axis=axes, keepdims=True)) + m
            if not keepdim:
                y = y.squeeze(axes) if axes else y
        ctx.save(input, y)
        return y.astype(input.dtype, copy=False)

    def backward(ctx, grad):
        x, y = ctx.saved
        yk = _expand_back(y, ctx.shape, ctx.axes, ctx.keepdim)
        g = _expand_back(grad, ctx.shape, ctx.axes, ctx.keepdim)
        return g * (x - yk).exp(), None, None


def _vnorm_meta(op: Any, input: Any, ord: Any = 2, dim: Any = None, keepdim: bool = False,
                dtype: Any = None) -> Any:
    check(input._dtype.category >= 2, "linalg.vector_norm",
          f"Expected a floating point or complex tensor as input. Got {input._dtype}")
    return M.reduction(op, input, dim, keepdim)


@register("linalg_vector_norm", meta=_vnorm_meta, method=False,
          sig="input, ord=2, dim=None, keepdim=False, *, dtype=None", node_name="LinalgVectorNorm")
class VectorNorm(OpDef):
    """The ``ord``-norm of ``input`` over ``dim`` treated as a vector."""

    def forward(ctx, xp, input, ord, dim, keepdim, dtype):
        axes = _axes(dim, input.ndim, "linalg.vector_norm")
        x = input.astype(_dt.to_dtype(dtype).np) if dtype is not None else input
        a = xp.abs(x)
        if ord == math.inf:
            y = xp.max(a, axis=axes, keepdims=keepdim) if a.size else xp.zeros(())
        elif ord == -math.inf:
            y = xp.min(a, axis=axes, keepdims=keepdim)
        elif ord == 0:
            y = xp.sum(a != 0, axis=axes, keepdims=keepdim).astype(a.dtype)
        elif ord == 1:
            y = xp.sum(a, axis=axes, keepdims=keepdim)
        elif ord == 2:
            y = xp.sqrt(xp.sum(a * a, axis=axes, keepdims=keepdim))
        else:
            y = xp.sum(a ** ord, axis=axes, keepdims=keepdim) ** (1.0 / ord)
        ctx.shape, ctx.axes, ctx.keepdim, ctx.ord = input.shape, axes, keepdim, ord
        y = xp.asarray(y).astype(a.dtype, copy=False)
        ctx.save(x, y)
        return y

    def backward(ctx, grad):
        x, y = ctx.saved
        p = ctx.ord
        g = _expand_back(grad, ctx.shape, ctx.axes, ctx.keepdim)
        yk = _expand_back(y, ctx.shape, ctx.axes, ctx.keepdim)
        if p == 0:
            return g * 0, None, None, None, None
        if p == 1:
            return g * x.sgn(), None, None, None, None
        if p in (math.inf, -math.inf):
            mask = (x.abs() == yk).to(g.dtype)
            return g * x.sgn() * mask / mask.sum(ctx.axes, keepdim=True), None, None, None, None
        from ember.ops.elementwise import _where
        safe = _where(yk == 0, yk + 1, yk)
        if p == 2:
            gx = g * x / safe
        else:
            gx = g * x.sgn() * x.abs().pow(p - 1) / safe.pow(p - 1)
        return _where(yk == 0, gx * 0, gx), None, None, None, None


def _bool_reduce(name: str, fn: str) -> None:
    class BoolReduce(OpDef):
        __doc__ = f"Whether {'all' if fn == 'all' else 'any'} elements are true, over ``dim``."

        def forward(ctx, xp, input, dim, keepdim):
            axes = _axes(dim, input.ndim, name)
            r = getattr(xp, fn)(input, axis=axes, keepdims=keepdim)
            return r if input.dtype != xp.uint8 else r.astype(xp.uint8)

    register(name, meta=_reduce_meta, differentiable=False, sig="input, dim=None, keepdim=False")(
        BoolReduce)


_bool_reduce("all", "all")
_bool_reduce("any", "any")


def _cumsum_meta(op: Any, input: Any, dim: int, dtype: Any = None) -> Any:
    M.wrap_dim("cumsum", dim, input._data.ndim)
    return M.TensorMeta(input._data.shape) if hasattr(M, "TensorMeta") else None


@register("cumsum", meta=_cumsum_meta, inplace=True, sig="input, dim, *, dtype=None",
          onnx="CumSum")
class Cumsum(OpDef):
    """Cumulative sum along ``dim``; ints and bools accumulate in int64."""

    def forward(ctx, xp, input, dim, dtype):
        d = M.wrap_dim("cumsum", dim, input.ndim)
        ctx.dim = d
        if input.ndim == 0:
            return input.astype(_acc_dtype(input.dtype, dtype))
        return xp.cumsum(input, axis=d, dtype=_acc_dtype(input.dtype, dtype))

    def backward(ctx, grad):
        if grad.ndim == 0:
            return grad, None, None
        d = ctx.dim
        # reverse cumulative sum, without a flip: total - cumsum + self
        return grad.sum(d, keepdim=True) - grad.cumsum(d) + grad, None, None
