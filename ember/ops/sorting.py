"""Sorting and searching: sort/argsort/msort, topk, kthvalue, median/nanmedian, mode,
quantile/nanquantile, unique/unique_consecutive, searchsorted/bucketize, histc/histogram,
bincount, count_nonzero and isin.

Sorts are stable and put NaN last (first when descending), as torch does. Ops that pick
elements (values with indices) send the gradient back to the picked positions through
``scatter_add``, so double backward works.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Any

import numpy as np

from ember import dtypes as _dt
from ember.errors import check, make
from ember.ops import meta as M
from ember.ops.registry import OPS, OpDef, TensorMeta, apply, composite, register
from ember.tensor import Tensor


def _return_type(name: str, fields: tuple) -> type:
    """A named tuple type printed as torch's ``torch.return_types.<name>``."""
    base = namedtuple(name, fields)
    base.__module__ = "ember.return_types"
    return base


sort_out = _return_type("sort", ("values", "indices"))
topk_out = _return_type("topk", ("values", "indices"))
kthvalue_out = _return_type("kthvalue", ("values", "indices"))
median_out = _return_type("median", ("values", "indices"))
nanmedian_out = _return_type("nanmedian", ("values", "indices"))
mode_out = _return_type("mode", ("values", "indices"))
histogram_out = _return_type("histogram", ("hist", "bin_edges"))


def sort_arrays(xp: Any, x: Any, axis: int, descending: bool) -> tuple:
    """(values, indices) of a stable sort along ``axis``; NaN sorts as the largest value."""
    if not descending:
        idx = xp.argsort(x, axis=axis, kind="stable")
    else:
        # sort the reversed array ascending, then reverse: values descend, NaN first, and
        # equal values keep their original order
        n = x.shape[axis]
        rev = xp.flip(x, axis)
        idx = xp.flip(xp.argsort(rev, axis=axis, kind="stable"), axis)
        idx = (n - 1) - idx
    return xp.take_along_axis(x, idx, axis), idx.astype(xp.int64)


def pick_backward(grad: Tensor, dim: int, index: Tensor, shape: tuple, keepdim: bool = True) -> Tensor:
    """Gradient of an op that picked ``input`` values at ``index`` along ``dim``."""
    import ember
    if not shape:
        return grad.reshape(())
    if not keepdim:
        grad, index = grad.unsqueeze(dim), index.unsqueeze(dim)
    z = ember.zeros(shape, dtype=grad.dtype, device=grad.device)
    return z.scatter_add(dim, index, grad)


def _dim_meta(op: Any, input: Any, dim: int = -1, *rest: Any) -> TensorMeta:
    check(isinstance(input, Tensor), op.name, f"argument 'input' must be Tensor, not "
                                              f"{type(input).__name__}", TypeError)
    M.wrap_dim(op.name, dim, input._data.ndim)
    return TensorMeta(input._data.shape)


# ---------------------------------------------------------------------- sort family
@register("sort", meta=_dim_meta, sig="input, dim=-1, descending=False, *, stable=False",
          nondiff_outputs=(1,), out_type=sort_out)
class Sort(OpDef):
    """Sort along ``dim``: a named tuple (values, indices). The sort is always stable (so
    ``stable=True`` holds); NaN counts as the largest value."""

    def forward(ctx, xp, input, dim, descending, stable):
        if input.ndim == 0:
            ctx.dim, ctx.shape = 0, ()
            ctx.save(None)
            return input.copy(), xp.zeros((), xp.int64)
        d = dim % input.ndim
        vals, idx = sort_arrays(xp, input, d, descending)
        ctx.dim, ctx.shape = d, input.shape
        ctx.save(idx)
        return vals, idx

    def backward(ctx, gv, gi):
        (idx,) = ctx.saved
        if not ctx.shape:
            return gv, None, None, None
        return pick_backward(gv, ctx.dim, idx, ctx.shape), None, None, None


@composite()
def argsort(input: Tensor, dim: int = -1, descending: bool = False, *,
            stable: bool = False) -> Tensor:
    """Indices that sort ``input`` along ``dim`` (stable)."""
    return OPS["sort"].function(input, dim, descending, stable=stable).indices


@composite()
def msort(input: Tensor) -> Tensor:
    """Values sorted along dim 0."""
    return OPS["sort"].function(input, 0).values


def _topk_meta(op: Any, input: Any, k: int, dim: int = -1, *rest: Any) -> TensorMeta:
    nd = input._data.ndim
    d = M.wrap_dim(op.name, dim, nd)
    n = input._data.shape[d] if nd else 1
    check(0 <= k <= n, op.name, f"selected index k out of range: k={k} for dimension {d} of "
                                f"size {n}")
    return TensorMeta(input._data.shape)


@register("topk", meta=_topk_meta, sig="input, k, dim=-1, largest=True, sorted=True",
          nondiff_outputs=(1,), out_type=topk_out)
class TopK(OpDef):
    """The ``k`` largest (``largest=False``: smallest) elements along ``dim`` with their
    indices, in sorted order."""

    def forward(ctx, xp, input, k, dim, largest, sorted):
        x = input.reshape(1) if input.ndim == 0 else input
        d = dim % x.ndim
        vals, idx = sort_arrays(xp, x, d, largest)
        key = (slice(None),) * d + (slice(0, k),)
        vals, idx = vals[key], idx[key]
        ctx.dim, ctx.shape = d, input.shape
        ctx.save(idx)
        if input.ndim == 0:
            return vals.reshape(()), idx.reshape(())
        return vals, idx

    def backward(ctx, gv, gi):
        (idx,) = ctx.saved
        return pick_backward(gv, ctx.dim, idx, ctx.shape), None, None, None, None


def _kth_meta(op: Any, input: Any, k: int, dim: int = -1, keepdim: bool = False) -> TensorMeta:
    nd = input._data.ndim
    d = M.wrap_dim("kthvalue", dim, nd)
    n = input._data.shape[d] if nd else 1
    check(1 <= k <= n, "kthvalue", f"kthvalue(): selected number k out of range for dimension "
                                   f"{d}: k={k}, size {n}")
    return M.reduction(op, input, dim if nd else None, keepdim)


@register("kthvalue", meta=_kth_meta, sig="input, k, dim=-1, keepdim=False",
          nondiff_outputs=(1,), out_type=kthvalue_out)
class KthValue(OpDef):
    """The ``k``-th smallest element along ``dim`` and its index."""

    def forward(ctx, xp, input, k, dim, keepdim):
        x = input.reshape(1) if input.ndim == 0 else input
        d = dim % x.ndim
        vals, idx = sort_arrays(xp, x, d, False)
        key = (slice(None),) * d + (slice(k - 1, k),)
        v, i = vals[key], idx[key]
        ctx.dim, ctx.shape, ctx.keepdim = d, input.shape, keepdim or input.ndim == 0
        ctx.save(i)
        if input.ndim == 0:
            return v.reshape(()), i.reshape(())
        if not keepdim:
            v, i = v.squeeze(d), i.squeeze(d)
        return v, i

    def backward(ctx, gv, gi):
        (idx,) = ctx.saved
        g = gv if ctx.keepdim or not ctx.shape else gv.unsqueeze(ctx.dim)
        return pick_backward(g, ctx.dim, idx, ctx.shape), None, None, None


# ---------------------------------------------------------------------- median / mode
def _median_rank(xp: Any, s: Any, axis: int, ignore_nan: bool) -> Any:
    """Position (keepdims) of the lower median in each sorted row; NaN rows point at NaN."""
    n = s.shape[axis]
    if s.dtype.kind not in "fc":
        return xp.full(s.shape[:axis] + (1,) + s.shape[axis + 1:], (n - 1) // 2, xp.int64)
    valid = (~xp.isnan(s)).sum(axis=axis, keepdims=True)
    if ignore_nan:
        return xp.maximum(valid - 1, 0) // 2
    # any NaN: torch returns NaN at the first NaN's position (NaNs sort last)
    return xp.where(valid < n, valid, (n - 1) // 2)


def _median_all_fwd(ctx: Any, xp: Any, input: Any, ignore_nan: bool) -> Any:
    flat = input.reshape(-1)
    if flat.size == 0:
        return xp.asarray(xp.nan, dtype=input.dtype) if input.dtype.kind in "fc" else \
            _raise_empty("median")
    vals, _ = sort_arrays(xp, flat, 0, False)
    r = _median_rank(xp, vals, 0, ignore_nan)
    y = vals[r].reshape(())
    ctx.save(input, y)
    return y


def _raise_empty(op: str) -> Any:
    raise make(IndexError, op, f"{op}() cannot compute the median of an empty integer tensor")


def _evenly_backward(grad: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """torch's gradient for median()/nanmedian() without dim: split among all elements equal
    to the result (NaN results: among the NaNs)."""
    mask = (x == y) if not bool(y.isnan()) else x.isnan()
    mask = mask.to(grad.dtype)
    return grad * mask / mask.sum()


def _median_ops(name: str, ignore_nan: bool, out_type: type) -> None:
    class MedianAll(OpDef):
        __doc__ = f"The lower {name} of all elements."

        def forward(ctx, xp, input):
            return _median_all_fwd(ctx, xp, input, ignore_nan)

        def backward(ctx, grad):
            x, y = ctx.saved
            return _evenly_backward(grad, x, y)

    class MedianDim(OpDef):
        __doc__ = f"The lower {name} along ``dim`` and its index."

        def forward(ctx, xp, input, dim, keepdim):
            x = input.reshape(1) if input.ndim == 0 else input
            d = dim % x.ndim
            vals, idx = sort_arrays(xp, x, d, False)
            r = _median_rank(xp, vals, d, ignore_nan)
            v, i = xp.take_along_axis(vals, r, d), xp.take_along_axis(idx, r, d)
            ctx.dim, ctx.shape, ctx.keepdim = d, input.shape, keepdim or input.ndim == 0
            ctx.save(i)
            if input.ndim == 0:
                return v.reshape(()), i.reshape(())
            if not keepdim:
                v, i = v.squeeze(d), i.squeeze(d)
            return v, i

        def backward(ctx, gv, gi):
            (idx,) = ctx.saved
            g = gv if ctx.keepdim or not ctx.shape else gv.unsqueeze(ctx.dim)
            return pick_backward(g, ctx.dim, idx, ctx.shape), None, None

    camel = name.capitalize()
    register(f"_{name}_all", meta=M.unary, function=False, method=False,
             node_name=camel)(MedianAll)
    register(f"_{name}_dim", meta=M.nonempty_reduction, function=False, method=False,
             nondiff_outputs=(1,), out_type=out_type, node_name=camel)(MedianDim)


_median_ops("median", False, median_out)
_median_ops("nanmedian", True, nanmedian_out)


@composite()
def median(input: Tensor, dim: int | None = None, keepdim: bool = False) -> Any:
    """``median(input)``: the lower median of all elements (NaN if any is NaN);
    ``median(input, dim, keepdim=False)``: a named tuple (values, indices) along ``dim``."""
    if dim is None:
        return apply(OPS["_median_all"], (input,))
    return apply(OPS["_median_dim"], (input, dim, keepdim))


@composite()
def nanmedian(input: Tensor, dim: int | None = None, keepdim: bool = False) -> Any:
    """Like :func:`median`, ignoring NaN (NaN only when a row is all NaN)."""
    if dim is None:
        return apply(OPS["_nanmedian_all"], (input,))
    return apply(OPS["_nanmedian_dim"], (input, dim, keepdim))


def _mode_meta(op: Any, input: Any, dim: int = -1, keepdim: bool = False) -> TensorMeta:
    nd = input._data.ndim
    return M.nonempty_reduction(op, input, dim if nd else None, keepdim)


@register("mode", meta=_mode_meta, sig="input, dim=-1, keepdim=False", nondiff_outputs=(1,),
          out_type=mode_out)
class Mode(OpDef):
    """The most frequent value along ``dim`` (the smallest among equally frequent ones) and
    the index of its last occurrence."""

    def forward(ctx, xp, input, dim, keepdim):
        x = input.reshape(1) if input.ndim == 0 else input
        d = dim % x.ndim
        rows = xp.moveaxis(x, d, -1)
        lead = rows.shape[:-1]
        n = rows.shape[-1]
        r2 = rows.reshape(-1, n)
        s = xp.sort(r2, axis=1)
        starts = xp.concatenate([xp.ones((r2.shape[0], 1), bool), s[:, 1:] != s[:, :-1]], 1)
        run = xp.cumsum(starts, axis=1) - 1
        flat = (xp.arange(r2.shape[0])[:, None] * n + run).reshape(-1)
        counts = xp.bincount(flat, minlength=r2.size).reshape(r2.shape)
        at = xp.take_along_axis(counts, run, 1)
        best = xp.argmax(at, axis=1)
        val = s[xp.arange(r2.shape[0]), best]
        eq = r2 == val[:, None]
        idx = (n - 1) - xp.argmax(eq[:, ::-1], axis=1)
        v, i = val.reshape(lead), idx.astype(xp.int64).reshape(lead)
        if keepdim and input.ndim:
            v, i = xp.expand_dims(v, d), xp.expand_dims(i, d)
        ctx.dim, ctx.shape, ctx.keepdim = d, input.shape, keepdim or input.ndim == 0
        ctx.save(i)
        return v, i

    def backward(ctx, gv, gi):
        (idx,) = ctx.saved
        if not ctx.shape:
            return gv, None, None
        return pick_backward(gv, ctx.dim, idx, ctx.shape, ctx.keepdim), None, None


# ---------------------------------------------------------------------- quantiles
_INTERP = ("linear", "lower", "higher", "midpoint", "nearest")


def _quantile(name: str, input: Tensor, q: Any, dim: Any, keepdim: bool, interpolation: str,
              ignore_nan: bool) -> Tensor:
    import ember
    check(isinstance(input, Tensor), name, f"argument 'input' must be Tensor, not "
                                           f"{type(input).__name__}", TypeError)
    check(input.dtype in (_dt.float32, _dt.float64), name,
          f"{name}() input tensor must be either float or double dtype, got {input.dtype}")
    check(interpolation in _INTERP, name, f"{name}() interpolation must be one of linear, "
                                          f"lower, higher, midpoint or nearest. Got "
                                          f"{interpolation}")
    if isinstance(q, Tensor):
        check(q.ndim <= 1, name, f"{name}() q must be a scalar or 1D tensor, got shape "
                                 f"{tuple(q.shape)}")
        check(q.dtype is input.dtype, name, f"{name}() q tensor must be same dtype as the input "
                                            f"tensor, got {q.dtype} and {input.dtype}")
        qs = q.detach()
    else:
        qs = ember.tensor(float(q), dtype=input.dtype, device=input.device)
    check(input.numel() > 0, name, f"{name}() input tensor must be non-empty")
    if qs.numel():
        lo_q, hi_q = float(qs.min()), float(qs.max())
        check(0 <= lo_q and hi_q <= 1, name, f"{name}() q must be in the range [0, 1] but got "
                                             f"{lo_q if lo_q < 0 else hi_q}")
    x = input.reshape(-1) if dim is None else input
    d = 0 if dim is None else M.wrap_dim(name, dim, max(input.ndim, 1))
    if x.ndim == 0:
        x = x.reshape(1)
    s = x.sort(d).values.movedim(d, -1)            # (..., n), NaN last
    n = s.shape[-1]
    nan = s.isnan()
    q1 = qs.reshape(-1)                               # (Q,)
    if ignore_nan:
        cnt = (~nan).sum(-1, keepdim=True).to(input.dtype)
        rank = q1 * (cnt - 1).clamp(min=0)
    else:
        rank = q1 * (n - 1) + s.detach()[..., :1] * 0  # constant, broadcast to (..., Q)
        rank = rank.masked_fill(nan.any(-1, keepdim=True), n - 1)  # NaN rows give NaN
    if interpolation == "nearest":
        rank = rank.round()
    lo = rank.floor().long()
    hi = rank.ceil().long().clamp(max=n - 1)
    v_lo, v_hi = s.gather(-1, lo), s.gather(-1, hi)
    if interpolation in ("lower", "nearest"):
        out = v_lo
    elif interpolation == "higher":
        out = v_hi
    elif interpolation == "midpoint":
        out = v_lo.lerp(v_hi, 0.5)
    else:
        out = v_lo.lerp(v_hi, rank - lo.to(input.dtype))
    if ignore_nan:
        out = out.masked_fill(cnt == 0, float("nan"))  # all-NaN rows
    # (..., Q) -> (Q, ...) with the reduced dim(s) kept as 1 when keepdim
    if keepdim:
        if dim is None:
            out = out.reshape((1,) * input.ndim + (-1,))
        else:
            out = out.unsqueeze(d)
    out = out.movedim(-1, 0)
    return out if qs.ndim == 1 else out.squeeze(0)


@composite()
def quantile(input: Tensor, q: Any, dim: int | None = None, keepdim: bool = False, *,
             interpolation: str = "linear") -> Tensor:
    """The ``q``-quantiles (a number or 1-d tensor in [0, 1]) along ``dim`` (all elements
    when None); a 1-d ``q`` adds a leading dim. NaN in a row gives NaN."""
    return _quantile("quantile", input, q, dim, keepdim, interpolation, False)


@composite()
def nanquantile(input: Tensor, q: Any, dim: int | None = None, keepdim: bool = False, *,
                interpolation: str = "linear") -> Tensor:
    """Like :func:`quantile`, ignoring NaN (NaN only when a row is all NaN)."""
    return _quantile("nanquantile", input, q, dim, keepdim, interpolation, True)


# ---------------------------------------------------------------------- unique
@register("_unique", meta=None, differentiable=False, function=False, method=False,
          node_name="Unique")
class Unique(OpDef):
    """Sorted unique elements (or slices along ``dim``), inverse indices and counts."""

    def forward(ctx, xp, input, dim):
        if dim is None:
            # sort once; every NaN is its own value, as in torch (NumPy/CuPy merge NaNs)
            flat = input.reshape(-1)
            s, order = sort_arrays(xp, flat, 0, False)
            if s.size == 0:
                return s, xp.zeros(input.shape, xp.int64), xp.zeros(0, xp.int64)
            starts = xp.concatenate([xp.ones(1, bool), s[1:] != s[:-1]])
            run = xp.cumsum(starts) - 1
            inv = xp.empty(flat.shape, xp.int64)
            inv[order] = run
            pos = xp.nonzero(starts)[0]
            cnt = xp.diff(xp.concatenate([pos, xp.asarray([s.size])])).astype(xp.int64)
            return s[pos], inv.reshape(input.shape), cnt
        d = M.wrap_dim("unique", dim, input.ndim)
        if input.shape[d] == 0:
            return (input.copy(), xp.zeros(0, xp.int64), xp.zeros(0, xp.int64))
        vals, inv, cnt = xp.unique(input, return_inverse=True, return_counts=True, axis=d)
        return vals, inv.reshape(-1).astype(xp.int64), cnt.astype(xp.int64)


@composite()
def unique(input: Tensor, sorted: bool = True, return_inverse: bool = False,
           return_counts: bool = False, dim: int | None = None) -> Any:
    """The unique elements of ``input`` (always sorted, as on torch's CPU), or the unique
    slices along ``dim``; optionally the inverse indices and the counts."""
    vals, inv, cnt = apply(OPS["_unique"], (input, dim))
    out = (vals,) + ((inv,) if return_inverse else ()) + ((cnt,) if return_counts else ())
    return out[0] if len(out) == 1 else out


@register("_unique_consecutive", meta=None, differentiable=False, function=False, method=False,
          node_name="UniqueConsecutive")
class UniqueConsecutive(OpDef):
    """Collapse runs of equal consecutive elements (or slices along ``dim``)."""

    def forward(ctx, xp, input, dim):
        if dim is None:
            x = input.reshape(-1)
            rows = x.reshape(-1, 1)
            shape = input.shape
        else:
            d = M.wrap_dim("unique_consecutive", dim, input.ndim)
            x = xp.moveaxis(input, d, 0)
            rows = x.reshape(x.shape[0], -1)
            shape = (x.shape[0],)
        n = rows.shape[0]
        if n == 0:
            return x.copy() if dim is None else input.copy(), \
                xp.zeros(shape, xp.int64), xp.zeros(0, xp.int64)
        starts = xp.concatenate([xp.ones(1, bool), (rows[1:] != rows[:-1]).any(axis=1)])
        inv = (xp.cumsum(starts) - 1).astype(xp.int64)
        pos = xp.nonzero(starts)[0]
        cnt = xp.diff(xp.concatenate([pos, xp.asarray([n])])).astype(xp.int64)
        vals = x[pos]
        if dim is not None:
            vals = xp.moveaxis(vals, 0, d)
        return vals, inv.reshape(shape), cnt


@composite()
def unique_consecutive(input: Tensor, return_inverse: bool = False, return_counts: bool = False,
                       dim: int | None = None) -> Any:
    """Keep the first of each run of equal consecutive elements (slices along ``dim``);
    optionally the inverse indices and the run lengths."""
    vals, inv, cnt = apply(OPS["_unique_consecutive"], (input, dim))
    out = (vals,) + ((inv,) if return_inverse else ()) + ((cnt,) if return_counts else ())
    return out[0] if len(out) == 1 else out


# ---------------------------------------------------------------------- searching
def _searchsorted_meta(op: Any, seq: Any, input: Any, out_int32: bool = False,
                       right: bool = False, side: Any = None, sorter: Any = None) -> TensorMeta:
    name = "searchsorted"
    check(isinstance(seq, Tensor), name, f"argument 'sorted_sequence' must be Tensor, not "
                                         f"{type(seq).__name__}", TypeError)
    check(side in (None, "left", "right"), name, f"torch.searchsorted(): side can only be "
                                                 f"'left' or 'right' but got {side}")
    check(not (side == "left" and right), name, "torch.searchsorted(): side and right can't "
                                                "be set to opposites, got side of left while "
                                                "right was True")
    ss = seq._data.shape
    check(len(ss) >= 1, name, "torch.searchsorted(): boundaries tensor should have positive "
                              "dimension, but got 0 dimension")
    if isinstance(input, Tensor) and len(ss) > 1:
        vs = input._data.shape
        check(len(vs) == len(ss) and vs[:-1] == ss[:-1], name,
              f"torch.searchsorted(): boundaries tensor should be 1 dimension or the first N-1 "
              f"dimensions of boundaries tensor and input value tensor must match, but we got "
              f"boundaries tensor {list(ss)} and input value tensor {list(vs)}")
    if sorter is not None:
        check(isinstance(sorter, Tensor) and sorter._dtype is _dt.int64, name,
              "torch.searchsorted(): sorter must be a tensor of long dtype")
        check(sorter._data.shape == ss, name, f"torch.searchsorted(): boundary and sorter must "
                                              f"have the same size, but got boundary tensor "
                                              f"{list(ss)}and got sorter tensor "
                                              f"{list(sorter._data.shape)}")
    return TensorMeta(input._data.shape if isinstance(input, Tensor) else ())


@register("searchsorted", meta=_searchsorted_meta, differentiable=False, method=False,
          sig="sorted_sequence, input, *, out_int32=False, right=False, side=None, sorter=None")
class SearchSorted(OpDef):
    """Indices where ``input`` would be inserted to keep ``sorted_sequence`` (1-d, or one
    sorted row per leading index of ``input``) sorted; ``right``/``side='right'`` places
    after equal values. ``sorter`` gives the order of an unsorted sequence."""

    def forward(ctx, xp, sorted_sequence, input, out_int32, right, side, sorter):
        mode = "right" if right or side == "right" else "left"
        seq = sorted_sequence
        if sorter is not None:
            seq = xp.take_along_axis(seq, sorter, -1)
        vals = xp.asarray(input)
        dt = xp.int32 if out_int32 else xp.int64
        if seq.ndim == 1:
            return xp.searchsorted(seq, vals, side=mode).astype(dt)
        s2 = seq.reshape(-1, seq.shape[-1])
        v2 = vals.reshape(s2.shape[0], -1)
        out = xp.empty(v2.shape, dtype=dt)
        for r in range(s2.shape[0]):  # one row per leading index: NumPy searches 1-d only
            out[r] = xp.searchsorted(s2[r], v2[r], side=mode)
        return out.reshape(vals.shape)


@composite()
def bucketize(input: Any, boundaries: Tensor, *, out_int32: bool = False,
              right: bool = False) -> Tensor:
    """The bucket of each element given 1-d sorted ``boundaries``: ``i`` with
    ``boundaries[i-1] < x <= boundaries[i]`` (``right=True``: ``<= x <``)."""
    check(isinstance(boundaries, Tensor) and boundaries.ndim == 1, "bucketize",
          f"boundaries tensor must be 1 dimension, but got dim("
          f"{getattr(boundaries, 'ndim', '?')})")
    return OPS["searchsorted"].function(boundaries, input, out_int32=out_int32, right=right)


# ---------------------------------------------------------------------- histograms and counts
def _float_only(op: str, t: Tensor) -> None:
    check(t._dtype.category == 2, op, f'"{op}" not implemented for \'{t._dtype}\'; pass a '
                                      f"floating-point tensor")


def _histc_meta(op: Any, input: Any, bins: int = 100, min: Any = 0, max: Any = 0) -> TensorMeta:
    _float_only("histc", input)
    check(bins > 0, "histc", f"torch.histc(): bins must be > 0, but got {bins} for dimension 0")
    check(not (max < min), "histc", "torch.histc(): max must be larger than min")
    return TensorMeta((bins,))


@register("histc", meta=_histc_meta, differentiable=False, sig="input, bins=100, min=0, max=0")
class Histc(OpDef):
    """Histogram with ``bins`` equal bins over ``[min, max]`` (the data's range when both are
    0); elements outside are ignored. Same dtype as the input."""

    def forward(ctx, xp, input, bins, min, max):
        x = input.reshape(-1)
        lo, hi = float(min), float(max)
        if lo == hi and x.size:
            lo, hi = float(x.min()), float(x.max())
        if lo == hi:
            lo, hi = lo - 1, hi + 1
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise make(RuntimeError, "histc", f"torch.histc(): range of [{lo}, {hi}] is not "
                                              f"finite")
        keep = (x >= lo) & (x <= hi)
        v = x[keep].astype(xp.float64)
        idx = xp.floor((v - lo) * bins / (hi - lo)).astype(xp.int64)
        idx = xp.minimum(idx, bins - 1)  # the right edge belongs to the last bin
        return xp.bincount(idx, minlength=bins).astype(input.dtype)


def _histogram_edges(xp: Any, x: Any, bins: Any, range: Any) -> Any:
    if hasattr(bins, "ndim"):
        return bins
    if range is not None:
        lo, hi = float(range[0]), float(range[1])
    elif x.size:
        lo, hi = float(x.min()), float(x.max())
    else:
        lo, hi = 0.0, 1.0
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return xp.linspace(lo, hi, int(bins) + 1).astype(x.dtype)


@register("_histogram", meta=None, differentiable=False, function=False, method=False,
          out_type=histogram_out, node_name="Histogram")
class Histogram(OpDef):
    """Histogram of ``input`` over ``bins`` (a count, or the 1-d tensor of bin edges)."""

    def forward(ctx, xp, input, bins, range, weight, density):
        x = input.reshape(-1)
        edges = _histogram_edges(xp, x, bins, range)
        nb = edges.size - 1
        keep = (x >= edges[0]) & (x <= edges[-1])
        idx = xp.searchsorted(edges, x[keep], side="right") - 1
        idx = xp.minimum(idx, nb - 1)  # the last edge is inclusive
        w = weight.reshape(-1)[keep] if weight is not None else None
        hist = xp.bincount(idx, weights=w, minlength=nb).astype(input.dtype)
        if density:
            widths = xp.diff(edges)
            total = hist.sum()
            hist = (hist / (total * widths)).astype(input.dtype)
        return hist, edges.astype(input.dtype)


@composite()
def histogram(input: Tensor, bins: Any = 100, *, range: Any = None, weight: Tensor | None = None,
              density: bool = False) -> Any:
    """A named tuple (hist, bin_edges): counts (or summed ``weight``; a density with
    ``density=True``) of ``input`` in ``bins`` equal bins over ``range`` (the data's range by
    default), or in the bins given by the 1-d tensor of edges ``bins``."""
    _float_only("histogram", input)
    if isinstance(bins, Tensor):
        check(bins.ndim == 1 and bins.numel() >= 2, "histogram",
              f"torch.histogram(): bins tensor should have one dimension and at least 2 "
              f"elements, but got shape {tuple(bins.shape)}")
        check(bins.dtype is input.dtype, "histogram", f"torch.histogram: input tensor and bins "
                                                      f"tensors should have the same dtype, but "
                                                      f"got input {input.dtype} and bins "
                                                      f"{bins.dtype}")
    else:
        check(int(bins) > 0, "histogram", f"torch.histogram(): bins must be > 0, but got {bins}")
    if range is not None:
        check(float(range[0]) <= float(range[1]), "histogram",
              f"torch.histogram(): min should not exceed max, but got min {range[0]} max "
              f"{range[1]}")
    if weight is not None:
        check(tuple(weight.shape) == tuple(input.shape) and weight.dtype is input.dtype,
              "histogram", f"torch.histogram(): if weight tensor is provided it should have the "
                           f"same shape and dtype as the input tensor, got {tuple(weight.shape)} "
                           f"{weight.dtype}")
    return apply(OPS["_histogram"], (input, bins, range, weight, density))


def _bincount_meta(op: Any, input: Any, weights: Any = None, minlength: int = 0) -> TensorMeta:
    ok = input._dtype.category == 1 and input._data.ndim == 1
    if ok and input._data.size:
        ok = int(input._data.min()) >= 0
    check(ok, "bincount", f"bincount only supports 1-d non-negative integral inputs (got shape "
                          f"{tuple(input._data.shape)}, dtype {input._dtype}).")
    check(minlength >= 0, "bincount", "minlength should be >= 0")
    if weights is not None:
        check(weights._data.shape == input._data.shape, "bincount",
              f"weights should be 1-d and have the same length as input, got "
              f"{tuple(weights._data.shape)} and {tuple(input._data.shape)}")
    return TensorMeta((0,))


@register("bincount", meta=_bincount_meta, differentiable=False,
          sig="input, weights=None, minlength=0")
class Bincount(OpDef):
    """Count of each value in a 1-d non-negative integer tensor (or the sum of ``weights``
    per value); at least ``minlength`` bins. int64, or the weights' float dtype (float64 for
    integer weights)."""

    def forward(ctx, xp, input, weights, minlength):
        n = max(int(input.max()) + 1 if input.size else 0, minlength)
        if weights is None:
            return xp.bincount(input, minlength=n).astype(xp.int64)
        out_dt = weights.dtype if weights.dtype.kind == "f" else xp.float64
        return xp.bincount(input, weights=weights.astype(xp.float64),
                           minlength=n).astype(out_dt)


def _count_meta(op: Any, input: Any, dim: Any = None) -> TensorMeta:
    return M.reduction(op, input, dim, False)


@register("count_nonzero", meta=_count_meta, differentiable=False, sig="input, dim=None")
class CountNonzero(OpDef):
    """Number of non-zero elements over ``dim`` (all dims when None), as int64."""

    def forward(ctx, xp, input, dim):
        axes = None if dim is None else M.wrap_dims("count_nonzero", dim, input.ndim)
        return xp.asarray(xp.count_nonzero(input, axis=axes)).astype(xp.int64)


def _isin_meta(op: Any, elements: Any, test_elements: Any, assume_unique: bool = False,
               invert: bool = False) -> TensorMeta:
    check(isinstance(elements, Tensor) or isinstance(test_elements, Tensor), "isin",
          "isin() expects at least one of elements or test_elements to be a Tensor", TypeError)
    return TensorMeta(elements._data.shape if isinstance(elements, Tensor) else ())


@register("isin", meta=_isin_meta, differentiable=False, method=False, promote="bool",
          promote_args=(0, 1),
          sig="elements, test_elements, *, assume_unique=False, invert=False")
class IsIn(OpDef):
    """Whether each of ``elements`` is in ``test_elements`` (either may be a number); the
    result has ``elements``' shape."""

    def forward(ctx, xp, elements, test_elements, assume_unique, invert):
        return xp.isin(xp.asarray(elements), xp.asarray(test_elements), invert=invert)
