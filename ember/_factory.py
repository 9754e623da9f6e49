"""Tensor creation: ``tensor``, ``as_tensor``, ``from_numpy``, ``zeros``/``ones``/``full``/
``empty`` (and ``_like``), ``arange``, ``linspace``, ``logspace``, ``eye``, ``from_dlpack``."""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Sequence

import numpy as np

from ember import dtypes as _dt
from ember.backend import device_of_array, get_xp
from ember.backend.device import cpu_device, device, to_device
from ember.errors import make
from ember.tensor import Size, Tensor, _make

__all__ = ["set_default_device", "get_default_device", "tensor", "as_tensor", "from_numpy", "from_dlpack", "zeros", "ones", "full", "empty",
           "zeros_like", "ones_like", "full_like", "empty_like", "arange", "linspace",
           "logspace", "eye", "asarray", "scalar_tensor", "empty_strided"]


_DEFAULT_DEVICE = [None]


def set_default_device(dev: Any) -> None:
    """Make factories (``zeros``, ``tensor``, ``randn`` ...) create tensors on ``dev`` by
    default; ``None`` restores the CPU (torch.set_default_device)."""
    _DEFAULT_DEVICE[0] = to_device(dev) if dev is not None else None


def get_default_device() -> device:
    return _DEFAULT_DEVICE[0] or to_device(None)


def _resolve_device(dev: Any) -> device:
    if dev is None and _DEFAULT_DEVICE[0] is not None:
        dev = _DEFAULT_DEVICE[0]
    d = to_device(dev)
    if d.type == "cuda" and d.index is None:
        from ember import cuda
        d = device("cuda", cuda.current_device())
    return d


def _on_device(xp: Any, dev: device) -> Any:
    """The CUDA device context for ``dev`` (a no-op on the CPU)."""
    return contextlib.nullcontext() if xp is np else xp.cuda.Device(dev.index or 0)


def _finish(arr: Any, dt: _dt.dtype, dev: device, requires_grad: bool) -> Tensor:
    if dev.type != "cpu":
        xp = get_xp(dev)
        with xp.cuda.Device(dev.index or 0):
            arr = xp.asarray(arr)
    t = _make(arr, dt, dev)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _infer_np(data: Any) -> tuple[np.ndarray, _dt.dtype]:
    """An array from nested Python data, with torch's dtype inference."""
    if isinstance(data, Tensor):
        return data._host(), data._dtype
    if isinstance(data, np.ndarray):
        return data, _dt.from_numpy_dtype(data.dtype)
    if isinstance(data, (np.generic,)):
        arr = np.asarray(data)
        return arr, _dt.from_numpy_dtype(arr.dtype)
    if isinstance(data, (list, tuple)) and _has_tensor(data):
        data = _unwrap(data)
    try:
        arr = np.array(data)
    except (ValueError, TypeError) as exc:
        raise make(ValueError, "tensor", f"could not build a tensor from the data: {exc}") from None
    k = arr.dtype.kind
    if k == "b":
        return arr, _dt.bool
    if k in "iu":
        if arr.dtype.itemsize == 8 and k == "u":
            raise make(RuntimeError, "tensor", "Overflow when unpacking long")
        return arr, _dt.int64
    if k == "f":
        return arr, _dt.get_default_dtype()
    if k == "c":
        return arr, _dt.default_complex_dtype()
    if k == "O":
        raise make(TypeError, "tensor", f"could not infer dtype of "
                                        f"{type(_first_leaf(data)).__name__}")
    if k in "US":
        raise make(ValueError, "tensor", "too many dimensions 'str'",
                   hint="tensors hold numbers; encode strings (e.g. a vocabulary) first")
    raise make(TypeError, "tensor", f"could not convert data of dtype {arr.dtype}")


def _has_tensor(seq: Any) -> bool:
    for v in seq:
        if isinstance(v, Tensor):
            return True
        if isinstance(v, (list, tuple)) and _has_tensor(v):
            return True
    return False


def _unwrap(seq: Any) -> Any:
    out = []
    for v in seq:
        if isinstance(v, Tensor):
            out.append(v._host())
        elif isinstance(v, (list, tuple)):
            out.append(_unwrap(v))
        else:
            out.append(v)
    return out


def _first_leaf(data: Any) -> Any:
    while isinstance(data, (list, tuple)) and data:
        data = data[0]
    return data


def tensor(data: Any, *, dtype: Any = None, device: Any = None, requires_grad: bool = False,
           pin_memory: bool = False) -> Tensor:
    """A new tensor copying ``data`` (nested lists, numbers, NumPy arrays or Tensors).

    Example::

        >>> ember.tensor([1, 2])        # int64
        tensor([1, 2])
        >>> ember.tensor([1.0])          # float32
        tensor([1.])
    """
    if isinstance(data, Tensor):
        warnings.warn("To copy construct from a tensor, it is recommended to use "
                      "sourceTensor.detach().clone() or sourceTensor.detach().clone()."
                      "requires_grad_(True), rather than ember.tensor(sourceTensor).",
                      UserWarning, stacklevel=2)
        dev = _resolve_device(device) if device is not None else data._device
        out = data.detach().to(dtype=_dt.to_dtype(dtype) if dtype else data._dtype, device=dev,
                               copy=True)
        if requires_grad:
            out.requires_grad_(True)
        return out
    if _is_device_array(data):
        dev = device_of_array(data)
        dt = _dt.to_dtype(dtype) if dtype is not None else _dt.from_numpy_dtype(data.dtype)
        arr = data.astype(dt.np, copy=True)
        return _finish(arr, dt, _resolve_device(device) if device is not None else dev,
                       requires_grad)
    arr, dt = _infer_np(data)
    if dtype is not None:
        dt = _dt.to_dtype(dtype)
    arr = _cast_host(arr, dt)
    return _finish(arr, dt, _resolve_device(device), requires_grad)


def _cast_host(arr: np.ndarray, dt: _dt.dtype) -> np.ndarray:
    if arr.dtype == dt.np:
        return np.array(arr, copy=True)
    if dt.category < 2 and arr.dtype.kind in "fc" and dt is not _dt.bool:
        arr = np.trunc(arr.real if arr.dtype.kind == "c" else arr)
    if dt.category < 3 and arr.dtype.kind == "c":
        arr = arr.real
    with np.errstate(all="ignore"):
        return arr.astype(dt.np)


def _is_device_array(x: Any) -> bool:
    return type(x).__module__.startswith("cupy") and hasattr(x, "__cuda_array_interface__")


def as_tensor(data: Any, dtype: Any = None, device: Any = None) -> Tensor:
    """Like :func:`tensor`, but shares memory with ``data`` when no conversion is needed."""
    if isinstance(data, Tensor):
        return data.to(dtype=dtype, device=device) if (dtype or device) else data
    dev = _resolve_device(device) if device is not None else None
    if isinstance(data, np.ndarray) and (dev is None or dev.type == "cpu"):
        dt = _dt.to_dtype(dtype) if dtype is not None else _dt.from_numpy_dtype(data.dtype)
        if data.dtype == dt.np:
            return _make(data, dt, cpu_device)
        return _make(_cast_host(data, dt), dt, cpu_device)
    if _is_device_array(data):
        ddev = device_of_array(data)
        dt = _dt.to_dtype(dtype) if dtype is not None else _dt.from_numpy_dtype(data.dtype)
        if (dev is None or dev == ddev) and data.dtype == dt.np:
            return _make(data, dt, ddev)
    return tensor(data, dtype=dtype, device=dev)


asarray = as_tensor


def from_numpy(ndarray: np.ndarray) -> Tensor:
    """A tensor sharing memory with a NumPy array (writes show in both)."""
    if not isinstance(ndarray, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(ndarray).__name__})")
    dt = _dt.from_numpy_dtype(ndarray.dtype)
    if not ndarray.flags.writeable:
        warnings.warn("The given NumPy array is not writable, and ember does not support "
                      "non-writable tensors. Writing to it will fail.", UserWarning, stacklevel=2)
    if any(s < 0 for s in ndarray.strides):
        raise ValueError("At least one stride in the given numpy array is negative, and tensors "
                         "with negative strides are not currently supported. (You can probably "
                         "work around this by making a copy of your array with array.copy().)")
    if ndarray.dtype.byteorder == ">":
        raise ValueError("given numpy array has byte order different from the native byte order.")
    return _make(ndarray, dt, cpu_device)


def from_dlpack(ext_tensor: Any) -> Tensor:
    """A tensor sharing memory with any ``__dlpack__`` producer (NumPy, CuPy, torch...)."""
    dev_type, dev_id = ext_tensor.__dlpack_device__()
    if int(dev_type) == 1:
        arr = np.from_dlpack(ext_tensor)
        return _make(arr, _dt.from_numpy_dtype(arr.dtype), cpu_device)
    xp = get_xp(device("cuda", int(dev_id)))
    arr = xp.from_dlpack(ext_tensor)
    return _make(arr, _dt.from_numpy_dtype(arr.dtype), device("cuda", int(dev_id)))


def _size_args(size: Sequence) -> tuple:
    if len(size) == 1 and isinstance(size[0], (tuple, list, Size)):
        size = tuple(size[0])
    out = []
    for s in size:
        if isinstance(s, Tensor):
            s = int(s.item())
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool):
            raise make(TypeError, "size", f"sizes must be ints, got {type(s).__name__}")
        if s < 0:
            raise make(RuntimeError, "size", f"Trying to create tensor with negative dimension "
                                             f"{s}: {list(size)}")
        out.append(int(s))
    return tuple(out)


def _fill(size: tuple, value: Any, dtype: Any, device: Any, requires_grad: bool,
          default: _dt.dtype | None = None) -> Tensor:
    dt = _dt.to_dtype(dtype) if dtype is not None else (default or _dt.get_default_dtype())
    dev = _resolve_device(device)
    xp = get_xp(dev)
    if dev.type == "cpu":
        arr = np.full(size, value, dt.np) if value is not None else np.empty(size, dt.np)
        t = _make(arr, dt, dev)
    else:
        try:
            with xp.cuda.Device(dev.index or 0):
                arr = xp.full(size, value, dt.np) if value is not None else xp.empty(size, dt.np)
        except MemoryError as exc:  # CuPy's OutOfMemoryError
            from ember.cuda.memory import OutOfMemoryError
            raise OutOfMemoryError(f"[{'empty' if value is None else 'full'}] CUDA out of "
                                   f"memory creating a tensor of size {tuple(size)}: {exc}. "
                                   "Free tensors or call ember.cuda.empty_cache() and retry.") \
                from None
        t = _make(arr, dt, dev)
    if requires_grad:
        t.requires_grad_(True)
    return t


def zeros(*size: Any, out: Any = None, dtype: Any = None, layout: Any = None, device: Any = None,
          requires_grad: bool = False, pin_memory: bool = False) -> Tensor:
    """A tensor of zeros of the given size."""
    return _fill(_size_args(size), 0, dtype, device, requires_grad)


def ones(*size: Any, out: Any = None, dtype: Any = None, layout: Any = None, device: Any = None,
         requires_grad: bool = False, pin_memory: bool = False) -> Tensor:
    """A tensor of ones of the given size."""
    return _fill(_size_args(size), 1, dtype, device, requires_grad)


def empty(*size: Any, out: Any = None, dtype: Any = None, layout: Any = None, device: Any = None,
          requires_grad: bool = False, pin_memory: bool = False, memory_format: Any = None) -> Tensor:
    """An uninitialised tensor of the given size."""
    return _fill(_size_args(size), None, dtype, device, requires_grad)


def empty_strided(size: Sequence[int], stride: Sequence[int], *, dtype: Any = None,
                  device: Any = None, requires_grad: bool = False, **kw: Any) -> Tensor:
    """An uninitialised tensor with the given strides."""
    t = empty(max((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else 0,
              dtype=dtype, device=device)
    return t.as_strided(tuple(size), tuple(stride)).detach().requires_grad_(requires_grad)


def full(size: Sequence[int], fill_value: Any, *, out: Any = None, dtype: Any = None,
         layout: Any = None, device: Any = None, requires_grad: bool = False,
         pin_memory: bool = False) -> Tensor:
    """A tensor filled with ``fill_value``; the dtype follows the value (bool, int64 or float)."""
    if isinstance(fill_value, Tensor):
        fill_value = fill_value.item()
    default = _dt.scalar_dtype(fill_value) if dtype is None else None
    return _fill(_size_args((size,) if not isinstance(size, int) else (size,)), fill_value, dtype,
                 device, requires_grad, default)


def scalar_tensor(s: Any, *, dtype: Any = None, device: Any = None,
                  requires_grad: bool = False) -> Tensor:
    return full((), s, dtype=dtype or _dt.get_default_dtype(), device=device,
                requires_grad=requires_grad)


def _like(fn_name: str):
    def like(input: Tensor, *args: Any, dtype: Any = None, layout: Any = None, device: Any = None,
             requires_grad: bool = False, memory_format: Any = None, **kw: Any) -> Tensor:
        dt = dtype if dtype is not None else input._dtype
        dev = device if device is not None else input._device
        shape = tuple(input.shape)
        value = None
        if fn_name == "full":
            value = args[0] if args else kw["fill_value"]
            if isinstance(value, Tensor):
                value = value.item()
        elif fn_name != "empty":
            value = 0 if fn_name == "zeros" else 1
        order = _like_order(input, memory_format)
        if order is None:
            if fn_name == "full":
                return full(shape, value, dtype=dt, device=dev, requires_grad=requires_grad)
            return globals()[fn_name](shape, dtype=dt, device=dev, requires_grad=requires_grad)
        # allocated in physical (memory) order, then viewed back as the logical shape
        inv = [0] * len(order)
        for k, ax in enumerate(order):
            inv[ax] = k
        phys = _fill(tuple(shape[i] for i in order), value, dt, dev, False)
        t = _make(phys._data.transpose(inv), phys._dtype, phys._device)
        if requires_grad:
            t.requires_grad_(True)
        return t
    like.__name__ = f"{fn_name}_like"
    like.__doc__ = (f"``{fn_name}`` with the shape (and by default dtype and device) of "
                    "``input``; ``memory_format`` defaults to ``preserve_format`` (a dense "
                    "input's strides are kept, as torch).")
    return like


def _like_order(input: Tensor, memory_format: Any) -> list | None:
    """The axes of a ``*_like`` result from outermost to innermost in memory, or None for C
    order. torch's rule: ``preserve_format`` keeps a dense (non-overlapping) input's strides,
    else gives dense strides in the order of the input's."""
    from ember.backend.cuda_ops._layout import dense_order  # pure Python, no CuPy
    name = getattr(memory_format, "name", None) if memory_format is not None else \
        "preserve_format"
    arr = input._data
    nd = arr.ndim
    if name == "contiguous_format":
        return None
    if name in ("channels_last", "channels_last_3d"):
        want = 4 if name == "channels_last" else 5
        if nd != want:
            raise RuntimeError(f"required rank {want} tensor to use {name} format")
        return [0] + list(range(2, nd)) + [1]
    if name != "preserve_format":
        raise RuntimeError(f"unsupported memory format {memory_format!r}")
    if nd < 2 or arr.flags.c_contiguous:
        return None
    order = dense_order(arr)
    if order is None:
        # not dense: dense strides in the input's stride order (torch's infer_dense_strides)
        st = arr.strides
        big = sorted((i for i in range(nd) if arr.shape[i] != 1), key=lambda i: -abs(st[i]))
        order = [i for i in range(nd) if arr.shape[i] == 1] + big
    return None if order == sorted(order) else order


zeros_like = _like("zeros")
ones_like = _like("ones")
empty_like = _like("empty")
full_like = _like("full")


def arange(start: Any = 0, end: Any = None, step: Any = 1, *, out: Any = None, dtype: Any = None,
           layout: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """Values from ``start`` to ``end`` (exclusive) by ``step``; int64 unless any is a float."""
    if end is None:
        start, end = 0, start
    vals = [v.item() if isinstance(v, Tensor) else v for v in (start, end, step)]
    start, end, step = vals
    if step == 0:
        raise make(RuntimeError, "arange", "step must be nonzero")
    if (end - start) * step < 0:
        raise make(RuntimeError, "arange", f"upper bound and larger bound inconsistent with step "
                                           f"sign (start={start}, end={end}, step={step})")
    all_int = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals)
    dt = _dt.to_dtype(dtype) if dtype is not None else (
        _dt.int64 if all_int else _dt.get_default_dtype())
    n = int(math.ceil((end - start) / step))
    n = max(n, 0)
    dev = _resolve_device(device)
    # On a GPU the values are computed there: no host-to-device copy, which a stream being
    # captured into a CUDA graph would refuse (models build position indices in forward).
    # (bfloat16 and other ml_dtypes types, kind 'V', are made on the host: CuPy lacks them)
    xp = np if dev.type == "cpu" or np.dtype(dt.np).kind == "V" else get_xp(dev)
    with _on_device(xp, dev):
        if all_int:
            arr = (xp.arange(n, dtype=np.int64) * step + start).astype(dt.np)
        else:
            arr = (xp.arange(n, dtype=np.float64) * float(step) + float(start)).astype(dt.np)
    return _finish(arr, dt, dev, requires_grad)


def linspace(start: Any, end: Any, steps: int, *, out: Any = None, dtype: Any = None,
             layout: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """``steps`` evenly spaced values from ``start`` to ``end`` inclusive."""
    if not isinstance(steps, (int, np.integer)) or steps < 0:
        raise make(RuntimeError, "linspace", f"number of steps must be non-negative, got {steps}")
    start = start.item() if isinstance(start, Tensor) else start
    end = end.item() if isinstance(end, Tensor) else end
    dt = _dt.to_dtype(dtype) if dtype is not None else _dt.get_default_dtype()
    work = dt.np.type if dt.category == 2 and dt.itemsize >= 4 else np.float64
    if steps == 1:
        arr = np.array([start], dtype=work)
    else:
        # torch fills the first half from start and the second half from end, computing in
        # the output precision (so float32 results round like torch's)
        i = np.arange(steps, dtype=work)
        step = (work(end) - work(start)) / work(steps - 1)
        half = steps // 2
        arr = np.where(i < half, work(start) + step * i, work(end) - step * (steps - 1 - i))
    if dt.category < 2:
        arr = np.trunc(arr)
    return _finish(arr.astype(dt.np), dt, _resolve_device(device), requires_grad)


def logspace(start: Any, end: Any, steps: int, base: float = 10.0, *, out: Any = None,
             dtype: Any = None, layout: Any = None, device: Any = None,
             requires_grad: bool = False) -> Tensor:
    """``base ** linspace(start, end, steps)``."""
    lin = linspace(start, end, steps, dtype=_dt.float64)
    dt = _dt.to_dtype(dtype) if dtype is not None else _dt.get_default_dtype()
    arr = np.power(float(base), lin._data)
    return _finish(arr.astype(dt.np), dt, _resolve_device(device), requires_grad)


def eye(n: int, m: int | None = None, *, out: Any = None, dtype: Any = None, layout: Any = None,
        device: Any = None, requires_grad: bool = False) -> Tensor:
    """The ``n x m`` identity matrix."""
    if n < 0 or (m is not None and m < 0):
        raise make(RuntimeError, "eye", f"n must be greater or equal to 0, got {n}")
    dt = _dt.to_dtype(dtype) if dtype is not None else _dt.get_default_dtype()
    return _finish(np.eye(n, m if m is not None else n, dtype=dt.np), dt, _resolve_device(device),
                   requires_grad)
