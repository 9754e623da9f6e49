"""``_linear_activation``: a Linear layer and the activation after it, as one op.

``nn.Sequential`` runs a ``Linear`` followed by ``ReLU`` or ``GELU(approximate='tanh')``
through this op when the input is on the GPU and neither module has hooks, and a
``Linear`` followed by ``ReLU`` on the CPU (``ember/nn/modules/container.py``): on CUDA the
activation becomes the GEMM's cuBLASLt epilogue where that pays (``RELU_BIAS``; the tanh
GELU as ``GELU_BIAS`` only under no_grad; ``backend/cuda_ops/nvmath_linear.py``), which
saves a kernel, a pass over the activations and a dispatch each way. Here is the generic
version (any device and float dtype, the decomposition the tests compare against): the
product, the bias and the activation (Linear's and GELU's own code), with its gradient
through the same steps. On the CPU the bias add and the ReLU are one numba pass over the
product, and the backward's ReLU mask and bias gradient another
(``backend/cpu_linear_kernels``; the same bits as the two modules run apart).
"""
from __future__ import annotations

from typing import Any

from ember.errors import make
from ember.ops.blas import _linear_meta, linear_arrays, linear_grads, relu_linear_grads
from ember.ops.nn_activation import gelu_tanh, gelu_tanh_derivative
from ember._state import _State
from ember.ops.registry import OpDef, register
from ember.tensor import Tensor

ACTIVATIONS = ("relu", "gelu_tanh")


def _meta(op: Any, input: Any, weight: Any, bias: Any, activation: str) -> Any:
    if activation not in ACTIVATIONS:
        raise make(ValueError, "_linear_activation",
                   f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not isinstance(weight, Tensor) or weight._data.ndim != 2:
        raise make(RuntimeError, "_linear_activation",
                   "weight must be a 2-D Tensor (out_features, in_features)")
    return _linear_meta(op, input, weight, bias)


@register("_linear_activation", meta=_meta, method=False,
          sig="input, weight, bias=None, activation='relu'")
class LinearActivation(OpDef):
    """``act(input @ weight.T + bias)`` with ``act`` ``'relu'`` or ``'gelu_tanh'``
    (torch's ``gelu(approximate='tanh')``).

    Shape:
        - input: ``(*, in_features)``; weight: ``(out_features, in_features)``;
          bias: ``(out_features)`` or None.
        - Output: ``(*, out_features)``.
    """

    def forward(ctx, xp, input, weight, bias, activation):
        if activation == "relu":
            y = linear_arrays(xp, input, weight, bias, relu=True)
            ctx.save(input, weight, y, None)
        else:
            h = linear_arrays(xp, input, weight, bias)
            y = gelu_tanh(xp, h.astype(xp.float32) if h.dtype.itemsize < 4 else h)
            y = y.astype(h.dtype, copy=False)
            ctx.save(input, weight, h, bias)
        ctx.activation = activation
        ctx.has_bias = bias is not None
        ctx.w_ndim = 2
        return y

    def backward(ctx, grad):
        x, w, s, b = ctx.saved
        if ctx.activation == "relu":
            res = relu_linear_grads(ctx, grad, s, x, w)   # CPU arrays: one mask pass
            if res is not None:
                return res + (None,)
            gh = grad.masked_fill(s <= 0, 0)   # s: the output (torch's threshold_backward)
        else:                                  # s: the pre-activation, in float32 math
            if _State.enabled:   # create_graph: h as a function of the inputs, not a constant
                s = x.reshape(-1, x.shape[-1]).matmul(w.t()).reshape(grad.shape)
                if b is not None:
                    s = s + b
            h = s.float() if s.element_size() < 4 else s
            gh = (grad * gelu_tanh_derivative(h)).to(grad.dtype)
        return linear_grads(ctx, gh, x, w) + (None,)
