"""The Tensor class: an xp array with dtype, device and autograd state.

Op methods (``add``, ``sum``, ``view`` ...), their in-place forms and the operator dunders are
not written here: the op registry binds them from the declarations in ``ember/ops``.
This file holds the state, the attributes and the Python protocols.
"""
from __future__ import annotations

import builtins
from typing import Any

import numpy as np

from ember import dtypes as _dt
from ember._state import _State
from ember.backend.device import cpu_device, device


class Tensor:
    """A multi-dimensional array with autograd, the counterpart of ``torch.Tensor``.

    Views share memory and a version counter with their base; in-place ops bump the counter,
    so backward can tell when a saved tensor was overwritten.
    """

    __slots__ = ("_data", "_dtype", "_device", "_requires_grad", "_grad_fn", "_output_nr",
                 "_version", "_base", "_view_chain", "_grad", "_acc", "_hooks", "_retains_grad",
                 "_inference", "__weakref__", "__dict__")

    # ------------------------------------------------------------------ construction
    def __new__(cls, *args: Any, **kwargs: Any) -> "Tensor":
        # ``Tensor(data)`` / ``Tensor(2, 3)`` as legacy constructors (float32 by default).
        if cls is Tensor and not args and not kwargs:
            return _make(np.zeros((0,), np.float32), _dt.float32, cpu_device)
        if args and isinstance(args[0], Tensor) and cls is not Tensor:
            return super().__new__(cls)
        from ember import _factory
        if args and all(isinstance(a, int) for a in args):
            return _factory.empty(*args, dtype=_dt.get_default_dtype())
        if len(args) == 1:
            return _factory.tensor(args[0], dtype=_dt.get_default_dtype())
        return super().__new__(cls)

    # ------------------------------------------------------------------ core attributes
    @property
    def dtype(self) -> _dt.dtype:
        return self._dtype

    @property
    def device(self) -> device:
        return self._device

    @property
    def shape(self) -> "Size":
        return Size(self._data.shape)

    def size(self, dim: int | None = None) -> Any:
        """The shape as an ``ember.Size``, or the length of dimension ``dim``."""
        if dim is None:
            return Size(self._data.shape)
        return self._data.shape[_wrap_dim(dim, self._data.ndim, "size")]

    def dim(self) -> int:
        return self._data.ndim

    ndimension = dim

    @property
    def ndim(self) -> int:
        return self._data.ndim

    def numel(self) -> int:
        return int(self._data.size)

    nelement = numel

    def element_size(self) -> int:
        return self._dtype.itemsize

    @property
    def itemsize(self) -> int:
        return self._dtype.itemsize

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes)

    @property
    def is_cuda(self) -> bool:
        return self._device.type == "cuda"

    @property
    def is_cpu(self) -> bool:
        return self._device.type == "cpu"

    @property
    def is_meta(self) -> bool:
        return False

    @property
    def is_sparse(self) -> bool:
        return False

    @property
    def is_quantized(self) -> bool:
        return False

    @property
    def layout(self) -> str:
        return "torch.strided"

    def is_floating_point(self) -> bool:
        return self._dtype.is_floating_point

    def is_complex(self) -> bool:
        return self._dtype.is_complex

    def is_signed(self) -> bool:
        return self._dtype.is_signed

    def is_inference(self) -> bool:
        return self._inference

    def get_device(self) -> int:
        return -1 if self._device.type == "cpu" else self._device.index

    def stride(self, dim: int | None = None) -> Any:
        """Strides in elements, as torch reports them."""
        item = self._dtype.itemsize
        st = tuple(s // item for s in self._data.strides)
        if dim is None:
            return st
        return st[_wrap_dim(dim, self._data.ndim, "stride")]

    def storage_offset(self) -> int:
        base = self._storage_root()
        if base is None:
            return 0
        return int(_array_address(self._data) - _array_address(base)) // self._dtype.itemsize

    def _storage_root(self) -> Any:
        # Walk .base through everything, including NumPy's as_strided DummyArray (which has
        # a .base but no dtype), keeping the outermost real array.
        a = self._data
        root = a
        while True:
            b = getattr(a, "base", None)
            if b is None:
                break
            if hasattr(b, "dtype") and hasattr(b, "shape"):
                root = b
            a = b
        return root if root is not self._data else None

    def data_ptr(self) -> int:
        return int(_array_address(self._data))

    def untyped_storage(self) -> "_Storage":
        return _Storage(self)

    def is_contiguous(self, memory_format: Any = None) -> bool:
        if memory_format is not None and str(memory_format).endswith("channels_last"):
            if self._data.ndim != 4:
                return False
            n, c, h, w = self._data.shape
            return self.stride() == (h * w * c, 1, w * c, c)
        return bool(self._data.flags.c_contiguous)

    def _is_view(self) -> bool:
        return self._base is not None

    # ------------------------------------------------------------------ autograd state
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        self.requires_grad_(value)

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        """Set ``requires_grad`` in place on a leaf; returns ``self``."""
        if self._grad_fn is not None:
            if not requires_grad:
                raise RuntimeError(
                    "you can only change requires_grad flags of leaf variables. If you want to use "
                    "a computed variable in a subgraph that doesn't require differentiation use "
                    "var_no_grad = var.detach().")
            return self
        if requires_grad and not (self._dtype.is_floating_point or self._dtype.is_complex):
            raise RuntimeError(
                f"only Tensors of floating point and complex dtype can require gradients, "
                f"got {self._dtype}")
        self._requires_grad = bool(requires_grad)
        return self

    @property
    def grad_fn(self) -> Any:
        return self._grad_fn

    @property
    def is_leaf(self) -> bool:
        return self._grad_fn is None

    @property
    def grad(self) -> "Tensor | None":
        if self._grad_fn is not None and not self._retains_grad and _State.enabled is not None:
            _warn_nonleaf_grad()
        return self._grad

    @grad.setter
    def grad(self, value: "Tensor | None") -> None:
        if value is not None:
            if not isinstance(value, Tensor):
                raise TypeError(f"assigned grad expected to be a Tensor or None but got grad of "
                                f"type {type(value).__name__}")
            if value.shape != self.shape:
                raise RuntimeError(f"assigned grad has data of a different size: grad "
                                   f"{tuple(value.shape)} for tensor {tuple(self.shape)}")
            if value._dtype is not self._dtype:
                raise RuntimeError(f"assigned grad has data of a different type: {value._dtype} "
                                   f"for tensor of {self._dtype}")
            if value._device is not self._device:
                raise RuntimeError(f"assigned grad has data located on a different device: "
                                   f"{value._device} for tensor on {self._device}")
        self._grad = value

    @property
    def _version_value(self) -> int:
        return self._version[0]

    @property
    def _version_(self) -> int:  # pragma: no cover - alias kept for readability
        return self._version[0]

    def retain_grad(self) -> None:
        """Keep ``.grad`` for this non-leaf tensor after backward."""
        if self._grad_fn is None:
            if not self._requires_grad:
                raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
            return
        if self._retains_grad:
            return
        self._retains_grad = True
        import weakref
        node = self._grad_fn
        if node._retains is None:
            node._retains = {}
        node._retains[self._output_nr] = weakref.ref(self)

    @property
    def retains_grad(self) -> bool:
        return self._retains_grad

    def _hooks_dict(self) -> dict:
        if self._hooks is None:
            self._hooks = {}
        return self._hooks

    def register_hook(self, hook: Any) -> Any:
        """Register ``hook(grad) -> Tensor | None``, called when this tensor's grad is computed."""
        from ember.autograd.graph import RemovableHandle
        if not self._requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        if self._grad_fn is None:
            store = self._hooks_dict()
        else:
            node = self._grad_fn
            if node._tensor_pre_hooks is None:
                node._tensor_pre_hooks = {}
            store = node._tensor_pre_hooks.setdefault(self._output_nr, {})
        handle = RemovableHandle(store)
        store[handle._key] = hook
        return handle

    def register_post_accumulate_grad_hook(self, hook: Any) -> Any:
        """Register ``hook(tensor)`` run after ``.grad`` of this leaf was accumulated."""
        from ember.autograd.graph import RemovableHandle
        if self._grad_fn is not None:
            raise RuntimeError("post accumulate grad hooks cannot be registered on non-leaf tensors")
        store = self.__dict__.setdefault("_post_acc_hooks", {})
        handle = RemovableHandle(store)
        store[handle._key] = hook
        return handle

    def backward(self, gradient: "Tensor | None" = None, retain_graph: bool | None = None,
                 create_graph: bool = False, inputs: Any = None) -> None:
        """Compute the gradient of this tensor with respect to graph leaves.

        Args:
            gradient: the gradient of some scalar with respect to this tensor; required
                unless this tensor has one element.
            retain_graph: keep the graph for another backward (defaults to ``create_graph``).
            create_graph: record the backward pass, for higher-order derivatives.
            inputs: accumulate only into these tensors' ``.grad``.
        """
        fn = _BACKWARD[0]
        if fn is None:   # bound on first use (an import statement costs ~0.5 us per call)
            from ember.autograd import backward as fn
            _BACKWARD[0] = fn
        fn(self, gradient, retain_graph, create_graph, inputs=inputs)

    # ------------------------------------------------------------------ conversions
    def numpy(self, *, force: bool = False) -> np.ndarray:
        """The data as a NumPy array sharing memory (CPU tensors without grad only)."""
        if self._requires_grad and _State.enabled is not None and not force:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. "
                               "Use tensor.detach().numpy() instead.")
        if self._device.type != "cpu":
            if not force:
                raise TypeError(f"can't convert {self._device} device type tensor to numpy. Use "
                                "Tensor.cpu() to copy the tensor to host memory first.")
            return self._data.get()
        return self._data

    def item(self) -> Any:
        """The value of a one-element tensor as a Python number."""
        if self._data.size != 1:
            raise RuntimeError(f"a Tensor with {self._data.size} elements cannot be converted "
                               "to Scalar")
        return _to_python(self._data.reshape(()), self._dtype)

    def tolist(self) -> Any:
        """The data as (nested) Python lists of Python numbers."""
        arr = self._host()
        if self._dtype is _dt.bfloat16 or self._dtype is _dt.float16:
            arr = arr.astype(np.float32)
        return arr.tolist()

    def _host(self) -> np.ndarray:
        return self._data if self._device.type == "cpu" else self._data.get()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self._host()
        return arr if dtype is None else arr.astype(dtype)

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        if self._requires_grad:
            raise RuntimeError("Can't export tensors that require gradient, use tensor.detach()")
        return self._data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> Any:
        return self._data.__dlpack_device__()

    # ------------------------------------------------------------------ Python protocols
    def __len__(self) -> int:
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self._data.shape[0]

    def __iter__(self):
        if self._data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return iter(self.unbind(0))

    def __bool__(self) -> bool:
        if self._data.size != 1:
            raise RuntimeError(f"Boolean value of Tensor with more than one value is ambiguous")
        return bool(self._host().reshape(()))

    def __float__(self) -> float:
        return float(self.item().real if self._dtype.is_complex else self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __complex__(self) -> complex:
        return complex(self.item())

    def __index__(self) -> int:
        if self._dtype.category != 1 or self._data.size != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    # identity hashing, in C: optimizer state, autocast's cast cache and hook tables look
    # tensors up every step (a Python-level __hash__ cost a frame per lookup)
    __hash__ = object.__hash__

    def __reduce_ex__(self, protocol: int) -> Any:
        return (_rebuild, (self._host().copy(), self._dtype.name, str(self._device),
                           self._requires_grad, type(self) if type(self) is not Tensor else None))

    def __deepcopy__(self, memo: dict) -> "Tensor":
        if self._grad_fn is not None:
            raise RuntimeError("Only Tensors created explicitly by the user (graph leaves) support "
                               "the deepcopy protocol at the moment.")
        out = _make(self._data.copy(), self._dtype, self._device)
        out._requires_grad = self._requires_grad
        if type(self) is not Tensor:
            out = type(self).__new__(type(self), out)
            _copy_state(out, self._data.copy(), self._dtype, self._device, self._requires_grad)
        if self._grad is not None:
            out._grad = self._grad.__deepcopy__(memo)
        for k, v in self.__dict__.items():
            if not k.startswith("_post_acc"):
                import copy
                out.__dict__[k] = copy.deepcopy(v, memo)
        memo[id(self)] = out
        return out

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        from ember._tensor_str import tensor_repr
        return tensor_repr(self)

    def __format__(self, spec: str) -> str:
        if self._data.ndim == 0:
            return self.item().__format__(spec)
        return object.__format__(self, spec)

    __array_priority__ = 1000  # make NumPy defer to Tensor's reflected operators


class Size(tuple):
    """The shape of a tensor: a tuple subclass printed as ``ember.Size([2, 3])``."""

    def __repr__(self) -> str:
        return f"ember.Size({list(self)})"

    def numel(self) -> int:
        n = 1
        for s in self:
            n *= s
        return n

    def __getitem__(self, key: Any) -> Any:
        out = tuple.__getitem__(self, key)
        return Size(out) if isinstance(key, slice) else out

    def __add__(self, other: Any) -> "Size":
        return Size(tuple(self) + tuple(other))


class _Storage:
    """The minimal ``untyped_storage()`` view: identity and size of the underlying memory."""

    def __init__(self, t: Tensor) -> None:
        root = t._storage_root()
        self._arr = root if root is not None else t._data

    def data_ptr(self) -> int:
        return int(_array_address(self._arr))

    def nbytes(self) -> int:
        return int(self._arr.nbytes)

    def size(self) -> int:
        return int(self._arr.nbytes)


# ---------------------------------------------------------------------- helpers
_new = object.__new__


def _make(data: Any, dtype: _dt.dtype, device_: device, requires_grad: bool = False) -> Tensor:
    """Wrap an array as a fresh tensor (no copy). The hot path of every op."""
    t = _new(Tensor)
    t._data = data
    t._dtype = dtype
    t._device = device_
    t._requires_grad = requires_grad
    t._grad_fn = None
    t._output_nr = 0
    t._version = [0]
    t._base = None
    t._view_chain = None
    t._grad = None
    t._acc = None
    t._hooks = None
    t._retains_grad = False
    t._inference = _State.inference
    return t


_STATE_SLOTS = tuple(n for n in Tensor.__slots__ if n not in ("__weakref__", "__dict__"))


def _copy_state(t: Tensor, data: Any, dtype: _dt.dtype, device_: device,
                requires_grad: bool) -> None:
    """Give an already-created Tensor (a subclass instance) the state of a fresh tensor."""
    fresh = _make(data, dtype, device_, requires_grad)
    fresh._inference = False
    for name in _STATE_SLOTS:
        setattr(t, name, getattr(fresh, name))


def _rebuild(data: np.ndarray, dtype_name: str, dev: str, requires_grad: bool,
             cls: Any = None) -> Tensor:
    d = _dt._by_name(dtype_name)
    devc = device(dev)
    if devc.type != "cpu":
        from ember.backend import get_xp
        data = get_xp(devc).asarray(data)
    t = _make(data, d, devc)
    if cls is not None:
        sub = cls.__new__(cls, t)
        _copy_state(sub, data, d, devc, False)
        t = sub
    t._requires_grad = requires_grad
    return t


def _to_python(arr0: Any, dtype: _dt.dtype) -> Any:
    v = arr0.item() if hasattr(arr0, "item") else arr0
    if dtype is _dt.bfloat16 or dtype is _dt.float16:
        return builtins.float(np.float32(arr0 if not hasattr(arr0, "get") else arr0.get()))
    return v


def _array_address(arr: Any) -> int:
    if isinstance(arr, np.ndarray):
        return arr.__array_interface__["data"][0]
    return arr.data.ptr


def _wrap_dim(dim: int, ndim: int, op: str) -> int:
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"[{op}] Dimension out of range (expected to be in range of "
                         f"[{-n}, {n - 1}], but got {dim})")
    return dim % n


_warned = [False]
_BACKWARD: list = [None]   # ember.autograd.backward


def _warn_nonleaf_grad() -> None:
    if not _warned[0]:
        _warned[0] = True
        import warnings
        warnings.warn(
            "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed. Its "
            ".grad attribute won't be populated during autograd.backward(). If you indeed want "
            "the .grad field to be populated for a non-leaf Tensor, use .retain_grad() on the "
            "non-leaf Tensor.", UserWarning, stacklevel=3)
