"""More reductions and scans: cumprod, cummax/cummin, logcumsumexp, nansum, nanmean,
aminmax, var_mean/std_mean, diff, trapezoid/trapz and cumulative_trapezoid."""
from __future__ import annotations

from collections import namedtuple
from typing import Any

from ember import dtypes as _dt
from ember.errors import check, make
from ember.ops import meta as M
from ember.ops.registry import OPS, OpDef, TensorMeta, composite, register
from ember.ops.scatter import inclusive_scan
from ember.ops.sorting import pick_backward
from ember.tensor import Tensor

cummax_out = namedtuple("cummax", ("values", "indices"))
cummin_out = namedtuple("cummin", ("values", "indices"))
aminmax_out = namedtuple("aminmax", ("min", "max"))
for _t in (cummax_out, cummin_out, aminmax_out):
    _t.__module__ = "ember.return_types"


def _scan_meta(op: Any, input: Any, dim: int, *rest: Any) -> TensorMeta:
    check(isinstance(input, Tensor), op.name, f"argument 'input' must be Tensor, not "
                                              f"{type(input).__name__}", TypeError)
    M.wrap_dim(op.name, dim, input._data.ndim)
    return TensorMeta(input._data.shape)


def _rev_cumsum(g: Tensor, d: int) -> Tensor:
    """``out[k] = sum_{j >= k} g[j]`` along ``d``."""
    return g.flip(d).cumsum(d).flip(d)


# ---------------------------------------------------------------------- cumprod
@register("cumprod", meta=_scan_meta, inplace=True, sig="input, dim, *, dtype=None")
class Cumprod(OpDef):
    """Cumulative product along ``dim``; integers and bools accumulate in int64."""

    def forward(ctx, xp, input, dim, dtype):
        out_dt = _dt.to_dtype(dtype).np if dtype is not None else (
            xp.int64 if input.dtype.kind in "biu" else input.dtype)
        x = input.astype(out_dt, copy=False)
        ctx.dim = M.wrap_dim("cumprod", dim, input.ndim)
        if input.ndim == 0:
            y = x.copy()
        else:
            y = xp.cumprod(x, axis=ctx.dim, dtype=out_dt)
        ctx.save(input, y)
        return y

    def backward(ctx, grad):
        x, y = ctx.saved
        if grad.ndim == 0:
            return grad, None, None
        return _cumprod_backward(grad, x.to(grad.dtype), y, ctx.dim), None, None


def _cumprod_backward(grad: Tensor, x: Tensor, y: Tensor, d: int) -> Tensor:
    """Exact gradient of cumprod, also where ``x`` has zeros.

    Before the first zero of a row, ``dx_k = sum_{j>=k} g_j y_j / x_k``; at the first zero
    ``z``, ``dx_z = y_{z-1} * sum_{j>=z} g_j prod_{z<i<=j} x_i``; after it the gradient is 0.
    Written with cumprod/cumsum, so it is differentiable again.
    """
    from ember.ops.elementwise import _where
    if not bool((x == 0).any()):
        return _rev_cumsum(grad * y, d) / x
    is_zero = x == 0
    nzero = is_zero.long().cumsum(d)
    before = nzero == 0
    first = is_zero & (nzero == 1)
    after = nzero >= 1
    one = x * 0 + 1
    safe = _where(before, x, one)
    g1 = _rev_cumsum(grad * y, d) / safe * before
    # q_j = prod_{z < i <= j} x_i for j >= z (x_z itself replaced by one)
    q = _where(before, one, _where(first, one, x)).cumprod(d)
    s = _rev_cumsum(grad * q * after, d)
    p = safe.cumprod(d)  # at z: prod_{i < z} x_i
    return g1 + first * p * s


# ---------------------------------------------------------------------- cummax / cummin
def _cumext(name: str, fn: str, out_type: type) -> None:
    class CumExt(OpDef):
        __doc__ = (f"Running {name[3:]}imum along ``dim`` and the index where it was reached "
                   f"(the latest index on ties; NaN propagates).")

        def forward(ctx, xp, input, dim):
            d = M.wrap_dim(name, dim, input.ndim)
            ctx.dim, ctx.shape = d, input.shape
            if input.ndim == 0:
                ctx.save(None)
                return input.copy(), xp.zeros((), xp.int64)
            vals = inclusive_scan(xp, fn, input, d)
            hit = input == vals
            if input.dtype.kind in "fc":
                hit = hit | (xp.isnan(input) & xp.isnan(vals))
            shape = [1] * input.ndim
            shape[d] = -1
            pos = xp.arange(input.shape[d]).reshape(shape)
            idx = inclusive_scan(xp, "maximum", xp.where(hit, pos, 0), d).astype(xp.int64)
            ctx.save(idx)
            return vals, idx

        def backward(ctx, gv, gi):
            (idx,) = ctx.saved
            if not ctx.shape:
                return gv, None
            return pick_backward(gv, ctx.dim, idx, ctx.shape), None

    register(name, meta=_scan_meta, nondiff_outputs=(1,), out_type=out_type)(CumExt)


_cumext("cummax", "maximum", cummax_out)
_cumext("cummin", "minimum", cummin_out)


# ---------------------------------------------------------------------- logcumsumexp
@register("logcumsumexp", meta=_scan_meta, promote="int_to_float")
class LogCumSumExp(OpDef):
    """``log(cumsum(exp(input), dim))``, computed stably (by ``logaddexp`` accumulation)."""

    def forward(ctx, xp, input, dim):
        d = M.wrap_dim("logcumsumexp", dim, input.ndim)
        ctx.dim = d
        if input.ndim == 0:
            y = input.copy()
        elif input.dtype.kind == "c":
            m = xp.max(input.real, axis=d, keepdims=True) if input.size else 0
            y = xp.log(xp.cumsum(xp.exp(input - m), axis=d)) + m
        else:
            work = input.astype(xp.float32) if input.dtype.itemsize < 4 else input
            y = inclusive_scan(xp, "logaddexp", work, d).astype(input.dtype)
        ctx.save(input, y)
        return y

    def backward(ctx, grad):
        x, y = ctx.saved
        if grad.ndim == 0:
            return grad, None
        d = ctx.dim
        from ember.ops.elementwise import _where
        # dx_k = exp(x_k) * sum_{j>=k} g_j exp(-y_j); positive and negative parts of g are
        # summed in log space so nothing overflows
        inf = float("inf")
        pos = grad > 0
        neg = grad < 0
        one = grad * 0 + 1
        lg_pos = _where(pos, _where(pos, grad, one).log() - y, y * 0 - inf)
        lg_neg = _where(neg, _where(neg, -grad, one).log() - y, y * 0 - inf)
        rp = lg_pos.flip(d).logcumsumexp(d).flip(d)
        rn = lg_neg.flip(d).logcumsumexp(d).flip(d)
        return (rp + x).exp() - (rn + x).exp(), None


# ---------------------------------------------------------------------- NaN-aware reductions
@composite()
def nansum(input: Tensor, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Tensor:
    """Sum over ``dim`` treating NaN as zero."""
    x = input.masked_fill(input.isnan(), 0) if input.dtype.category >= 2 else input
    return OPS["sum"].function(x, dim, keepdim, dtype=dtype)


@composite()
def nanmean(input: Tensor, dim: Any = None, keepdim: bool = False, *,
            dtype: Any = None) -> Tensor:
    """Mean over ``dim`` of the non-NaN elements (NaN when there are none)."""
    check(input.dtype.category >= 2, "nanmean",
          f"nanmean(): expected input to have floating point or complex dtype but got "
          f"{input.dtype}")
    keep = ~input.isnan()
    count = OPS["sum"].function(keep, dim, keepdim)
    total = nansum(input, dim, keepdim, dtype=dtype)
    return total / count.to(total.dtype)


@composite()
def aminmax(input: Tensor, *, dim: int | None = None, keepdim: bool = False) -> Any:
    """A named tuple (min, max) over ``dim`` (all elements when None)."""
    if dim is None:
        check(input.numel() > 0, "aminmax", "aminmax(): cannot compute aminmax over an empty "
                                            "dimension as the operation has no identity.")
        mn = OPS["amin"].function(input, (), False)
        mx = OPS["amax"].function(input, (), False)
        if keepdim:
            shape = (1,) * input.ndim
            mn, mx = mn.reshape(shape), mx.reshape(shape)
        return aminmax_out(mn, mx)
    return aminmax_out(OPS["amin"].function(input, dim, keepdim),
                       OPS["amax"].function(input, dim, keepdim))


def _var_mean_args(name: str, dim: Any, unbiased: Any, correction: Any) -> tuple:
    if isinstance(dim, bool):
        unbiased, dim = dim, None
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    elif unbiased is not None:
        raise make(RuntimeError, name, "cannot specify both unbiased and correction")
    return dim, correction


@composite(method=False)
def var_mean(input: Tensor, dim: Any = None, unbiased: Any = None, keepdim: bool = False, *,
             correction: Any = None) -> tuple:
    """(variance, mean) over ``dim`` with Bessel's ``correction`` (1 by default)."""
    dim, correction = _var_mean_args("var_mean", dim, unbiased, correction)
    return (OPS["var"].function(input, dim, correction, keepdim),
            OPS["mean"].function(input, dim, keepdim))


@composite(method=False)
def std_mean(input: Tensor, dim: Any = None, unbiased: Any = None, keepdim: bool = False, *,
             correction: Any = None) -> tuple:
    """(standard deviation, mean) over ``dim`` with Bessel's ``correction``."""
    dim, correction = _var_mean_args("std_mean", dim, unbiased, correction)
    return (OPS["std"].function(input, dim, correction, keepdim),
            OPS["mean"].function(input, dim, keepdim))


# ---------------------------------------------------------------------- differences
@composite()
def diff(input: Tensor, n: int = 1, dim: int = -1, prepend: Tensor | None = None,
         append: Tensor | None = None) -> Tensor:
    """The ``n``-th forward difference along ``dim`` (after concatenating ``prepend`` and
    ``append``); bool tensors use ``!=`` (logical xor)."""
    check(input.ndim >= 1, "diff", "diff expects input to be at least one-dimensional")
    check(n >= 0, "diff", f"order must be non-negative but got {n}")
    d = M.wrap_dim("diff", dim, input.ndim)
    parts = [t for t in (prepend, input, append) if t is not None]
    if len(parts) > 1:
        for t in (prepend, append):
            if t is not None:
                check(t.ndim == input.ndim, "diff",
                      f"diff expects prepend or append to be the same dimension as input, got "
                      f"{t.ndim} and {input.ndim}")
        x = OPS["cat"].function(parts, d)
    else:
        x = input
    for _ in range(n):
        size = x.shape[d]
        if size <= 1:
            return x.narrow(d, 0, 0)
        a, b = x.narrow(d, 1, size - 1), x.narrow(d, 0, size - 1)
        x = OPS["logical_xor"].function(a, b) if x.dtype is _dt.bool else a - b
    return x


def _trapz_spacing(name: str, y: Tensor, x: Any, dx: Any, d: int) -> Any:
    """The spacing: a number (dx) or the differences of sample points ``x`` along ``d``."""
    if x is None:
        return 1.0 if dx is None else dx
    check(dx is None, name, "trapezoid: cannot pass both x and dx", TypeError)
    if not isinstance(x, Tensor):
        return x
    if x.ndim == 1:
        check(x.shape[0] == y.shape[d], name,
              f"trapezoid: There must be one `x` value for each sample point, got x of length "
              f"{x.shape[0]} and y of size {y.shape[d]} along dim {d}")
        view = [1] * y.ndim
        view[d] = -1
        return diff(x).reshape(view)
    return diff(x, dim=d - y.ndim if x.ndim != y.ndim else d)


@composite()
def trapezoid(y: Tensor, x: Any = None, *, dx: Any = None, dim: int = -1) -> Tensor:
    """Trapezoidal-rule integral of ``y`` along ``dim`` with sample points ``x`` (a tensor
    or a constant spacing) or spacing ``dx`` (1 by default)."""
    d = M.wrap_dim("trapezoid", dim, max(y.ndim, 1))
    yf = y if y.dtype.category >= 2 else y.to(_dt.get_default_dtype())
    n = yf.shape[d]
    if n == 0:
        import ember
        # torch: zeros of the reduced shape in y's dtype, outside the graph
        shape = [s for i, s in enumerate(y.shape) if i != d]
        return ember.zeros(shape, dtype=y.dtype, device=y.device)
    avg = (yf.narrow(d, 1, n - 1) + yf.narrow(d, 0, n - 1)) / 2
    h = _trapz_spacing("trapezoid", yf, x, dx, d)
    return (avg * h).sum(d)


@composite()
def trapz(y: Tensor, x: Any = None, *, dx: Any = None, dim: int = -1) -> Tensor:
    """Alias of :func:`trapezoid`."""
    return trapezoid(y, x, dx=dx, dim=dim)


@composite()
def cumulative_trapezoid(y: Tensor, x: Any = None, *, dx: Any = None, dim: int = -1) -> Tensor:
    """Running trapezoidal integral of ``y`` along ``dim`` (one element shorter than ``y``)."""
    d = M.wrap_dim("cumulative_trapezoid", dim, max(y.ndim, 1))
    yf = y if y.dtype.category >= 2 else y.to(_dt.get_default_dtype())
    n = yf.shape[d]
    if n == 0:
        return yf.narrow(d, 0, 0)
    avg = (yf.narrow(d, 1, n - 1) + yf.narrow(d, 0, n - 1)) / 2
    h = _trapz_spacing("cumulative_trapezoid", yf, x, dx, d)
    return (avg * h).cumsum(d)
