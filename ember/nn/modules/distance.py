"""``PairwiseDistance`` and ``CosineSimilarity``."""
from __future__ import annotations

from ember.nn import functional as F
from ember.nn.modules.module import Module
from ember.tensor import Tensor

__all__ = ["PairwiseDistance", "CosineSimilarity"]


class PairwiseDistance(Module):
    """``||x1 - x2 + eps||_p`` along the last dim.

    Args:
        p: the norm degree. Default: 2.
        eps: added to the difference to avoid division by zero. Default: 1e-6.
        keepdim: keep the reduced dim. Default: ``False``.

    Shape:
        - Input1, Input2: ``(N, D)`` or ``(D)``; Output: ``(N)`` or ``()``.

    Example::

        >>> nn.PairwiseDistance()(ember.zeros(2, 3), ember.ones(2, 3)).shape
        ember.Size([2])
    """

    __constants__ = ["norm", "eps", "keepdim"]

    def __init__(self, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False) -> None:
        super().__init__()
        self.norm = p
        self.eps = eps
        self.keepdim = keepdim

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return F.pairwise_distance(x1, x2, self.norm, self.eps, self.keepdim)


class CosineSimilarity(Module):
    """Cosine similarity along ``dim``.

    Args:
        dim: the dim to reduce. Default: 1.
        eps: lower bound of the norms. Default: 1e-8.

    Example::

        >>> nn.CosineSimilarity()(ember.ones(2, 3), ember.ones(2, 3))
        tensor([1.0000, 1.0000])
    """

    __constants__ = ["dim", "eps"]

    def __init__(self, dim: int = 1, eps: float = 1e-8) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return F.cosine_similarity(x1, x2, self.dim, self.eps)
