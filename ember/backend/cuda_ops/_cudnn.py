"""Shared cuDNN frontend state: the import, handles, workspaces and the graph cache.

Used by :mod:`cudnn_conv` and :mod:`cudnn_sdpa`. Everything here stays torch-free (GPU.md
section 1): data types are passed as ``cudnn.data_type`` enums, buffers as raw ``int``
device pointers, and tensors are declared with explicit dims and element strides (never
``tensor_like``, which goes through ``torch.from_dlpack``).

- **Handles**: one per (device, stream), bound to that stream once with ``set_stream``, so a
  steady-state execute pays no stream switch. A handle is never created during CUDA graph
  capture (``cudnnCreate`` is not capturable); the device's first handle is re-pointed at the
  capturing stream instead, and re-bound to its own stream on its next use (every lookup
  checks the stream a handle was last bound to: a handle left on a capture stream ran later
  eager convolutions there, racing the default stream, or on a destroyed stream: a crash).
- **Workspace**: one growing buffer per (device, stream). During capture a fresh block comes
  from the current (private) allocator instead, so the graph never refers to a buffer that a
  later growth frees back into the shared pool.
- **Graphs**: built once per key (op, shapes, strides, dtypes, parameters, device) with
  heuristics A then FALLBACK. A key whose graph cuDNN rejects is cached as ``None`` and the
  caller falls back to the generic CuPy code.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from ember.backend.cuda import stream_capturing

try:  # optional: the 'cuda' extra installs it (pip install --no-deps nvidia-cudnn-frontend)
    import cudnn  # type: ignore[import-not-found]
except Exception as _exc:  # ImportError, or libcudnn missing at dlopen time
    cudnn = None
    IMPORT_ERROR: Exception | None = _exc
else:
    IMPORT_ERROR = None

_warned: list = []


def available() -> bool:
    """Whether the cuDNN frontend imported; warns once (per process) when it did not."""
    if cudnn is not None:
        return True
    if not _warned:
        _warned.append(True)
        warnings.warn("ember: cuDNN frontend not installed; conv and attention run on the "
                      f"generic CuPy path (slower) ({IMPORT_ERROR})", RuntimeWarning, stacklevel=3)
    return False


def data_type(dtype: Any) -> Any:
    """The ``cudnn.data_type`` of a NumPy/CuPy dtype, or None when cuDNN does not take it."""
    name = np.dtype(dtype).name
    DT = cudnn.data_type
    return {"float32": DT.FLOAT, "float16": DT.HALF, "bfloat16": DT.BFLOAT16}.get(name)


def elem_strides(a: Any) -> tuple:
    """Element strides of a CuPy array (CuPy keeps byte strides)."""
    size = a.itemsize
    return tuple(s // size for s in a.strides)


# ---------------------------------------------------------------------- handles
_HANDLES: dict = {}
_BOUND: dict = {}   # id(handle) -> the stream pointer it was last bound to


def _bind(h: Any, ptr: int) -> Any:
    if _BOUND.get(id(h)) != ptr:
        cudnn.set_stream(h, ptr)
        _BOUND[id(h)] = ptr
    return h


def handle(cp: Any) -> Any:
    """The cuDNN handle for the current device and CuPy stream, bound to that stream."""
    stream = cp.cuda.get_current_stream()
    dev = cp.cuda.runtime.getDevice()
    key = (dev, stream.ptr)
    h = _HANDLES.get(key)
    if h is not None:
        # (re-bound when a capture borrowed it meanwhile: work on the default stream must
        # never run on a capture stream, which may be gone by now)
        return _bind(h, stream.ptr)
    if stream_capturing(stream):
        # cudnnCreate allocates and synchronises: borrow the device's first handle and point
        # it at the capture stream; its own stream gets it back on its next use.
        first = _HANDLES.get((dev, "first"))
        if first is None:
            raise RuntimeError("[cudnn] the first cuDNN call on a device happened during CUDA "
                               "graph capture; run the captured code once before capturing")
        return _bind(first, stream.ptr)
    with cp.cuda.Device(dev):
        h = cudnn.create_handle()
        _bind(h, stream.ptr)
    _HANDLES[key] = h
    _HANDLES.setdefault((dev, "first"), h)
    return h


# ---------------------------------------------------------------------- workspace
_WORKSPACES: dict = {}


def workspace(cp: Any, nbytes: int) -> tuple:
    """``(pointer, keep-alive)`` of at least ``nbytes`` of device memory for one execute."""
    if nbytes <= 0:
        return 0, None
    stream = cp.cuda.get_current_stream()
    if stream_capturing(stream):
        buf = cp.empty(nbytes, dtype=cp.uint8)  # from the graph's private pool
        return buf.data.ptr, buf
    key = (cp.cuda.runtime.getDevice(), stream.ptr)
    buf = _WORKSPACES.get(key)
    if buf is None or buf.nbytes < nbytes:
        # grow geometrically so a slowly growing series of shapes does not reallocate often
        size = max(nbytes, 2 * buf.nbytes if buf is not None else 0)
        buf = _WORKSPACES[key] = cp.empty(size, dtype=cp.uint8)
    return buf.data.ptr, buf


# ---------------------------------------------------------------------- graph cache
class Built:
    """A built cuDNN graph with its operand uids in execute order and its workspace size."""

    __slots__ = ("graph", "uids", "ws", "extra", "_fast")

    def __init__(self, graph: Any, tensors: list, extra: Any = None) -> None:
        self.graph = graph
        self.uids = [t.uid for t in tensors]
        self.ws = int(graph.get_workspace_size())
        self.extra = extra
        self._fast: Any = None  # (C++ execute, plan index) once the first execute succeeded

    def execute(self, cp: Any, h: Any, ptrs: list) -> None:
        ws_ptr, keep = workspace(cp, self.ws)
        fast = self._fast
        if fast:
            # The frontend's Python execute re-describes every operand on each call (~100 us
            # of host time in 1.32); the backend plan only needs the pointers.
            run, index = fast
            pack = dict(zip(self.uids, ptrs))
            if index is None:
                run(pack, ws_ptr or 0, h.backend_handle, None, None, None)
            else:
                run(pack, ws_ptr or 0, index, h.backend_handle, None, None, None)
        else:
            self.graph.execute(ptrs, ws_ptr or None, handle=h, tensor_uids=self.uids)
            if self._fast is None:
                self._fast = _backend_executor(self.graph)
        del keep  # the stream orders later reuse of the block after this execute


def _backend_executor(g: Any) -> Any:
    """``(C++ execute, plan index)`` for a built graph that runs on the cuDNN backend plan
    with no bindings of its own (what the frontend's ``_execute`` then does after its Python
    bookkeeping), else ``False`` (keep the frontend's execute). Reads frontend internals, so
    anything unexpected keeps the public path."""
    try:
        lowered = g.__dict__.get("_lowered_graph")
        if (lowered is None or not g._is_built or g.selected_engine is not None
                or g._data_bindings):
            return False
        if g._plans:
            cpp_index = g._materialize_backend_plan(g._plan_index).cpp_index
            if cpp_index is not None:
                return lowered._execute_plan_at_index, cpp_index
        return lowered._execute, None
    except Exception:  # noqa: BLE001 - a frontend without these internals
        return False


_GRAPHS: dict = {}
_failed_keys: list = []


def new_graph(h: Any, io_dtype: Any) -> Any:
    """An empty graph computing in float32 with ``io_dtype`` inputs and outputs."""
    DT = cudnn.data_type
    return cudnn.pygraph(handle=h, io_data_type=io_dtype, intermediate_data_type=DT.FLOAT,
                         compute_data_type=DT.FLOAT)


def finalize(g: Any, exact_fp32: bool = False) -> None:
    """Validate, lower and build the fastest heuristic plan of ``g`` (raises if unsupported).

    ``exact_fp32`` drops the engines that compute float32 on TF32 tensor cores (for
    ``ember.backends.cudnn.allow_tf32 = False``; torch's default, like ember's, allows TF32).
    """
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    if exact_fp32:
        notes = cudnn.numerical_note
        g.deselect_numeric_notes([notes.TENSOR_CORE, notes.DOWN_CONVERT_INPUTS])
    g.check_support()
    g.build_plans()


def exact_fp32(dtype: Any) -> bool:
    """Whether float32 work of this dtype must avoid TF32 (``backends.cudnn.allow_tf32``)."""
    if _F32[0] is None:
        from ember.backends import cudnn as _flags
        _F32[0], _F32[1] = np.dtype("float32"), _flags
    # asked once per convolution: a dtype comparison, not np.dtype(...).name (~2 us)
    return dtype == _F32[0] and not _F32[1].allow_tf32


_F32: list = [None, None]   # float32's dtype, ember.backends.cudnn (bound on first use)


def cached(key: tuple, build: Callable[[], Built]) -> Built | None:
    """The graph built for ``key`` (built now if new); None when cuDNN rejects it."""
    try:
        return _GRAPHS[key]
    except KeyError:
        pass
    import cupy as cp
    stream = cp.cuda.get_current_stream()
    try:
        res = build()
    except Exception as exc:  # unsupported config: remember, and run the generic path
        res = None
        if len(_failed_keys) < 8:  # a few, for debugging (tests print these)
            _failed_keys.append((key, repr(exc)[:300]))
    finally:
        stream.use()  # a library's stream context must not change the caller's stream
    _GRAPHS[key] = res
    return res


def clear_cache() -> None:
    """Drop every cached graph (tests; a device reset)."""
    _GRAPHS.clear()
    _failed_keys.clear()
