"""``linear`` (the fused ``linear`` primitive of ember/ops/blas.py) and ``bilinear`` (einsum)."""
from __future__ import annotations


import ember
from ember.errors import make
from ember.tensor import Tensor
from ember.amp.autocast_mode import composite as _autocast_composite

__all__ = ["linear", "bilinear"]

_linear_op = ember.ops.OPS["linear"].function


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``y = x W^T + b``.

    Args:
        input: ``(*, in_features)``.
        weight: ``(out_features, in_features)`` (or ``(in_features,)`` for a vector output).
        bias: ``(out_features,)`` or None.

    Shape:
        - Output: ``(*, out_features)``.

    Example::

        >>> F.linear(ember.randn(2, 3), ember.randn(4, 3)).shape
        ember.Size([2, 4])
    """
    # One registered primitive (ember.ops.blas.Linear): one graph node, one GEMM.
    return _linear_op(input, weight, bias)


@_autocast_composite("bilinear")
def bilinear(input1: Tensor, input2: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``y = x1^T A x2 + b`` for each output feature.

    Args:
        input1: ``(*, in1_features)``.
        input2: ``(*, in2_features)`` (same leading dims).
        weight: ``(out_features, in1_features, in2_features)``.
        bias: ``(out_features,)`` or None.

    Shape:
        - Output: ``(*, out_features)``.
    """
    if weight.dim() != 3:
        raise make(RuntimeError, "bilinear", f"weight must be 3-D, got shape "
                                             f"{tuple(weight.shape)}")
    if input1.shape[:-1] != input2.shape[:-1]:
        raise make(RuntimeError, "bilinear",
                   f"input1 and input2 must have the same size except the last dimension, got "
                   f"{tuple(input1.shape)} and {tuple(input2.shape)}")
    if input1.shape[-1] != weight.shape[1] or input2.shape[-1] != weight.shape[2]:
        raise make(RuntimeError, "bilinear",
                   f"input sizes {input1.shape[-1]} and {input2.shape[-1]} do not match weight "
                   f"{tuple(weight.shape)} (out, in1, in2)")
    out = ember.einsum("...i,oij,...j->...o", input1, weight, input2)
    if bias is not None:
        out = out + bias
    return out
