"""Meta rules: output shape (and dtype where fixed) from input metadata, without compute.

Each takes the op's positional arguments as the public function received them (Tensors and
Python values) and returns a :class:`TensorMeta` (or a tuple of them), raising torch's
exception type with a message that names the op and the shapes on bad input. The
dispatcher runs the op's meta rule before the forward; a tracer calls it to learn shapes.
"""
from __future__ import annotations

from typing import Any, Sequence

from ember.errors import check, make
from ember.ops.registry import TensorMeta
from ember.tensor import Tensor

_BCAST_CACHE: dict = {}
# TensorMeta(shape) per shape: the elementwise and unary rules run on every such op call, and
# building the named tuple costs ~0.3 us against ~0.05 us for the lookup (it is immutable).
_SAME: dict = {}


def same_shape_meta(shape: tuple) -> TensorMeta:
    """``TensorMeta(shape)``, shared between calls."""
    m = _SAME.get(shape)
    if m is None:
        if len(_SAME) > 4096:
            _SAME.clear()
        m = _SAME[shape] = TensorMeta(shape)
    return m


def shape_of(x: Any) -> tuple:
    return x._data.shape if isinstance(x, Tensor) else ()


def broadcast_shapes(op: str, *shapes: tuple, names: Sequence[str] | None = None) -> tuple:
    """Broadcast shapes by NumPy/torch rules, or raise torch's message naming the op."""
    key = shapes
    hit = _BCAST_CACHE.get(key)
    if hit is not None:
        return hit
    ndim = max((len(s) for s in shapes), default=0)
    out = [1] * ndim
    for idx, s in enumerate(shapes):
        off = ndim - len(s)
        for i, d in enumerate(s):
            cur = out[off + i]
            if d == cur or d == 1:
                continue
            if cur == 1:
                out[off + i] = d
                continue
            desc = " vs ".join(str(tuple(x)) for x in shapes)
            raise make(RuntimeError, op,
                       f"The size of tensor a ({cur}) must match the size of tensor b ({d}) at "
                       f"non-singleton dimension {off + i}: shapes {desc}")
    res = tuple(out)
    if len(_BCAST_CACHE) > 4096:
        _BCAST_CACHE.clear()
    _BCAST_CACHE[key] = res
    return res


def wrap_dim(op: str, dim: int, ndim: int) -> int:
    """Normalise a possibly negative dim, raising torch's IndexError when out of range."""
    if type(dim) is int and 0 <= dim < ndim:   # the common case, without the checks below
        return dim
    n = max(ndim, 1)
    if not isinstance(dim, int) or isinstance(dim, bool):
        if hasattr(dim, "__index__"):
            dim = dim.__index__()
        else:
            raise make(TypeError, op, f"dim must be an int, got {type(dim).__name__}")
    if not -n <= dim < n:
        raise make(IndexError, op, f"Dimension out of range (expected to be in range of "
                                   f"[{-n}, {n - 1}], but got {dim})")
    return dim % n


def wrap_dims(op: str, dims: Any, ndim: int) -> tuple:
    """Normalise ``dim`` arguments: None/() means all dims; ints or sequences of ints."""
    if dims is None:
        return tuple(range(ndim))
    if type(dims) is int:
        return (wrap_dim(op, dims, ndim),)
    if isinstance(dims, int) or hasattr(dims, "__index__") and not isinstance(dims, (tuple, list)):
        return (wrap_dim(op, dims, ndim),)
    out = tuple(wrap_dim(op, d, ndim) for d in dims)
    check(len(set(out)) == len(out), op, f"dim {list(dims)} appears multiple times in the list "
                                         "of dims")
    return out if out else tuple(range(ndim))


# ---------------------------------------------------------------------- common rules
def elementwise(op: Any, *args: Any) -> TensorMeta:
    """Broadcast of every Tensor argument; dtype comes from the op's promotion kind."""
    # Runs on every elementwise call: a plain loop (no comprehension or all() generator
    # frames), and the broadcast only when shapes differ.
    s0 = None
    differ = False
    for a in args:
        if isinstance(a, Tensor):
            s = a._data.shape
            if s0 is None:
                s0 = s
            elif s != s0:
                differ = True
    if s0 is None:
        return same_shape_meta(())
    if not differ:
        m = _SAME.get(s0)
        return m if m is not None else same_shape_meta(s0)
    return same_shape_meta(broadcast_shapes(op.name, *[a._data.shape for a in args
                                                       if isinstance(a, Tensor)]))


def unary(op: Any, input: Any, *rest: Any) -> TensorMeta:
    if not isinstance(input, Tensor):  # the message is built only on failure
        raise make(TypeError, op.name,
                   f"argument 'input' must be Tensor, not {type(input).__name__}")
    s = input._data.shape
    m = _SAME.get(s)
    return m if m is not None else same_shape_meta(s)


def reduction(op: Any, input: Any, dim: Any = None, keepdim: bool = False, *rest: Any) -> TensorMeta:
    """Shape after reducing ``dim`` (None: all dims) with ``keepdim``."""
    shape = input._data.shape
    dims = wrap_dims(op.name, dim, len(shape))
    if keepdim:
        return TensorMeta(tuple(1 if i in dims else s for i, s in enumerate(shape)))
    return TensorMeta(tuple(s for i, s in enumerate(shape) if i not in dims))


def nonempty_reduction(op: Any, input: Any, dim: Any = None, keepdim: bool = False,
                       *rest: Any) -> TensorMeta:
    """Like :func:`reduction`, but max/min-like ops can't reduce an empty dimension."""
    shape = input._data.shape
    dims = wrap_dims(op.name, dim, len(shape))
    for d in dims:
        if shape and shape[d] == 0:
            raise make(IndexError, op.name, f"Expected reduction dim {d} to have non-zero size "
                                            f"(input shape {tuple(shape)})")
    if not shape or dim is None:
        check(input._data.size > 0, op.name,
              "operation does not have an identity: input is an empty tensor", RuntimeError,
              hint="pass dim= to reduce over a non-empty dimension")
    return reduction(op, input, dim, keepdim)
