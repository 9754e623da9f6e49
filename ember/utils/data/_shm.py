"""Shared-memory transport for batches made in worker processes.

A worker writes each large array into a POSIX shared-memory segment (``/dev/shm`` on Linux)
and sends only a small reference: segment name, offset, shape, strides and dtype. The main
process maps the segment and wraps the memory without copying. A batch therefore crosses the
process boundary with one copy (into the segment, usually done by ``default_collate`` itself)
instead of a pickle, a pipe transfer and an unpickle.

Segments are recycled. Fresh tmpfs pages cost a page fault and a zero-fill each (several ms per
megabyte, more than the copy itself), so when the main process drops its last reference to a
batch, the segment's name is queued (``released``) and goes back to its worker with the next
index message; the worker reuses it for a batch of the same size once it holds no mapping of it
itself. A worker keeps only a few idle segments and unlinks the rest.

Every segment name is ``<tag>_w<worker>_<n>``, where the tag belongs to one loader iterator, so
when that iterator shuts down it unlinks every segment its workers created (received or not):
no leaks in ``/dev/shm``. Batches the user still holds stay valid, since a mapping outlives its
name.
"""
from __future__ import annotations

import collections
import io
import mmap
import os
import pickle
import re
import secrets
import sys
import weakref
from typing import Any

import numpy as np

import ember
from ember import Tensor

# Arrays smaller than this travel pickled: below it a segment's syscalls cost more than the
# copy they save.
SHM_THRESHOLD = 32 * 1024
# Idle (released, not reused) segments a worker keeps for reuse; older ones are unlinked.
MAX_IDLE_SEGMENTS = 8

# POSIX shared memory on Linux is a tmpfs: shm_open(name) is open("/dev/shm/name"), so plain
# os calls manage segments. Elsewhere (no /dev/shm) batches travel pickled.
_SHM_DIR = "/dev/shm"
# MAP_POPULATE maps every page in one call instead of faulting them in one by one.
_MAP_FLAGS = getattr(mmap, "MAP_SHARED", 0) | getattr(mmap, "MAP_POPULATE", 0)
_NAME_RE = re.compile(r"^(?P<tag>.+)_w(?P<wid>\d+)_\d+$")


class _State:
    """Per-process transport settings: set in a worker, unset (None) in the main process."""

    tag: str | None = None
    counter: int = 0


# Worker side. Segment name -> this process's live mapping of it (weak: the mapping closes
# when the last array on it dies).
_MAPPED: "weakref.WeakValueDictionary[str, mmap.mmap]" = weakref.WeakValueDictionary()
# id(mapping) -> segment name, to find the segment behind an array's memory
_NAME_OF: dict[int, str] = {}
# Segments the main process released, oldest first: name -> size in bytes.
_IDLE: "collections.OrderedDict[str, int]" = collections.OrderedDict()

# Main side. Segment name -> mapping of a received segment (one per segment even when a
# message carries several views of it).
_ATTACHED: "weakref.WeakValueDictionary[str, mmap.mmap]" = weakref.WeakValueDictionary()
# Loader tag -> names whose last reference died, waiting to go back to their worker.
_RELEASED: dict[str, collections.deque] = {}


def available() -> bool:
    return sys.platform.startswith("linux") and os.path.isdir(_SHM_DIR)


def new_tag() -> str:
    """A fresh name prefix for one loader iterator's segments."""
    return f"ember_dl_{os.getpid()}_{secrets.token_hex(4)}"


def enable_in_worker(tag: str | None, worker_id: int) -> None:
    """Called at worker start: from now on large arrays go to segments named ``tag_w<id>_*``."""
    _State.tag = None if tag is None or not available() else f"{tag}_w{worker_id}"
    _State.counter = 0
    _IDLE.clear()


def active() -> bool:
    return _State.tag is not None


# ---------------------------------------------------------------------- worker side
def _map(name: str, nbytes: int, create: bool) -> mmap.mmap:
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = os.open(os.path.join(_SHM_DIR, name), flags | os.O_CLOEXEC, 0o600)
    try:
        if create:
            os.ftruncate(fd, nbytes)
        return mmap.mmap(fd, nbytes, flags=_MAP_FLAGS)
    except BaseException:
        if create:
            _unlink(name)
        raise
    finally:
        os.close(fd)


def _unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(_SHM_DIR, name))
    except FileNotFoundError:
        pass


def _segment(nbytes: int) -> tuple[str, mmap.mmap]:
    """A segment for ``nbytes``: an idle one nothing here maps, big enough but at most twice
    the size (so a short last batch reuses a full one), else a new one."""
    for name, size in _IDLE.items():
        if nbytes <= size <= 2 * nbytes and name not in _MAPPED:
            del _IDLE[name]
            try:
                return name, _map(name, size, create=False)
            except FileNotFoundError:
                break  # unlinked by a shutdown in progress: make a new one
    _State.counter += 1
    name = f"{_State.tag}_{_State.counter}"
    return name, _map(name, nbytes, create=True)


def empty(shape: tuple, dtype: Any) -> np.ndarray:
    """An uninitialised array, in a shared-memory segment when this is a worker and the array
    is large enough to be worth it; else ordinary memory."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if _State.tag is None or nbytes < SHM_THRESHOLD:
        return np.empty(shape, dtype)
    name, mm = _segment(nbytes)
    _MAPPED[name] = mm
    _NAME_OF[id(mm)] = name
    weakref.finalize(mm, _NAME_OF.pop, id(mm), None)
    return np.ndarray(shape, dtype, buffer=mm)


def unlink_all() -> None:
    """Unlink every segment this worker created (at worker exit). Batches the main process
    holds stay valid; what matters is that no name outlives the loader, even when the main
    process was killed and cannot clean up itself."""
    if _State.tag is None:
        return
    for i in range(1, _State.counter + 1):
        _unlink(f"{_State.tag}_{i}")
    _IDLE.clear()


def release(segments: list) -> None:
    """``(name, nbytes)`` of segments the main process no longer uses: keep a few for reuse,
    unlink the rest."""
    for name, nbytes in segments:
        if _State.tag is not None and name.startswith(_State.tag + "_"):
            _IDLE[name] = nbytes
    while len(_IDLE) > MAX_IDLE_SEGMENTS:
        name, _ = _IDLE.popitem(last=False)
        _unlink(name)


def _root(arr: np.ndarray) -> tuple[Any, np.ndarray]:
    """The object owning ``arr``'s memory and the outermost ndarray over it."""
    base, top = arr, arr
    while isinstance(base, np.ndarray):
        top = base
        base = base.base
    return base, top


def _address(arr: np.ndarray) -> int:
    return arr.__array_interface__["data"][0]


def _array_ref(arr: np.ndarray) -> tuple:
    """(name, size, offset, shape, strides, dtype) of ``arr`` in a segment, copying it into
    a new segment first unless it already lives in one of ours."""
    owner, top = _root(arr)
    name = _NAME_OF.get(id(owner)) if isinstance(owner, mmap.mmap) else None
    if name is None:
        copy = empty(arr.shape, arr.dtype)
        np.copyto(copy, arr)
        arr = copy
        owner, top = _root(arr)
        name = _NAME_OF[id(owner)]
    offset = _address(arr) - _address(top)
    return (name, len(owner), offset, arr.shape, arr.strides, arr.dtype)


def _shareable(arr: np.ndarray) -> bool:
    return not arr.dtype.hasobject and arr.nbytes >= SHM_THRESHOLD


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


# ---------------------------------------------------------------------- main side
def _on_release(tag: str, name: str, nbytes: int) -> None:
    # Runs wherever the last reference dies (any thread, inside gc): only queue the name;
    # the loader sends it from its own thread.
    q = _RELEASED.get(tag)
    if q is not None:
        q.append((name, nbytes))


def _attach(name: str, nbytes: int) -> mmap.mmap:
    mm = _ATTACHED.get(name)
    if mm is not None:
        return mm
    try:
        mm = _map(name, nbytes, create=False)
    except FileNotFoundError:
        raise RuntimeError(f"DataLoader: shared-memory segment {name} is gone; its loader "
                           "was shut down before the batch was read") from None
    _ATTACHED[name] = mm
    m = _NAME_RE.match(name)
    if m is not None:
        weakref.finalize(mm, _on_release, m.group("tag"), name, nbytes)
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


loads = pickle.loads


def register(tag: str) -> None:
    """Start collecting released segments of the loader iterator with this tag."""
    _RELEASED[tag] = collections.deque()


def take_released(tag: str, pending: list[list]) -> None:
    """Move the released ``(name, nbytes)`` of ``tag`` into ``pending[worker_id]``."""
    q = _RELEASED.get(tag)
    while q:
        name, nbytes = q.popleft()
        m = _NAME_RE.match(name)
        if m is not None and int(m.group("wid")) < len(pending):
            pending[int(m.group("wid"))].append((name, nbytes))


def cleanup(tag: str) -> int:
    """Unlink every segment whose name starts with ``tag`` and stop collecting its releases;
    returns how many. Called once the workers that could create such segments have exited."""
    _RELEASED.pop(tag, None)
    if not available():
        return 0
    n = 0
    for fname in os.listdir(_SHM_DIR):
        if fname.startswith(tag):
            _unlink(fname)
            n += 1
    return n
