"""Fused dropout: the mask is a counter-based hash of (seed, element), never stored.

Each thread runs Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
3", SC 2011) on the counter ``(i, 0, 0)`` under a 64-bit key, giving four 32-bit words for
elements ``4i .. 4i+3``; an element is kept when its top 24 bits fall below
``(1 - p) * 2^24``. Forward writes ``x * keep / (1 - p)``; backward regenerates the same mask
from the key and writes ``g * keep / (1 - p)``: no mask tensor is saved (0 bytes instead of 1
or 4 per element), and backward reads only the gradient.

The key comes from the device's default CUDA generator, the same (seed, offset) stream
``ember.empty(...).bernoulli_`` draws from in the generic dropout: one draw advances the
offset by one, so ``ember.manual_seed`` / ``ember.cuda.manual_seed`` make masks
reproducible, ``get_rng_state``/``set_rng_state`` replay them (activation checkpointing),
and the fused and generic paths consume the stream alike. The masks themselves differ from
the generic path's (a different sampler), as torch's do between devices.

``nn.functional.dropout`` calls :func:`fused_dropout` for CUDA tensors (element-wise
dropout only; the channel-wise variants keep the generic code).
"""
from __future__ import annotations

from typing import Any

from ember.backend.cuda_ops import _nvrtc as K

_SRC = r"""
__device__ __forceinline__ void philox(unsigned int c[4], unsigned int k0, unsigned int k1) {
    for (int r = 0; r < 10; ++r) {
        unsigned int hi0 = __umulhi(0xD2511F53u, c[0]), lo0 = 0xD2511F53u * c[0];
        unsigned int hi1 = __umulhi(0xCD9E8D57u, c[2]), lo1 = 0xCD9E8D57u * c[2];
        unsigned int n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

// vec: x and y are aligned for 4-element vector access (the last partial quad is scalar).
template <typename T>
__global__ void dropout_apply(const T* __restrict__ x, T* __restrict__ y, long long n,
                              unsigned int k0, unsigned int k1, unsigned int thresh,
                              float scale, int vec) {
    long long quads = (n + 3) / 4;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < quads;
         q += stride) {
        unsigned int c[4] = {(unsigned int)q, (unsigned int)(q >> 32), 0u, 0u};
        philox(c, k0, k1);
        long long e0 = q * 4;
        if (vec && e0 + 4 <= n) {
            float v[4];
            ld4(x + e0, v);
#pragma unroll
            for (int j = 0; j < 4; ++j) v[j] = (c[j] >> 8) < thresh ? v[j] * scale : 0.f;
            st4(y + e0, v);
        } else {
            for (int j = 0; j < 4; ++j) {
                long long e = e0 + j;
                if (e < n) st(y, e, (c[j] >> 8) < thresh ? ld(x, e) * scale : 0.f);
            }
        }
    }
}
"""

K.define("dropout", _SRC, ("dropout_apply",))

_MASK64 = 0xFFFF_FFFF_FFFF_FFFF


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def next_key(device: Any) -> int:
    """A 64-bit key from the device's default CUDA generator, advancing it by one draw
    (exactly as one generic ``bernoulli_`` draw does)."""
    from ember import random as R
    idx = device.index or 0
    g = R._cuda_generators.get(idx)
    if g is None:  # created and seeded exactly as the generic draw would create it
        g = R._cuda_generators[idx] = R.Generator(R.device("cuda", idx))
        g.manual_seed(R.default_generator.initial_seed())
    rng = g._rng()
    seed, offset = rng.seed_, rng.offset
    rng.offset += 1
    return _splitmix64(_splitmix64(seed) ^ offset)


def enabled() -> bool:
    """Whether ember's CUDA implementations are installed (``EMBER_CUDA_IMPLS=0`` or
    ``cuda_ops.uninstall()`` turn the fused dropout off with the rest)."""
    from ember.backend import cuda_ops
    return bool(cuda_ops._installed and cuda_ops._installed[0])


def _launch(xp: Any, src: Any, key: int, p: float) -> Any:
    out = xp.empty_like(src)
    n = src.size
    if n:
        thresh = min(1 << 24, int(round((1.0 - p) * (1 << 24))))
        grid, block = K.flat_grid((n + 3) // 4, 256)
        K.function("dropout", "dropout_apply", K.ctype(src))(
            grid, block, (src, out, K.i64(n), xp.uint32(key & 0xFFFFFFFF),
                          xp.uint32(key >> 32), xp.uint32(thresh), K.f32(1.0 / (1.0 - p)),
                          K.aligned(src, out)))
    return out


def _function() -> Any:
    from ember.autograd.function import Function

    class FusedDropout(Function):
        """``x * mask / (1 - p)`` with the mask hashed from a key (see the module doc)."""

        @staticmethod
        def forward(ctx: Any, input: Any, p: float) -> Any:
            import cupy as xp  # noqa: PLC0415 - only reached on the GPU
            key = next_key(input.device)
            ctx.key, ctx.p = key, p
            return K.wrap(_launch(xp, K.contiguous(xp, input._data), key, p), input.device)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            import cupy as xp  # noqa: PLC0415
            import ember
            if ember.is_grad_enabled():
                # double backward: the gradient is linear in grad, with the same mask
                ones = xp.ones(grad.shape, grad._data.dtype)
                return grad * K.wrap(_launch(xp, ones, ctx.key, ctx.p), grad.device), None
            g = K.contiguous(xp, grad._data)
            return K.wrap(_launch(xp, g, ctx.key, ctx.p), grad.device), None

    return FusedDropout


_FN: list = []


def fused_dropout(input: Any, p: float) -> Any:
    """``F.dropout(input, p, training=True)`` for a CUDA tensor, or ``NotImplemented`` when
    the fused kernel does not apply (dtype, ``0 < p < 1`` not met, implementations off)."""
    if not (0.0 < p < 1.0) or K.ctype(input._data) is None or not enabled():
        return NotImplemented
    if not _FN:
        _FN.append(_function())
    return _FN[0].apply(input, p)


IMPLS: dict = {}  # not a registered op: nn.functional.dropout calls fused_dropout
