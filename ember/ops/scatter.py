"""Gather/scatter and index-based ops: gather, scatter (src, value, reduce), scatter_add,
scatter_reduce, index_select/add/copy/fill, index_put, masked_fill/select/scatter, take,
take_along_dim, put, nonzero and argwhere.

Index tensors are never differentiable; every backward is written with these same ops, so
double backward works (gather's backward is scatter_add, whose backward is gather).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ember import dtypes as _dt
from ember._state import _State
from ember.errors import check, make
from ember.ops import meta as M
from ember.ops.registry import OPS, OpDef, TensorMeta, apply, composite, register, write_inplace
from ember.tensor import Tensor

_INT_INDEX = ("int32", "int64")


# ---------------------------------------------------------------------- shared helpers
def check_index_dtype(op: str, index: Any, msg: str | None = None,
                      allowed: tuple = _INT_INDEX) -> None:
    """Index arguments must be integer Tensors of the allowed dtypes (torch's RuntimeError)."""
    check(isinstance(index, Tensor), op, f"argument 'index' must be Tensor, not "
                                         f"{type(index).__name__}", TypeError)
    if index._dtype.name not in allowed:
        want = "int32 or int64" if allowed == _INT_INDEX else "int64"
        raise make(RuntimeError, op, msg or f"{op}(): Expected dtype {want} for index, got "
                                            f"{index._dtype} (shape {tuple(index.shape)})")


def check_bounds(op: str, xp: Any, index: Any, size: int, dim: int, negative: bool = False,
                 kind: type = RuntimeError, prefix: str = "") -> None:
    """Raise when an index array holds values outside ``[0, size)`` (``[-size, size)``)."""
    if index.size == 0:
        return
    lo, hi = int(index.min()), int(index.max())
    low = -size if negative else 0
    if lo < low or hi >= size:
        bad = lo if lo < low else hi
        raise make(kind, op, f"{prefix}index {bad} is out of bounds for dimension {dim} with "
                             f"size {size}")


def dim_key(xp: Any, index: Any, dim: int) -> tuple:
    """Advanced-index key placing ``index`` along ``dim`` and an arange along every other dim
    (what gather/scatter address: ``out[i][index[i][j]][k]`` for dim 1)."""
    key = []
    for d, n in enumerate(index.shape):
        if d == dim:
            key.append(index)
        else:
            shape = [1] * index.ndim
            shape[d] = n
            key.append(xp.arange(n).reshape(shape))
    return tuple(key)


def inclusive_scan(xp: Any, ufunc: str, x: Any, axis: int) -> Any:
    """``xp.<ufunc>.accumulate(x, axis)`` for an associative, commutative ufunc (maximum,
    minimum, logaddexp). CuPy has no ``accumulate`` for these: there the scan takes log2(n)
    shifted elementwise steps (Hillis-Steele)."""
    if xp is np:
        return getattr(np, ufunc).accumulate(x, axis=axis)
    fn = getattr(xp, ufunc)
    out = xp.moveaxis(x, axis, -1).copy()
    n, shift = out.shape[-1], 1
    while shift < n:
        nxt = out.copy()
        nxt[..., shift:] = fn(out[..., shift:], out[..., :-shift])
        out, shift = nxt, shift * 2
    return xp.moveaxis(out, -1, axis)


def reduce_at(xp: Any, kind: str, out: Any, key: tuple, vals: Any) -> None:
    """Unbuffered ``out[key] (op)= vals``: repeated positions all contribute."""
    if xp is np:
        ufunc = {"sum": np.add, "prod": np.multiply, "amax": np.maximum,
                 "amin": np.minimum}[kind]
        ufunc.at(out, key, vals)
        return
    import cupyx
    region_shape = out[key].shape
    vals = xp.broadcast_to(xp.asarray(vals, out.dtype), region_shape)
    if kind == "sum":
        cupyx.scatter_add(out, key, vals)
    else:
        # cupyx.scatter_max/min lose float64 precision, and there is no multiply.at
        _rounds_at(xp, out, key, vals, {"prod": xp.multiply, "amax": xp.maximum,
                                        "amin": xp.minimum}[kind])


def _rounds_at(xp: Any, out: Any, key: tuple, vals: Any, fn: Any) -> None:
    # Apply one occurrence of each target per round, so a round never writes a position
    # twice; rounds = the largest multiplicity. Exact in every dtype.
    pos = xp.arange(out.size).reshape(out.shape)[key].reshape(-1)
    v = vals.reshape(-1)
    order = xp.argsort(pos, kind="stable")
    pos, v = pos[order], v[order]
    starts = xp.concatenate([xp.ones(1, bool), pos[1:] != pos[:-1]]) if pos.size else pos
    group_start = inclusive_scan(xp, "maximum", xp.where(starts, xp.arange(pos.size), 0), 0)
    rank = xp.arange(pos.size) - group_start
    flat = out.reshape(-1)
    for r in range(int(rank.max()) + 1 if rank.size else 0):
        sel = rank == r
        at = pos[sel]
        flat[at] = fn(flat[at], v[sel])


def inplace_variant(name: str, fn: Callable) -> Callable:
    """``Tensor.<name>``: run the out-of-place composite ``fn``, then write into ``self``."""
    def method(self: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if _State.enabled:
            if self._requires_grad and self._grad_fn is None:
                raise make(RuntimeError, name, "a leaf Variable that requires grad is being used "
                                               "in an in-place operation.",
                           hint="wrap it in `with ember.no_grad():` or clone() the tensor first")
            base = self._base
            if base is not None and base._requires_grad and base._grad_fn is None:
                raise make(RuntimeError, name, "a view of a leaf Variable that requires grad is "
                                               "being used in an in-place operation.")
        return write_inplace(self, fn(self, *args, **kwargs), name)
    method.__name__ = name
    method.__doc__ = f"In-place version of :func:`{name[:-1]}`."
    return method


def _tensor(op: str, x: Any, name: str) -> None:
    check(isinstance(x, Tensor), op, f"argument '{name}' must be Tensor, not {type(x).__name__}",
          TypeError)


def _gather_shapes(op: str, input: Tensor, dim: int, index: Tensor, src: Any = None) -> int:
    """torch's shape rules shared by gather/scatter; returns the wrapped dim."""
    nd = input._data.ndim
    d = M.wrap_dim(op, dim, nd)
    ishape, xshape = index._data.shape, input._data.shape
    if index._data.ndim != nd and not (index._data.ndim <= 1 and nd <= 1):
        raise make(RuntimeError, op, f"Index tensor must have the same number of dimensions as "
                                     f"input tensor: index {tuple(ishape)} vs input "
                                     f"{tuple(xshape)}")
    if nd and index._data.ndim:
        for k in range(nd):
            if k != d and ishape[k] > xshape[k]:
                raise make(RuntimeError, op, f"Size does not match at dimension {k} expected "
                                             f"index {list(ishape)} to be no larger than self "
                                             f"{list(xshape)} apart from dimension {d}")
    if isinstance(src, Tensor) and src._data.ndim and index._data.ndim:
        sshape = src._data.shape
        check(len(sshape) == len(ishape), op, f"Index tensor must have the same number of "
                                              f"dimensions as src tensor: index {tuple(ishape)} "
                                              f"vs src {tuple(sshape)}")
        for k in range(len(ishape)):
            check(ishape[k] <= sshape[k], op,
                  f"Expected index {list(ishape)} to be no larger than self {list(xshape)} apart "
                  f"from dimension {d} and to be no larger size than src {list(sshape)}")
    return d


def _as1d(a: Any) -> Any:
    return a.reshape(1) if a.ndim == 0 else a


def _src_part(src: Any, index: Any) -> Any:
    """The leading ``index.shape`` block of ``src`` (torch reads only that much of it)."""
    if not hasattr(src, "shape"):
        return src
    if src.ndim == 0:
        return src
    return src[tuple(slice(0, n) for n in index.shape)]


def _src_grad(grad: Tensor, dim: int, index: Tensor, src_shape: tuple) -> Tensor:
    """Gradient for ``src``: ``grad`` gathered at ``index``, placed in the leading
    ``index.shape`` block of a zero tensor of ``src``'s shape (the rest of src is unread)."""
    g = grad.gather(dim, index)
    if tuple(g.shape) == tuple(src_shape):
        return g
    import ember
    z = ember.zeros(src_shape, dtype=grad.dtype, device=grad.device)
    return apply(OPS["_put"], (z, tuple(slice(0, n) for n in index.shape), g, False))


def _same_dtype(op: str, input: Tensor, src: Any, what: str = "src") -> None:
    if isinstance(src, Tensor) and src._dtype is not input._dtype:
        raise make(RuntimeError, op, f"{op}(): Expected self.dtype to be equal to {what}.dtype, "
                                     f"got {input._dtype} and {src._dtype}")


# ---------------------------------------------------------------------- gather / scatter
def _gather_meta(op: Any, input: Any, dim: int, index: Any, sparse_grad: bool = False) -> Any:
    _tensor("gather", input, "input")
    check_index_dtype("gather", index, "gather(): Expected dtype int32/int64 for index")
    _gather_shapes("gather", input, dim, index)
    return TensorMeta(index._data.shape, input._dtype)


@register("gather", meta=_gather_meta, sig="input, dim, index, *, sparse_grad=False")
class Gather(OpDef):
    """Values of ``input`` along ``dim`` at ``index``: ``out[i][j] = input[i][index[i][j]]``
    for ``dim=1``. ``index`` has the input's number of dims and is no larger elsewhere."""

    def forward(ctx, xp, input, dim, index, sparse_grad):
        x, idx = _as1d(input), _as1d(index)
        d = dim % x.ndim
        check_bounds("gather", xp, idx, x.shape[d], d)
        ctx.dim, ctx.shape = d, input.shape
        ctx.save(index)
        out = x[dim_key(xp, idx, d)]
        return out.reshape(index.shape)

    def backward(ctx, grad):
        (index,) = ctx.saved
        import ember
        z = ember.zeros(ctx.shape, dtype=grad.dtype, device=grad.device)
        return scatter_add(z, ctx.dim, index, grad), None, None, None


def _scatter_meta(op: Any, input: Any, dim: int, index: Any, src: Any, *rest: Any) -> Any:
    name = op.name.strip("_")
    _tensor(name, input, "input")
    check_index_dtype(name, index, f"{name}(): Expected dtype int64 for index")
    _gather_shapes(name, input, dim, index, src)
    _same_dtype(name, input, src)
    return TensorMeta(input._data.shape)


def _scatter_prep(op: str, xp: Any, input: Any, dim: int, index: Any) -> tuple:
    x, idx = _as1d(input), _as1d(index)
    d = dim % x.ndim
    check_bounds(op, xp, idx, x.shape[d], d)
    return x, idx, d


@register("_scatter", meta=_scatter_meta, function=False, method=False, node_name="Scatter")
class ScatterOp(OpDef):
    """``input`` with ``src`` (a tensor or a number) written at ``index`` along ``dim``."""

    def forward(ctx, xp, input, dim, index, src):
        x, idx, d = _scatter_prep("scatter", xp, input, dim, index)
        out = x.copy()
        vals = _src_part(src, index)
        out[dim_key(xp, idx, d)] = _as1d(vals) if hasattr(vals, "ndim") and idx.ndim else vals
        ctx.dim, ctx.sshape = d, getattr(src, "shape", None)
        ctx.save(index)
        return out.reshape(input.shape)

    def backward(ctx, grad):
        (index,) = ctx.saved
        g_self = apply(OPS["_scatter"], (grad, ctx.dim, index, 0))
        g_src = None
        if ctx.next_edges[3] is not None:
            g_src = _src_grad(grad, ctx.dim, index, ctx.sshape)
        return g_self, None, None, g_src


@composite()
def scatter(input: Tensor, dim: int, index: Tensor, src: Any = None, value: Any = None, *,
            reduce: str | None = None) -> Tensor:
    """Write ``src`` (a tensor, read in the shape of ``index``) or ``value`` (a number) into a
    copy of ``input`` at ``index`` along ``dim``: ``out[i][index[i][j]] = src[i][j]`` for
    ``dim=1``. ``reduce='add'`` or ``'multiply'`` combines with the existing values instead.

    Example::

        >>> ember.zeros(2, 3).scatter(1, ember.tensor([[2], [0]]), 1.0)
        tensor([[0., 0., 1.],
                [1., 0., 0.]])
    """
    if src is None:
        src = value
    check(src is not None, "scatter", "expected `src` (a Tensor) or `value` (a number)",
          TypeError)
    if isinstance(src, Tensor) and src._data.ndim == 0 and isinstance(index, Tensor) and \
            index._data.ndim:
        # torch treats a 0-dim src as the scalar overload; expand keeps its gradient
        src = src.reshape([1] * index._data.ndim).expand(index.shape)
    if reduce is None:
        return apply(OPS["_scatter"], (input, dim, index, src))
    if reduce not in ("add", "multiply"):
        raise make(RuntimeError, "scatter", f"reduce argument must be either add or multiply, "
                                            f"got {reduce!r}")
    if not isinstance(src, Tensor):
        import ember
        check_index_dtype("scatter", index)
        src = ember.full(index.shape, src, dtype=input.dtype, device=input.device)
    if reduce == "add":
        return scatter_add(input, dim, index, src)
    return scatter_reduce(input, dim, index, src, "prod")


Tensor.scatter_ = inplace_variant("scatter_", scatter)


@register("scatter_add", meta=_scatter_meta, inplace=True)
class ScatterAdd(OpDef):
    """``input`` with ``src`` added at ``index`` along ``dim`` (repeated indices accumulate)."""

    def forward(ctx, xp, input, dim, index, src):
        x, idx, d = _scatter_prep("scatter_add", xp, input, dim, index)
        out = x.copy()
        reduce_at(xp, "sum", out, dim_key(xp, idx, d), _as1d(_src_part(src, index)))
        ctx.dim, ctx.sshape = d, src.shape
        ctx.save(index)
        return out.reshape(input.shape)

    def backward(ctx, grad):
        (index,) = ctx.saved
        g_src = None
        if ctx.next_edges[3] is not None:
            g_src = _src_grad(grad, ctx.dim, index, ctx.sshape)
        return grad, None, None, g_src


scatter_add = OPS["scatter_add"].function

_REDUCES = ("sum", "prod", "mean", "amax", "amin")


def _scatter_reduce_meta(op: Any, input: Any, dim: int, index: Any, src: Any, reduce: str,
                         include_self: bool = True) -> Any:
    check(reduce in _REDUCES, "scatter_reduce",
          f"reduce argument must be either sum, prod, mean, amax or amin, got {reduce!r}")
    _tensor("scatter_reduce", src, "src")
    return _scatter_meta(op, input, dim, index, src)


def _identity(xp: Any, reduce: str, dt: Any) -> Any:
    if reduce in ("sum", "mean"):
        return 0
    if reduce == "prod":
        return 1
    big = np.inf if dt.kind == "f" else (np.iinfo(dt).max if dt.kind in "iu" else True)
    small = -np.inf if dt.kind == "f" else (np.iinfo(dt).min if dt.kind in "iu" else False)
    return small if reduce == "amax" else big


@register("scatter_reduce", meta=_scatter_reduce_meta, inplace=True,
          sig="input, dim, index, src, reduce, *, include_self=True")
class ScatterReduce(OpDef):
    """Reduce ``src`` into ``input`` at ``index`` along ``dim`` with ``reduce`` (sum, prod,
    mean, amax, amin); ``include_self=False`` leaves the old values out of the reduction."""

    def forward(ctx, xp, input, dim, index, src, reduce, include_self):
        x, idx, d = _scatter_prep("scatter_reduce", xp, input, dim, index)
        key = dim_key(xp, idx, d)
        vals = _as1d(_src_part(src, index))
        out = x.copy()
        if not include_self:
            out[key] = _identity(xp, reduce, out.dtype)
        if reduce == "mean":
            counts = xp.full(out.shape, 1 if include_self else 0, dtype=xp.int64)
            reduce_at(xp, "sum", counts, key, xp.ones(idx.shape, xp.int64))
            reduce_at(xp, "sum", out, key, vals)
            safe = xp.maximum(counts, 1)
            out = (out / safe if out.dtype.kind in "fc" else out // safe).astype(out.dtype)
        else:
            reduce_at(xp, reduce, out, key, vals)
        ctx.dim, ctx.reduce, ctx.include_self = d, reduce, include_self
        out = out.reshape(input.shape)
        ctx.save(input, index, src, out)
        return out

    def backward(ctx, grad):
        x, index, src_full, result = ctx.saved
        d, reduce, include_self = ctx.dim, ctx.reduce, ctx.include_self
        # only the leading index.shape block of src takes part
        src = src_full
        if src.ndim and tuple(src.shape) != tuple(index.shape):
            src = src_full[tuple(slice(0, n) for n in index.shape)]
        if reduce == "sum":
            g_self, g_src = grad, grad.gather(d, index)
        elif reduce == "mean":
            import ember
            n = ember.ones_like(grad) if include_self else ember.zeros_like(grad)
            n = scatter_add(n, d, index, ember.ones_like(src))
            n = n.masked_fill(n == 0, 1)
            g_self = grad / n
            g_src = grad.gather(d, index) / n.gather(d, index)
        elif reduce == "prod":
            g_self, g_src = _prod_backward(grad, x, index, src, result, d, include_self)
        else:
            value = result.gather(d, index)
            self_is = (x == result).to(grad.dtype)
            src_is = (src == value).to(grad.dtype)
            share = grad / scatter_add(self_is, d, index, src_is)
            g_self = self_is * share
            g_src = src_is * share.gather(d, index)
        if not include_self:
            g_self = apply(OPS["_scatter"], (g_self, d, index, 0))
        if tuple(g_src.shape) != tuple(src.shape):
            import ember
            z = ember.zeros(src.shape, dtype=grad.dtype, device=grad.device)
            g_src = apply(OPS["_put"], (z, tuple(slice(0, n) for n in index.shape), g_src, False))
        return g_self, None, None, g_src, None, None


def _prod_backward(grad: Tensor, x: Tensor, index: Tensor, src: Tensor, result: Tensor, d: int,
                   include_self: bool) -> tuple:
    """torch's scatter_reduce prod gradient: zeros in self or src are handled exactly by
    recomputing the product without them (a ratio ``result / x`` would divide by zero)."""
    import ember
    masked_self = x.masked_fill(x == 0, 1)
    g_self = grad * scatter_reduce(masked_self, d, index, src, "prod",
                                   include_self=include_self) / masked_self
    src_zero = src == 0
    n_zero = scatter_add(ember.zeros_like(grad), d, index, src_zero.to(grad.dtype)).gather(
        d, index)
    single = src_zero & (n_zero == 1)
    masked_src = src.masked_fill(single, 1)
    masked_result = scatter_reduce(x, d, index, masked_src, "prod", include_self=include_self)
    from ember.ops.elementwise import _where
    g_src = _where(single, (grad * masked_result).gather(d, index),
                   (grad * result).gather(d, index) / src.masked_fill(src_zero, 1))
    return g_self, g_src


scatter_reduce = OPS["scatter_reduce"].function


# ---------------------------------------------------------------------- index_* along one dim
def _index_dim_meta(op: str, input: Any, dim: int, index: Any) -> int:
    _tensor(op, input, "input")
    check_index_dtype(op, index, f"{op}(): Expected dtype int32 or int64 for index")
    check(index._data.ndim <= 1, op, f"{op}(): Index is supposed to be a vector, got shape "
                                     f"{tuple(index._data.shape)}", IndexError)
    return M.wrap_dim(op, dim, input._data.ndim)


def _index_select_meta(op: Any, input: Any, dim: int, index: Any) -> Any:
    d = _index_dim_meta("index_select", input, dim, index)
    if input._data.ndim == 0:
        check(index._data.size == 1, "index_select", f"index_select(): Index to scalar can have "
                                                     f"only 1 value, got {index._data.size} "
                                                     f"value(s)")
        return TensorMeta(())
    shape = list(input._data.shape)
    shape[d] = index._data.size
    return TensorMeta(tuple(shape))


@register("index_select", meta=_index_select_meta)
class IndexSelect(OpDef):
    """Entries ``index`` (a 1-d integer tensor) of ``input`` along ``dim``."""

    def forward(ctx, xp, input, dim, index):
        x = _as1d(input)
        d = dim % x.ndim
        idx = index.reshape(-1)
        check_bounds("index_select", xp, idx, x.shape[d], d, prefix="index_select(): ")
        ctx.dim, ctx.shape = d, input.shape
        ctx.save(index)
        return xp.take(x, idx, axis=d).reshape(input.shape if input.ndim == 0 else
                                               x.shape[:d] + (idx.size,) + x.shape[d + 1:])

    def backward(ctx, grad):
        (index,) = ctx.saved
        import ember
        z = ember.zeros(ctx.shape, dtype=grad.dtype, device=grad.device)
        if not ctx.shape:
            return (z + grad.sum()), None, None
        return index_add(z, ctx.dim, index.reshape(-1), grad), None, None


def _index_src_meta(op: Any, input: Any, dim: int, index: Any, source: Any, *rest: Any) -> Any:
    name = op.name
    d = _index_dim_meta(name, input, dim, index)
    _tensor(name, source, "source")
    if source._dtype is not input._dtype:
        raise make(RuntimeError, name, f"{name}_(): self ({input._dtype}) and source "
                                       f"({source._dtype}) must have the same scalar type")
    xs, ss = input._data.shape, source._data.shape
    n = index._data.size
    if len(xs) and len(ss):
        check(len(ss) == len(xs), name, f"{name}_(): source {tuple(ss)} and self {tuple(xs)} "
                                        f"must have the same number of dimensions")
        check(ss[d] == n, name, f"{name}_(): Number of indices ({n}) should be equal to "
                                f"source.size(dim): ({ss[d]}), for dim: {d}")
        for k in range(len(xs)):
            check(k == d or ss[k] == xs[k], name,
                  f"{name}_(): source {tuple(ss)} and self {tuple(xs)} must match in every "
                  f"dimension but {d}")
    return TensorMeta(xs)


def _dim_slice_key(d: int, idx: Any) -> tuple:
    return (slice(None),) * d + (idx,)


@register("index_add", meta=_index_src_meta, inplace=True,
          sig="input, dim, index, source, *, alpha=1")
class IndexAdd(OpDef):
    """``input`` with ``alpha * source`` added at entries ``index`` along ``dim``
    (repeated indices accumulate)."""

    def forward(ctx, xp, input, dim, index, source, alpha):
        x = _as1d(input)
        d = dim % x.ndim
        idx = index.reshape(-1)
        check_bounds("index_add", xp, idx, x.shape[d], d)
        out = x.copy()
        src = _as1d(source).reshape(x.shape[:d] + (idx.size,) + x.shape[d + 1:])
        if alpha != 1:
            src = src * alpha
        reduce_at(xp, "sum", out, _dim_slice_key(d, idx), src.astype(out.dtype, copy=False))
        ctx.dim, ctx.alpha, ctx.sshape = d, alpha, source.shape
        ctx.save(index)
        return out.reshape(input.shape)

    def backward(ctx, grad):
        (index,) = ctx.saved
        g_src = None
        if ctx.next_edges[3] is not None:
            g_src = grad.reshape(-1) if grad.ndim == 0 else grad
            g_src = g_src.index_select(ctx.dim, index.reshape(-1)).reshape(ctx.sshape)
            if ctx.alpha != 1:
                g_src = g_src * ctx.alpha
        return grad, None, None, g_src, None


index_add = OPS["index_add"].function


@register("index_copy", meta=_index_src_meta, inplace=True)
class IndexCopy(OpDef):
    """``input`` with entries ``index`` along ``dim`` replaced by ``source``."""

    def forward(ctx, xp, input, dim, index, source):
        x = _as1d(input)
        d = dim % x.ndim
        idx = index.reshape(-1)
        check_bounds("index_copy", xp, idx, x.shape[d], d, kind=IndexError,
                     prefix="index_copy_(): ")
        out = x.copy()
        out[_dim_slice_key(d, idx)] = _as1d(source).reshape(
            x.shape[:d] + (idx.size,) + x.shape[d + 1:])
        ctx.dim, ctx.sshape = d, source.shape
        ctx.save(index)
        return out.reshape(input.shape)

    def backward(ctx, grad):
        (index,) = ctx.saved
        idx = index.reshape(-1)
        g1 = grad.reshape(-1) if grad.ndim == 0 else grad
        g_self = g1.index_fill(ctx.dim, idx, 0).reshape(grad.shape)
        g_src = g1.index_select(ctx.dim, idx).reshape(ctx.sshape)
        return g_self, None, None, g_src


def _index_fill_meta(op: Any, input: Any, dim: int, index: Any, value: Any) -> Any:
    _index_dim_meta("index_fill", input, dim, index)
    if isinstance(value, Tensor):
        check(value._data.ndim == 0, "index_fill",
              f"index_fill_ only supports a 0-dimensional value tensor, but got tensor with "
              f"{value._data.ndim} dimension(s).")
    return TensorMeta(input._data.shape)


@register("index_fill", meta=_index_fill_meta, inplace=True)
class IndexFill(OpDef):
    """``input`` with entries ``index`` along ``dim`` set to ``value`` (a number or 0-d
    tensor); negative indices count from the end."""

    def forward(ctx, xp, input, dim, index, value):
        x = _as1d(input)
        d = dim % x.ndim
        idx = index.reshape(-1)
        check_bounds("index_fill", xp, idx, x.shape[d], d, negative=True, kind=IndexError)
        out = x.copy()
        out[_dim_slice_key(d, idx)] = value
        ctx.dim = d
        ctx.save(index)
        return out.reshape(input.shape)

    def backward(ctx, grad):
        (index,) = ctx.saved
        idx = index.reshape(-1)
        g1 = grad.reshape(-1) if grad.ndim == 0 else grad
        g_self = g1.index_fill(ctx.dim, idx, 0).reshape(grad.shape)
        g_val = None
        if ctx.next_edges[3] is not None:
            # a repeated index fills once, so count each position once
            mask = g1.new_zeros(g1.shape[ctx.dim]).index_fill(0, idx, 1)
            shape = [1] * g1.ndim
            shape[ctx.dim] = -1
            g_val = (g1 * mask.reshape(shape)).sum()
        return g_self, None, None, g_val


# ---------------------------------------------------------------------- index_put
@composite()
def index_put(input: Tensor, indices: Any, values: Tensor, accumulate: bool = False) -> Tensor:
    """A copy of ``input`` with ``values`` written at ``input[indices]`` (``indices`` a tuple
    of integer or bool tensors); ``accumulate=True`` adds, summing repeated positions."""
    from ember.ops.indexing import normalize_key
    _tensor("index_put", values, "values")
    check(isinstance(indices, (tuple, list)), "index_put",
          f"indices must be a tuple of Tensors, got {type(indices).__name__}", TypeError)
    if values._dtype is not input._dtype:
        raise make(RuntimeError, "index_put", f"Index put requires the source and destination "
                                              f"dtypes match, got {input._dtype} for the "
                                              f"destination and {values._dtype} for the source.")
    key, _ = normalize_key(tuple(slice(None) if i is None else i for i in indices), input,
                           "index_put")
    return apply(OPS["_put"], (input, key, values, bool(accumulate)))


Tensor.index_put_ = inplace_variant("index_put_", index_put)


# ---------------------------------------------------------------------- masks
def _mask_check(op: str, mask: Any, name: str = "mask") -> None:
    _tensor(op, mask, name)
    if mask._dtype is not _dt.bool:
        raise make(RuntimeError, op, f"{op} only supports boolean masks, but got mask with "
                                     f"dtype {mask._dtype} (shape {tuple(mask.shape)})")


def _masked_fill_meta(op: Any, input: Any, mask: Any, value: Any) -> Any:
    _tensor("masked_fill", input, "input")
    _mask_check("masked_fill", mask)
    if isinstance(value, Tensor):
        check(value._data.ndim == 0, "masked_fill",
              f"masked_fill_ only supports a 0-dimensional value tensor, but got tensor with "
              f"{value._data.ndim} dimension(s).")
    return TensorMeta(M.broadcast_shapes("masked_fill", input._data.shape, mask._data.shape))


@register("masked_fill", meta=_masked_fill_meta, inplace=True, onnx="Where")
class MaskedFill(OpDef):
    """``input`` with ``value`` where ``mask`` (a bool tensor broadcastable to it) is True."""

    def forward(ctx, xp, input, mask, value):
        ctx.save(mask)
        if hasattr(value, "dtype"):
            value = value.astype(input.dtype)
        elif input.dtype.kind in "iu" and isinstance(value, float):
            value = int(value)  # torch truncates a float fill of an integer tensor
        return xp.where(mask, xp.asarray(value, dtype=input.dtype), input)

    def backward(ctx, grad):
        (mask,) = ctx.saved
        g_self = grad.masked_fill(mask, 0)
        g_val = None
        if ctx.next_edges[2] is not None:
            g_val = (grad - g_self).sum()
        return g_self, None, g_val


masked_fill = OPS["masked_fill"].function


def _masked_select_meta(op: Any, input: Any, mask: Any) -> Any:
    _tensor("masked_select", input, "input")
    _tensor("masked_select", mask, "mask")
    check(mask._dtype is _dt.bool, "masked_select",
          f"masked_select: expected BoolTensor for mask, got {mask._dtype}")
    return TensorMeta(M.broadcast_shapes("masked_select", input._data.shape, mask._data.shape))


@register("masked_select", meta=_masked_select_meta)
class MaskedSelect(OpDef):
    """The entries of ``input`` where ``mask`` is True, as a 1-d tensor (both broadcast)."""

    def forward(ctx, xp, input, mask):
        shape = xp.broadcast_shapes(input.shape, mask.shape)
        m = xp.broadcast_to(mask, shape)
        ctx.save(m)
        return xp.broadcast_to(input, shape)[m]

    def backward(ctx, grad):
        (m,) = ctx.saved
        import ember
        z = ember.zeros(m.shape, dtype=grad.dtype, device=grad.device)
        return masked_scatter(z, m, grad), None


def _masked_scatter_meta(op: Any, input: Any, mask: Any, source: Any) -> Any:
    _tensor("masked_scatter", input, "input")
    _mask_check("masked_scatter", mask)
    _tensor("masked_scatter", source, "source")
    check(source._dtype is input._dtype, "masked_scatter",
          f"masked_scatter: expected self and source to have same dtypes but got "
          f"{input._dtype} and {source._dtype}")
    return TensorMeta(M.broadcast_shapes("masked_scatter", input._data.shape, mask._data.shape))


@register("masked_scatter", meta=_masked_scatter_meta, inplace=True)
class MaskedScatter(OpDef):
    """``input`` with the positions where ``mask`` is True filled, in row-major order, from
    the first elements of ``source``."""

    def forward(ctx, xp, input, mask, source):
        shape = xp.broadcast_shapes(input.shape, mask.shape)
        m = xp.broadcast_to(mask, shape)
        n = int(m.sum())
        if source.size < n:
            raise make(RuntimeError, "masked_scatter",
                       f"Number of elements of source < number of ones in mask: source "
                       f"{tuple(source.shape)} has {source.size}, mask {tuple(mask.shape)} has {n}")
        out = xp.broadcast_to(input, shape).copy()
        out[m] = source.reshape(-1)[:n]
        ctx.sshape, ctx.n = source.shape, n
        ctx.save(m)
        return out

    def backward(ctx, grad):
        (m,) = ctx.saved
        g_self = grad.masked_fill(m, 0)
        g_src = None
        if ctx.next_edges[2] is not None:
            import ember
            sel = grad.masked_select(m)
            total = 1
            for s in ctx.sshape:
                total *= s
            pad = ember.zeros(total - ctx.n, dtype=grad.dtype, device=grad.device)
            g_src = ember.cat([sel, pad]).reshape(ctx.sshape)
        return g_self, None, g_src


masked_scatter = OPS["masked_scatter"].function


# ---------------------------------------------------------------------- take / put
def _flat_index(op: str, input: Tensor, index: Tensor, kind: str = "take") -> Any:
    _tensor(op, index, "index")
    if index._dtype is not _dt.int64:
        raise make(RuntimeError, op, f"{op}(): Expected a long tensor for index, but got "
                                     f"{index._dtype}")
    n = input._data.size
    arr = index._data
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < -n or hi >= n:
            bad = hi if hi >= n else lo
            raise make(IndexError, op, f"out of range: tried to access index {bad} on a tensor "
                                       f"of {n} elements.")
    return arr


@composite()
def take(input: Tensor, index: Tensor) -> Tensor:
    """Elements of ``input`` treated as 1-d, at ``index`` (negative counts from the end);
    the result has ``index``'s shape."""
    arr = _flat_index("take", input, index)
    return apply(OPS["index"], (input.reshape(-1), (arr,)))


@composite()
def take_along_dim(input: Tensor, indices: Tensor, dim: int | None = None) -> Tensor:
    """``gather`` with NumPy's ``take_along_axis`` broadcasting; ``dim=None`` works on the
    flattened input."""
    if dim is None:
        return input.reshape(-1).gather(0, indices.reshape(-1))
    nd = input.ndim
    d = M.wrap_dim("take_along_dim", dim, nd)
    check(indices.ndim == nd, "take_along_dim",
          f"torch.take_along_dim(): input and indices should have the same number of "
          f"dimensions, but got {nd} dimensions for input, and {indices.ndim} dimensions for "
          f"indices")
    xs, js = list(input.shape), list(indices.shape)
    xs[d] = js[d] = 1
    b = list(M.broadcast_shapes("take_along_dim", tuple(xs), tuple(js)))
    bx, bi = list(b), list(b)
    bx[d], bi[d] = input.shape[d], indices.shape[d]
    return input.expand(*bx).gather(d, indices.expand(*bi))


@composite()
def put(input: Tensor, index: Tensor, source: Tensor, accumulate: bool = False) -> Tensor:
    """A copy of ``input`` (treated as 1-d) with ``source`` written at ``index``;
    ``accumulate=True`` adds instead (repeated indices sum)."""
    _tensor("put", source, "source")
    arr = _flat_index("put_", input, index)
    if source._dtype is not input._dtype:
        raise make(RuntimeError, "put_", f"put_(): self and source expected to have the same "
                                         f"dtype, but got self.dtype = {input._dtype} and "
                                         f"source.dtype = {source._dtype}")
    if source._data.size != arr.size:
        raise make(IndexError, "put_", f"put_(): Expected source and index to have the same "
                                       f"number of elements, but got source.numel() = "
                                       f"{source._data.size}, index.numel() = {arr.size}")
    flat = apply(OPS["_put"], (input.reshape(-1), (arr.reshape(-1),), source.reshape(-1),
                               bool(accumulate)))
    return flat.reshape(input.shape)


Tensor.put_ = inplace_variant("put_", put)


# ---------------------------------------------------------------------- nonzero
@register("nonzero", meta=M.unary, differentiable=False, sig="input, *, as_tuple=False")
class Nonzero(OpDef):
    """Indices of the non-zero elements: an ``(n, input.ndim)`` int64 tensor, or with
    ``as_tuple=True`` one 1-d tensor per dim (a 0-d input counts as 1-d)."""

    def forward(ctx, xp, input, as_tuple):
        if input.ndim == 0:
            hit = xp.nonzero(input.reshape(1))[0].astype(xp.int64)
            if as_tuple:
                return (hit,)
            return xp.zeros((hit.size, 0), dtype=xp.int64)
        idx = xp.nonzero(input)
        if as_tuple:
            return tuple(i.astype(xp.int64) for i in idx)
        return xp.stack(idx, axis=1).astype(xp.int64) if idx else xp.zeros((0, 0), xp.int64)


@composite()
def argwhere(input: Tensor) -> Tensor:
    """``nonzero(input)``: an ``(n, input.ndim)`` tensor of indices of non-zero elements."""
    return OPS["nonzero"].function(input)
