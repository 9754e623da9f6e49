"""Host-to-device copies that never stall the host behind queued GPU work.

``cudaMemcpyAsync`` from pageable host memory first waits for the stream to drain: an
optimizer's small pointer table uploaded that way made the host wait for the whole backward
to finish, and the GPU then sat idle while the host prepared the next launches (1.4 ms a
GPT-2 step on an H200). Staging through pinned memory keeps the copy asynchronous. A staging
buffer stays referenced until an event recorded after its copy has completed, since CuPy's
pinned pool would otherwise hand it out again while the copy is still pending.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from ember.backend.cuda import stream_capturing

_IN_FLIGHT: deque = deque()   # (event, pinned block) per staged copy, oldest first
_CAPTURED: list = []          # blocks a captured graph copies from at every replay


def to_device(cp: Any, host: np.ndarray, out: Any = None) -> Any:
    """``host`` copied into ``out`` (a new C-contiguous device array by default) in the
    current stream's order, without waiting for it; returns the device array. Inside a
    graph capture the copy becomes a node of the graph and its source is kept for good."""
    while _IN_FLIGHT and _IN_FLIGHT[0][0].done:
        _IN_FLIGHT.popleft()
    host = np.ascontiguousarray(host)
    if out is None:
        out = cp.empty(host.shape, dtype=host.dtype)
    if host.nbytes == 0:
        return out
    stream = cp.cuda.get_current_stream()
    pinned = cp.cuda.alloc_pinned_memory(host.nbytes)
    np.frombuffer(pinned, dtype=np.uint8, count=host.nbytes)[...] = host.view(np.uint8).ravel()
    rt = cp.cuda.runtime
    rt.memcpyAsync(out.data.ptr, pinned.ptr, host.nbytes, rt.memcpyHostToDevice, stream.ptr)
    if stream_capturing(stream):
        _CAPTURED.append(pinned)   # the graph's copy node reads it again at each replay
        return out
    event = cp.cuda.Event(disable_timing=True)
    event.record(stream)
    _IN_FLIGHT.append((event, pinned))
    return out
