"""More shape ops: flips and rolls, repeats and tiles, triangles and diagonals, stacking and
splitting helpers, broadcasting helpers and meshgrid.

Primitives here are ``flip``, ``roll``, ``repeat``, ``tril`` and ``triu``; everything else is a
composite of registered ops (views where torch returns views).
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from ember import dtypes as _dt
from ember.errors import check
from ember.ops import meta as M
from ember.ops.registry import OPS, OpDef, PUBLIC_FUNCTIONS, TensorMeta, apply, composite, register
from ember.ops.movement import _size
from ember.tensor import Size, Tensor


def _tensors(op: str, tensors: Any) -> list:
    """A sequence argument (or varargs) as a list of Tensors."""
    if len(tensors) == 1 and isinstance(tensors[0], (tuple, list)):
        tensors = tuple(tensors[0])
    for i, t in enumerate(tensors):
        check(isinstance(t, Tensor), op, f"expected a sequence of Tensors, but element {i} is "
                                         f"{type(t).__name__}", TypeError)
    return list(tensors)


def _dims_list(dims: Any) -> tuple:
    if isinstance(dims, (int, np.integer)):
        return (int(dims),)
    return tuple(int(d) for d in dims)


# ---------------------------------------------------------------------- flip / roll
def _flip_meta(op: Any, input: Any, dims: Any) -> TensorMeta:
    M.wrap_dims("flip", _dims_list(dims) or None, input._data.ndim)
    return TensorMeta(input._data.shape)


@register("flip", meta=_flip_meta, sig="input, dims", onnx=None)
class Flip(OpDef):
    """Reverse the order of elements along ``dims`` (a copy, as in torch)."""

    def forward(ctx, xp, input, dims):
        dims = _dims_list(dims)
        axes = tuple(M.wrap_dim("flip", d, input.ndim) for d in dims) if input.ndim else ()
        ctx.axes = axes
        return xp.flip(input, axes).copy() if axes else input.copy()

    def backward(ctx, grad):
        return (grad.flip(ctx.axes) if ctx.axes else grad), None


@composite()
def fliplr(input: Tensor) -> Tensor:
    """Flip the columns (dim 1) of a tensor of at least 2 dims."""
    check(input.ndim >= 2, "fliplr", f"Input must be >= 2-d, got shape {tuple(input.shape)}")
    return input.flip(1)


@composite()
def flipud(input: Tensor) -> Tensor:
    """Flip the rows (dim 0) of a tensor of at least 1 dim."""
    check(input.ndim >= 1, "flipud", f"Input must be >= 1-d, got shape {tuple(input.shape)}")
    return input.flip(0)


def _roll_meta(op: Any, input: Any, shifts: Any, dims: Any = None) -> TensorMeta:
    sh = _dims_list(shifts)
    if dims is None or (isinstance(dims, (tuple, list)) and not dims):
        check(len(sh) == 1, "roll", f"shifts and dimensions must align. shifts: {len(sh)}, "
                                    f"dims: 0")
    else:
        dd = _dims_list(dims)
        check(len(sh) == len(dd), "roll", f"shifts and dimensions must align. shifts: {len(sh)}, "
                                          f"dims:{len(dd)}")
        for d in dd:
            M.wrap_dim("roll", d, input._data.ndim)
    return TensorMeta(input._data.shape)


@register("roll", meta=_roll_meta, sig="input, shifts, dims=None")
class Roll(OpDef):
    """Shift elements cyclically by ``shifts`` along ``dims`` (the flattened tensor if None)."""

    def forward(ctx, xp, input, shifts, dims):
        sh = _dims_list(shifts)
        if dims is None or (isinstance(dims, (tuple, list)) and not dims):
            ctx.args = (sh, None)
            return xp.roll(input.reshape(-1), sh[0]).reshape(input.shape)
        dd = tuple(d % max(input.ndim, 1) for d in _dims_list(dims))
        ctx.args = (sh, dd)
        if input.ndim == 0:
            return input.copy()
        return xp.roll(input, sh, dd)

    def backward(ctx, grad):
        sh, dd = ctx.args
        back = tuple(-s for s in sh)
        return grad.roll(back if dd is not None else back[0], dd), None, None


@composite()
def rot90(input: Tensor, k: int = 1, dims: Sequence[int] = (0, 1)) -> Tensor:
    """Rotate by 90 degrees ``k`` times in the plane of ``dims`` (from the first towards the
    second)."""
    dims = list(dims)
    check(len(dims) == 2, "rot90", f"expected total rotation dims == 2, but got dims = "
                                   f"{len(dims)}")
    check(input.ndim >= 2, "rot90", f"expected total dims >= 2, but got total dims = "
                                    f"{input.ndim}")
    d0, d1 = (M.wrap_dim("rot90", d, input.ndim) for d in dims)
    check(d0 != d1, "rot90", f"expected rotation dims to be different, but got dim0 = {d0} and "
                             f"dim1 = {d1}")
    k = k % 4
    if k == 1:
        return input.flip(d1).transpose(d0, d1)
    if k == 2:
        return input.flip((d0, d1))
    if k == 3:
        return input.flip(d0).transpose(d0, d1)
    return input.clone()


# ---------------------------------------------------------------------- repeat / tile
def _repeat_meta(op: Any, input: Any, repeats: tuple) -> TensorMeta:
    nd = input._data.ndim
    check(len(repeats) >= nd, "repeat",
          f"Number of dimensions of repeat dims ({len(repeats)}) can not be smaller than number "
          f"of dimensions of tensor ({nd})", hint="pass one repeat count per dim")
    for r in repeats:
        check(r >= 0, "repeat", f"Trying to create tensor with negative dimension {r}: "
                                f"repeats {list(repeats)}")
    shape = (1,) * (len(repeats) - nd) + tuple(input._data.shape)
    return TensorMeta(tuple(s * r for s, r in zip(shape, repeats)))


@register("repeat", meta=_repeat_meta, function=False, sig="input, *sizes",
          call="input, _size(sizes)", env={"_size": _size}, onnx="Tile")
class Repeat(OpDef):
    """``Tensor.repeat(*sizes)``: tile the tensor ``sizes[i]`` times along each dim (new
    leading dims when ``sizes`` is longer than the shape)."""

    def forward(ctx, xp, input, repeats):
        shape = (1,) * (len(repeats) - input.ndim) + tuple(input.shape)
        ctx.args = (input.shape, shape, tuple(repeats))
        return xp.tile(input.reshape(shape), repeats)

    def backward(ctx, grad):
        in_shape, shape, reps = ctx.args
        # view grad as (r0, s0, r1, s1, ...) and sum the r axes
        split = []
        for r, s in zip(reps, shape):
            split.extend((r, s))
        g = grad.reshape(split).sum(tuple(range(0, 2 * len(reps), 2)))
        return g.reshape(in_shape), None


@composite()
def tile(input: Tensor, dims: Sequence[int]) -> Tensor:
    """Repeat ``input`` along each dim; ``dims`` shorter than the shape is padded with ones in
    front (unlike ``repeat``)."""
    dims = _size((dims,))
    if len(dims) < input.ndim:
        dims = (1,) * (input.ndim - len(dims)) + dims
    return input.repeat(*dims)


@composite()
def repeat_interleave(input: Tensor, repeats: Any = None, dim: int | None = None, *,
                      output_size: int | None = None) -> Tensor:
    """Repeat each element ``repeats`` times (a number or a 1-d tensor of counts) along ``dim``
    (the flattened input if None). ``repeat_interleave(counts)`` returns the indices
    ``[0]*counts[0] + [1]*counts[1] + ...``."""
    import ember
    if repeats is None:
        counts = input
        check(counts.ndim <= 1 and counts.dtype.category == 1, "repeat_interleave",
              f"repeats must be a 0-dim or 1-dim integer tensor, got shape "
              f"{tuple(counts.shape)} and dtype {counts.dtype}")
        check(not bool((counts < 0).any()), "repeat_interleave", "repeats can not be negative")
        idx = np.repeat(np.arange(counts.numel()), np.asarray(counts._host()).reshape(-1))
        return ember.tensor(idx, dtype=counts.dtype, device=counts.device)
    x = input.reshape(-1) if dim is None else input
    d = 0 if dim is None else M.wrap_dim("repeat_interleave", dim, max(x.ndim, 1))
    if x.ndim == 0:
        x = x.reshape(1)
    n = x.shape[d]
    if isinstance(repeats, Tensor):
        check(repeats.ndim <= 1 and repeats.dtype.category == 1, "repeat_interleave",
              f"repeats must be a 0-dim or 1-dim integer tensor, got shape "
              f"{tuple(repeats.shape)}")
        reps = np.asarray(repeats._host()).reshape(-1)
        if reps.size == 1:
            reps = np.full(n, int(reps[0]))
        check(reps.size == n, "repeat_interleave", f"repeats must have the same size as input "
                                                   f"along dim, but got repeats.size(0) = "
                                                   f"{reps.size} and input.size({d}) = {n}")
    else:
        reps = np.full(n, int(repeats))
    check(bool((reps >= 0).all()), "repeat_interleave", "repeats can not be negative")
    if output_size is not None:
        check(int(reps.sum()) == output_size, "repeat_interleave",
              f"allocated size does not match required size: output_size={output_size}, "
              f"sum(repeats)={int(reps.sum())}")
    idx = ember.tensor(np.repeat(np.arange(n), reps), dtype=ember.int64, device=input.device)
    return x.index_select(d, idx)


# ---------------------------------------------------------------------- triangles
def _tri_meta(op: Any, input: Any, diagonal: int = 0) -> TensorMeta:
    check(input._data.ndim >= 2, op.name, f"{op.name}: input tensor must have at least 2 "
                                          f"dimensions, got shape {tuple(input._data.shape)}")
    return TensorMeta(input._data.shape)


def _tri(name: str) -> None:
    class Tri(OpDef):
        __doc__ = (f"The {'lower' if name == 'tril' else 'upper'} triangle of the last two dims "
                   f"(on and {'below' if name == 'tril' else 'above'} diagonal ``diagonal``); "
                   f"the rest is zero.")

        def forward(ctx, xp, input, diagonal):
            ctx.k = diagonal
            return getattr(xp, name)(input, diagonal)

        def backward(ctx, grad):
            return getattr(grad, name)(ctx.k), None

    register(name, meta=_tri_meta, inplace=True, sig="input, diagonal=0", onnx="Trilu")(Tri)


_tri("tril")
_tri("triu")


def _tri_indices(name: str, row: int, col: int, offset: int, dtype: Any, device: Any) -> Tensor:
    import ember
    check(row >= 0 and col >= 0, name, f"row and col must be non-negative, got {row}, {col}")
    r, c = np.indices((row, col))
    keep = (c - r <= offset) if name == "tril_indices" else (c - r >= offset)
    out = np.stack([r[keep], c[keep]]) if row and col else np.zeros((2, 0), np.int64)
    return ember.tensor(out, dtype=dtype or ember.int64, device=device)


def tril_indices(row: int, col: int, offset: int = 0, *, dtype: Any = None, device: Any = None,
                 layout: Any = None) -> Tensor:
    """Row and column indices (a ``(2, N)`` tensor) of the lower triangle of a row x col
    matrix, including diagonal ``offset``."""
    return _tri_indices("tril_indices", row, col, offset, dtype, device)


def triu_indices(row: int, col: int, offset: int = 0, *, dtype: Any = None, device: Any = None,
                 layout: Any = None) -> Tensor:
    """Row and column indices (a ``(2, N)`` tensor) of the upper triangle of a row x col
    matrix, including diagonal ``offset``."""
    return _tri_indices("triu_indices", row, col, offset, dtype, device)


PUBLIC_FUNCTIONS["tril_indices"] = tril_indices  # factories: no tensor input, not ops
PUBLIC_FUNCTIONS["triu_indices"] = triu_indices


# ---------------------------------------------------------------------- diagonals
@composite()
def diag_embed(input: Tensor, offset: int = 0, dim1: int = -2, dim2: int = -1) -> Tensor:
    """A tensor whose diagonals (at ``offset``, in the planes ``dim1``/``dim2``) are the last
    dim of ``input``; all other entries are zero."""
    import ember
    nd = input.ndim + 1
    d1, d2 = M.wrap_dim("diag_embed", dim1, nd), M.wrap_dim("diag_embed", dim2, nd)
    check(d1 != d2, "diag_embed", f"diagonal dimensions cannot be identical {dim1}, {dim2}")
    x = input if input.ndim else input.reshape(1)
    n = x.shape[-1] + abs(offset)
    batch = list(x.shape[:-1])
    shape = []
    for i in range(nd):
        shape.append(n if i in (d1, d2) else batch.pop(0))
    z = ember.zeros(shape, dtype=input.dtype, device=input.device)
    return apply(OPS["_diagonal_put"], (z, x, offset, d1, d2))


@composite()
def diag(input: Tensor, diagonal: int = 0) -> Tensor:
    """1-d input: a square matrix with ``input`` on diagonal ``diagonal``; 2-d input: that
    diagonal as a 1-d tensor."""
    check(input.ndim in (1, 2), "diag", f"diag(): Supports 1D or 2D tensors. Got "
                                        f"{input.ndim}D")
    if input.ndim == 1:
        return diag_embed(input, diagonal, 0, 1)
    return input.diagonal(diagonal).clone()


@composite()
def diagflat(input: Tensor, offset: int = 0) -> Tensor:
    """A 2-d tensor with the flattened ``input`` on diagonal ``offset``."""
    return diag_embed(input.reshape(-1), offset, 0, 1)


# ---------------------------------------------------------------------- broadcasting
def broadcast_shapes(*shapes: Any) -> Size:
    """The shape that tensors of ``shapes`` broadcast to, without creating tensors."""
    norm = []
    for s in shapes:
        if isinstance(s, (int, np.integer)):
            s = (int(s),)
        check(isinstance(s, (tuple, list, Size)), "broadcast_shapes",
              f"Input shapes should be of type ints, a tuple of ints, or a list of ints, got "
              f"{s!r}", RuntimeError)
        for v in s:
            check(v >= 0, "broadcast_shapes", f"Trying to create tensor with negative dimension "
                                              f"{v}: {list(s)}")
        norm.append(tuple(int(v) for v in s))
    return Size(M.broadcast_shapes("broadcast_shapes", *norm))


PUBLIC_FUNCTIONS["broadcast_shapes"] = broadcast_shapes  # shape arithmetic only, not an op


@composite()
def broadcast_to(input: Tensor, size: Sequence[int]) -> Tensor:
    """A broadcast view of ``input`` with shape ``size`` (-1 keeps a dim)."""
    return input.expand(*_size((size,)))


@composite(method=False)
def broadcast_tensors(*tensors: Tensor) -> tuple:
    """Broadcast views of ``tensors`` with one common shape."""
    ts = _tensors("broadcast_tensors", tensors)
    shape = M.broadcast_shapes("broadcast_tensors", *[t._data.shape for t in ts])
    return tuple(t.expand(*shape) for t in ts)


@composite(method=False)
def meshgrid(*tensors: Tensor, indexing: str | None = None) -> tuple:
    """Coordinate grids from 1-d (or 0-d) tensors; ``indexing='ij'`` (matrix, torch's default)
    or ``'xy'`` (Cartesian: the first two dims swap). The grids are broadcast views."""
    ts = _tensors("meshgrid", tensors)
    if indexing is None:
        warnings.warn("torch.meshgrid: in an upcoming release, it will be required to pass the "
                      "indexing argument.", UserWarning, stacklevel=2)
        indexing = "ij"
    check(indexing in ("ij", "xy"), "meshgrid", f"indexing must be one of 'xy' or 'ij', got "
                                                f"{indexing!r}")
    for t in ts:
        check(t.ndim <= 1, "meshgrid", f"Expected 0D or 1D tensor in the tensor list but got "
                                       f"shape {tuple(t.shape)}")
    if ts:
        dt = ts[0].dtype
        for t in ts:
            check(t.dtype is dt, "meshgrid", f"expects all tensors to have the same dtype, got "
                                             f"{dt} and {t.dtype}")
    flat = [t.reshape(-1) for t in ts]
    swap = indexing == "xy" and len(flat) >= 2
    if swap:
        flat[0], flat[1] = flat[1], flat[0]
    shape = [t.shape[0] for t in flat]
    out = []
    for i, t in enumerate(flat):
        view = [1] * len(flat)
        view[i] = -1
        out.append(t.reshape(view).expand(*shape))
    if swap:
        out[0], out[1] = out[1], out[0]
    return tuple(out)


# ---------------------------------------------------------------------- atleast / stacking
def _atleast(n: int, name: str):
    def fn(*tensors: Tensor) -> Any:
        single = len(tensors) == 1 and isinstance(tensors[0], Tensor)
        ts = _tensors(name, tensors)
        out = []
        for t in ts:
            if t.ndim >= n:
                out.append(t)
            elif t.ndim == 0:
                out.append(t.reshape((1,) * n))
            elif n == 2:
                out.append(t.unsqueeze(0))
            elif t.ndim == 1:
                out.append(t.reshape(1, -1, 1))
            else:
                out.append(t.unsqueeze(-1))
        return out[0] if single else tuple(out)
    fn.__name__ = name
    fn.__doc__ = (f"``input`` viewed with at least {n} dims (several tensors: a tuple); "
                  f"tensors with more dims are returned unchanged.")
    return fn


atleast_1d = composite("atleast_1d", method=False)(_atleast(1, "atleast_1d"))
atleast_2d = composite("atleast_2d", method=False)(_atleast(2, "atleast_2d"))
atleast_3d = composite("atleast_3d", method=False)(_atleast(3, "atleast_3d"))


@composite(method=False)
def hstack(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate along dim 1 (dim 0 for 1-d tensors)."""
    ts = atleast_1d(*_tensors("hstack", (tensors,)))
    ts = list(ts) if isinstance(ts, tuple) else [ts]
    return OPS["cat"].function(ts, 0 if ts[0].ndim == 1 else 1)


@composite(method=False)
def vstack(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate along dim 0 after making each tensor at least 2-d."""
    ts = atleast_2d(*_tensors("vstack", (tensors,)))
    return OPS["cat"].function(list(ts) if isinstance(ts, tuple) else [ts], 0)


@composite(method=False)
def row_stack(tensors: Sequence[Tensor]) -> Tensor:
    """Alias of :func:`vstack`."""
    return vstack(tensors)


@composite(method=False)
def dstack(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate along dim 2 after making each tensor at least 3-d."""
    ts = atleast_3d(*_tensors("dstack", (tensors,)))
    return OPS["cat"].function(list(ts) if isinstance(ts, tuple) else [ts], 2)


@composite(method=False)
def column_stack(tensors: Sequence[Tensor]) -> Tensor:
    """Stack as columns: 0-d and 1-d tensors become ``(n, 1)`` columns, then concatenate
    along dim 1."""
    ts = [t.reshape(-1, 1) if t.ndim <= 1 else t for t in _tensors("column_stack", (tensors,))]
    return OPS["cat"].function(ts, 1)


# ---------------------------------------------------------------------- splitting
@composite()
def tensor_split(input: Tensor, indices_or_sections: Any, dim: int = 0) -> tuple:
    """Split into views along ``dim``: ``n`` sections of near-equal size (the first
    ``size % n`` one longer), or at the given indices."""
    check(input.ndim > 0, "tensor_split", "tensor_split expected at least a 1-dimensional "
                                          "tensor, but got a tensor with 0 dims")
    d = M.wrap_dim("tensor_split", dim, input.ndim)
    n = input.shape[d]
    ios = indices_or_sections
    if isinstance(ios, Tensor):
        check(ios.dtype is _dt.int64 and ios.ndim <= 1, "tensor_split",
              f"tensor_split expected tensor_indices_or_sections to have a long dtype and be "
              f"0-D or 1-D, got {ios.dtype} with {ios.ndim} dims")
        ios = ios.item() if ios.ndim == 0 else [int(v) for v in ios.tolist()]
    if isinstance(ios, (int, np.integer)):
        sections = int(ios)
        check(sections > 0, "tensor_split", f"number of sections must be larger than 0, got "
                                            f"{sections}")
        q, r = divmod(n, sections)
        sizes = [q + 1] * r + [q] * (sections - r)
        bounds, start = [], 0
        for s in sizes:
            bounds.append((start, start + s))
            start += s
    else:
        idx = [int(i) for i in ios]
        edges = [0] + idx + [n]
        bounds = []
        for a, b in zip(edges[:-1], edges[1:]):
            a = min(max(a + n if a < 0 else a, 0), n)
            b = min(max(b + n if b < 0 else b, 0), n)
            bounds.append((a, max(a, b)))
    return tuple(input.narrow(d, a, b - a) for a, b in bounds)


def _xsplit(name: str, dim_for: Any, min_dims: int):
    def fn(input: Tensor, indices_or_sections: Any) -> tuple:
        check(input.ndim >= min_dims, name,
              f"{name} requires a tensor with at least {min_dims} dimension, but got a tensor "
              f"with {input.ndim} dimensions!")
        d = dim_for(input)
        if isinstance(indices_or_sections, (int, np.integer)):
            check(input.shape[d] % int(indices_or_sections) == 0, name,
                  f"{name} attempted to split along dimension {d}, but the size of the "
                  f"dimension {input.shape[d]} is not divisible by the split_size "
                  f"{indices_or_sections}!")
        return tensor_split(input, indices_or_sections, d)
    fn.__name__ = name
    fn.__doc__ = f"``tensor_split`` along dim {'1 (0 for 1-d input)' if name == 'hsplit' else {'vsplit': 0, 'dsplit': 2}[name]}; an int must divide that dim."
    return fn


hsplit = composite("hsplit")(_xsplit("hsplit", lambda t: 0 if t.ndim == 1 else 1, 1))
vsplit = composite("vsplit")(_xsplit("vsplit", lambda t: 0, 2))
dsplit = composite("dsplit")(_xsplit("dsplit", lambda t: 2, 3))
