"""``add`` of two tensors that share a permuted dense layout (channels-last activations).

CuPy walks operands in logical order, so adding two channels-last tensors reads both with
a stride of C elements between neighbouring threads and writes a C-ordered result, which the
next op must transpose back. When both operands have one shape, dtype and dense layout,
the sum runs over their memory order (CuPy's own contiguous add) and the result keeps that
layout, as torch's. Everything else (broadcasting, ``alpha``, mixed layouts, C-contiguous
operands, which CuPy already handles well) returns ``NotImplemented``.
"""
from __future__ import annotations

from ember.backend.cuda_ops import _layout as L


class AddImpl:
    """``add(input, other, alpha=1)`` for operands of one shape, dtype and dense layout."""

    def forward(ctx, xp, input, other, alpha):
        if alpha != 1 or not isinstance(input, xp.ndarray) or not isinstance(other, xp.ndarray) \
                or input.dtype != other.dtype or input.shape != other.shape \
                or input.flags.c_contiguous:
            return NotImplemented
        order = L.same_layout(input, other)
        if order is None:
            return NotImplemented
        out = L.empty_like(xp, input, order=order)
        xp.add(input.transpose(order), other.transpose(order), out=out.transpose(order))
        ctx.alpha = 1
        return out

    def backward(ctx, grad):
        return grad, grad, None


IMPLS = {"add": AddImpl}
