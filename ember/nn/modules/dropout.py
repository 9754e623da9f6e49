"""Dropout layers: active in ``train()`` mode, identity in ``eval()``."""
from __future__ import annotations

from ember.nn import functional as F
from ember.nn.modules.module import Module
from ember.tensor import Tensor

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
           "FeatureAlphaDropout"]


class _DropoutNd(Module):
    __constants__ = ["p", "inplace"]

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if p < 0 or p > 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p
        self.inplace = inplace

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Dropout(_DropoutNd):
    """Zero each element with probability ``p`` during training; scale the rest by 1/(1-p).

    Args:
        p: drop probability. Default: 0.5.
        inplace: do the operation in place. Default: ``False``.

    Shape:
        - Input: ``(*)``; Output: ``(*)``, same shape.

    Example::

        >>> m = nn.Dropout(p=0.2)
        >>> m.eval()(ember.ones(3))
        tensor([1., 1., 1.])
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout(input, self.p, self.training, self.inplace)


class Dropout1d(_DropoutNd):
    """Zero whole channels of ``(N, C, L)`` / ``(C, L)`` input during training.

    Args:
        p: drop probability. Default: 0.5.
        inplace: do the operation in place. Default: ``False``.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(_DropoutNd):
    """Zero whole channels of ``(N, C, H, W)`` / ``(C, H, W)`` input during training.

    Args:
        p: drop probability. Default: 0.5.
        inplace: do the operation in place. Default: ``False``.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout2d(input, self.p, self.training, self.inplace)


class Dropout3d(_DropoutNd):
    """Zero whole channels of ``(N, C, D, H, W)`` / ``(C, D, H, W)`` input during training.

    Args:
        p: drop probability. Default: 0.5.
        inplace: do the operation in place. Default: ``False``.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout3d(input, self.p, self.training, self.inplace)


class AlphaDropout(_DropoutNd):
    """Dropout that preserves SELU's self-normalising statistics.

    Args:
        p: drop probability. Default: 0.5.
        inplace: do the operation in place. Default: ``False``.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.alpha_dropout(input, self.p, self.training)


class FeatureAlphaDropout(_DropoutNd):
    """Alpha dropout of whole channels.

    Args:
        p: drop probability. Default: 0.5.
        inplace: do the operation in place. Default: ``False``.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.feature_alpha_dropout(input, self.p, self.training)
