"""``LinearCrossEntropyLoss`` and ``LinearCrossEntropyOptions``: a linear projection fused with
cross entropy, optionally chunked over the batch so the ``(N, C)`` logits are never held in
full (large-vocabulary heads)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import ember
from ember.nn.modules.linear import Linear
from ember.nn.modules.module import Module
from ember.tensor import Tensor

__all__ = ["LinearCrossEntropyLoss", "LinearCrossEntropyOptions"]


@dataclasses.dataclass(slots=True, frozen=True)
class LinearCrossEntropyOptions:
    """Configuration of the chunked path of :func:`~ember.nn.functional.linear_cross_entropy`.

    Args:
        allow_retain_graph: allow a second backward through the chunked scalar reductions.
        batch_chunk_size: rows per chunk (None: decided by ``chunking_method``).
        chunking_method: ``'auto'``, ``'aspect_ratio'`` or ``'aspect_ratio:N'`` (chunks whose
            logits are about the input's size, divided by N), or None to use
            ``batch_chunk_size``.
        acc_policy: ``'auto'``, ``'accurate'``, ``'balanced'`` or ``'compact'``; ember
            accumulates in ``acc_dtype`` for every policy (the policies differ in torch's
            scratch-buffer use, which NumPy/CuPy GEMMs do not need).
        acc_dtype: accumulation dtype (default float32 for half inputs).
    """

    allow_retain_graph: bool = False
    batch_chunk_size: int | None = None
    chunking_method: str | None = "auto"
    acc_policy: str = "auto"
    acc_dtype: Any = None

    def __post_init__(self) -> None:
        if self.acc_policy not in {"auto", "accurate", "balanced", "compact"}:
            raise ValueError(f"invalid acc_policy: {self.acc_policy!r}")
        if self.chunking_method is not None and self.chunking_method != "auto":
            name, sep, factor = self.chunking_method.partition(":")
            if not sep:
                factor = "1"
            if not (name == "aspect_ratio" and factor.isdigit() and int(factor) > 0):
                raise ValueError(f"invalid chunking_method: {self.chunking_method!r}")
        if not (self.batch_chunk_size is None
                or (isinstance(self.batch_chunk_size, int) and self.batch_chunk_size > 0)):
            raise ValueError(f"batch_chunk_size must be positive int or None, got "
                             f"{self.batch_chunk_size!r}")
        if self.acc_dtype is not None and self.acc_dtype not in (
                ember.float16, ember.bfloat16, ember.float32, ember.float64):
            raise ValueError(f"acc_dtype must be one of {{None, torch.float16, torch.bfloat16, "
                             f"torch.float32, torch.float64}}, got {self.acc_dtype!r}. Pass "
                             "acc_dtype=None to let the op pick automatically.")

    def chunk_size(self, num_batches: int, in_features: int, num_classes: int) -> int:
        """Rows per chunk for this problem size."""
        if self.batch_chunk_size is not None:
            return self.batch_chunk_size
        method = "aspect_ratio:2" if self.chunking_method in (None, "auto") \
            else self.chunking_method
        name, sep, factor = method.partition(":")
        div = int(factor) if sep else 1
        ratio = -(-num_classes // max(in_features, 1))
        rows = -(-num_batches // max(ratio, 1))
        rows = 1 << max(rows - 1, 0).bit_length()  # next power of two
        return max(1, rows // div)


class LinearCrossEntropyLoss(Module):
    """Cross entropy of ``linear(input)`` logits, with the projection owned by the loss.

    Args:
        in_features: size of each input sample.
        num_classes: number of classes ``C``.
        out_features: ``(d1, ..., dK)`` for a K-dimensional loss. Default: ``()``.
        bias: give the projection a bias. Default: ``False``.
        weight: per-class weights ``(C)``.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.
        ignore_index: ignored target value (index targets; None means -100).
        label_smoothing: in ``[0, 1]``. Default: 0.0.
        options: :class:`LinearCrossEntropyOptions` to chunk the batch, or None.

    Example::

        >>> loss = nn.LinearCrossEntropyLoss(5, 10)
        >>> loss(ember.randn(2, 5, requires_grad=True), ember.tensor([1, 7])).backward()
    """

    __constants__ = ["num_classes", "out_features", "reduction", "ignore_index",
                     "label_smoothing"]

    def __init__(self, in_features: int, num_classes: int, *, out_features: tuple = (),
                 bias: bool = False, device: Any = None, dtype: Any = None,
                 reduction: str = "mean", weight: Tensor | None = None,
                 ignore_index: int | None = None, label_smoothing: float = 0.0,
                 options: LinearCrossEntropyOptions | None = None) -> None:
        if weight is not None and tuple(weight.shape) != (num_classes,):
            raise RuntimeError(f"expected weight shape to be {(num_classes,)}, got "
                               f"{tuple(weight.shape)}")
        if label_smoothing < 0 or label_smoothing > 1.0:
            raise RuntimeError(f"expected label_smoothing to be in range [0, 1], got "
                               f"{label_smoothing}")
        super().__init__()
        self.register_buffer("weight", weight)
        self.reduction = reduction
        self.num_classes = num_classes
        self.out_features = out_features
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        # stored flat (Linear weights are 2-D); reshaped to (C, *out_features, D) in forward
        self.linear = Linear(in_features, math.prod(out_features, start=num_classes), bias=bias,
                             device=device, dtype=dtype)
        self.options = options

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        from ember.nn.functional.linear_cross_entropy import linear_cross_entropy
        linear_weight = self.linear.weight.reshape(
            (self.num_classes, *self.out_features, self.linear.in_features))
        linear_bias = (self.linear.bias.reshape((self.num_classes, *self.out_features))
                       if self.linear.bias is not None else None)
        return linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias,
                                    weight=self.weight, reduction=self.reduction,
                                    ignore_index=self.ignore_index,
                                    label_smoothing=self.label_smoothing, options=self.options)

    def extra_repr(self) -> str:
        return (f"in_features={self.linear.in_features},"
                f" num_classes={self.num_classes},"
                f" out_features={self.out_features},"
                f" bias={self.linear.bias is not None},"
                f" reduction={self.reduction},"
                f" ignore_index={self.ignore_index},"
                f" label_smoothing={self.label_smoothing},"
                f" options={self.options}")
