"""Saving side: pickle ember objects under torch's names, with storages as persistent ids.

The pickler is CPython's pure-Python ``pickle._Pickler`` with two hooks:
``reducer_override`` turns tensors into ``torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, requires_grad, OrderedDict())`` (Parameters into ``_rebuild_parameter``),
``Size``/``device``/dtypes into ``torch.Size``/``torch.device``/``torch.float32``; and
``save_global`` writes those torch names directly, so torch is never imported (the stock
``save_global`` imports the module to check the name). Storages become persistent ids
``('storage', torch.FloatStorage, key, location, numel)`` exactly as torch writes them.

Tensors that view one array (a tensor and its slices, a Parameter and ``.data``) share one
storage record: the storage is the root NumPy/CuPy array of the view chain.
"""
from __future__ import annotations

import collections
import pickle
import sys
from typing import Any

import numpy as np

from ember import dtypes as _dt
from ember.backend.device import device
from ember.serialization._names import STORAGE_NAME_OF_DTYPE, TorchGlobal
from ember.tensor import Size, Tensor, _array_address, _make

__all__ = ["StorageRegistry", "make_pickler"]

REBUILD_V2 = TorchGlobal("torch._utils", "_rebuild_tensor_v2")
REBUILD_PARAMETER = TorchGlobal("torch._utils", "_rebuild_parameter")
REBUILD_PARAMETER_STATE = TorchGlobal("torch._utils", "_rebuild_parameter_with_state")
REBUILD_FROM_TYPE = TorchGlobal("torch._tensor", "_rebuild_from_type_v2")
_STORAGE_GLOBALS = {d: TorchGlobal("torch", n) for d, n in STORAGE_NAME_OF_DTYPE.items()}

# id(ember object) -> (module, name) that torch uses for it. Every key is a module-level
# object (the globals above, dtypes, classes), so the ids stay valid.
_TORCH_NAMES: dict[int, tuple[str, str]] = {}
for _g in (REBUILD_V2, REBUILD_PARAMETER, REBUILD_PARAMETER_STATE, REBUILD_FROM_TYPE,
           *_STORAGE_GLOBALS.values()):
    _TORCH_NAMES[id(_g)] = (_g.module, _g.name)
for _d in _dt.ALL_DTYPES:
    _TORCH_NAMES[id(_d)] = ("torch", _d.name)
_TORCH_NAMES[id(Size)] = ("torch", "Size")
_TORCH_NAMES[id(device)] = ("torch", "device")
_TORCH_NAMES[id(Tensor)] = ("torch", "Tensor")


# Types the pickler handles unchanged (no tensor is ever one of them).
_PLAIN_TYPES = frozenset({int, float, str, bytes, bool, type(None), tuple, list, dict, set,
                          frozenset, complex, bytearray, collections.OrderedDict})


class StorageRef:
    """One storage to be written: a flat root array, its torch storage type and its key."""

    __slots__ = ("key", "dtype", "location", "numel", "root")

    def __init__(self, key: str, dtype: _dt.dtype, location: str, numel: int, root: Any) -> None:
        self.key = key
        self.dtype = dtype
        self.location = location
        self.numel = numel
        self.root = root

    def host_bytes(self) -> memoryview:
        """The storage's bytes in host memory (no copy for CPU arrays)."""
        arr = self.root
        if not isinstance(arr, np.ndarray):
            arr = arr.get()
        flat = arr.reshape(-1) if arr.flags.c_contiguous else arr.T.reshape(-1)
        return memoryview(flat.view(np.uint8))

    def pid(self, legacy: bool) -> tuple:
        pid = ("storage", _STORAGE_GLOBALS[self.dtype], self.key, self.location, self.numel)
        return pid + (None,) if legacy else pid


class StorageRegistry:
    """Finds the storage of each tensor, deduplicating tensors that share memory."""

    def __init__(self, legacy: bool = False) -> None:
        self.legacy = legacy
        self.storages: dict[str, StorageRef] = {}
        self._by_root: dict[int, StorageRef] = {}

    def _new(self, dtype: _dt.dtype, location: str, numel: int, root: Any,
             root_id: int | None) -> StorageRef:
        key = str(len(self.storages))
        ref = StorageRef(key, dtype, location, numel, root)
        self.storages[key] = ref
        if root_id is not None:
            self._by_root[root_id] = ref
        return ref

    def view_of(self, t: Tensor) -> tuple[StorageRef, int, tuple, tuple]:
        """``(storage, offset, size, stride)`` for tensor ``t`` (offset/stride in elements)."""
        data = t._data
        if not hasattr(data, "strides"):
            data = np.asarray(data)
        item = t._dtype.itemsize
        location = "cpu" if t._device.type == "cpu" else f"cuda:{t._device.index or 0}"
        root = root_of(data)
        size = tuple(data.shape)
        placed = self._place(data, root, item)
        if placed is None:
            # Odd layouts (negative strides, a root that is not one contiguous block, a
            # dtype that does not tile the root): save a compact copy of this tensor alone.
            compact = data.copy() if hasattr(data, "copy") else np.array(data)
            compact = compact.reshape(size) if compact.flags.c_contiguous else compact
            ref = self._new(t._dtype, location, int(compact.size), compact, None)
            stride = tuple(s // item for s in compact.strides)
            return ref, 0, size, stride
        offset, stride = placed
        ref = self._by_root.get(id(root))
        if ref is None:
            ref = self._new(t._dtype, location, root.nbytes // item, root, id(root))
        elif ref.dtype is not t._dtype:
            raise RuntimeError("Cannot save multiple tensors or storages that view the same "
                               "data as different types")
        return ref, offset, size, stride

    @staticmethod
    def _place(data: Any, root: Any, item: int) -> tuple[int, tuple] | None:
        if not (root.flags.c_contiguous or root.flags.f_contiguous) or root.nbytes % item:
            return None
        delta = _array_address(data) - _array_address(root)
        if delta < 0 or delta % item or any(s < 0 or s % item for s in data.strides):
            return None
        offset = delta // item
        stride = tuple(s // item for s in data.strides)
        if data.size:
            last = offset + sum((n - 1) * s for n, s in zip(data.shape, stride))
            if (last + 1) * item > root.nbytes:
                return None
        return offset, stride


def root_of(arr: Any) -> Any:
    """The array owning ``arr``'s memory: the end of its chain of views."""
    while True:
        base = getattr(arr, "base", None)
        if base is None:
            return arr
        if hasattr(base, "dtype"):
            arr = base
            continue
        # NumPy's as_strided (diagonal, unfold ...) hides its input behind a DummyArray whose
        # own ``base`` is that input; anything else (bytes, mmap) ends the chain.
        inner = getattr(base, "base", None)
        if inner is None or not hasattr(inner, "dtype"):
            return arr
        arr = inner


def _tensor_state(t: Tensor) -> dict:
    # Python attributes set on a tensor travel with it (torch's _get_obj_state); hooks do not.
    return {k: v for k, v in t.__dict__.items() if not k.startswith("_post_acc")}


def _parameter_class() -> Any:
    mod = sys.modules.get("ember.nn.parameter")  # no Parameter can exist before it is imported
    return getattr(mod, "Parameter", None) if mod is not None else None


def make_pickler(pickle_module: Any, stream: Any, protocol: int,
                 registry: StorageRegistry) -> pickle._Pickler:
    """A pickler writing torch's names and storage persistent ids into ``stream``."""
    base = getattr(pickle_module, "Pickler", pickle._Pickler)
    if not (isinstance(base, type) and issubclass(base, pickle._Pickler)):
        base = pickle._Pickler  # C picklers cannot write names without importing torch
    param_cls = _parameter_class()

    class TorchPickler(base):  # type: ignore[valid-type, misc]
        def persistent_id(self, obj: Any) -> Any:
            if type(obj) is StorageRef:
                return obj.pid(registry.legacy)
            return None

        def reducer_override(self, obj: Any) -> Any:
            t = type(obj)
            if t in _PLAIN_TYPES:  # the common case, decided with one lookup
                return NotImplemented
            if isinstance(obj, Tensor):
                return self._reduce_tensor(obj)
            if t is _dt.dtype or t is TorchGlobal:
                return obj.name  # a str: save_global writes GLOBAL <torch module> <name>
            if t is Size:
                return (Size, (tuple(obj),))
            if t is device:
                return (device, (obj.type,) if obj.index is None else (obj.type, obj.index))
            return NotImplemented

        def _reduce_tensor(self, t: Tensor) -> tuple:
            state = _tensor_state(t)
            if param_cls is not None and isinstance(t, param_cls):
                data = _make(t._data, t._dtype, t._device)
                if state:
                    return (REBUILD_PARAMETER_STATE,
                            (data, t._requires_grad, collections.OrderedDict(), state))
                return (REBUILD_PARAMETER, (data, t._requires_grad, collections.OrderedDict()))
            ref, offset, size, stride = registry.view_of(t)
            args = (ref, offset, size, stride, t._requires_grad, collections.OrderedDict())
            if type(t) is Tensor and not state:
                return (REBUILD_V2, args)
            return (REBUILD_FROM_TYPE, (REBUILD_V2, type(t), args, state))

        def save_global(self, obj: Any, name: Any = None) -> None:
            names = _TORCH_NAMES.get(id(obj))
            if names is None:
                return super().save_global(obj, name)
            module, qualname = names
            if self.proto >= 4:
                self.save(module)
                self.save(qualname)
                self.write(pickle.STACK_GLOBAL)
            else:
                self.write(pickle.GLOBAL + module.encode("ascii") + b"\n" +
                           qualname.encode("ascii") + b"\n")
            self.memoize(obj)

    return TorchPickler(stream, protocol)
