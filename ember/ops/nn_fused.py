"""Fused ReLU tails of a ResNet block: ``relu(batch_norm(x))`` and ``relu(a + b)`` as one op each.

``ember.vision``'s ResNet blocks run ``bn -> relu`` and ``out + identity -> relu`` through
these ops when the modules carry no hooks and the input is on the GPU
(``ember/nn/modules/fused.py``): on CUDA the ReLU happens inside the batch-norm kernels
(forward, and its mask in the backward kernels) and the residual add and ReLU are one
kernel, which saves a dispatch, a kernel and a pass over the activations each way, and an
autograd node. Here are the generic versions (any device and float dtype): the same steps
as the separate ops, and the reference the tests compare against torch's two-op results.
The ReLU's gradient is torch's ``threshold_backward`` on the output: zero where the output
is ``<= 0`` (NaN outputs too), the incoming gradient elsewhere.
"""
from __future__ import annotations

from typing import Any

from ember.ops import meta as M
from ember.ops.elementwise import _relu
from ember.ops.nn_norm import BatchNorm, _bn_meta
from ember.ops.registry import OpDef, register


def _masked(grad: Any, y: Any) -> Any:
    """``grad`` where the ReLU output ``y`` is positive, else 0 (differentiable in grad)."""
    return grad.masked_fill(~(y > 0), 0)


@register("_batch_norm_relu", meta=_bn_meta, method=False, function=False,
          nondiff_outputs=(1, 2))
class BatchNormRelu(OpDef):
    """``relu`` of ``_batch_norm``'s output; returns (y, batch mean, biased batch var) like it.

    Shape:
        - input: ``(N, C, *)``; weight, bias, running_mean, running_var: ``(C,)`` or None.
        - Output: ``(N, C, *)``, and two ``(C,)`` statistics.
    """

    def forward(ctx, xp, input, weight, bias, running_mean, running_var, training, eps):
        h, mean, var = BatchNorm.forward(ctx, xp, input, weight, bias, running_mean,
                                         running_var, training, eps)
        y = _relu(xp, h)
        # batch norm's saved values, then the output for the mask (no graph: nothing saved)
        ctx.save(*getattr(ctx, "_raw", ()), y)
        return y, mean, var

    def backward(ctx, g, _gm=None, _gv=None):
        if g is None:
            return (None,) * 7
        return BatchNorm.backward(ctx, _masked(g, ctx.saved[4]))


@register("_add_relu", meta=M.elementwise, promote="default", promote_args=(0, 1),
          method=False, sig="input, other")
class AddRelu(OpDef):
    """``relu(input + other)``, with broadcasting and torch's type promotion.

    Shape:
        - input, other: broadcastable. Output: their broadcast shape.
    """

    def forward(ctx, xp, input, other):
        y = _relu(xp, xp.add(input, other))
        ctx.save(y)
        return y

    def backward(ctx, grad):
        (y,) = ctx.saved
        g = _masked(grad, y)
        return g, g
