"""CUDA memory statistics, read from CuPy's memory pool, and a recoverable OOM error.

ember installs a thin allocator over CuPy's default pool that counts allocated bytes and
their peak (CuPy's pool has no peak statistic); reserved bytes are the pool's total.
"""
from __future__ import annotations

from typing import Any


class OutOfMemoryError(RuntimeError):
    """Raised when the GPU runs out of memory; the process can free tensors and continue."""


class _Tracker:
    def __init__(self) -> None:
        self.installed = False
        self.peak = 0
        self.peak_reserved = 0

    def install(self) -> None:
        if self.installed:
            return
        import cupy as cp
        pool = cp.get_default_memory_pool()

        def malloc(size: int) -> Any:
            mem = pool.malloc(size)
            used = pool.used_bytes()
            if used > self.peak:
                self.peak = used
            total = pool.total_bytes()
            if total > self.peak_reserved:
                self.peak_reserved = total
            return mem

        cp.cuda.set_allocator(malloc)
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
    """Peak of :func:`memory_allocated` since start or the last reset."""
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
    _tracker.peak = memory_allocated()
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
