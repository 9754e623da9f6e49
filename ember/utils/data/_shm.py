"""Shared-memory transport for batches made in worker processes.

A worker writes each large array into a POSIX shared-memory segment (``/dev/shm`` on Linux)
and sends only a small reference: segment name, offset, shape, strides and dtype. The main
process maps the segment, unlinks its name at once (the mapping lives on until the last array
using it dies) and wraps the memory without copying. A batch therefore crosses the process
boundary with one copy (into the segment, often done by ``default_collate`` itself) instead of
a pickle, a pipe transfer and an unpickle.

Every segment name starts with a tag owned by one loader iterator, so when that iterator shuts
down it can unlink whatever its workers created but the main process never received (a worker
killed mid-batch, an epoch abandoned early): no leaks in ``/dev/shm``.
"""
from __future__ import annotations

import io
import mmap
import os
import pickle
import secrets
import sys
import weakref
from typing import Any

import numpy as np

import ember
from ember import Tensor

try:  # POSIX shared memory; absent on Windows, where batches travel pickled
    import _posixshmem
except ImportError:  # pragma: no cover - platform dependent
    _posixshmem = None

# Arrays smaller than this travel pickled: below it a segment's syscalls and page faults cost
# more than the copy they save.
SHM_THRESHOLD = 32 * 1024

_SHM_DIR = "/dev/shm"


class _State:
    """Per-process transport settings: set in a worker, unset (None) in the main process."""

    tag: str | None = None
    counter: int = 0


# mmap object -> segment name, for arrays this process placed in shared memory and has not yet
# sent; weak so a dropped batch frees its mapping normally.
_OWNED: "weakref.WeakKeyDictionary[mmap.mmap, str]" = weakref.WeakKeyDictionary()
# segment name -> mapping, for segments this process received (one mapping per segment even
# when a message carries several views of it)
_ATTACHED: "weakref.WeakValueDictionary[str, mmap.mmap]" = weakref.WeakValueDictionary()


def available() -> bool:
    return _posixshmem is not None and sys.platform.startswith("linux")


def new_tag() -> str:
    """A fresh name prefix for one loader iterator's segments."""
    return f"ember_dl_{os.getpid()}_{secrets.token_hex(4)}"


def enable_in_worker(tag: str | None, worker_id: int) -> None:
    """Called at worker start: from now on large arrays go to segments named ``tag_w<id>_*``."""
    _State.tag = None if tag is None or not available() else f"{tag}_w{worker_id}"
    _State.counter = 0


def active() -> bool:
    return _State.tag is not None


def empty(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """An uninitialised array, in a shared-memory segment when this is a worker and the array
    is large enough to be worth it; else ordinary memory."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if _State.tag is None or nbytes < SHM_THRESHOLD:
        return np.empty(shape, dtype)
    _State.counter += 1
    name = f"/{_State.tag}_{_State.counter}"
    fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
    try:
        os.ftruncate(fd, nbytes)
        mm = mmap.mmap(fd, nbytes)
    except BaseException:
        _posixshmem.shm_unlink(name)
        raise
    finally:
        os.close(fd)
    _OWNED[mm] = name
    return np.ndarray(shape, dtype, buffer=mm)


def _root(arr: np.ndarray) -> tuple[Any, np.ndarray | None]:
    """The object owning ``arr``'s memory and the outermost ndarray over it."""
    base, top = arr, None
    while isinstance(base, np.ndarray):
        top = base
        base = base.base
    return base, top


def _address(arr: np.ndarray) -> int:
    return arr.__array_interface__["data"][0]


def _place(arr: np.ndarray) -> tuple[str, int, np.ndarray]:
    """The segment holding ``arr`` (copying it into a new one if needed) and the offset."""
    owner, top = _root(arr)
    name = _OWNED.get(owner) if isinstance(owner, mmap.mmap) else None
    if name is None:
        copy = empty(arr.shape, arr.dtype)
        np.copyto(copy, arr)
        owner, top = _root(copy)
        name = _OWNED[owner]
        arr = copy
    # A segment is received (and unlinked) once: forget it so a later send copies afresh.
    del _OWNED[owner]
    offset = _address(arr) - _address(top)  # type: ignore[arg-type]
    return name, offset, arr


def _shareable(arr: np.ndarray) -> bool:
    return arr.dtype.hasobject is False and arr.nbytes >= SHM_THRESHOLD


def _attach(name: str, nbytes: int) -> mmap.mmap:
    mm = _ATTACHED.get(name)
    if mm is not None:
        return mm
    try:
        fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDWR, mode=0o600)
    except FileNotFoundError:
        raise RuntimeError(f"DataLoader: shared-memory segment {name} is gone; a batch was "
                           "received twice or its worker's loader was shut down") from None
    try:
        mm = mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)
        # The mapping keeps the memory alive; the name is no longer needed.
        _posixshmem.shm_unlink("/" + name.lstrip("/"))
    _ATTACHED[name] = mm
    return mm


def _rebuild_array(name: str, nbytes: int, offset: int, shape: tuple, strides: tuple,
                   dtype: Any) -> np.ndarray:
    mm = _attach(name, nbytes)
    return np.ndarray(shape, np.dtype(dtype), buffer=mm, offset=offset, strides=strides)


def _rebuild_tensor(name: str, nbytes: int, offset: int, shape: tuple, strides: tuple,
                    dtype: Any, requires_grad: bool) -> Tensor:
    t = ember.from_numpy(_rebuild_array(name, nbytes, offset, shape, strides, dtype))
    if requires_grad:
        t.requires_grad_(True)
    return t


def _array_ref(arr: np.ndarray) -> tuple:
    name, offset, arr = _place(arr)
    owner, _ = _root(arr)
    return (name, len(owner), offset, arr.shape, arr.strides, arr.dtype)


class _Pickler(pickle.Pickler):
    """Pickles large CPU tensors and NumPy arrays as references into shared memory."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is Tensor and obj.device.type == "cpu" and obj.grad_fn is None:
            arr = obj.detach().numpy()
            if _shareable(arr):
                return _rebuild_tensor, (*_array_ref(arr), obj.requires_grad)
        elif type(obj) is np.ndarray and _shareable(obj):
            return _rebuild_array, _array_ref(obj)
        return NotImplemented


def dumps(obj: Any) -> bytes:
    """Serialise a worker's message; large arrays go by shared-memory reference when the
    transport is active in this process, everything else is an ordinary pickle."""
    if _State.tag is None:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


loads = pickle.loads


def cleanup(tag: str) -> int:
    """Unlink every segment whose name starts with ``tag``; returns how many. Called once the
    workers that could create such segments have exited."""
    if not available() or not os.path.isdir(_SHM_DIR):
        return 0
    n = 0
    for fname in os.listdir(_SHM_DIR):
        if fname.startswith(tag):
            try:
                _posixshmem.shm_unlink("/" + fname)
                n += 1
            except FileNotFoundError:
                pass
    return n
