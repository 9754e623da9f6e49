"""Tensor methods that are not ops of their own: conversions (``to``, ``float()`` ...),
``detach``/``contiguous``, in-place fills and copies, the operator dunders (with a lean fast
path for the common no-grad, same-dtype case) and torch's aliases."""
from __future__ import annotations

from typing import Any

import numpy as np

from ember import dtypes as _dt
from ember._state import _State
from ember.backend.device import device, to_device
from ember.errors import make
from ember.ops.registry import (OPS, PUBLIC_FUNCTIONS, apply, apply_inplace, composite, store,
                                write_inplace)
from ember.tensor import Tensor, _make

T = Tensor


# ---------------------------------------------------------------------- conversions
def _parse_to(args: tuple, kwargs: dict) -> tuple:
    dev = kwargs.pop("device", None)
    dt = kwargs.pop("dtype", None)
    non_blocking = kwargs.pop("non_blocking", False)
    copy = kwargs.pop("copy", False)
    memory_format = kwargs.pop("memory_format", None)
    if kwargs:
        raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}")
    rest = list(args)
    if rest and isinstance(rest[0], Tensor):
        other = rest.pop(0)
        dev, dt = other._device, other._dtype
    while rest:
        a = rest.pop(0)
        if isinstance(a, _dt.dtype) or a in (float, int, bool):
            dt = _dt.to_dtype(a)
        elif isinstance(a, (str, device, int)) and not isinstance(a, bool):
            dev = a
        elif isinstance(a, bool):
            non_blocking = a
        else:
            raise TypeError(f"to() received an invalid combination of arguments: {a!r}")
    return (to_device(dev) if dev is not None else None,
            _dt.to_dtype(dt) if dt is not None else None, non_blocking, copy, memory_format)


def to(self: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """Convert dtype and/or device: ``to(dtype)``, ``to(device)``, ``to(device, dtype)``,
    ``to(other)``; returns ``self`` when nothing changes (unless ``copy=True``)."""
    dev, dt, _nb, copy, memory_format = _parse_to(args, kwargs)
    if dev is not None and dev.type == "cuda" and dev.index is None:
        from ember import cuda
        dev = device("cuda", cuda.current_device())
    if _nb and dev is not None and dev.type == "cuda" and self._device.type == "cpu" and \
            memory_format is None and not (self._requires_grad and _State.enabled) and \
            _pinned_base(self._data):
        return _pinned_to_cuda(self, dev, dt)
    same_dev = dev is None or dev is self._device
    same_dt = dt is None or dt is self._dtype
    if same_dev and same_dt and not copy:
        if memory_format is not None and not self.is_contiguous(memory_format=memory_format):
            return apply(OPS["clone"], (self, memory_format))
        return self
    out = apply(OPS["_to_copy"], (self, None if same_dt else dt, None if same_dev else dev))
    if memory_format is not None and str(memory_format).endswith("channels_last"):
        out = apply(OPS["clone"], (out, memory_format))
    return out


def _caster(dt: _dt.dtype):
    def cast(self: Tensor, memory_format: Any = None) -> Tensor:
        return to(self, dt)
    cast.__name__ = dt.name
    cast.__doc__ = f"``self.to(ember.{dt.name})``."
    return cast


for _name, _d in (("float", _dt.float32), ("double", _dt.float64), ("half", _dt.float16),
                  ("bfloat16", _dt.bfloat16), ("long", _dt.int64), ("int", _dt.int32),
                  ("short", _dt.int16), ("char", _dt.int8), ("byte", _dt.uint8),
                  ("bool", _dt.bool), ("cfloat", _dt.complex64), ("cdouble", _dt.complex128)):
    setattr(Tensor, _name, _caster(_d))

_TYPE_NAMES = {"torch.FloatTensor": _dt.float32, "torch.DoubleTensor": _dt.float64,
               "torch.HalfTensor": _dt.float16, "torch.BFloat16Tensor": _dt.bfloat16,
               "torch.LongTensor": _dt.int64, "torch.IntTensor": _dt.int32,
               "torch.ShortTensor": _dt.int16, "torch.CharTensor": _dt.int8,
               "torch.ByteTensor": _dt.uint8, "torch.BoolTensor": _dt.bool}
_NAME_OF = {v: k for k, v in _TYPE_NAMES.items()}


def type_(self: Tensor, dtype: Any = None, non_blocking: bool = False, **kwargs: Any) -> Any:
    """With no argument, the type name (``'torch.FloatTensor'``); else a cast."""
    if dtype is None:
        name = _NAME_OF.get(self._dtype, f"torch.{self._dtype.name}")
        return name.replace("torch.", "torch.cuda.") if self._device.type == "cuda" else name
    if isinstance(dtype, str):
        key = dtype.replace("ember.", "torch.").replace(".cuda.", ".")
        if key not in _TYPE_NAMES:
            raise ValueError(f"invalid type: '{dtype}'")
        out = to(self, _TYPE_NAMES[key])
        return out.cuda() if ".cuda." in dtype else out
    return to(self, _dt.to_dtype(dtype))


def cpu(self: Tensor, memory_format: Any = None) -> Tensor:
    """A copy on the CPU (``self`` if already there)."""
    return to(self, "cpu")


def cuda(self: Tensor, device: Any = None, non_blocking: bool = False,
         memory_format: Any = None) -> Tensor:
    """A copy on a CUDA device (the current one by default)."""
    if device is None:
        from ember import cuda as _cuda
        device = _cuda.current_device()
    if isinstance(device, int):
        device = f"cuda:{device}"
    return to(self, device, non_blocking=non_blocking)


def detach(self: Tensor) -> Tensor:
    """A tensor sharing data (and version counter) with ``self``, outside the graph."""
    # Shares data and the version counter, but is not a view for autograd: in-place writes
    # to it are allowed even when ``self`` is a leaf that requires grad (as in torch).
    out = _make(self._data, self._dtype, self._device)
    out._version = self._version
    return out


def detach_(self: Tensor) -> Tensor:
    """Detach ``self`` from the graph in place, making it a leaf."""
    self._grad_fn = None
    self._requires_grad = False
    return self


def contiguous(self: Tensor, memory_format: Any = None) -> Tensor:
    """``self`` if it is C-contiguous (or in ``memory_format``), else a contiguous copy."""
    if self.is_contiguous(memory_format):
        return self
    return apply(OPS["clone"], (self, memory_format))


def _data_get(self: Tensor) -> Tensor:
    return detach(self)


def _data_set(self: Tensor, value: Tensor) -> None:
    self._data = value._data
    self._dtype = value._dtype
    self._device = value._device
    self._version = [0]


def new_tensor(self: Tensor, data: Any, dtype: Any = None, device: Any = None,
               requires_grad: bool = False) -> Tensor:
    from ember import _factory
    return _factory.tensor(data, dtype=dtype or self._dtype, device=device or self._device,
                           requires_grad=requires_grad)


def _new_factory(name: str):
    def new(self: Tensor, *size: Any, dtype: Any = None, device: Any = None,
            requires_grad: bool = False, **kw: Any) -> Tensor:
        from ember import _factory
        fn = getattr(_factory, name)
        if name == "full":
            size, fill = size[0], size[1]
            return fn(size, fill, dtype=dtype or self._dtype, device=device or self._device,
                      requires_grad=requires_grad)
        return fn(*size, dtype=dtype or self._dtype, device=device or self._device,
                  requires_grad=requires_grad)
    new.__name__ = f"new_{name}"
    return new


# ---------------------------------------------------------------------- in-place writes
def zero_(self: Tensor) -> Tensor:
    """Fill with zeros in place."""
    return fill_(self, 0)


def fill_(self: Tensor, value: Any) -> Tensor:
    """Fill with ``value`` (a number or 0-dim tensor) in place."""
    if isinstance(value, Tensor):
        if value.ndim != 0:
            raise make(RuntimeError, "fill_", f"fill_ only supports 0-dimension value tensor but "
                                              f"got tensor with {value.ndim} dimensions.")
        if _State.enabled and (value._requires_grad or self._requires_grad):
            out = apply(OPS["expand"], (value.to(self._dtype), self._data.shape))
            return write_inplace(_leaf_check(self, "fill_"), out * 1, "fill_")
        value = value.item()
    if _State.enabled and self._requires_grad:
        _leaf_check(self, "fill_")
        out = (self * 0 + value).to(self._dtype)
        return write_inplace(self, out.detach(), "fill_")
    if not getattr(self._data.flags, "writeable", True):
        raise make(RuntimeError, "fill_", "unsupported operation: more than one element of the "
                                          "written-to tensor refers to a single memory location.")
    self._data[...] = value
    self._version[0] += 1
    if self._grad_fn is not None and _State.enabled:
        self._grad_fn = None
        self._requires_grad = False
    return self


def _leaf_check(self: Tensor, name: str) -> Tensor:
    if _State.enabled and self._requires_grad and self._grad_fn is None:
        raise make(RuntimeError, name, "a leaf Variable that requires grad is being used in an "
                                       "in-place operation.")
    return self


def copy_(self: Tensor, src: Any, non_blocking: bool = False) -> Tensor:
    """Copy ``src`` (broadcast, cast, moved across devices) into ``self``."""
    if not isinstance(src, Tensor):
        from ember import _factory
        src = _factory.tensor(src)
    if src._device is not self._device:
        src = to(src, self._device)
    out = src if src._dtype is self._dtype else to(src, self._dtype)
    if out._data.shape != self._data.shape:
        out = out.expand(self._data.shape)
    if _State.enabled and (src._requires_grad or self._requires_grad):
        _leaf_check(self, "copy_")
        return write_inplace(self, out * 1 if out is src else out, "copy_")
    if not getattr(self._data.flags, "writeable", True):
        raise make(RuntimeError, "copy_", "unsupported operation: more than one element of the "
                                          "written-to tensor refers to a single memory location.")
    store(self._data, out._data)
    self._version[0] += 1
    return self


# ---------------------------------------------------------------------- operators
_np_ndarray = np.ndarray
_asarray = np.asarray


def _fast_binary(op_name: str, method: str, kind: str):
    """A dunder with a fast path: no grad, same dtype and device, or a Python scalar of a kind
    that can't change the dtype. Everything else goes through the dispatcher."""
    op = OPS[op_name]
    fn = op.function

    def dunder(self: Tensor, other: Any) -> Any:
        tp = type(other)
        if tp is Tensor:
            if (self._dtype is other._dtype and self._device is other._device
                    and not (_State.enabled and (self._requires_grad or other._requires_grad))
                    and (kind != "div" or self._dtype.category >= 2)):
                try:
                    r = getattr(self._data, method)(other._data)
                except Exception:
                    return fn(self, other)
                if type(r) is not _np_ndarray and self._device.type == "cpu":
                    r = _asarray(r)
                return _make(r, _dt.bool if kind == "cmp" else self._dtype, self._device)
        elif (tp is float and self._dtype.category >= 2 or tp is int and (
                self._dtype.category >= 2 or (self._dtype.category == 1 and kind != "div"))) and (
                not (_State.enabled and self._requires_grad)):
            try:
                r = getattr(self._data, method)(other)
            except Exception:
                return fn(self, other)
            if type(r) is not _np_ndarray and self._device.type == "cpu":
                r = _asarray(r)
            if r.dtype is self._data.dtype or kind == "cmp":
                return _make(r, _dt.bool if kind == "cmp" else self._dtype, self._device)
            return fn(self, other)
        elif tp is not Tensor and not isinstance(other, (Tensor, int, float, complex, bool,
                                                         np.number, np.bool_)):
            return NotImplemented
        return fn(self, other)

    dunder.__name__ = method
    return dunder


for _op, _m, _k in (("add", "__add__", "arith"), ("sub", "__sub__", "arith"),
                    ("mul", "__mul__", "arith"), ("div", "__truediv__", "div"),
                    ("eq", "__eq__", "cmp"), ("ne", "__ne__", "cmp"), ("lt", "__lt__", "cmp"),
                    ("le", "__le__", "cmp"), ("gt", "__gt__", "cmp"), ("ge", "__ge__", "cmp")):
    setattr(Tensor, _m, _fast_binary(_op, _m, _k))
Tensor.__radd__ = Tensor.__add__
Tensor.__rmul__ = Tensor.__mul__


def _reflected(op_name: str):
    fn = OPS[op_name].function

    def r(self: Tensor, other: Any) -> Any:
        if not isinstance(other, (int, float, complex, bool, np.number, np.bool_)):
            return NotImplemented
        return fn(other, self)
    r.__name__ = f"__r{op_name}__"
    return r


Tensor.__rsub__ = _reflected("sub")
Tensor.__rtruediv__ = _reflected("div")
Tensor.__rfloordiv__ = _reflected("floor_divide")
Tensor.__rmod__ = _reflected("remainder")
Tensor.__rpow__ = _reflected("pow")
Tensor.__rmatmul__ = lambda self, other: OPS["matmul"].function(other, self)
Tensor.__rlshift__ = _reflected("bitwise_left_shift")
Tensor.__rrshift__ = _reflected("bitwise_right_shift")


def _iop(name: str):
    def iop(self: Tensor, other: Any) -> Tensor:
        return getattr(self, name + "_")(other)
    iop.__name__ = f"__i{name}__"
    return iop


for _n, _dn in (("add", "__iadd__"), ("sub", "__isub__"), ("mul", "__imul__"),
                ("div", "__itruediv__"), ("floor_divide", "__ifloordiv__"),
                ("remainder", "__imod__"), ("pow", "__ipow__"), ("bitwise_and", "__iand__"),
                ("bitwise_or", "__ior__"), ("bitwise_xor", "__ixor__"),
                ("bitwise_left_shift", "__ilshift__"), ("bitwise_right_shift", "__irshift__")):
    setattr(Tensor, _dn, _iop(_n))


def __neg__(self: Tensor) -> Tensor:
    if self._dtype is _dt.bool:
        raise make(RuntimeError, "neg", "Negation, the `-` operator, on a bool tensor is not "
                                        "supported. If you are trying to invert a mask, use the "
                                        "`~` or `logical_not()` operator instead.")
    return OPS["neg"].function(self)


Tensor.__neg__ = __neg__
Tensor.__pos__ = lambda self: OPS["positive"].function(self)
Tensor.__abs__ = lambda self: OPS["abs"].function(self)
Tensor.__invert__ = lambda self: OPS["bitwise_not"].function(self)
Tensor.__eq__.__doc__ = "Elementwise ``==``; returns a bool tensor."

for _name, _fn in (("to", to), ("type", type_), ("cpu", cpu), ("cuda", cuda), ("detach", detach),
                   ("detach_", detach_), ("contiguous", contiguous), ("zero_", zero_),
                   ("fill_", fill_), ("copy_", copy_), ("new_tensor", new_tensor)):
    setattr(Tensor, _name, _fn)
for _name in ("zeros", "ones", "empty", "full"):
    setattr(Tensor, f"new_{_name}", _new_factory(_name))
Tensor.data = property(_data_get, _data_set)
Tensor.T = property(lambda self: self.permute(*reversed(range(self.ndim))))
Tensor.mT = property(lambda self: self.transpose(-2, -1))
Tensor.H = property(lambda self: self.T.conj())
Tensor.mH = property(lambda self: self.transpose(-2, -1).conj())
Tensor.view_as = lambda self, other: self.view(other.shape)
Tensor.reshape_as = lambda self, other: self.reshape(other.shape)
Tensor.type_as = lambda self, other: to(self, other._dtype)


def _pinned_base(arr: Any) -> bool:
    """Whether a NumPy array lives in CuPy pinned (page-locked) host memory."""
    import sys
    cp = sys.modules.get("cupy")
    if cp is None or not isinstance(arr, np.ndarray):
        return False
    pinned = cp.cuda.pinned_memory.PinnedMemoryPointer
    b = arr
    while b is not None:
        if isinstance(b, pinned):
            return True
        b = b.obj if isinstance(b, memoryview) else getattr(b, "base", None)
    return False


def is_pinned(self: Tensor, device: Any = None) -> bool:
    """Whether this CPU tensor is in page-locked memory (see :meth:`pin_memory`)."""
    return self._device.type == "cpu" and _pinned_base(self._data)


def pin_memory(self: Tensor, device: Any = None) -> Tensor:
    """A copy of this CPU tensor in page-locked memory, so ``.to("cuda", non_blocking=True)``
    is an asynchronous copy on the current stream. ``self`` if already pinned; without a
    usable GPU the tensor is returned unchanged."""
    from ember.backend import cuda as _bc
    if self._device.type != "cpu" or is_pinned(self) or not _bc.is_available():
        return self
    import cupyx
    arr = cupyx.empty_pinned(self._data.shape, dtype=self._data.dtype)
    arr[...] = self._data
    return _make(arr, self._dtype, self._device)


def _pinned_to_cuda(self: Tensor, dev: Any, dt: Any) -> Tensor:
    """Asynchronous host-to-device copy of a pinned tensor on the current stream (the
    caller must not modify the host buffer until the stream reaches it, as in torch)."""
    from ember.backend import get_xp
    cp = get_xp(dev)
    src = self._data if self._data.flags.c_contiguous else np.ascontiguousarray(self._data)
    with cp.cuda.Device(dev.index or 0):
        out = cp.empty(src.shape, dtype=src.dtype)
        out.set(src, stream=cp.cuda.get_current_stream())
    res = _make(out, self._dtype, dev)
    return res if dt is None or dt is self._dtype else to(res, dt)


Tensor.pin_memory = pin_memory
Tensor.is_pinned = is_pinned


# ---------------------------------------------------------------------- composites and aliases
@composite()
def max(input: Tensor, dim: Any = None, keepdim: bool = False, *, out: Any = None) -> Any:  # noqa: A001
    """``max(input)``: the largest element; ``max(input, dim, keepdim=False)``: (values,
    indices) along ``dim``; ``max(input, other)``: the elementwise maximum."""
    if isinstance(dim, Tensor):
        return OPS["maximum"].function(input, dim)
    if dim is None:
        return OPS["amax"].function(input, (), False)
    return apply(OPS["_max_dim"], (input, dim, keepdim))


@composite()
def min(input: Tensor, dim: Any = None, keepdim: bool = False, *, out: Any = None) -> Any:  # noqa: A001
    """``min(input)``, ``min(input, dim, keepdim)`` or ``min(input, other)``; see :func:`max`."""
    if isinstance(dim, Tensor):
        return OPS["minimum"].function(input, dim)
    if dim is None:
        return OPS["amin"].function(input, (), False)
    return apply(OPS["_min_dim"], (input, dim, keepdim))


def _var_args(name: str):
    op = OPS[name]

    def fn(input: Tensor, dim: Any = None, unbiased: Any = None, keepdim: bool = False, *,
           correction: Any = None) -> Tensor:
        # torch accepts var(x, unbiased), var(x, dim, unbiased, keepdim) and correction=
        if isinstance(dim, bool):
            unbiased, dim = dim, None
        if correction is None:
            correction = 1 if unbiased is None or unbiased else 0
        elif unbiased is not None:
            raise make(RuntimeError, name, "cannot specify both unbiased and correction")
        return op.function(input, dim, correction, keepdim)
    fn.__name__ = name
    fn.__doc__ = op.function.__doc__
    return fn


for _name in ("var", "std"):
    composite(_name)(_var_args(_name))


@composite()
def clamp_min(input: Tensor, min: Any) -> Tensor:  # noqa: A002
    return OPS["clamp"].function(input, min, None)


@composite()
def clamp_max(input: Tensor, max: Any) -> Tensor:  # noqa: A002
    return OPS["clamp"].function(input, None, max)


@composite()
def sgn(input: Tensor) -> Tensor:
    """``sign`` for real tensors, ``x / |x|`` for complex ones."""
    if input.is_complex():
        a = input.abs()
        return input / OPS["where"].function(a == 0, a + 1, a)
    return input.sign()


@composite()
def norm(input: Tensor, p: Any = "fro", dim: Any = None, keepdim: bool = False,
         dtype: Any = None) -> Tensor:
    """Vector p-norm over ``dim`` ('fro' is the 2-norm over the given dims)."""
    if p == "fro" or p is None:
        p = 2
    if isinstance(p, str):
        import ember
        return ember.linalg.matrix_norm(input, p, dim if dim is not None else (-2, -1), keepdim,
                                        dtype=dtype)
    return OPS["linalg_vector_norm"].function(input, p, dim, keepdim, dtype=dtype)


def is_tensor(obj: Any) -> bool:
    """Whether ``obj`` is an ember Tensor."""
    return isinstance(obj, Tensor)


def numel(input: Tensor) -> int:
    return input._data.size


def is_floating_point(input: Tensor) -> bool:
    return input._dtype.is_floating_point


def is_complex(input: Tensor) -> bool:
    return input._dtype.is_complex


# Plain queries, not ops: exposed as ember.* functions without registry records.
for _f in (is_tensor, numel, is_floating_point, is_complex):
    PUBLIC_FUNCTIONS[_f.__name__] = _f


for _clamp in ("clamp_min", "clamp_max"):
    def _make_ip(name: str):
        def ip(self: Tensor, v: Any) -> Tensor:
            _leaf_check(self, name + "_")
            return write_inplace(self, getattr(self, name)(v), name + "_")
        return ip
    setattr(Tensor, _clamp + "_", _make_ip(_clamp))

_ALIASES = {"clip": "clamp", "absolute": "abs", "negative": "neg", "multiply": "mul",
            "divide": "div", "subtract": "sub", "true_divide": "div", "greater": "gt",
            "greater_equal": "ge", "less": "lt", "less_equal": "le", "not_equal": "ne",
            "arcsin": "asin", "arccos": "acos", "arctan": "atan", "arcsinh": "asinh",
            "arccosh": "acosh", "arctanh": "atanh", "arctan2": "atan2", "fix": "trunc",
            "concatenate": "cat"}
for _alias, _target in _ALIASES.items():
    if _target in OPS or _target in PUBLIC_FUNCTIONS:
        _f = PUBLIC_FUNCTIONS.get(_target) or OPS[_target].function
        PUBLIC_FUNCTIONS.setdefault(_alias, _f)
        if hasattr(Tensor, _target) and not hasattr(Tensor, _alias):
            setattr(Tensor, _alias, getattr(Tensor, _target))
        if hasattr(Tensor, _target + "_") and not hasattr(Tensor, _alias + "_"):
            setattr(Tensor, _alias + "_", getattr(Tensor, _target + "_"))


def _inplace_view(name: str):
    """``unsqueeze_`` and friends: change ``self``'s shape metadata in place. A leaf stays a
    leaf (torch's rule); a non-leaf takes the view's history."""
    def fn(self: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        v = getattr(self, name)(*args, **kwargs)
        self._data = v._data
        if self._grad_fn is not None and v._grad_fn is not None:
            self._grad_fn = v._grad_fn
            self._output_nr = v._output_nr
        return self
    fn.__name__ = name + "_"
    fn.__doc__ = f"In-place ``{name}``: changes this tensor's shape and strides."
    return fn


for _name in ("unsqueeze", "squeeze", "t", "transpose", "swapdims", "swapaxes", "as_strided"):
    setattr(Tensor, _name + "_", _inplace_view(_name))


def _share_memory_(self: Tensor) -> Tensor:
    """Move this CPU tensor's data into shared memory (loads ``ember.multiprocessing``)."""
    import ember.multiprocessing  # noqa: F401  (installs the real methods on Tensor)
    return Tensor.share_memory_(self)


def _is_shared(self: Tensor) -> bool:
    import ember.multiprocessing  # noqa: F401
    return Tensor.is_shared(self)


Tensor.share_memory_ = _share_memory_
Tensor.is_shared = _is_shared
