"""Fused embedding backward (``embedding_dense_backward``): an atomic scatter-add kernel.

Each ``(index, column)`` of the output gradient is added with ``atomicAdd`` into an fp32
weight gradient (rows at ``padding_idx`` skipped), which is then rounded once to the
gradient's dtype. fp32 accumulation keeps repeated bf16 rows from losing low bits; the
summation order of repeated indices is not fixed, so results may differ in the last fp32
bit from run to run (torch's sort-based CUDA kernel is deterministic; ember's generic CuPy
code uses atomics too).

Covered: float32/bfloat16/float16 gradients, int64/int32 indices, ``padding_idx``;
``scale_grad_by_freq`` falls back to the generic code.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ember.backend.cuda import stream_capturing
from ember.backend.cuda_ops import _nvrtc as K
from ember.backend.cuda_ops._device_flag import NO_BAD, DeviceFlag

_SRC = r"""
// block (32, 8): threadIdx.x walks the columns of row blockIdx.x * 8 + threadIdx.y
template <typename T, typename I>
__global__ void emb_bwd(const T* __restrict__ g, const I* __restrict__ idx,
                        float* __restrict__ out, long long n, int D, long long pad) {
    long long k = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (k >= n) return;
    long long r = (long long)idx[k];
    if (r == pad) return;
    const T* gr = g + k * D;
    float* orow = out + r * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) atomicAdd(orow + d, ld(gr, d));
}
"""

_CHECK_SRC = r"""
// Index check on the device (while a CUDA graph is captured the host cannot read indices):
// an index outside [0, num) is recorded in *flag, and its output row (if given) is set to
// NaN so that a loss computed from it shows the error at once.
template <typename I, typename T>
__global__ void idx_check(const I* __restrict__ idx, long long n, long long num,
                          long long* __restrict__ flag, T* __restrict__ out, int D) {
    long long k = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (k >= n) return;
    long long r = (long long)idx[k];
    if (r >= 0 && r < num) return;
    if (threadIdx.x == 0) atomicExch((unsigned long long*)flag, (unsigned long long)r);
    if (!out) return;
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        st(out, k * D + d, __int_as_float(0x7fc00000));
}
"""

K.define("embedding", _SRC, ("emb_bwd",))
K.define("embedding_check", _CHECK_SRC, ("idx_check",))   # templated on (index, row type)


_FLAGS: dict = {}   # device -> DeviceFlag: the last bad index the device check saw
_ARMED = [False]    # whether any device check ran (else nothing to read back)


def check_range_on_device(xp: Any, indices: Any, num: int, out: Any = None) -> None:
    """Check ``0 <= indices < num`` without reading the indices on the host (not allowed
    while a CUDA graph is captured; with a busy GPU it would stall the host until the queue
    drains, and with it the overlap of host and GPU). A bad index is recorded on the device
    and its row of ``out`` (the gathered rows, when given) becomes NaN; :func:`raise_checked`
    (an idle GPU) or :func:`raise_recorded` (at the next embedding call or
    ``ember.cuda.synchronize()``) raises the IndexError. Nothing stops the GPU: a trap,
    torch's device-side assert, would end the whole CUDA context."""
    it = K.INDEX_CTYPES.get(K.dtype_name(indices.dtype))
    n = indices.size
    if it is None or n == 0:
        return
    dev = xp.cuda.runtime.getDevice()
    flag = _FLAGS.get(dev)
    stream = xp.cuda.get_current_stream()
    capturing = stream_capturing(stream)
    if flag is None and not capturing:
        flag = _FLAGS[dev] = DeviceFlag(xp)
    if flag is None:
        raise RuntimeError("[embedding] the first embedding call on a device happened during "
                           "CUDA graph capture; run the captured code once before capturing")
    _ARMED[0] = True
    idx = K.contiguous(xp, indices)
    ot = K.ctype(out) if out is not None and out.flags.c_contiguous else None
    d = out.size // n if ot is not None else 0
    K.function("embedding_check", "idx_check", f"{it}, {ot or 'float'}")(
        ((n + 7) // 8, 1, 1), (32, 8, 1),
        (idx, K.i64(n), K.i64(num), flag.dev, out if ot is not None else np.uint64(0),
         K.i32(d)))
    if not capturing:
        flag.start_copy(stream)   # eager: the next call can read this check's result


def raise_recorded(xp: Any, wait: bool = False) -> None:
    """Raise the IndexError for a bad index a device check recorded (an eager embedding call
    runs this first; it also creates the device's record, outside any capture). The record
    is read through an asynchronous copy: a finished copy is examined and a new one started,
    so the host never waits for the GPU unless ``wait`` (``ember.cuda.synchronize``)."""
    dev = xp.cuda.runtime.getDevice()
    flag = _FLAGS.get(dev)
    if flag is None:
        _FLAGS[dev] = DeviceFlag(xp)
        return
    if not _ARMED[0]:
        return
    stream = xp.cuda.get_current_stream()
    if stream_capturing(stream):
        v = flag.take(False)   # a copy that finished before the capture; never start one
    elif wait or stream.done:
        # an idle stream: a fresh copy is all there is to wait for (microseconds). A copy
        # still pending may predate a graph replay's check (replays start none), so a bad
        # index recorded by a replay raises at this call, not at a later one
        flag.start_copy(stream)
        v = flag.take(True)
    else:
        if flag.event is None:   # a busy stream: start a copy, read it at a later call
            flag.start_copy(stream)
        v = flag.take(False)
    _raise(v)


def raise_checked(xp: Any) -> None:
    """Raise the IndexError for a bad index the device check just queued recorded, waiting
    for the record's copy that check started (the GPU was idle: a single round trip)."""
    flag = _FLAGS.get(xp.cuda.runtime.getDevice())
    if flag is None:   # no check ran (no indices) and none before
        return
    if flag.event is None:   # no indices: read what earlier checks recorded
        flag.start_copy(xp.cuda.get_current_stream())
    _raise(flag.take(True))


def _raise(v: int) -> None:
    if v != NO_BAD:
        raise IndexError(f"[embedding] index out of range in self: index {v} (checked on the "
                         f"GPU: its output rows were set to NaN)")


def raise_pending() -> None:
    """``ember.cuda.synchronize``'s check: raise a bad index any device check recorded."""
    if _ARMED[0]:
        import cupy  # noqa: PLC0415 - only reached with CUDA in use
        raise_recorded(cupy, wait=True)


def _dense_backward_generic(ctx: Any, grad: Any) -> Any:
    from ember.ops.registry import OPS
    return OPS["embedding_dense_backward"].backward(ctx, grad)


class EmbeddingDenseBackwardImpl:
    """``embedding_dense_backward(grad_output, indices, num_weights, padding_idx, False)``."""

    def forward(ctx, xp, grad_output, indices, num_weights, padding_idx, scale_grad_by_freq):
        ct = K.ctype(grad_output)
        it = K.INDEX_CTYPES.get(K.dtype_name(indices.dtype))
        if ct is None or it is None or scale_grad_by_freq or grad_output.ndim == 0:
            return NotImplemented
        d = grad_output.shape[-1]
        n = indices.size
        g = K.contiguous(xp, grad_output)
        idx = K.contiguous(xp, indices)
        acc = xp.zeros((num_weights, d), xp.float32)
        if n and d:
            K.function("embedding", "emb_bwd", f"{ct}, {it}")(
                ((n + 7) // 8, 1, 1), (32, 8, 1),
                (g, idx, acc, K.i64(n), K.i32(d), K.i64(padding_idx if padding_idx >= 0 else -1)))
        if K.recording(ctx):
            # the generic backward's layout: a per-index 0/1 factor when padding_idx is set
            flat = indices.reshape(-1)
            ctx.scale = None if padding_idx < 0 else \
                (flat != padding_idx).astype(grad_output.dtype)
            ctx.save(indices)
        return acc if acc.dtype == grad_output.dtype else acc.astype(grad_output.dtype)

    # Its own backward (a gather) is the generic one: it only runs for double backward.
    backward = _dense_backward_generic


IMPLS = {"embedding_dense_backward": EmbeddingDenseBackwardImpl}
