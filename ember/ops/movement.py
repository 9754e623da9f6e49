"""Shape and movement ops. Most are views: the output shares memory (and the version
counter) with its input, so writes through a view change the base."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ember import dtypes as _dt
from ember.errors import check, make
from ember.ops import meta as M
from ember.ops.registry import OPS, OpDef, TensorMeta, apply, composite, register
from ember._state import _State
from ember.tensor import Size, Tensor, _make


def _size(args: Sequence) -> tuple:
    """Sizes given as varargs ``(2, 3)``, one sequence ``((2, 3),)`` or an ``ember.Size``."""
    # Every view/reshape call parses its sizes: plain ints take no conversion loop.
    if len(args) == 1:
        a = args[0]
        tp = type(a)
        if tp is int:
            return args if type(args) is tuple else (a,)
        if tp is tuple or tp is Size or tp is list or isinstance(a, (tuple, list)):
            args = a
    for a in args:
        if type(a) is not int:
            return _size_convert(args)
    return args if type(args) is tuple else tuple(args)


def _size_convert(args: Sequence) -> tuple:
    out = []
    for a in args:
        if isinstance(a, Tensor):
            a = a.item()
        if not isinstance(a, (int, np.integer)) or isinstance(a, bool):
            raise TypeError(f"sizes must be ints, got {type(a).__name__}")
        out.append(int(a))
    return tuple(out)


_ENV = {"_size": _size}


def infer_shape(op: str, shape: tuple, numel: int) -> tuple:
    """Replace a single -1 in ``shape`` and check the element count."""
    # The common cases in one scan: no negative size, or one -1 to infer; the count matches.
    n = 1
    at = -1
    for i, s in enumerate(shape):
        if s < 0:
            if s != -1 or at >= 0:
                at = -2
                break
            at = i
        else:
            n *= s
    if at == -1:
        if n == numel:
            return shape
    elif at >= 0 and n and numel % n == 0:
        return shape[:at] + (numel // n,) + shape[at + 1:]
    neg = [i for i, s in enumerate(shape) if s == -1]
    check(len(neg) <= 1, op, "only one dimension can be inferred")
    for s in shape:
        check(s >= -1, op, f"invalid shape dimension {s}")
    if neg:
        known = math.prod(s for s in shape if s != -1)
        check(known != 0 and numel % known == 0, op,
              f"shape '{list(shape)}' is invalid for input of size {numel}")
        shape = tuple(numel // known if s == -1 else s for s in shape)
    check(math.prod(shape) == numel, op, f"shape '{list(shape)}' is invalid for input of size {numel}")
    return shape


def _reshape_meta(op: Any, input: Any, shape: tuple) -> TensorMeta:
    if type(shape) is not tuple and isinstance(shape, _dt.dtype):
        return TensorMeta(input._data.shape, shape)
    return TensorMeta(infer_shape(op.name, shape, input._data.size))


@register("view", meta=_reshape_meta, view=True, function=False, sig="input, *shape",
          call="input, _view_arg(shape)", env={"_view_arg": lambda s: s[0] if len(s) == 1 and
                                               isinstance(s[0], _dt.dtype) else _size(s)},
          onnx="Reshape")
class View(OpDef):
    """A view with a new shape (or dtype); raises when the strides don't allow it."""

    def forward(ctx, xp, input, shape):
        ctx.shape = input.shape
        if type(shape) is not tuple and isinstance(shape, _dt.dtype):
            ctx.dtype_view = True
            return input.view(shape.np)
        shape = infer_shape("view", shape, input.size)
        out = input.reshape(shape)
        # a C-contiguous array reshapes without a copy (flags: ~60 ns, the memory check ~300)
        if input.size and not input.flags.c_contiguous and not xp.may_share_memory(out, input):
            raise RuntimeError(
                "view size is not compatible with input tensor's size and stride (at least one "
                "dimension spans across two contiguous subspaces). Use .reshape(...) instead.")
        return out

    def backward(ctx, grad):
        return grad.reshape(ctx.shape), None


@register("reshape", meta=_reshape_meta, view="maybe", sig="input, *shape",
          call="input, _size(shape)", env=_ENV, onnx="Reshape")
class Reshape(OpDef):
    """A tensor with the same data and a new shape: a view when possible, else a copy."""

    def forward(ctx, xp, input, shape):
        ctx.shape = input.shape
        return input.reshape(infer_shape("reshape", shape, input.size))

    def backward(ctx, grad):
        return grad.reshape(ctx.shape), None


@composite()
def flatten(input: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Flatten dims ``start_dim..end_dim`` into one (a view when possible)."""
    nd = input.ndim
    if nd == 0:
        return input.reshape(1)
    s = M.wrap_dim("flatten", start_dim, nd)
    e = M.wrap_dim("flatten", end_dim, nd)
    check(s <= e, "flatten", "start_dim cannot come after end_dim")
    shape = input._data.shape   # the plain tuple: slicing an ember.Size costs a call per slice
    return input.reshape(shape[:s] + (math.prod(shape[s:e + 1]),) + shape[e + 1:])


@composite()
def unflatten(input: Tensor, dim: int, sizes: Sequence[int]) -> Tensor:
    """Expand dim ``dim`` into ``sizes`` (one entry may be -1)."""
    d = M.wrap_dim("unflatten", dim, input.ndim)
    sizes = _size((sizes,))
    n = input.shape[d]
    sizes = infer_shape("unflatten", sizes, n)
    return input.view(tuple(input.shape[:d]) + sizes + tuple(input.shape[d + 1:]))


def _squeeze_meta(op: Any, input: Any, dim: Any = None) -> TensorMeta:
    dims = M.wrap_dims("squeeze", dim, input._data.ndim) if dim is not None else None
    return TensorMeta(input._data.shape)


@register("squeeze", meta=_squeeze_meta, view=True, inplace=False, sig="input, dim=None",
          onnx="Squeeze")
class Squeeze(OpDef):
    """Remove dims of size 1 (only those in ``dim`` when given)."""

    def forward(ctx, xp, input, dim):
        ctx.shape = input.shape
        if dim is None:
            axes = tuple(i for i, s in enumerate(input.shape) if s == 1)
        else:
            axes = tuple(d for d in M.wrap_dims("squeeze", dim, input.ndim)
                         if input.ndim and input.shape[d] == 1)
        return input.squeeze(axes) if axes else input.view()

    def backward(ctx, grad):
        return grad.reshape(ctx.shape), None


def _unsqueeze_meta(op: Any, input: Any, dim: int) -> TensorMeta:
    M.wrap_dim("unsqueeze", dim, input._data.ndim + 1)
    return TensorMeta(input._data.shape)


@register("unsqueeze", meta=_unsqueeze_meta, view=True, onnx="Unsqueeze")
class Unsqueeze(OpDef):
    """Insert a dim of size 1 at ``dim``."""

    def forward(ctx, xp, input, dim):
        d = M.wrap_dim("unsqueeze", dim, input.ndim + 1)
        ctx.dim = d
        # indexing with None: a view, like expand_dims, at ~1/10 of its host cost
        return input[_UNSQUEEZE_KEYS[d]] if d < 16 else xp.expand_dims(input, d)

    def backward(ctx, grad):
        return grad.squeeze(ctx.dim), None


_UNSQUEEZE_KEYS = tuple((slice(None),) * d + (None,) for d in range(16))


def _permute_meta(op: Any, input: Any, dims: tuple) -> TensorMeta:
    nd = input._data.ndim
    shape = input._data.shape
    if len(dims) == nd:
        # the common case: a permutation of range(nd), no wrapping needed
        seen = 0
        for d in dims:
            if type(d) is not int or not 0 <= d < nd or seen >> d & 1:
                break
            seen |= 1 << d
        else:
            return TensorMeta(tuple([shape[d] for d in dims]))
    check(len(dims) == nd, "permute", f"number of dimensions in the tensor input does not match "
                                      f"the length of the desired ordering of dimensions i.e. "
                                      f"input.dim() = {nd} is not equal to len(dims) = {len(dims)}")
    wrapped = [M.wrap_dim("permute", d, nd) for d in dims]
    check(len(set(wrapped)) == nd, "permute", f"repeated dim in dims {list(dims)}")
    return TensorMeta(tuple(input._data.shape[d] for d in wrapped))


@register("permute", meta=_permute_meta, view=True, sig="input, *dims", call="input, _size(dims)",
          env=_ENV, onnx="Transpose")
class Permute(OpDef):
    """Reorder the dims (a view)."""

    def forward(ctx, xp, input, dims):
        n = input.ndim
        if n:
            for d in dims:
                if d < 0:
                    dims = tuple(d % n for d in dims)
                    break
        ctx.dims = dims
        return input.transpose(dims)   # the method: np.transpose's wrapper costs ~1 us

    def backward(ctx, grad):
        inv = [0] * len(ctx.dims)
        for i, d in enumerate(ctx.dims):
            inv[d] = i
        return grad.permute(inv), None


def _transpose_meta(op: Any, input: Any, dim0: int, dim1: int) -> TensorMeta:
    nd = input._data.ndim
    M.wrap_dim("transpose", dim0, nd)
    M.wrap_dim("transpose", dim1, nd)
    return TensorMeta(input._data.shape)


@register("transpose", meta=_transpose_meta, view=True, onnx="Transpose")
class Transpose(OpDef):
    """Swap two dims (a view)."""

    def forward(ctx, xp, input, dim0, dim1):
        if input.ndim == 0:
            return input.view()
        n = input.ndim
        # the meta rule checked the dims; plain ints wrap here without its calls
        d0 = dim0 % n if type(dim0) is int else M.wrap_dim("transpose", dim0, n)
        d1 = dim1 % n if type(dim1) is int else M.wrap_dim("transpose", dim1, n)
        ctx.d = (d0, d1)
        return input.swapaxes(d0, d1)   # the method: np.swapaxes's wrapper costs ~0.5 us

    def backward(ctx, grad):
        if grad._data.ndim == 0:
            return grad, None, None
        return grad.transpose(*ctx.d), None, None


@composite()
def swapaxes(input: Tensor, axis0: int, axis1: int) -> Tensor:
    """Alias of :func:`transpose`."""
    return input.transpose(axis0, axis1)


@composite()
def swapdims(input: Tensor, dim0: int, dim1: int) -> Tensor:
    """Alias of :func:`transpose`."""
    return input.transpose(dim0, dim1)


@composite()
def t(input: Tensor) -> Tensor:
    """Transpose a tensor of at most 2 dims."""
    check(input.ndim <= 2, "t", f"t() expects a tensor with <= 2 dimensions, but self is "
                                f"{input.ndim}D", hint="use transpose(dim0, dim1) or .mT")
    return input.transpose(0, 1) if input.ndim == 2 else input.view(input.shape)


def _expand_meta(op: Any, input: Any, sizes: tuple) -> TensorMeta:
    shape = input._data.shape
    lead = len(sizes) - len(shape)
    if lead >= 0:
        # the common case (every sum/mean backward expands its gradient back): one loop, the
        # checks and their messages below only when a size does not fit
        out = []
        for i, s in enumerate(sizes):
            if i < lead:
                if s < 0:
                    break
                out.append(s)
                continue
            cur = shape[i - lead]
            if s == -1:
                out.append(cur)
            elif s == cur or cur == 1:
                out.append(s)
            else:
                break
        else:
            return TensorMeta(tuple(out))
    check(len(sizes) >= len(shape), "expand",
          f"the number of sizes provided ({len(sizes)}) must be greater or equal to the number of "
          f"dimensions in the tensor ({len(shape)})")
    off = len(sizes) - len(shape)
    out = []
    for i, s in enumerate(sizes):
        if i < off:
            check(s >= 0, "expand", f"The expanded size of the tensor ({s}) isn't allowed in a "
                                    "leading, non-existing dimension 0")
            out.append(s)
            continue
        cur = shape[i - off]
        if s == -1:
            out.append(cur)
        else:
            check(cur == s or cur == 1, "expand",
                  f"The expanded size of the tensor ({s}) must match the existing size ({cur}) at "
                  f"non-singleton dimension {i}.  Target sizes: {list(sizes)}.  Tensor sizes: "
                  f"{list(shape)}")
            out.append(s)
    return TensorMeta(tuple(out))


@register("expand", meta=_expand_meta, view=True, function=False, sig="input, *sizes",
          call="input, _size(sizes)", env=_ENV, onnx="Expand")
class Expand(OpDef):
    """A broadcast view with ``sizes`` (-1 keeps a dim); no memory is copied."""

    def forward(ctx, xp, input, sizes):
        # the meta rule validated sizes already; only -1 needs resolving here
        if -1 in sizes:
            off = len(sizes) - input.ndim
            sizes = tuple(input.shape[i - off] if s == -1 else s for i, s in enumerate(sizes))
        ctx.shape = input.shape
        return xp.broadcast_to(input, sizes)

    def backward(ctx, grad):
        return grad.sum_to_size(ctx.shape), None


class _Shim:
    """Lets a meta rule run on a bare array inside forward."""

    def __init__(self, arr: Any) -> None:
        self._data = arr


@composite(function=False)
def expand_as(input: Tensor, other: Tensor) -> Tensor:
    """Expand to ``other``'s shape."""
    return input.expand(other.shape)


def _narrow_meta(op: Any, input: Any, dim: int, start: int, length: int) -> TensorMeta:
    nd = input._data.ndim
    check(nd > 0, "narrow", "narrow() cannot be applied to a 0-dim tensor.")
    d = M.wrap_dim("narrow", dim, nd)
    size = input._data.shape[d]
    if isinstance(start, Tensor):
        start = int(start.item())
    check(-size <= start <= size, "narrow", f"start out of range (expected to be in range of "
                                            f"[{-size}, {size}], but got {start})", IndexError)
    start = start % size if size and start < 0 else start
    check(length >= 0 and start + length <= size, "narrow",
          f"start ({start}) + length ({length}) exceeds dimension size ({size}).")
    return TensorMeta(input._data.shape)


@register("narrow", meta=_narrow_meta, view=True)
class Narrow(OpDef):
    """The slice ``start:start+length`` of dim ``dim`` (a view)."""

    def forward(ctx, xp, input, dim, start, length):
        d = dim % input.ndim
        if not isinstance(start, int):
            start = int(start)
        start = start % input.shape[d] if start < 0 else start
        ctx.key = (slice(None),) * d + (slice(start, start + length),)
        ctx.shape = input.shape
        return input[ctx.key]

    def backward(ctx, grad):
        return _place(grad, ctx.shape, ctx.key), None, None, None


def _place(grad: Tensor, shape: tuple, key: tuple) -> Tensor:
    """Gradient of a basic-index view: zeros of ``shape`` with ``grad`` at ``key``."""
    import ember
    z = ember.zeros(shape, dtype=grad.dtype, device=grad.device)
    return apply(OPS["_put"], (z, key, grad, False))


def _select_meta(op: Any, input: Any, dim: int, index: int) -> TensorMeta:
    nd = input._data.ndim
    check(nd > 0, "select", "select() cannot be applied to a 0-dim tensor.", IndexError)
    d = M.wrap_dim("select", dim, nd)
    size = input._data.shape[d]
    index = int(index)
    check(-size <= index < size, "select", f"index {index} out of range for tensor of size "
                                           f"{tuple(input._data.shape)} at dimension {d}",
          IndexError)
    return TensorMeta(input._data.shape[:d] + input._data.shape[d + 1:])


@register("select", meta=_select_meta, view=True, onnx="Gather")
class Select(OpDef):
    """Index ``index`` of dim ``dim``, removing that dim (a view)."""

    def forward(ctx, xp, input, dim, index):
        d = dim % input.ndim
        ctx.key = (slice(None),) * d + (int(index),)
        ctx.shape = input.shape
        return input[ctx.key]

    def backward(ctx, grad):
        return _place(grad, ctx.shape, ctx.key), None, None


@register("unbind", meta=None, view=True)
class Unbind(OpDef):
    """All slices along ``dim``, as a tuple of views."""

    def forward(ctx, xp, input, dim=0):
        check(input.ndim > 0, "unbind", "Dimension specified as 0 but tensor has no dimensions",
              IndexError)
        d = M.wrap_dim("unbind", dim, input.ndim)
        ctx.dim = d
        return tuple(input[(slice(None),) * d + (i,)] for i in range(input.shape[d]))

    def backward(ctx, *grads):
        import ember
        return ember.stack(list(grads), ctx.dim), None


def _split_sizes(op: str, n: int, split: Any) -> list[int]:
    if isinstance(split, (list, tuple)):
        sizes = [int(s) for s in split]
        check(sum(sizes) == n, op, f"split_with_sizes expects split_sizes to sum exactly to {n} "
                                   f"(input tensor's size at dimension), but got split_sizes="
                                   f"{list(sizes)}")
        return sizes
    if type(split) is int and split > 0 and n >= split:   # the common case
        return [split] * (n // split) + ([n % split] if n % split else [])
    split = int(split)
    check(split > 0 or n == 0, op, f"split expects split_size be non-negative, but got "
                                   f"split_size={split}")
    if n == 0:
        return [0]
    return [min(split, n - i) for i in range(0, n, split)]


@register("split", meta=None, view=True, sig="input, split_size_or_sections, dim=0")
class Split(OpDef):
    """Split into chunks of ``split_size`` (or the given sizes) along ``dim``, as views."""

    def forward(ctx, xp, input, split_size_or_sections, dim):
        d = M.wrap_dim("split", dim, input.ndim)
        sizes = _split_sizes("split", input.shape[d], split_size_or_sections)
        ctx.dim = d
        out, start = [], 0
        lead = (slice(None),) * d
        for s in sizes:
            out.append(input[lead + (slice(start, start + s),)])
            start += s
        return tuple(out)

    def backward(ctx, *grads):
        whole = _adjacent_views(grads, ctx.dim) if not _State.enabled else None
        if whole is not None:
            return whole, None, None
        import ember
        return ember.cat(list(grads), ctx.dim), None, None


def _adjacent_views(grads: tuple, dim: int) -> Tensor | None:
    """The gradients of a split joined without a copy, when they are views (NumPy or CuPy)
    lying side by side along ``dim`` in one buffer, as attention's backward writes the
    gradients of a fused qkv projection (CPU attention, and cuDNN attention's backward on
    the GPU), else None. Their union is then exactly the joined view's elements."""
    first = grads[0]
    if not isinstance(first, Tensor):
        return None
    a0 = first._data
    kind = type(a0)
    if kind is np.ndarray:
        owner = a0.base   # the buffer: the array the views were taken of
        if owner is None or type(owner) is not np.ndarray or not owner.flags.c_contiguous:
            return None

        def ptr(a: Any) -> int:
            return a.__array_interface__["data"][0]

        def same(a: Any) -> bool:
            return a.base is owner
        lo, size = ptr(owner), owner.nbytes
    elif hasattr(a0, "data") and hasattr(a0.data, "mem"):  # CuPy: views share one allocation
        owner = a0.data.mem

        def ptr(a: Any) -> int:
            return a.data.ptr

        def same(a: Any) -> bool:
            return a.data.mem is owner
        lo, size = owner.ptr, owner.size
    else:
        return None
    strides, step = a0.strides, a0.strides[dim]
    if any(st < 0 for st in strides):
        return None
    p0 = ptr(a0)
    n = 0
    for g in grads:
        a = g._data if isinstance(g, Tensor) else None
        if a is None or type(a) is not kind or not same(a) or a.dtype != a0.dtype or \
                a.strides != strides or g._dtype is not first._dtype or \
                a.shape[:dim] != a0.shape[:dim] or a.shape[dim + 1:] != a0.shape[dim + 1:] or \
                ptr(a) != p0 + n * step:
            return None
        n += a.shape[dim]
    if n and not step:
        return None
    shape = a0.shape[:dim] + (n,) + a0.shape[dim + 1:]
    extent = sum((d - 1) * st for d, st in zip(shape, strides)) + a0.itemsize
    if p0 < lo or p0 + extent > lo + size or 0 in shape:
        return None   # the joined view must lie inside the buffer
    if kind is np.ndarray:
        whole = np.ndarray(shape, a0.dtype, buffer=owner, strides=strides, offset=p0 - lo)
    else:
        whole = kind(shape, a0.dtype, memptr=a0.data, strides=strides)
    return _make(whole, first._dtype, first._device)


@composite()
def chunk(input: Tensor, chunks: int, dim: int = 0) -> tuple:
    """Split into ``chunks`` nearly equal views along ``dim``."""
    check(chunks > 0, "chunk", f"chunk expects `chunks` to be greater than 0, got: {chunks}")
    d = M.wrap_dim("chunk", dim, input.ndim)
    n = input.shape[d]
    size = max(-(-n // chunks), 1) if n else 1
    return input.split(size, d)


@composite()
def split_with_sizes(input: Tensor, split_sizes: Sequence[int], dim: int = 0) -> tuple:
    return input.split(list(split_sizes), dim)


@composite()
def movedim(input: Tensor, source: Any, destination: Any) -> Tensor:
    """Move dims ``source`` to positions ``destination`` (a view)."""
    nd = input.ndim
    src = [source] if isinstance(source, int) else list(source)
    dst = [destination] if isinstance(destination, int) else list(destination)
    check(len(src) == len(dst), "movedim", f"Invalid source or destination dims: source "
                                           f"({src} dims) should contain the same number of dims "
                                           f"as destination ({dst} dims)")
    src = [M.wrap_dim("movedim", s, nd) for s in src]
    dst = [M.wrap_dim("movedim", s, nd) for s in dst]
    check(len(set(src)) == len(src) and len(set(dst)) == len(dst), "movedim",
          f"repeated dim in source {src} or destination {dst}")
    perm = [-1] * nd
    for s, d in zip(src, dst):
        perm[d] = s
    rest = iter(i for i in range(nd) if i not in src)
    perm = [p if p != -1 else next(rest) for p in perm]
    return input.permute(perm)


moveaxis = composite("moveaxis")(lambda input, source, destination: movedim(input, source,
                                                                            destination))


def _byte_offset(arr: Any) -> int:
    root = arr
    while isinstance(root.base, np.ndarray):
        root = root.base
    return arr.__array_interface__["data"][0] - root.__array_interface__["data"][0]


def _diagonal_meta(op: Any, input: Any, offset: int = 0, dim1: int = 0, dim2: int = 1) -> TensorMeta:
    nd = input._data.ndim
    check(nd >= 2, "diagonal", f"diagonal dimensions requires ndim larger than 1, got {nd}D")
    d1, d2 = M.wrap_dim("diagonal", dim1, nd), M.wrap_dim("diagonal", dim2, nd)
    check(d1 != d2, "diagonal", f"diagonal dimensions cannot be identical {dim1}, {dim2}")
    return TensorMeta(input._data.shape)


@register("diagonal", meta=_diagonal_meta, view=True)
class Diagonal(OpDef):
    """The diagonal at ``offset`` of the 2-d slices over ``dim1``/``dim2`` (a view, last dim)."""

    def forward(ctx, xp, input, offset=0, dim1=0, dim2=1):
        nd = input.ndim
        d1, d2 = dim1 % nd, dim2 % nd
        ctx.shape, ctx.args = input.shape, (offset, d1, d2)
        item = input.dtype.itemsize
        st = [s // item for s in input.strides]
        n1, n2 = input.shape[d1], input.shape[d2]
        if offset >= 0:
            length = max(min(n1, n2 - offset), 0)
            start = (0, offset)
        else:
            length = max(min(n1 + offset, n2), 0)
            start = (-offset, 0)
        key = [slice(None)] * nd
        if length:
            key[d1] = slice(start[0], None)
            key[d2] = slice(start[1], None)
        else:
            key[d1] = slice(0, 0)
            key[d2] = slice(0, 0)
        sub = input[tuple(key)]
        keep = [i for i in range(nd) if i not in (d1, d2)]
        shape = tuple(input.shape[i] for i in keep) + (length,)
        strides = tuple(st[i] for i in keep) + (st[d1] + st[d2],)
        if xp is np:
            return np.lib.stride_tricks.as_strided(sub, shape=shape,
                                                   strides=tuple(s * item for s in strides),
                                                   writeable=True)
        return xp.lib.stride_tricks.as_strided(sub, shape=shape,
                                               strides=tuple(s * item for s in strides))

    def backward(ctx, grad):
        import ember
        z = ember.zeros(ctx.shape, dtype=grad.dtype, device=grad.device)
        offset, d1, d2 = ctx.args
        return apply(OPS["_diagonal_put"], (z, grad, offset, d1, d2)), None, None, None


@register("_diagonal_put", meta=None, function=False, method=False)
class DiagonalPut(OpDef):
    """``input`` with its diagonal replaced by ``src`` (the backward of ``diagonal``)."""

    def forward(ctx, xp, input, src, offset, dim1, dim2):
        out = input.copy()
        view = Diagonal.forward(_Ctx(), xp, out, offset, dim1, dim2)
        view[...] = src
        ctx.args = (offset, dim1, dim2)
        return out

    def backward(ctx, grad):
        offset, d1, d2 = ctx.args
        g_src = grad.diagonal(offset, d1, d2)
        import ember
        z = ember.zeros_like(g_src)
        return apply(OPS["_diagonal_put"], (grad, z, offset, d1, d2)), g_src, None, None, None


class _Ctx:
    pass


def _unfold_meta(op: Any, input: Any, dimension: int, size: int, step: int) -> TensorMeta:
    nd = input._data.ndim
    d = M.wrap_dim("unfold", dimension, nd) if nd else 0
    n = input._data.shape[d] if nd else 1
    check(size <= n, "unfold", f"maximum size for tensor at dimension {d} is {n} but size is "
                               f"{size}")
    check(step > 0, "unfold", f"step is {step} but must be > 0")
    return TensorMeta(input._data.shape)


@register("unfold", meta=_unfold_meta, view=True, function=False)
class Unfold(OpDef):
    """All windows of ``size`` with ``step`` along ``dimension``, as a new last dim (a view)."""

    def forward(ctx, xp, input, dimension, size, step):
        src = input if input.ndim else input.reshape(1)
        d = dimension % src.ndim
        item = src.dtype.itemsize
        n = (src.shape[d] - size) // step + 1
        shape = src.shape[:d] + (n,) + src.shape[d + 1:] + (size,)
        strides = src.strides[:d] + (src.strides[d] * step,) + src.strides[d + 1:] + (
            src.strides[d],)
        ctx.args = (input.shape, d, size, step)
        if xp is np:
            return np.lib.stride_tricks.as_strided(src, shape=shape, strides=strides,
                                                   writeable=True)
        return xp.lib.stride_tricks.as_strided(src, shape=shape, strides=strides)

    def backward(ctx, grad):
        import ember
        shape, d, size, step = ctx.args
        full = shape if shape else (1,)
        g = ember.zeros(full, dtype=grad.dtype, device=grad.device)
        n = grad.shape[d]
        for k in range(size):
            # window element k of window i sits at position i*step + k
            idx = (slice(None),) * d + (slice(k, k + (n - 1) * step + 1, step),)
            part = grad.select(grad.ndim - 1, k)
            g = apply(OPS["_put"], (g, idx, part, True))
        return (g.reshape(shape) if not shape else g), None, None, None


@register("as_strided", meta=None, view=True, sig="input, size, stride, storage_offset=None")
class AsStrided(OpDef):
    """A view of the input's storage with the given sizes and element strides."""

    def forward(ctx, xp, input, size, stride, storage_offset):
        size, stride = tuple(size), tuple(stride)
        check(len(size) == len(stride), "as_strided", f"mismatch in length of strides and shape: "
                                                      f"{list(size)} vs {list(stride)}")
        root = input
        while getattr(root, "base", None) is not None and hasattr(root.base, "dtype") and \
                root.base.dtype == input.dtype and root.base.ndim >= 0:
            root = root.base
        item = input.dtype.itemsize
        cur = _byte_offset(input) // item if xp is np else 0
        off = cur if storage_offset is None else int(storage_offset)
        flat = root.reshape(-1)
        need = off + sum((s - 1) * st for s, st in zip(size, stride) if s > 0) + 1 if all(size) \
            else 0
        check(need <= flat.size, "as_strided", f"setStorage: sizes {list(size)}, strides "
                                               f"{list(stride)}, storage offset {off} require "
                                               f"{need} elements, but storage has {flat.size}")
        ctx.args = (input.shape, size, stride, off, cur, flat.size,
                    tuple(s // item for s in input.strides))
        sub = flat[off:]
        if xp is np:
            return np.lib.stride_tricks.as_strided(sub, shape=size,
                                                   strides=tuple(s * item for s in stride),
                                                   writeable=True)
        return xp.lib.stride_tricks.as_strided(sub, shape=size,
                                               strides=tuple(s * item for s in stride))

    def backward(ctx, grad):
        import ember
        in_shape, size, stride, off, cur, n, in_strides = ctx.args
        # Storage positions of each output element and each input element.
        pos_out = ember.zeros(size, dtype=ember.int64) + off
        for dim, (s, st) in enumerate(zip(size, stride)):
            shape = [1] * len(size)
            shape[dim] = s
            pos_out = pos_out + ember.arange(s).reshape(shape) * st
        pos_in = ember.zeros(in_shape, dtype=ember.int64) + cur
        for dim, (s, st) in enumerate(zip(in_shape, in_strides)):
            shape = [1] * len(in_shape)
            shape[dim] = s
            pos_in = pos_in + ember.arange(s).reshape(shape) * st
        storage = ember.zeros(n, dtype=grad.dtype, device=grad.device)
        storage = apply(OPS["_put"], (storage, (pos_out.reshape(-1),), grad.reshape(-1), True))
        return storage[pos_in], None, None, None


# ---------------------------------------------------------------------- joining
def _cat_meta(op: Any, tensors: tuple, dim: int = 0) -> TensorMeta:
    check(len(tensors) > 0, "cat", "expected a non-empty list of Tensors")
    ref = next((t for t in tensors if not (t._data.ndim == 1 and t._data.shape[0] == 0)),
               tensors[0])
    nd = ref._data.ndim
    check(nd > 0, "cat", "zero-dimensional tensor (at position 0) cannot be concatenated")
    d = M.wrap_dim("cat", dim, nd)
    total = 0
    for i, t in enumerate(tensors):
        s = t._data.shape
        if len(s) == 1 and s[0] == 0 and nd != 1:
            continue  # torch's legacy rule: 1-d empty tensors are skipped
        check(len(s) == nd, "cat", f"Tensors must have same number of dimensions: got {nd} and "
                                   f"{len(s)}")
        for j in range(nd):
            if j != d:
                check(s[j] == ref._data.shape[j], "cat",
                      f"Sizes of tensors must match except in dimension {d}. Expected size "
                      f"{ref._data.shape[j]} but got size {s[j]} for tensor number {i} in the "
                      f"list.")
        total += s[d]
    shape = list(ref._data.shape)
    shape[d] = total
    return TensorMeta(tuple(shape))


@register("cat", meta=_cat_meta, promote="default", variadic=True, method=False,
          sig="tensors, dim=0", onnx="Concat")
class Cat(OpDef):
    """Concatenate tensors along ``dim`` (dtypes promote)."""

    def forward(ctx, xp, tensors, dim):
        ref = next((t for t in tensors if not (t.ndim == 1 and t.shape[0] == 0)), tensors[0])
        d = dim % ref.ndim
        keep = [t for t in tensors if not (t.ndim == 1 and t.shape[0] == 0 and ref.ndim != 1)]
        ctx.dim = d
        ctx.sizes = [t.shape[d] if not (t.ndim == 1 and t.shape[0] == 0 and ref.ndim != 1)
                     else None for t in tensors]
        return xp.concatenate(keep, axis=d)

    def backward(ctx, grad):
        out, start = [], 0
        for s in ctx.sizes:
            if s is None:
                out.append(None)
                continue
            out.append(grad.narrow(ctx.dim, start, s))
            start += s
        return out, None


def _stack_meta(op: Any, tensors: tuple, dim: int = 0) -> TensorMeta:
    check(len(tensors) > 0, "stack", "stack expects a non-empty TensorList")
    s0 = tensors[0]._data.shape
    for i, t in enumerate(tensors):
        check(t._data.shape == s0, "stack", f"stack expects each tensor to be equal size, but got "
                                            f"{list(s0)} at entry 0 and {list(t._data.shape)} at "
                                            f"entry {i}")
    M.wrap_dim("stack", dim, len(s0) + 1)
    return TensorMeta(s0)


@register("stack", meta=_stack_meta, promote="default", variadic=True, method=False,
          sig="tensors, dim=0")
class Stack(OpDef):
    """Stack equal-shaped tensors along a new dim ``dim``."""

    def forward(ctx, xp, tensors, dim):
        d = dim % (tensors[0].ndim + 1)
        ctx.dim = d
        return xp.stack(tensors, axis=d)

    def backward(ctx, grad):
        return list(grad.unbind(ctx.dim)), None


@composite(method=False)
def concat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Alias of :func:`cat`."""
    return OPS["cat"].function(tensors, dim)


concatenate = composite("concatenate", method=False)(
    lambda tensors, dim=0, axis=None: OPS["cat"].function(tensors, dim if axis is None else axis))
