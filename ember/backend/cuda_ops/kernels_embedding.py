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

from ember.backend.cuda_ops import _nvrtc as K

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
// an index outside [0, num) stops the kernel: a device-side assert, as torch's CUDA gather
template <typename I>
__global__ void idx_check(const I* __restrict__ idx, long long n, long long num) {
    long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    long long r = (long long)idx[k];
    if (r < 0 || r >= num) __trap();
}
"""

K.define("embedding", _SRC, ("emb_bwd",))
K.define("embedding_check", _CHECK_SRC, ("idx_check",))   # templated on the index type alone


def check_range_on_device(xp: Any, indices: Any, num: int) -> None:
    """Check ``0 <= indices < num`` without waiting for the GPU (used while a CUDA graph is
    captured, where the host check's device-to-host copy is not allowed). A bad index makes
    the kernel trap: the CUDA context reports a launch failure at the next synchronisation,
    torch's device-side assert in effect."""
    it = K.INDEX_CTYPES.get(indices.dtype.name)
    n = indices.size
    if it is None or n == 0:
        return
    idx = K.contiguous(xp, indices)
    K.function("embedding_check", "idx_check", it)(
        ((n + 255) // 256, 1, 1), (256, 1, 1), (idx, K.i64(n), K.i64(num)))


def _dense_backward_generic(ctx: Any, grad: Any) -> Any:
    from ember.ops.registry import OPS
    return OPS["embedding_dense_backward"].backward(ctx, grad)


class EmbeddingDenseBackwardImpl:
    """``embedding_dense_backward(grad_output, indices, num_weights, padding_idx, False)``."""

    def forward(ctx, xp, grad_output, indices, num_weights, padding_idx, scale_grad_by_freq):
        ct = K.ctype(grad_output)
        it = K.INDEX_CTYPES.get(indices.dtype.name)
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
