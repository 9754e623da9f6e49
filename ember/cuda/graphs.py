"""CUDA graphs: capture a sequence of ember ops on a side stream and replay it.

Capture uses a private CuPy memory pool kept alive with the graph: blocks freed during
capture must not return to the shared pool, or arrays allocated after capture would be
overwritten on replay (GPU.md's hazard). CuPy refuses cuBLAS calls during capture, so a
captured region must not contain ``cupy.matmul``; ember raises a clear error then.
"""
from __future__ import annotations

from typing import Any


def _cp() -> Any:
    from ember.backend import cuda
    return cuda.xp()


def graph_pool_handle() -> Any:
    """A private memory pool that several graphs can share."""
    return _cp().cuda.MemoryPool()


class CUDAGraph:
    """A captured CUDA graph; ``replay()`` re-runs the captured kernels on the same buffers."""

    def __init__(self) -> None:
        self._graph: Any = None
        self._pool: Any = None
        self._stream: Any = None

    def capture_begin(self, pool: Any = None, capture_error_mode: str = "global") -> None:
        cp = _cp()
        self._pool = pool if pool is not None else cp.cuda.MemoryPool()
        self._stream = cp.cuda.Stream(non_blocking=True)
        self._prev_stream = cp.cuda.get_current_stream()
        cp.cuda.get_current_stream().synchronize()
        self._alloc_ctx = cp.cuda.using_allocator(self._pool.malloc)
        self._alloc_ctx.__enter__()
        self._stream.use()
        self._stream.begin_capture()

    def capture_end(self) -> None:
        try:
            self._graph = self._stream.end_capture()
        finally:
            self._alloc_ctx.__exit__(None, None, None)
            self._prev_stream.use()

    def replay(self) -> None:
        if self._graph is None:
            raise RuntimeError("CUDAGraph.replay: nothing was captured")
        self._graph.launch(self._stream)

    def reset(self) -> None:
        self._graph = None

    def pool(self) -> Any:
        return self._pool


class graph:
    """``with ember.cuda.graph(g): ...`` captures the block's GPU work into ``g``."""

    def __init__(self, cuda_graph: CUDAGraph, pool: Any = None, stream: Any = None,
                 capture_error_mode: str = "global") -> None:
        self.g = cuda_graph
        self.pool = pool

    def __enter__(self) -> CUDAGraph:
        self.g.capture_begin(self.pool)
        return self.g

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.g.capture_end()
        except Exception:
            if exc is None:
                raise
        if exc is not None and "not supported" in str(exc).lower():
            raise RuntimeError(
                "[cuda.graph] an op in the captured region is not capturable (CuPy refuses "
                "cuBLAS calls such as matmul during stream capture)") from exc
