"""Shared-memory tensors and their pickling for multiprocessing (torch's file-descriptor
strategy).

``Tensor.share_memory_()`` copies a CPU tensor's array into an anonymous shared-memory segment
(a ``/dev/shm`` file that is unlinked at once, so nothing can leak) and points the tensor at
it. Tensors sent through a multiprocessing ``Queue``/``Pipe`` are pickled as a duplicated file
descriptor of their segment plus offset, shape, strides and dtype: the receiver maps the same
pages, so no data is copied and writes on either side are seen by the other. A tensor not yet
shared is moved to shared memory when it is sent, as torch does.
"""
from __future__ import annotations

import mmap
import os
import secrets
import warnings
import weakref
from multiprocessing.reduction import DupFd, ForkingPickler
from typing import Any

import numpy as np

import ember
from ember import dtypes as _dt
from ember.tensor import Tensor, _make

__all__ = ["init_reductions", "share_memory_", "is_shared"]

_SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None
# id(mmap) -> fd of its segment; the fd is what travels (duplicated) to other processes
_FD_OF: dict[int, int] = {}


def _close_fd(key: int) -> None:
    fd = _FD_OF.pop(key, None)
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def _new_segment(nbytes: int) -> tuple[mmap.mmap, int]:
    """An anonymous shared mapping of ``nbytes`` and a file descriptor for it."""
    size = max(nbytes, 1)
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("ember_shm", getattr(os, "MFD_CLOEXEC", 0))
    else:
        if _SHM_DIR is None:
            raise RuntimeError("[share_memory_] no shared-memory file system on this platform")
        path = os.path.join(_SHM_DIR, f"ember_{os.getpid()}_{secrets.token_hex(8)}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.unlink(path)  # the name is never needed again: fds and mappings keep it alive
    os.ftruncate(fd, size)
    mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
    _register(mm, fd)
    return mm, fd


def _register(mm: mmap.mmap, fd: int) -> None:
    key = id(mm)
    _FD_OF[key] = fd
    weakref.finalize(mm, _close_fd, key)


def _owner(arr: np.ndarray) -> Any:
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return base


def _segment_of(arr: np.ndarray) -> mmap.mmap | None:
    owner = _owner(arr)
    if isinstance(owner, mmap.mmap) and id(owner) in _FD_OF:
        return owner
    return None


def _address(arr: np.ndarray) -> int:
    return arr.__array_interface__["data"][0]


def _mmap_address(mm: mmap.mmap) -> int:
    return _address(np.frombuffer(mm, dtype=np.uint8, count=1))


def is_shared(self: Tensor) -> bool:
    """Whether the tensor's memory is a shared-memory segment (CUDA tensors always are)."""
    if self.device.type == "cuda":
        return True
    return _segment_of(self._data) is not None


def share_memory_(self: Tensor) -> Tensor:
    """Move the tensor's data into shared memory, in place; a no-op if it is already there.

    The values are copied once and the tensor then aliases the segment. Views taken
    afterwards share it; views taken before keep the old private memory (ember tensors have
    no separate storage object to retarget).
    """
    if self.device.type == "cuda" or is_shared(self):
        return self
    if self._base is not None and isinstance(self._data, np.ndarray):
        # a view: share its base, then re-point the view at the same place in the segment
        base = self._base
        share_memory_(base)
        new_base = base._data
        view = self._data
        top = view
        while isinstance(top.base, np.ndarray):
            top = top.base
        if (top.shape == new_base.shape and top.dtype == new_base.dtype
                and top.flags.c_contiguous and new_base.flags.c_contiguous):
            mm = _segment_of(new_base)
            offset = (_address(view) - _address(top)) + \
                (_address(new_base) - _mmap_address(mm))
            self._data = np.ndarray(view.shape, dtype=view.dtype, buffer=mm, offset=offset,
                                    strides=view.strides)
            return self
        warnings.warn("share_memory_: this view's base has an unusual layout, so the view "
                      "gets its own shared copy and no longer aliases its base")
        self._base = None
    arr = self._data
    if isinstance(arr, np.ndarray):
        mm, _ = _new_segment(arr.nbytes)
        shared = np.ndarray(arr.shape, dtype=arr.dtype, buffer=mm)
        shared[...] = arr
        self._data = shared
    return self


def _rebuild_tensor(df: Any, nbytes: int, offset: int, shape: tuple, strides: tuple,
                    np_dtype: Any, dtype_name: str, requires_grad: bool,
                    is_param: bool) -> Tensor:
    fd = df.detach()
    mm = mmap.mmap(fd, max(nbytes, 1), flags=mmap.MAP_SHARED)
    _register(mm, fd)
    arr = np.ndarray(shape, dtype=np_dtype, buffer=mm, offset=offset, strides=strides)
    t = _make(arr, getattr(_dt, dtype_name), ember.device("cpu"))
    if is_param:
        return ember.nn.Parameter(t, requires_grad=requires_grad)
    t._requires_grad = requires_grad
    return t


def _in_dataloader_worker() -> bool:
    # DataLoader workers have their own batch transport (ember.utils.data._shm) and may exit
    # right after sending, before the main process could duplicate a descriptor of theirs
    from ember.utils.data import _shm
    return _shm._State.tag is not None


def reduce_tensor(t: Tensor) -> tuple:
    """Pickle a CPU tensor as a handle to its shared memory (moving it there first)."""
    if _in_dataloader_worker():
        return t.__reduce_ex__(4)
    if t.device.type != "cpu":
        raise RuntimeError(f"[multiprocessing] sharing {t.device} tensors between processes "
                           f"is not supported by ember; move the tensor to the CPU first")
    if t.requires_grad and not t.is_leaf:
        raise RuntimeError("Cowardly refusing to serialize non-leaf tensor which requires_grad, "
                           "since autograd does not support crossing process boundaries.  If "
                           "you just want to transfer the data, call detach() on the tensor "
                           "before serializing (e.g., putting it on the queue).")
    if not is_shared(t):
        share_memory_(t)
    arr = t._data
    mm = _segment_of(arr)
    if mm is None:  # a view taken before its base was shared: send a shared copy
        c = t.detach().clone()
        share_memory_(c)
        arr = c._data
        mm = _segment_of(arr)
    offset = _address(arr) - _mmap_address(mm)
    is_param = isinstance(t, ember.nn.Parameter)
    return (_rebuild_tensor, (DupFd(_FD_OF[id(mm)]), len(mm), offset, arr.shape, arr.strides,
                              arr.dtype, t.dtype.__repr__().split(".")[-1],
                              bool(t.requires_grad), is_param))


_INSTALLED = [False]


def init_reductions() -> None:
    """Register the tensor reducer with multiprocessing's pickler and add
    ``Tensor.share_memory_`` / ``Tensor.is_shared``."""
    if _INSTALLED[0]:
        return
    Tensor.share_memory_ = share_memory_
    Tensor.is_shared = is_shared
    ForkingPickler.register(Tensor, reduce_tensor)
    ForkingPickler.register(ember.nn.Parameter, reduce_tensor)
    _INSTALLED[0] = True
