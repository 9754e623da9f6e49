"""A per-device int64 "bad value" record that kernels write and the host reads without waiting.

cross_entropy's target check and embedding's index check must not synchronise (the host
would stall behind the queue, and nothing may read back during CUDA graph capture), so a
kernel that meets a bad value writes it to the device record and carries on. The host copies
the record to a pinned word behind the stream's work and looks at the copy once its event has
completed; the IndexError comes from a later call, as torch's device-side assert is
asynchronous too. Nothing traps: a trap would end the whole CUDA context.

A record made with ``mirror=True`` also has a host-mapped word the kernels themselves write
(cross_entropy's one-block reduction copies a bad value there with a plain store): the host
reads it with no copy, event or CUDA call at all (four driver calls less per loss call).
Pinned memory from ``cudaHostAlloc`` is mapped under unified addressing; its device address
comes from ``cudaPointerGetAttributes`` (CuPy's runtime module has no
``cudaHostGetDevicePointer``). Should the driver not map it, the copy path above serves.
"""
from __future__ import annotations

from typing import Any

import numpy as np

NO_BAD = -(1 << 63)   # the record's value while no bad value was seen


class DeviceFlag:
    """One device's record: ``dev`` (the int64 the kernels write), ``host`` (its pinned copy)
    and ``event`` (recorded after the copy in flight; None when no copy is pending)."""

    __slots__ = ("dev", "host", "event", "_event", "mirror")

    def __init__(self, xp: Any, mirror: bool = False) -> None:
        self.dev = xp.full((), NO_BAD, xp.int64)
        mem = xp.cuda.alloc_pinned_memory(8)
        self.host = np.frombuffer(mem, np.int64, 1)
        self.host[0] = NO_BAD
        self._event = xp.cuda.Event(disable_timing=True)   # reused: one copy at a time counts
        self.event = None
        # the host word's device address for kernels that store into it (None: copy path)
        self.mirror: Any = None
        if mirror:
            self.mirror = _mapped_address(xp, mem.ptr)

    def take_mirror(self, xp: Any) -> int:
        """The bad value a kernel stored in the host word (then both records reset, after
        the device's queued work: no kernel in flight may store it again), else ``NO_BAD``."""
        v = int(self.host[0])
        if v != NO_BAD:
            xp.cuda.Device().synchronize()   # the error path only
            self.reset()
        return v

    def start_copy(self, stream: Any) -> None:
        """Copy the record to the pinned word behind ``stream``'s work (re-recording the event
        replaces a copy in flight: the record only gains bad values until it is reset)."""
        self.dev.data.copy_to_host_async(self.host.ctypes.data, 8, stream)
        self._event.record(stream)
        self.event = self._event

    def take(self, wait: bool = False) -> int:
        """The bad value a finished copy saw (and the record reset), else ``NO_BAD``: also
        while the copy is still in flight, unless ``wait``."""
        ev = self.event
        if ev is None:
            return NO_BAD
        if wait:
            ev.synchronize()
        elif not ev.done:
            return NO_BAD
        self.event = None
        v = int(self.host[0])
        if v != NO_BAD:
            self.reset()
        return v

    def reset(self) -> None:
        """Forget any recorded value (queued on the current stream) and any pending copy."""
        self.dev.fill(NO_BAD)
        self.host[0] = NO_BAD
        self.event = None


def _mapped_address(xp: Any, host_ptr: int) -> Any:
    """The device address of pinned host memory at ``host_ptr`` (a NumPy uint64 for kernel
    arguments), or None when the driver reports it unmapped or the query fails."""
    try:
        attrs = xp.cuda.runtime.pointerGetAttributes(host_ptr)
        dev_ptr = int(attrs.devicePointer)
    except Exception:  # noqa: BLE001 - no attributes: the copy path
        return None
    return np.uint64(dev_ptr) if dev_ptr else None
