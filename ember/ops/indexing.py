"""Indexing: ``tensor[key]`` and ``tensor[key] = value``.

Basic keys (ints, slices, None, Ellipsis) give views; keys with integer or bool tensors,
lists or Python bools use advanced indexing, which copies and whose backward accumulates
(``index_put`` with ``accumulate=True``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ember import dtypes as _dt
from ember._state import _State
from ember.errors import EmberError, make, op_error
from ember.ops.registry import OPS, OpDef, TensorMeta, apply, register, write_inplace
from ember.tensor import Tensor

_INT_TYPES = (int, np.integer)


def normalize_key(key: Any, t: Tensor, op: str = "getitem") -> tuple[tuple, bool]:
    """The key as a tuple NumPy/CuPy accept, and whether it is basic (a view)."""
    if not isinstance(key, tuple):
        key = (key,)
    out = []
    basic = True
    dev_xp = None
    for k in key:
        if k is None or k is Ellipsis:
            out.append(k)
        elif isinstance(k, bool) or isinstance(k, np.bool_):
            out.append(bool(k))
            basic = False
        elif isinstance(k, _INT_TYPES):
            out.append(int(k))
        elif isinstance(k, slice):
            out.append(_slice(k, op))
        elif isinstance(k, Tensor):
            if k._dtype.category >= 2:
                raise make(IndexError, op, f"tensors used as indices must be long, int, byte or "
                                           f"bool tensors, got {k._dtype}")
            arr = k._data
            if k._device is not t._device:
                if k._device.type == "cpu" or k._data.ndim == 0:
                    from ember.backend import get_xp
                    dev_xp = dev_xp or get_xp(t._device)
                    arr = dev_xp.asarray(k._host())
                else:
                    raise make(RuntimeError, op, f"indices should be either on cpu or on the same "
                                                 f"device as the indexed tensor ({t._device}), got "
                                                 f"{k._device}")
            if k._dtype is _dt.uint8:
                arr = arr.astype(bool)
            out.append(arr)
            basic = False
        elif isinstance(k, (list, tuple, np.ndarray)):
            arr = np.asarray(k._host() if isinstance(k, Tensor) else _tolist(k))
            if arr.dtype.kind not in "iub":
                if arr.size == 0:
                    arr = arr.astype(np.int64)
                else:
                    raise make(IndexError, op, f"tensors used as indices must be long, int, byte "
                                               f"or bool tensors, got a list of {arr.dtype}")
            if t._device.type != "cpu":
                from ember.backend import get_xp
                arr = get_xp(t._device).asarray(arr)
            out.append(arr)
            basic = False
        else:
            kind = TypeError if isinstance(k, (str, bytes, float)) else IndexError
            raise make(kind, op, "only integers, slices (`:`), ellipsis (`...`), None and "
                                       f"long or byte Variables are valid indices (got "
                                       f"{type(k).__name__})")
    return tuple(out), basic


def _tolist(k: Any) -> Any:
    if isinstance(k, (list, tuple)):
        return [_tolist(v) for v in k]
    if isinstance(k, Tensor):
        return k.tolist()
    return k


def _slice(s: slice, op: str) -> slice:
    parts = []
    for v in (s.start, s.stop, s.step):
        if isinstance(v, Tensor):
            v = v.__index__()
        elif v is not None and not isinstance(v, _INT_TYPES):
            if hasattr(v, "__index__"):
                v = v.__index__()
            else:
                raise make(TypeError, op, f"slice indices must be integers or None, got "
                                          f"{type(v).__name__}")
        parts.append(v)
    if parts[2] is not None and parts[2] <= 0:
        raise make(ValueError, op, "step must be greater than zero",
                   hint="negative steps are not supported; use ember.flip")
    return slice(*parts)


def _check_key(op: str, shape: tuple, key: tuple) -> None:
    """Validate a key against a shape with torch's messages (before NumPy sees it)."""
    nd = len(shape)
    n_idx = sum(1 for k in key if k is not None and k is not Ellipsis and not isinstance(k, bool))
    n_idx += sum(k.ndim - 1 for k in key if hasattr(k, "dtype") and k.dtype == bool and k.ndim)
    if n_idx > nd:
        raise make(IndexError, op, f"too many indices for tensor of dimension {nd} "
                                   f"(shape {tuple(shape)})")
    if sum(1 for k in key if k is Ellipsis) > 1:
        raise make(IndexError, op, "an index can only have a single ellipsis ('...')")
    dim = 0
    ell_span = nd - n_idx
    for k in key:
        if k is Ellipsis:
            dim += ell_span
        elif k is None or isinstance(k, bool):
            continue
        elif isinstance(k, int):
            size = shape[dim]
            if not -size <= k < size:
                raise make(IndexError, op, f"index {k} is out of bounds for dimension {dim} with "
                                           f"size {size}")
            dim += 1
        elif isinstance(k, slice):
            dim += 1
        elif k.dtype == bool:
            want = shape[dim:dim + k.ndim]
            if tuple(k.shape) != tuple(want):
                raise make(IndexError, op, f"The shape of the mask {list(k.shape)} at index {dim} "
                                           f"does not match the shape of the indexed tensor "
                                           f"{list(want)} at index {dim}")
            dim += k.ndim
        else:
            size = shape[dim]
            if k.size:
                lo, hi = int(k.min()), int(k.max())
                if hi >= size or lo < -size:
                    bad = hi if hi >= size else lo
                    raise make(IndexError, op, f"index {bad} is out of bounds for dimension {dim} "
                                               f"with size {size}")
            dim += 1


def _index_meta(op: Any, input: Any, key: tuple) -> TensorMeta:
    _check_key("index", input._data.shape, key)
    return TensorMeta(input._data.shape)


@register("getitem", meta=_index_meta, view=True, function=False, method=False,
          node_name="Slice")
class GetItem(OpDef):
    """Basic indexing: a view."""

    def forward(ctx, xp, input, key):
        ctx.shape = input.shape
        ctx.key = key
        out = input[key]
        return out if isinstance(out, xp.ndarray) else input[key + (Ellipsis,)]

    def backward(ctx, grad):
        from ember.ops.movement import _place
        return _place(grad, ctx.shape, ctx.key), None


@register("index", meta=_index_meta, function=False, method=False)
class Index(OpDef):
    """Advanced indexing: a copy; backward accumulates into repeated positions."""

    def forward(ctx, xp, input, key):
        ctx.shape = input.shape
        ctx.key = key
        return input[key]

    def backward(ctx, grad):
        import ember
        z = ember.zeros(ctx.shape, dtype=grad.dtype, device=grad.device)
        return apply(OPS["_put"], (z, ctx.key, grad, True)), None


def _put_meta(op: Any, input: Any, key: tuple, values: Any, accumulate: bool) -> TensorMeta:
    _check_key("index_put", input._data.shape, key)
    return TensorMeta(input._data.shape)


@register("_put", meta=_put_meta, function=False, method=False, node_name="IndexPut")
class Put(OpDef):
    """``input`` with ``values`` written (or added, with ``accumulate``) at ``key``."""

    def forward(ctx, xp, input, key, values, accumulate):
        out = input.copy()
        v = values.astype(input.dtype, copy=False) if hasattr(values, "astype") else values
        ctx.key, ctx.acc = key, accumulate
        if accumulate:
            if xp is np:
                np.add.at(out, key, v)
            else:
                region = out[key]
                xp.add.at(out, key, xp.broadcast_to(xp.asarray(v, out.dtype), region.shape))
        else:
            try:
                out[key] = v
            except ValueError:
                region = input[key]
                vshape = tuple(getattr(values, "shape", ()))
                raise make(RuntimeError, "index_put",
                           f"shape mismatch: value tensor of shape {list(vshape)} cannot be "
                           f"broadcast to indexing result of shape {list(region.shape)}") from None
        return out

    def backward(ctx, grad):
        gi = grad if ctx.acc else apply(OPS["_put"], (grad, ctx.key, 0, False))
        gv = apply(OPS["index"], (grad, ctx.key))
        if gv.shape == () and grad.ndim:
            gv = gv
        return gi, None, gv, None


def getitem(self: Tensor, key: Any) -> Tensor:
    """``tensor[key]``: a view for basic keys, a copy for advanced ones."""
    k, basic = normalize_key(key, self, "getitem")
    if basic:
        if not k and self._data.ndim == 0:
            return apply(OPS["getitem"], (self, (Ellipsis,)))
        return apply(OPS["getitem"], (self, k))
    return apply(OPS["index"], (self, k))


def setitem(self: Tensor, key: Any, value: Any) -> None:
    """``tensor[key] = value``: an in-place write (values are cast to the tensor's dtype)."""
    k, basic = normalize_key(key, self, "setitem")
    is_t = isinstance(value, Tensor)
    if is_t and value._device is not self._device and value._data.ndim:
        raise make(RuntimeError, "setitem", f"value is on {value._device} but the tensor is on "
                                            f"{self._device}")
    if not (_State.enabled and (self._requires_grad or (is_t and value._requires_grad))):
        _check_key("setitem", self._data.shape, k)
        if not getattr(self._data.flags, "writeable", True):
            raise make(RuntimeError, "setitem",
                       "unsupported operation: more than one element of the written-to tensor "
                       "refers to a single memory location. Please clone() the tensor before "
                       "performing the operation.")
        v = value._data if is_t else value
        if is_t and value._device is not self._device:
            v = value.item()
        try:
            if hasattr(v, "dtype") and v.dtype != self._data.dtype:
                v = v.astype(self._data.dtype)
            self._data[k] = v
        except ValueError:
            region_shape = self._data[k].shape
            vshape = tuple(getattr(v, "shape", ()))
            raise make(RuntimeError, "setitem",
                       f"shape mismatch: value tensor of shape {list(vshape)} cannot be broadcast "
                       f"to indexing result of shape {list(region_shape)}") from None
        except (TypeError, OverflowError) as exc:
            raise op_error("setitem", exc, (self, value)) from None
        self._version[0] += 1
        return
    if self._grad_fn is None and self._requires_grad:
        raise make(RuntimeError, "setitem", "a leaf Variable that requires grad is being used in "
                                            "an in-place operation.",
                   hint="wrap the write in `with ember.no_grad():` or clone() the tensor first")
    if self._base is not None and self._base._requires_grad and self._base._grad_fn is None:
        raise make(RuntimeError, "setitem", "a view of a leaf Variable that requires grad is "
                                            "being used in an in-place operation.")
    out = apply(OPS["_put"], (self, k, value, False))
    write_inplace(self, out, "setitem")


Tensor.__getitem__ = getitem
Tensor.__setitem__ = setitem
