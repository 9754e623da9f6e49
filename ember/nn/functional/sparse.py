"""Functional embedding lookups: ``embedding`` and ``embedding_bag`` (torch.nn.functional's
signatures). The work is done by the ``embedding`` / ``embedding_bag`` primitives in
``ember/ops/nn_embedding.py``; this layer validates arguments the way torch does, normalises
``padding_idx`` and applies ``max_norm`` renormalisation in place under ``no_grad``."""
from __future__ import annotations

import warnings

import ember
from ember import Tensor

__all__ = ["embedding", "embedding_bag"]


def _check_padding_idx(padding_idx: int | None, num: int) -> int:
    """torch's rule: a negative padding_idx counts from the end; None means no padding row."""
    if padding_idx is None:
        return -1
    if padding_idx > 0 and padding_idx >= num:
        raise AssertionError(f"[embedding] Padding_idx must be within num_embeddings: "
                             f"padding_idx {padding_idx}, num_embeddings {num}")
    if padding_idx < 0:
        if padding_idx < -num:
            raise AssertionError(f"[embedding] Padding_idx must be within num_embeddings: "
                                 f"padding_idx {padding_idx}, num_embeddings {num}")
        padding_idx = num + padding_idx
    return padding_idx


def embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None,
              max_norm: float | None = None, norm_type: float = 2.0,
              scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    """Look up rows of ``weight`` at the integer ``input``.

    Args:
        input: LongTensor (or IntTensor) of indices, any shape.
        weight: ``(num_embeddings, embedding_dim)``.
        padding_idx: this row gets no gradient (negative counts from the end).
        max_norm: rows looked up whose ``norm_type``-norm exceeds it are rescaled in place.
        scale_grad_by_freq: divide each row's gradient by how often it occurs in ``input``.
        sparse: accepted for compatibility; ember's gradient is always dense (SGD, Adam ...
            all take it), where torch would return a sparse tensor.

    Shape:
        ``input.shape + (embedding_dim,)``.

    Example::

        >>> w = ember.randn(10, 3)
        >>> F.embedding(ember.tensor([[1, 2], [4, 9]]), w).shape
        ember.Size([2, 2, 3])
    """
    if not isinstance(weight, Tensor):
        raise TypeError(f"[embedding] argument 'weight' must be Tensor, not "
                        f"{type(weight).__name__}")
    if weight.dim() != 2:
        raise RuntimeError(f"[embedding] 'weight' must be 2-D, got weight of shape "
                           f"{tuple(weight.shape)}")
    padding_idx = _check_padding_idx(padding_idx, weight.shape[0])
    if max_norm is not None:
        input = input.contiguous()
        with ember.no_grad():
            ember.embedding_renorm_(weight, input, max_norm, norm_type)
    return ember.embedding(weight, input, padding_idx, scale_grad_by_freq, sparse)


def embedding_bag(input: Tensor, weight: Tensor, offsets: Tensor | None = None,
                  max_norm: float | None = None, norm_type: float = 2,
                  scale_grad_by_freq: bool = False, mode: str = "mean", sparse: bool = False,
                  per_sample_weights: Tensor | None = None, include_last_offset: bool = False,
                  padding_idx: int | None = None) -> Tensor:
    """Sums, means or maxima of bags of embeddings, without materialising the lookups.

    Args:
        input: 1-D indices split into bags by ``offsets``, or 2-D ``(B, N)`` (fixed-length
            bags, ``offsets`` must be None).
        weight: ``(num_embeddings, embedding_dim)``.
        offsets: 1-D start index of each bag in ``input``.
        mode: ``"sum"``, ``"mean"`` or ``"max"``.
        per_sample_weights: weights of each index (``mode="sum"`` only), shape of ``input``.
        include_last_offset: ``offsets`` has one extra element (the end), as in CSR layout.
        padding_idx: entries equal to it are skipped (and do not count towards a mean).

    Returns:
        ``(B, embedding_dim)``; an empty bag gives zeros.

    Note:
        With ``scale_grad_by_freq`` ember divides each gradient row by the true frequency of
        its index in ``input``, as ``embedding`` does; torch's embedding_bag kernel miscounts
        some indices.
    """
    if weight.dtype == ember.long and input.is_floating_point():
        warnings.warn("Argument order of nn.functional.embedding_bag was changed. Usage "
                      "`embedding_bag(weight, input, ...)` is deprecated, and should now be "
                      "`embedding_bag(input, weight, ...)`.", stacklevel=2)
        weight, input = input, weight
    if per_sample_weights is not None and tuple(input.shape) != tuple(per_sample_weights.shape):
        raise ValueError(f"[embedding_bag] If per_sample_weights "
                         f"({tuple(per_sample_weights.shape)}) is not None, then it must have "
                         f"the same shape as the input ({tuple(input.shape)})")
    if weight.dim() != 2:
        raise ValueError(f"[embedding_bag] weight has to be a 2D Tensor, but got Tensor of "
                         f"dimension {weight.dim()}")
    if input.dim() == 2:
        if offsets is not None:
            raise ValueError("[embedding_bag] if input is 2D, then offsets has to be None, as "
                             "input is treated is a mini-batch of fixed length sequences. "
                             f"However, found offsets of type {type(offsets)}")
        offsets = ember.arange(0, input.numel(), max(input.shape[1], 1), dtype=input.dtype,
                               device=input.device)
        if input.shape[1] == 0:
            offsets = ember.zeros(input.shape[0], dtype=input.dtype, device=input.device)
        include_last_offset = False
        input = input.reshape(-1)
        if per_sample_weights is not None:
            per_sample_weights = per_sample_weights.reshape(-1)
    elif input.dim() == 1:
        if offsets is None:
            raise ValueError("[embedding_bag] offsets has to be a 1D Tensor but got None")
        if offsets.dim() != 1:
            raise ValueError(f"[embedding_bag] offsets has to be a 1D Tensor, got shape "
                             f"{tuple(offsets.shape)}")
    else:
        raise ValueError(f"[embedding_bag] input has to be 1D or 2D Tensor, but got Tensor of "
                         f"dimension {input.dim()}")
    modes = {"sum": 0, "mean": 1, "max": 2}
    if mode not in modes:
        raise ValueError(f"[embedding_bag] mode has to be one of sum, mean or max, got {mode!r}")
    if mode == "max":
        if scale_grad_by_freq:
            raise ValueError("[embedding_bag] max mode does not support scaling the gradient "
                             "by the frequency")
        if sparse:
            raise ValueError("[embedding_bag] max mode does not support sparse weights")
    if max_norm is not None:
        with ember.no_grad():
            ember.embedding_renorm_(weight, input, max_norm, norm_type)
    if per_sample_weights is not None and mode != "sum":
        # torch raises NotImplementedError here too: the weights only make sense for sums
        raise NotImplementedError(
            "[embedding_bag] per_sample_weights was not None. per_sample_weights is only "
            f"supported for mode='sum' (got mode='{mode}').")
    if padding_idx is not None:
        _check_padding_idx(padding_idx, weight.shape[0])
    out = ember.embedding_bag(weight, input, offsets, scale_grad_by_freq, modes[mode], sparse,
                              per_sample_weights, include_last_offset, padding_idx)
    return out[0]
