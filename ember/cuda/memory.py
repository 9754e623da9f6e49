"""CUDA memory statistics, read from CuPy's memory pool, and a recoverable OOM error.

CuPy's pool has no peak statistic, and its ``used_bytes()`` walks every live block (O(number
of arrays)), far too slow to call on each allocation. Once a statistic is first asked for,
ember registers a CuPy memory hook that keeps a running count of the bytes handed out and
returned (O(1) per allocation and free) and records its peak; reserved bytes are the pool's
total, re-read only when the pool grows. Hooks are per thread: allocations on other threads
are not counted in the peak.
"""
from __future__ import annotations

from typing import Any


class OutOfMemoryError(RuntimeError):
    """Raised when the GPU runs out of memory; the process can free tensors and continue."""


class _Tracker:
    def __init__(self) -> None:
        self.installed = False
        self.used = 0            # bytes handed out by the pools (seeded at install)
        self.peak = 0
        self.peak_reserved = 0

    def install(self) -> None:
        if self.installed:
            return
        import cupy as cp
        from cupy.cuda import memory_hook
        pool = cp.get_default_memory_pool()
        tracker = self

        class _PeakHook(memory_hook.MemoryHook):
            name = "ember_memory_stats"

            def malloc_postprocess(self, **kw: Any) -> None:
                used = tracker.used + kw["mem_size"]
                tracker.used = used
                if used > tracker.peak:
                    tracker.peak = used

            def free_postprocess(self, **kw: Any) -> None:
                tracker.used -= kw["mem_size"]

            def alloc_postprocess(self, **kw: Any) -> None:  # the pool took a new block
                total = pool.total_bytes()
                if total > tracker.peak_reserved:
                    tracker.peak_reserved = total

        self.used = self.peak = int(pool.used_bytes())
        self.peak_reserved = int(pool.total_bytes())
        _PeakHook().__enter__()  # stays registered for the process (this thread)
        self.installed = True


_tracker = _Tracker()


def _pool() -> Any:
    import cupy as cp
    _tracker.install()
    return cp.get_default_memory_pool()


def memory_allocated(device: Any = None) -> int:
    """Bytes held by live tensors (CuPy pool's used bytes)."""
    return int(_pool().used_bytes())


def max_memory_allocated(device: Any = None) -> int:
    """Peak of :func:`memory_allocated` since the statistics were first read or last reset."""
    _pool()
    return max(_tracker.peak, memory_allocated())


def memory_reserved(device: Any = None) -> int:
    """Bytes the pool holds from the driver (in use plus cached)."""
    return int(_pool().total_bytes())


def max_memory_reserved(device: Any = None) -> int:
    _pool()
    return max(_tracker.peak_reserved, memory_reserved())


def reset_peak_memory_stats(device: Any = None) -> None:
    _pool()
    _tracker.used = _tracker.peak = memory_allocated()  # re-seed the running count
    _tracker.peak_reserved = memory_reserved()


reset_max_memory_allocated = reset_peak_memory_stats


def empty_cache() -> None:
    """Return cached, unused blocks to the driver."""
    _pool().free_all_blocks()
    import cupy as cp
    cp.get_default_pinned_memory_pool().free_all_blocks()


def mem_get_info(device: Any = None) -> tuple[int, int]:
    """(free, total) bytes on the device, from the driver."""
    import cupy as cp
    free, total = cp.cuda.runtime.memGetInfo()
    return int(free), int(total)


def memory_stats(device: Any = None) -> dict:
    return {"allocated_bytes.all.current": memory_allocated(),
            "allocated_bytes.all.peak": max_memory_allocated(),
            "reserved_bytes.all.current": memory_reserved(),
            "reserved_bytes.all.peak": max_memory_reserved(),
            "num_free_blocks": int(_pool().n_free_blocks())}


def memory_summary(device: Any = None, abbreviated: bool = False) -> str:
    """A readable table of the memory statistics."""
    free, total = mem_get_info()
    mib = 2 ** 20
    rows = [("Allocated memory", memory_allocated(), max_memory_allocated()),
            ("Reserved memory", memory_reserved(), max_memory_reserved())]
    lines = ["|" + "=" * 62 + "|",
             "|" + " ember CUDA memory summary (CuPy pool)".ljust(62) + "|",
             "|" + "-" * 62 + "|",
             "|" + " Metric".ljust(28) + "Current".rjust(16) + "Peak".rjust(16) + "  |"]
    for name, cur, peak in rows:
        lines.append("|" + f" {name}".ljust(28) + f"{cur / mib:,.1f} MiB".rjust(16)
                     + f"{peak / mib:,.1f} MiB".rjust(16) + "  |")
    lines.append("|" + f" Device free / total".ljust(28) + f"{free / mib:,.0f} MiB".rjust(16)
                 + f"{total / mib:,.0f} MiB".rjust(16) + "  |")
    lines.append("|" + "=" * 62 + "|")
    return "\n".join(lines)
