"""Loading side: storages, ``map_location``, and ember's versions of torch's rebuild functions.

A checkpoint stores each storage once (raw bytes) and rebuilds every tensor as a view
``(storage, offset, size, stride)``. Here a storage is :class:`LoadedStorage`, a flat NumPy
(or CuPy) array; tensors rebuilt from one storage are views of that array, so a tensor and
its slices saved together share memory again after loading, as in torch.

Each ``_rebuild_*`` function checks its arguments completely: a hostile file reaches them
with arbitrary values, so nothing is trusted (types, non-negative sizes and strides, views
inside the storage) before an array is touched.
"""
from __future__ import annotations

import collections
from typing import Any, Callable

import numpy as np

from ember import dtypes as _dt
from ember.backend.device import cpu_device, device
from ember.backend.device import device as _device_cls
from ember.serialization._names import CheckpointError, unsupported_dtype
from ember.tensor import Size, Tensor, _copy_state, _make

__all__ = ["LoadedStorage", "make_restore", "REBUILD_FUNCTIONS"]

_MAX_DIMS = 64


class LoadedStorage:
    """A storage read from a checkpoint: one flat array of ``dtype`` on ``device``.

    ``map_location`` callables receive it as ``storage`` and may return ``storage``,
    ``storage.cpu()``, ``storage.cuda(i)`` or ``storage.to(dev)``.
    """

    __slots__ = ("array", "dtype", "_device")

    def __init__(self, array: Any, dtype: _dt.dtype | None, dev: device = cpu_device) -> None:
        self.array = array
        self.dtype = dtype  # None: untyped bytes (array is uint8)
        self._device = dev

    @property
    def device(self) -> device:
        return self._device

    @property
    def is_cuda(self) -> bool:
        return self._device.type == "cuda"

    def element_size(self) -> int:
        return 1 if self.dtype is None else self.dtype.itemsize

    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def size(self) -> int:
        return int(self.array.size)

    __len__ = size

    def data_ptr(self) -> int:
        if self._device.type == "cpu":
            return int(self.array.__array_interface__["data"][0])
        return int(self.array.data.ptr)

    def cpu(self) -> "LoadedStorage":
        """This storage in host memory (itself when already there)."""
        if self._device.type == "cpu":
            return self
        return LoadedStorage(self.array.get(), self.dtype, cpu_device)

    def cuda(self, device: Any = None, non_blocking: bool = False) -> "LoadedStorage":
        """A copy of this storage on a CUDA device (the current one by default)."""
        if device is None:
            from ember.backend import cuda as _cuda
            device = _cuda.xp().cuda.runtime.getDevice() if _cuda.is_available() else 0
        dev = device if isinstance(device, _device_cls) else _cuda_device(device)
        return _to_cuda(self, dev)

    def to(self, device: Any, non_blocking: bool = False) -> "LoadedStorage":
        dev = _device_cls(device)
        if dev.type == "cpu":
            return self.cpu()
        if dev.type == "cuda":
            return _to_cuda(self, dev)
        raise RuntimeError(f"[load] cannot move a storage to device {dev}")

    def __repr__(self) -> str:
        name = "UntypedStorage" if self.dtype is None else f"TypedStorage(dtype={self.dtype})"
        return f"<ember {name} of {self.size()} elements on {self._device}>"


def _cuda_device(index: Any) -> device:
    if isinstance(index, int):
        return device("cuda", index)
    dev = device(index)
    return dev if dev.index is not None else device("cuda", 0)


def _to_cuda(storage: LoadedStorage, dev: device) -> LoadedStorage:
    from ember.backend import cuda as _cuda
    if not _cuda.is_available():
        raise RuntimeError(
            "Attempting to deserialize object on a CUDA device but ember.cuda.is_available() is "
            "False. If you are running on a CPU-only machine, please use ember.load with "
            "map_location=ember.device('cpu') to map your storages to the CPU.")
    cp = _cuda.xp()
    index = dev.index or 0
    count = cp.cuda.runtime.getDeviceCount()
    if index >= count:
        raise RuntimeError(
            f"Attempting to deserialize object on CUDA device {index} but "
            f"ember.cuda.device_count() is {count}. Please use ember.load with map_location to "
            "map your storages to an existing device.")
    host = storage.array if storage._device.type == "cpu" else storage.array.get()
    with cp.cuda.Device(index):
        arr = cp.asarray(host)
    return LoadedStorage(arr, storage.dtype, device("cuda", index))


def _default_restore(storage: LoadedStorage, location: str) -> LoadedStorage:
    """torch's default_restore_location: 'cpu' stays, 'cuda[:i]' moves to that GPU."""
    if location == "cpu":
        return storage.cpu()
    if location.startswith("cuda"):
        try:
            dev = device(location)
        except (RuntimeError, ValueError, TypeError):
            raise CheckpointError(f"[load] invalid storage location {location!r}") from None
        return _to_cuda(storage, device("cuda", dev.index or 0))
    raise RuntimeError(f"don't know how to restore data location of {storage!r} (tagged with "
                       f"{location})")


def make_restore(map_location: Any) -> Callable[[LoadedStorage, str], LoadedStorage]:
    """The function placing each storage, from ``map_location`` as torch interprets it:
    ``None`` (where it was saved), a str/bytes/device (everything there), a dict
    (location -> location), or a callable ``(storage, location) -> storage | None``."""
    if map_location is None:
        return _default_restore
    if isinstance(map_location, dict):
        def restore(storage: LoadedStorage, location: str) -> LoadedStorage:
            return _default_restore(storage, str(map_location.get(location, location)))
        return restore
    if isinstance(map_location, (str, bytes)):
        target = map_location.decode("ascii") if isinstance(map_location, bytes) else map_location
        return lambda storage, location: _default_restore(storage, target)
    if isinstance(map_location, device):
        return lambda storage, location: _default_restore(storage, str(map_location))
    if callable(map_location):
        def restore_fn(storage: LoadedStorage, location: str) -> LoadedStorage:
            result = map_location(storage, location)
            if result is None:
                return _default_restore(storage, location)
            if not isinstance(result, LoadedStorage):
                raise TypeError(f"[load] map_location must return a storage or None, got "
                                f"{type(result).__name__}")
            return result
        return restore_fn
    raise TypeError(f"[load] map_location must be None, a str, a device, a dict or a callable, "
                    f"got {type(map_location).__name__}")


# ---------------------------------------------------------------------- argument checks
def _int(value: Any, what: str, minimum: int = 0) -> int:
    if type(value) is not int or value < minimum:  # bool is not a valid size either
        raise CheckpointError(f"[load] {what} must be an int >= {minimum}, got {value!r}")
    return value


def _int_tuple(value: Any, what: str) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) > _MAX_DIMS:
        raise CheckpointError(f"[load] {what} must be a tuple of at most {_MAX_DIMS} ints, got "
                              f"{type(value).__name__}")
    return tuple(_int(v, what) for v in value)


def _bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise CheckpointError(f"[load] {what} must be a bool, got {value!r}")
    return value


def _tensor_view(storage: Any, dtype: _dt.dtype, offset: Any, size: Any,
                 stride: Any) -> Tensor:
    """A tensor viewing ``storage`` at element ``offset`` with ``size``/``stride``."""
    if not isinstance(storage, LoadedStorage):
        raise CheckpointError(f"[load] a tensor's storage must come from the checkpoint's "
                              f"storage records, got {type(storage).__name__}")
    offset = _int(offset, "storage_offset")
    size = _int_tuple(size, "size")
    stride = _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(f"[load] size {size} and stride {stride} differ in length")
    item = dtype.itemsize
    nbytes = storage.nbytes()
    numel = 1
    for s in size:
        numel *= s
    if numel == 0:
        # torch accepts any offset for an empty view; nothing is read from the storage.
        if storage.device.type == "cpu":
            arr = np.empty(size, dtype.np)
        else:
            from ember.backend import get_xp
            arr = get_xp(storage.device).empty(size, dtype.np)
        return _make(arr, dtype, storage.device)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if (last + 1) * item > nbytes:
        raise CheckpointError(
            f"[load] a tensor of size {size}, stride {stride} at storage offset {offset} needs "
            f"{(last + 1) * item} bytes, but its storage holds {nbytes} bytes (out of range)")
    byte_strides = tuple(st * item for st in stride)
    base = storage.array
    if storage.device.type == "cpu":
        arr = np.ndarray(size, dtype.np, buffer=base, offset=offset * item, strides=byte_strides)
    else:
        from ember.backend import get_xp
        cp = get_xp(storage.device)
        arr = cp.ndarray(size, dtype.np, memptr=base.data + offset * item, strides=byte_strides)
    return _make(arr, dtype, storage.device)


def _apply_metadata(t: Tensor, metadata: Any) -> Tensor:
    """torch's conj/neg bits: the saved storage holds the un-conjugated/un-negated values."""
    if metadata is None:
        return t
    if not isinstance(metadata, dict):
        raise CheckpointError(f"[load] tensor metadata must be a dict, got "
                              f"{type(metadata).__name__}")
    if metadata.get("conj"):
        t = _make(t._data.conj(), t._dtype, t._device)
    if metadata.get("neg"):
        t = _make(-t._data, t._dtype, t._device)
    return t


def _set_requires_grad(t: Tensor, requires_grad: Any) -> Tensor:
    if _bool(requires_grad, "requires_grad"):
        if not (t._dtype.is_floating_point or t._dtype.is_complex):
            raise CheckpointError(f"[load] a {t._dtype} tensor cannot require grad")
        t._requires_grad = True
    return t


# ---------------------------------------------------------------------- rebuild functions
def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> Tensor:
    """torch._utils._rebuild_tensor: a view of a typed storage."""
    if not isinstance(storage, LoadedStorage):
        raise CheckpointError("[load] _rebuild_tensor expects a storage")
    dtype = storage.dtype if storage.dtype is not None else _dt.uint8
    return _tensor_view(storage, dtype, storage_offset, size, stride)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, metadata: Any = None) -> Tensor:
    """torch._utils._rebuild_tensor_v2 (hooks are never restored, as in torch)."""
    if not isinstance(backward_hooks, dict):
        raise CheckpointError("[load] backward_hooks must be a dict")
    t = _rebuild_tensor(storage, storage_offset, size, stride)
    return _set_requires_grad(_apply_metadata(t, metadata), requires_grad)


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, dtype: Any,
                       metadata: Any = None) -> Tensor:
    """torch._utils._rebuild_tensor_v3: an untyped storage plus an explicit dtype."""
    if not isinstance(dtype, _dt.dtype):
        raise CheckpointError(f"[load] _rebuild_tensor_v3 expects a dtype, got {dtype!r}")
    if not isinstance(storage, LoadedStorage):
        raise CheckpointError("[load] _rebuild_tensor_v3 expects a storage")
    if not isinstance(backward_hooks, dict):
        raise CheckpointError("[load] backward_hooks must be a dict")
    t = _tensor_view(storage, dtype, storage_offset, size, stride)
    return _set_requires_grad(_apply_metadata(t, metadata), requires_grad)


def _parameter_class() -> type:
    try:
        from ember.nn.parameter import Parameter
    except ImportError:  # a build without ember.nn: Parameters load as leaf tensors
        return _PlainParameter
    return Parameter


class _PlainParameter(Tensor):
    """Stand-in used only when ember.nn is unavailable: ``_PlainParameter(t, rg)`` is ``t``
    itself with ``requires_grad`` set (a plain leaf tensor)."""

    def __new__(cls, data: Tensor, requires_grad: bool = True) -> Tensor:  # type: ignore[misc]
        data._requires_grad = bool(requires_grad)
        return data


def _set_state(obj: Tensor, state: Any) -> Tensor:
    """Restore Python attributes saved with a tensor (torch's _set_obj_state), without ever
    overwriting ember's internal slots: plain attributes go into ``__dict__``."""
    if state is None:
        return obj
    slots = None
    if isinstance(state, tuple):
        if len(state) != 2:
            raise CheckpointError(f"[load] invalid tensor state of length {len(state)}")
        state, slots = state
    if state:
        if not isinstance(state, dict) or not all(type(k) is str for k in state):
            raise CheckpointError("[load] tensor state must be a dict with str keys")
        for k, v in state.items():
            # A name the class defines (a method, property or slot) would shadow or clobber
            # ember's own behaviour: only new, plain attributes are restored.
            if k.startswith("__") or k in Tensor.__slots__ or hasattr(type(obj), k):
                raise CheckpointError(f"[load] refusing to restore tensor attribute {k!r}")
            obj.__dict__[k] = v
    if slots:
        if not isinstance(slots, dict):
            raise CheckpointError("[load] tensor slot state must be a dict")
        allowed = {s for c in type(obj).__mro__ if c is not Tensor
                   for s in getattr(c, "__slots__", ())}
        for k, v in slots.items():
            if k not in allowed:
                raise CheckpointError(f"[load] refusing to restore tensor slot {k!r}")
            setattr(obj, k, v)
    return obj


def _as_type(t: Tensor, cls: Any) -> Tensor:
    """``t`` as an instance of the Tensor subclass ``cls``, sharing its data."""
    if not (isinstance(cls, type) and issubclass(cls, Tensor)):
        raise CheckpointError(f"[load] {cls!r} is not a Tensor type")
    if type(t) is cls:
        return t
    param = _parameter_class()
    if issubclass(cls, param):
        return cls(t, t._requires_grad)
    out = Tensor.__new__(cls, t)
    _copy_state(out, t._data, t._dtype, t._device, t._requires_grad)
    out._version = t._version
    return out


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> Tensor:
    """torch._utils._rebuild_parameter -> ember.nn.Parameter."""
    if not isinstance(data, Tensor):
        raise CheckpointError(f"[load] a Parameter's data must be a tensor, got "
                              f"{type(data).__name__}")
    requires_grad = _bool(requires_grad, "requires_grad")
    if requires_grad and not (data._dtype.is_floating_point or data._dtype.is_complex):
        raise CheckpointError(f"[load] a {data._dtype} Parameter cannot require grad")
    return _parameter_class()(data, requires_grad)


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any,
                                  state: Any) -> Tensor:
    return _set_state(_rebuild_parameter(data, requires_grad, backward_hooks), state)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Tensor:
    """A tensor subclass or a tensor with Python attributes: rebuild, retype, set state."""
    if func not in _TENSOR_REBUILDERS:
        raise CheckpointError(f"[load] _rebuild_from_type_v2 may only call a tensor rebuild "
                              f"function, got {func!r}")
    if not isinstance(args, tuple):
        raise CheckpointError("[load] _rebuild_from_type_v2 expects an argument tuple")
    ret = _as_type(func(*args), new_type)
    own_setstate = getattr(type(ret), "__setstate__", None)
    if own_setstate is not None and own_setstate is not getattr(Tensor, "__setstate__", None) \
            and own_setstate is not getattr(object, "__setstate__", None):
        ret.__setstate__(state)
        return ret
    return _set_state(ret, state)


def _rebuild_device_tensor_from_cpu_tensor(data: Any, dtype: Any, dev: Any,
                                           requires_grad: Any) -> Tensor:
    if not isinstance(data, Tensor):
        raise CheckpointError("[load] expected a tensor")
    t = data.to(device(str(dev)))
    return _set_requires_grad(t, requires_grad)


def _rebuild_device_tensor_from_numpy(data: Any, dtype: Any, dev: Any,
                                      requires_grad: Any) -> Tensor:
    if not isinstance(data, np.ndarray) or not isinstance(dtype, _dt.dtype):
        raise CheckpointError("[load] expected a NumPy array and a dtype")
    from ember import _factory
    t = _factory.tensor(data, dtype=dtype, device=device(str(dev)))
    return _set_requires_grad(t, requires_grad)


def _unsupported(kind: str) -> Callable[..., Any]:
    def rebuild(*args: Any, **kwargs: Any) -> Any:
        raise CheckpointError(f"[load] the checkpoint holds a {kind} tensor, which ember does "
                              "not support; convert it to a dense strided tensor before saving")
    rebuild.__name__ = f"_rebuild_{kind.replace(' ', '_')}"
    return rebuild


def _get_layout(name: Any) -> str:
    """torch.serialization._get_layout: only the strided layout exists in ember."""
    if name != "torch.strided":
        raise CheckpointError(f"[load] ember supports only the strided layout, got {name!r}")
    return "torch.strided"


_TENSOR_REBUILDERS = {_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3,
                      _rebuild_parameter, _rebuild_parameter_with_state,
                      _rebuild_device_tensor_from_cpu_tensor, _rebuild_device_tensor_from_numpy}

# torch._utils names -> ember implementations.
REBUILD_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": _rebuild_device_tensor_from_cpu_tensor,
    "torch._utils._rebuild_device_tensor_from_numpy": _rebuild_device_tensor_from_numpy,
    "torch._utils._rebuild_qtensor": _unsupported("quantized"),
    "torch._utils._rebuild_sparse_tensor": _unsupported("sparse"),
    "torch._utils._rebuild_nested_tensor": _unsupported("nested"),
    "torch._utils._rebuild_wrapper_subclass": _unsupported("wrapper subclass"),
    "torch._utils._rebuild_meta_tensor_no_storage": _unsupported("meta"),
    "torch.serialization._get_layout": _get_layout,
}


def checked_size(*args: Any) -> Size:
    """torch.Size((...)) from a checkpoint: a sequence of non-negative ints."""
    if len(args) != 1:
        raise CheckpointError("[load] torch.Size takes one tuple")
    return Size(_int_tuple(args[0], "torch.Size"))


def dtype_or_error(name: str) -> _dt.dtype:
    from ember.serialization._names import TORCH_DTYPE_NAMES
    d = TORCH_DTYPE_NAMES.get(name)
    if d is None:
        raise unsupported_dtype(name)
    return d


def empty_hooks() -> collections.OrderedDict:
    return collections.OrderedDict()
