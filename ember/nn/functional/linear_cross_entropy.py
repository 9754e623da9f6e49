"""``linear_cross_entropy``: ``cross_entropy(linear(input, W, b), target)``, with an optional
batch-chunked path (``options``) that never materialises the full ``(N, C)`` logits: forward
keeps only per-row losses, and backward recomputes each chunk's logits to form its
gradients."""
from __future__ import annotations

import warnings
from typing import Any

import ember
from ember.autograd.function import Function, once_differentiable
from ember.errors import make
from ember.nn.functional.linear import linear
from ember.nn.functional.loss import cross_entropy
from ember.tensor import Tensor

__all__ = ["linear_cross_entropy"]


def linear_cross_entropy(input: Tensor, linear_weight: Tensor, target: Tensor, *,
                         linear_bias: Tensor | None = None, weight: Tensor | None = None,
                         reduction: str = "mean", ignore_index: int | None = None,
                         label_smoothing: float = 0.0, options: Any = None) -> Tensor:
    """Cross entropy between ``linear(input, linear_weight, linear_bias)`` and ``target``.

    Args:
        input: ``(N, in_features)`` or ``(in_features)``.
        linear_weight: ``(C, in_features)`` or ``(C, d1, ..., dK, in_features)``.
        target: class indices or class probabilities (see :func:`cross_entropy`).
        linear_bias: ``(C, d1, ..., dK)`` or None.
        weight: per-class weights ``(C)``.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        ignore_index: ignored target value (index targets; None means -100).
        label_smoothing: in ``[0, 1]``.
        options: a :class:`~ember.nn.LinearCrossEntropyOptions` to chunk the batch.

    Example::

        >>> x, w = ember.randn(8, 16), ember.randn(100, 16, requires_grad=True)
        >>> F.linear_cross_entropy(x, w, ember.randint(0, 100, (8,))).backward()
    """
    name = "linear_cross_entropy"
    if input.dim() < 1 or input.dim() > 2:
        raise make(RuntimeError, name, f"expected input with dimensionality 1 or 2, got "
                                       f"{input.dim()}")
    if linear_weight.dim() < 2:
        raise make(RuntimeError, name, f"expected linear_weight with dimensionality at least 2, "
                                       f"got {linear_weight.dim()}")
    num_batches = tuple(input.shape[:-1])
    in_features = input.shape[-1]
    if in_features != linear_weight.shape[-1]:
        raise make(RuntimeError, name, f"expected equal input and linear_weight last dimensions "
                                       f"(in_features), got {input.shape[-1]} and "
                                       f"{linear_weight.shape[-1]}, respectively")
    num_classes = linear_weight.shape[0]
    out_features = tuple(linear_weight.shape[1:-1])
    if linear_bias is not None and tuple(linear_bias.shape) != (num_classes, *out_features):
        raise make(RuntimeError, name, f"expected linear_bias shape "
                                       f"{(num_classes, *out_features)}, got "
                                       f"{tuple(linear_bias.shape)}")
    if out_features and not num_batches:
        raise make(RuntimeError, name,
                   f"K-dimensional loss defined by linear_weight shape "
                   f"{tuple(linear_weight.shape)} requires batched input, (N, {in_features}), "
                   f"got unbatched input with shape {tuple(input.shape)}")
    logits_shape = (*num_batches, num_classes, *out_features)
    probs = tuple(target.shape) == logits_shape
    if probs and ignore_index is not None:
        raise make(RuntimeError, name, "ignore_index cannot be specified when target contains "
                                       "probabilities")
    ignore = ignore_index if ignore_index is not None else -100
    chunkable = (reduction in ("mean", "sum", "none") and label_smoothing == 0.0
                 and target.dtype is ember.int64 and not out_features and not probs)
    if options is not None and not chunkable:
        warnings.warn("linear_cross_entropy: ``options`` ignored; chunked path needs reduction "
                      "in {'mean','sum','none'}, label_smoothing == 0, target.dtype == int64, "
                      f"out_features == (). Got reduction={reduction!r}, label_smoothing="
                      f"{label_smoothing}, target.dtype={target.dtype}, out_features="
                      f"{out_features}, linear_bias.shape="
                      f"{tuple(linear_bias.shape) if linear_bias is not None else None}.",
                      stacklevel=2)
    if options is not None and chunkable:
        x = input if input.dim() == 2 else input.unsqueeze(0)
        t = target if input.dim() == 2 else target.reshape(1)
        chunk = options.chunk_size(x.shape[0], in_features, num_classes)
        out = _ChunkedLinearCE.apply(x, linear_weight, linear_bias, t, weight, ignore, reduction,
                                     chunk, options)
        return out if input.dim() == 2 or reduction != "none" else out.reshape(())
    # reference path: (N, C, *out_features) logits, then cross_entropy
    w2 = linear_weight.reshape(-1, in_features)
    b2 = linear_bias.reshape(-1) if linear_bias is not None else None
    logits = linear(input, w2, b2)
    if out_features:
        logits = logits.reshape(num_batches + (num_classes,) + out_features)
    return cross_entropy(logits, target, weight, ignore_index=ignore, reduction=reduction,
                         label_smoothing=label_smoothing)


def _chunk_terms(x: Tensor, w: Tensor, b: Tensor | None, t: Tensor, cw: Tensor | None,
                 ignore: int, acc: Any) -> tuple:
    """(logits in acc dtype, per-row class weight of the target (0 where ignored), safe
    target indices) for one chunk."""
    logits = x.to(acc).matmul(w.to(acc).t())
    if b is not None:
        logits = logits + b.to(acc)
    valid = t != ignore
    safe = ember.where(valid, t, ember.zeros((), dtype=t.dtype, device=t.device))
    if bool(((safe < 0) | (safe >= w.shape[0])).any()):
        bad = int(t[valid & ((t < 0) | (t >= w.shape[0]))][0])
        raise make(IndexError, "linear_cross_entropy", f"Target {bad} is out of bounds.")
    w_t = cw.to(acc)[safe] * valid if cw is not None else valid.to(acc)
    return logits, w_t, safe


class _ChunkedLinearCE(Function):
    """Chunked forward (row losses only) and backward (recomputed chunk logits)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None, t: Tensor,
                cw: Tensor | None, ignore: int, reduction: str, chunk: int,
                options: Any) -> Tensor:
        acc = options.acc_dtype or (ember.float32 if x.dtype in (ember.float16, ember.bfloat16)
                                    else x.dtype)
        n = x.shape[0]
        losses = []
        denom = 0.0
        for s in range(0, n, chunk):
            logits, w_t, safe = _chunk_terms(x[s:s + chunk], w, b, t[s:s + chunk], cw, ignore,
                                             acc)
            lse = logits.logsumexp(1)
            rows = ember.arange(logits.shape[0], device=x.device)
            losses.append((lse - logits[rows, safe]) * w_t)
            denom += float(w_t.sum())
        loss_el = ember.cat(losses) if losses else x.new_zeros((0,)).to(acc)
        ctx.save_for_backward(x, w, b, t, cw)
        ctx.meta = (ignore, reduction, chunk, acc, denom, options.allow_retain_graph)
        ctx.consumed = False
        if reduction == "none":
            return loss_el.to(x.dtype)
        total = loss_el.sum()
        return (total if reduction == "sum" else total / denom).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple:
        ignore, reduction, chunk, acc, denom, allow_retain = ctx.meta
        if ctx.consumed and not allow_retain and reduction != "none":
            raise RuntimeError("linear_cross_entropy: the chunked backward already ran; pass "
                               "LinearCrossEntropyOptions(allow_retain_graph=True) to "
                               "backward twice")
        ctx.consumed = True
        x, w, b, t, cw = ctx.saved_tensors
        n = x.shape[0]
        gx_parts = []
        gw = ember.zeros(tuple(w.shape), dtype=acc, device=w.device)
        gb = ember.zeros(tuple(b.shape), dtype=acc, device=w.device) if b is not None else None
        g = grad.to(acc)
        for s in range(0, n, chunk):
            xs = x[s:s + chunk]
            logits, w_t, safe = _chunk_terms(xs, w, b, t[s:s + chunk], cw, ignore, acc)
            p = logits.softmax(1)
            rows = ember.arange(logits.shape[0], device=x.device)
            onehot = (safe.unsqueeze(1) == ember.arange(w.shape[0], device=x.device)).to(acc)
            if reduction == "none":
                coef = g[s:s + chunk] * w_t
            elif reduction == "sum":
                coef = g * w_t
            else:
                coef = g * w_t / denom
            d_logits = (p - onehot) * coef.unsqueeze(1)
            del rows
            gx_parts.append(d_logits.matmul(w.to(acc)))
            gw = gw + d_logits.t().matmul(xs.to(acc))
            if gb is not None:
                gb = gb + d_logits.sum(0)
        gx = ember.cat(gx_parts).to(x.dtype) if gx_parts else ember.zeros_like(x)
        return (gx, gw.to(w.dtype), gb.to(b.dtype) if gb is not None else None, None, None,
                None, None, None, None)
