"""Loss functions of ``torch.nn.functional``.

``cross_entropy`` calls the fused primitive (ember/ops/nn_loss.py); the rest are composites of
ember ops. Shape strictness: where torch only warns that input and target sizes differ (and
then broadcasts them into a different loss, e.g. ``(N, 1)`` against ``(N,)`` gives an
``(N, N)`` loss), ember raises a ValueError; ``ember.set_strict(False)`` restores torch's
warning.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import ember
from ember.errors import check, make
from ember.nn.functional.activation import logsigmoid, pairwise_distance
from ember.ops import nn_loss as _nn_loss  # noqa: F401  (registers cross_entropy)
from ember.ops.meta import broadcast_shapes
from ember.ops.registry import OPS, apply
from ember.tensor import Tensor
from ember.amp.autocast_mode import composite as _autocast_composite

__all__ = ["l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss", "cross_entropy", "nll_loss",
           "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div",
           "poisson_nll_loss", "gaussian_nll_loss", "ctc_loss", "margin_ranking_loss",
           "hinge_embedding_loss", "multilabel_margin_loss", "multilabel_soft_margin_loss",
           "multi_margin_loss", "soft_margin_loss", "cosine_embedding_loss",
           "triplet_margin_loss", "triplet_margin_with_distance_loss"]


# ---------------------------------------------------------------------- helpers
def legacy_get_string(size_average: Any, reduce: Any, emit_warning: bool = True) -> str:
    """torch's mapping of the deprecated ``size_average``/``reduce`` flags to ``reduction``."""
    warning = ("size_average and reduce args will be deprecated, please use reduction='{}' "
               "instead.")
    if size_average is None:
        size_average = True
    if reduce is None:
        reduce = True
    if size_average and reduce:
        ret = "mean"
    elif reduce:
        ret = "sum"
    else:
        ret = "none"
    if emit_warning:
        warnings.warn(warning.format(ret), stacklevel=3)
    return ret


def _reduction(size_average: Any, reduce: Any, reduction: str) -> str:
    if size_average is not None or reduce is not None:
        return legacy_get_string(size_average, reduce)
    return reduction


def _reduce(name: str, loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise make(ValueError, name, f"{reduction} is not a valid value for reduction")


def _check_reduction(name: str, reduction: str) -> None:
    if reduction not in ("none", "mean", "sum"):
        raise make(ValueError, name, f"{reduction} is not a valid value for reduction")


def _tensors(name: str, **kw: Any) -> None:
    for arg, v in kw.items():
        check(isinstance(v, Tensor), name, f"argument '{arg}' must be Tensor, not "
                                           f"{type(v).__name__}", TypeError)


def _check_same_size(name: str, input: Tensor, target: Tensor) -> None:
    """torch warns when sizes differ; ember raises when broadcasting would change the loss's
    shape (strict mode, the default)."""
    ishape, tshape = tuple(input.shape), tuple(target.shape)
    if ishape == tshape:
        return
    out = broadcast_shapes(name, ishape, tshape)
    if out != ishape and ember.get_strict():
        raise make(ValueError, name,
                   f"input {ishape} and target {tshape} have different shapes; they would "
                   f"broadcast to {out} and give a different loss",
                   hint="reshape one of them (e.g. target.view_as(input)), or call "
                        "ember.set_strict(False) for torch's warning instead")
    warnings.warn(f"Using a target size ({_tsize(target)}) that is different to the input size "
                  f"({_tsize(input)}). This will likely lead to incorrect results due to "
                  "broadcasting. Please ensure they have the same size.", stacklevel=3)


def _tsize(t: Tensor) -> str:
    return f"torch.Size({list(t.shape)})"


def _pointwise(name: str, input: Tensor, target: Tensor, fn: Callable, reduction: str,
               weight: Tensor | None = None, weighted_mean: bool = True) -> Tensor:
    _tensors(name, input=input, target=target)
    _check_reduction(name, reduction)
    _check_same_size(name, input, target)
    loss = fn(input - target)
    if weight is not None:
        if tuple(weight.shape) != tuple(input.shape):
            raise make(ValueError, name, f"Weights and input must have the same size, got "
                                         f"weight {tuple(weight.shape)} and input "
                                         f"{tuple(input.shape)}")
        loss = loss * weight
        if reduction == "mean" and weighted_mean:
            # torch: l1/mse divide a weighted sum by the total weight (huber takes the mean)
            return loss.sum() / weight.sum()
    return _reduce(name, loss, reduction)


# ---------------------------------------------------------------------- regression losses
@_autocast_composite("l1_loss")
def l1_loss(input: Tensor, target: Tensor, size_average: Any = None, reduce: Any = None,
            reduction: str = "mean", weight: Tensor | None = None) -> Tensor:
    """Mean absolute error ``|input - target|``.

    Example::

        >>> F.l1_loss(ember.tensor([1.0, 2.0]), ember.tensor([0.0, 0.0]))
        tensor(1.5000)
    """
    reduction = _reduction(size_average, reduce, reduction)
    return _pointwise("l1_loss", input, target, lambda d: d.abs(), reduction, weight)


@_autocast_composite("mse_loss")
def mse_loss(input: Tensor, target: Tensor, size_average: Any = None, reduce: Any = None,
             reduction: str = "mean", weight: Tensor | None = None) -> Tensor:
    """Mean squared error ``(input - target)^2``."""
    reduction = _reduction(size_average, reduce, reduction)
    return _pointwise("mse_loss", input, target, lambda d: d * d, reduction, weight)


@_autocast_composite("smooth_l1_loss")
def smooth_l1_loss(input: Tensor, target: Tensor, size_average: Any = None, reduce: Any = None,
                   reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """``0.5 d^2 / beta`` where ``|d| < beta``, else ``|d| - 0.5 beta``."""
    reduction = _reduction(size_average, reduce, reduction)
    if beta < 0:
        raise make(RuntimeError, "smooth_l1_loss", "smooth_l1_loss does not support negative "
                                                   "values for beta.")
    if beta == 0.0:
        return _pointwise("smooth_l1_loss", input, target, lambda d: d.abs(), reduction)

    def fn(d: Tensor) -> Tensor:
        z = d.abs()
        return ember.where(z < beta, 0.5 * d * d / beta, z - 0.5 * beta)
    return _pointwise("smooth_l1_loss", input, target, fn, reduction)


@_autocast_composite("huber_loss")
def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0,
               weight: Tensor | None = None) -> Tensor:
    """``0.5 d^2`` where ``|d| < delta``, else ``delta (|d| - 0.5 delta)``."""
    def fn(d: Tensor) -> Tensor:
        z = d.abs()
        return ember.where(z < delta, 0.5 * d * d, delta * (z - 0.5 * delta))
    return _pointwise("huber_loss", input, target, fn, reduction, weight, weighted_mean=False)


# ---------------------------------------------------------------------- classification
def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                  size_average: Any = None, ignore_index: int = -100, reduce: Any = None,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Cross entropy between logits and targets (class indices or class probabilities).

    Args:
        input: logits ``(C)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``.
        target: class indices (int64) of shape ``()``, ``(N)`` or ``(N, d1, ..., dK)``, or
            class probabilities with the input's shape.
        weight: per-class rescaling weights ``(C)``.
        ignore_index: target value that contributes neither loss nor gradient (index targets).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. With weights, ``'mean'`` divides by the
            total weight of the non-ignored targets.
        label_smoothing: mixes the target with the uniform distribution, in ``[0, 1]``.

    Example::

        >>> logits = ember.randn(3, 5, requires_grad=True)
        >>> F.cross_entropy(logits, ember.tensor([1, 0, 4])).backward()
    """
    reduction = _reduction(size_average, reduce, reduction)
    return apply(OPS["cross_entropy"], (input, target, weight, ignore_index, reduction,
                                        float(label_smoothing)))


def _cross_entropy_reference(input: Tensor, target: Tensor, weight: Tensor | None = None,
                             ignore_index: int = -100, reduction: str = "mean",
                             label_smoothing: float = 0.0) -> Tensor:
    """The decomposition of the fused primitive (log_softmax + nll_loss), as torch writes it;
    kept as the test reference and compiler fallback."""
    cd = 1 if input.dim() >= 2 else 0
    n_classes = input.shape[cd]
    logp = input.log_softmax(cd)
    if tuple(input.shape) == tuple(target.shape):
        t = target
        if label_smoothing > 0:
            t = t * (1 - label_smoothing) + label_smoothing / n_classes
        if weight is not None:
            shape = [1] * input.dim()
            shape[cd] = n_classes
            logp = logp * weight.reshape(shape)
        loss = -(logp * t).sum(cd)
        if reduction == "mean":
            return loss.sum() / (input.numel() // n_classes) if input.numel() else loss.sum() / 0
        return _reduce("cross_entropy", loss, reduction)
    nll = nll_loss(logp, target, weight, ignore_index=ignore_index, reduction=reduction)
    if label_smoothing == 0:
        return nll
    valid = target != ignore_index
    if weight is not None:
        shape = [1] * input.dim()
        shape[cd] = n_classes
        smooth = -(logp * weight.reshape(shape)).sum(cd)
    else:
        smooth = -logp.sum(cd)
    smooth = smooth * valid
    if reduction == "mean":
        if weight is not None:
            denom = weight[target.clamp(0, n_classes - 1)][valid].sum()
        else:
            denom = valid.sum()
        smooth = smooth.sum() / denom
    elif reduction == "sum":
        smooth = smooth.sum()
    return (1 - label_smoothing) * nll + smooth * (label_smoothing / n_classes)


@_autocast_composite("nll_loss")
def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None,
             size_average: Any = None, ignore_index: int = -100, reduce: Any = None,
             reduction: str = "mean") -> Tensor:
    """Negative log likelihood of log-probabilities ``input`` at class indices ``target``.

    Args:
        input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ..., dK)`` log-probabilities.
        target: ``()``, ``(N)`` or ``(N, d1, ..., dK)`` int64 class indices.
        weight: per-class weights ``(C)``; ``'mean'`` divides by the sum of target weights.
        ignore_index: target value that is skipped.
    """
    reduction = _reduction(size_average, reduce, reduction)
    _tensors("nll_loss", input=input, target=target)
    _check_reduction("nll_loss", reduction)
    if input.dim() == 0:
        raise make(RuntimeError, "nll_loss", "input tensor should be 1D or more, got a 0-dim "
                                             "tensor")
    cd = 1 if input.dim() >= 2 else 0
    n_classes = input.shape[cd]
    ishape, tshape = tuple(input.shape), tuple(target.shape)
    if target.dtype.is_floating_point or target.dtype is ember.bool:
        raise make(RuntimeError, "nll_loss", f"expected target dtype to be Long or Byte, but got "
                                             f"{target.dtype} (input {ishape}, target {tshape})")
    if input.dim() >= 2 and (not tshape or tshape[0] != ishape[0]):
        raise make(ValueError, "nll_loss", f"Expected input batch_size ({ishape[0]}) to match "
                                           f"target batch_size ({tshape[0] if tshape else 0}).")
    expected = ishape[:cd] + ishape[cd + 1:]
    if tshape != expected:
        if input.dim() <= 2:
            raise make(RuntimeError, "nll_loss", f"0D or 1D target tensor expected, multi-target "
                                                 f"not supported (input {ishape}, target "
                                                 f"{tshape})")
        raise make(RuntimeError, "nll_loss", f"size mismatch (got input: {list(ishape)} , "
                                             f"target: {list(tshape)})")
    if weight is not None and (weight.dim() != 1 or weight.shape[0] != n_classes):
        raise make(RuntimeError, "nll_loss", f"weight tensor should be defined either for all "
                                             f"{n_classes} classes or no classes but got weight "
                                             f"tensor of shape: {list(weight.shape)}")
    target = target.long()
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= n_classes))
    if bool(bad.any()):
        raise make(IndexError, "nll_loss", f"Target {int(target[bad].reshape(-1)[0])} is out of "
                                           f"bounds.")
    safe = ember.where(valid, target, ember.zeros((), dtype=ember.int64, device=target.device))
    shape = [1] * input.dim()
    shape[cd] = n_classes
    classes = ember.arange(n_classes, device=input.device).reshape(shape)
    # a constant one-hot selector: the gradient of a weighted sum is the selector itself
    w_t = weight[safe] * valid if weight is not None else valid.to(input.dtype)
    sel = (safe.unsqueeze(cd) == classes).to(input.dtype) * w_t.unsqueeze(cd).to(input.dtype)
    loss = -(input * sel).sum(cd)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / w_t.sum().to(input.dtype)


@_autocast_composite("binary_cross_entropy")
def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                         size_average: Any = None, reduce: Any = None,
                         reduction: str = "mean") -> Tensor:
    """``-w (t log x + (1 - t) log(1 - x))`` for probabilities ``x`` (logs clamped at -100)."""
    reduction = _reduction(size_average, reduce, reduction)
    _tensors("binary_cross_entropy", input=input, target=target)
    _check_reduction("binary_cross_entropy", reduction)
    if tuple(target.shape) != tuple(input.shape):
        raise make(ValueError, "binary_cross_entropy",
                   f"Using a target size ({_tsize(target)}) that is different to the input size "
                   f"({_tsize(input)}) is deprecated. Please ensure they have the same size.")
    if input.numel() and bool(((input < 0) | (input > 1)).any()):
        raise make(RuntimeError, "binary_cross_entropy", "all elements of input should be "
                                                         "between 0 and 1")
    log_x = input.log().clamp_min(-100)
    log_1mx = (1 - input).log().clamp_min(-100)
    loss = -(target * log_x + (1 - target) * log_1mx)
    if weight is not None:
        loss = loss * weight
    return _reduce("binary_cross_entropy", loss, reduction)


@_autocast_composite("binary_cross_entropy_with_logits")
def binary_cross_entropy_with_logits(input: Tensor, target: Tensor,
                                     weight: Tensor | None = None, size_average: Any = None,
                                     reduce: Any = None, reduction: str = "mean",
                                     pos_weight: Tensor | None = None) -> Tensor:
    """Sigmoid + binary cross entropy in one numerically stable expression.

    Args:
        pos_weight: weight of positive examples, broadcast along the last (class) dim.
    """
    reduction = _reduction(size_average, reduce, reduction)
    _tensors("binary_cross_entropy_with_logits", input=input, target=target)
    _check_reduction("binary_cross_entropy_with_logits", reduction)
    if tuple(target.shape) != tuple(input.shape):
        raise make(ValueError, "binary_cross_entropy_with_logits",
                   f"Target size ({_tsize(target)}) must be the same as input size "
                   f"({_tsize(input)})")
    # log(1 + exp(-x)) = softplus(-x), written without overflow
    sp_neg = (-input).clamp_min(0) + (-input.abs()).exp().log1p()
    if pos_weight is not None:
        log_weight = (pos_weight - 1) * target + 1
        loss = (1 - target) * input + log_weight * sp_neg
    else:
        loss = (1 - target) * input + sp_neg
    if weight is not None:
        loss = loss * weight
    return _reduce("binary_cross_entropy_with_logits", loss, reduction)


@_autocast_composite("kl_div")
def kl_div(input: Tensor, target: Tensor, size_average: Any = None, reduce: Any = None,
           reduction: str = "mean", log_target: bool = False) -> Tensor:
    """``target * (log target - input)`` for log-probabilities ``input``.

    ``reduction='batchmean'`` divides the sum by the batch size (the mathematically correct
    KL divergence); ``'mean'`` divides by the number of elements, with torch's warning.
    """
    if size_average is not None or reduce is not None:
        reduction = legacy_get_string(size_average, reduce)
    _tensors("kl_div", input=input, target=target)
    if reduction == "mean":
        warnings.warn("reduction: 'mean' divides the total loss by both the batch size and the "
                      "support size.'batchmean' divides only by the batch size, and aligns with "
                      "the KL div math definition.'mean' will be changed to behave the same as "
                      "'batchmean' in the next major release.", stacklevel=2)
    if reduction not in ("none", "mean", "sum", "batchmean"):
        raise make(ValueError, "kl_div", f"{reduction} is not a valid value for reduction")
    _check_same_size("kl_div", input, target)
    if log_target:
        loss = target.exp() * (target - input)
    else:
        # xlogy: 0 * log 0 = 0
        safe = ember.where(target > 0, target, ember.ones_like(target))
        loss = ember.where(target > 0, target * safe.log(), target * 0) - target * input
    if reduction == "batchmean":
        if input.dim() == 0:
            return loss.sum()
        return loss.sum() / input.shape[0]
    return _reduce("kl_div", loss, reduction)


@_autocast_composite("poisson_nll_loss")
def poisson_nll_loss(input: Tensor, target: Tensor, log_input: bool = True, full: bool = False,
                     size_average: Any = None, eps: float = 1e-8, reduce: Any = None,
                     reduction: str = "mean") -> Tensor:
    """Poisson negative log likelihood: ``exp(x) - t x`` (``log_input``) or
    ``x - t log(x + eps)``; ``full`` adds Stirling's term for ``t > 1``."""
    reduction = _reduction(size_average, reduce, reduction)
    _tensors("poisson_nll_loss", input=input, target=target)
    _check_reduction("poisson_nll_loss", reduction)
    _check_same_size("poisson_nll_loss", input, target)
    if log_input:
        loss = input.exp() - target * input
    else:
        loss = input - target * (input + eps).log()
    if full:
        safe_t = ember.where(target > 1, target, ember.ones_like(target))
        stirling = safe_t * safe_t.log() - safe_t + 0.5 * (2 * math.pi * safe_t).log()
        loss = loss + ember.where(target > 1, stirling, stirling * 0)
    return _reduce("poisson_nll_loss", loss, reduction)


def gaussian_nll_loss(input: Tensor, target: Tensor, var: Tensor | float, full: bool = False,
                      eps: float = 1e-6, reduction: str = "mean") -> Tensor:
    """Gaussian negative log likelihood ``0.5 (log var + (input - target)^2 / var)``.

    ``var`` has the input's shape, or one fewer dim / a last dim of 1 (homoscedastic per
    sample), or is a float.
    """
    _tensors("gaussian_nll_loss", input=input, target=target)
    if not isinstance(var, Tensor):
        var = ember.full(tuple(input.shape), float(var), dtype=input.dtype, device=input.device)
    if tuple(var.shape) != tuple(input.shape):
        if tuple(input.shape[:-1]) == tuple(var.shape):
            var = var.unsqueeze(-1)
        elif tuple(input.shape[:-1]) == tuple(var.shape[:-1]) and var.shape[-1] == 1:
            pass
        else:
            raise make(ValueError, "gaussian_nll_loss",
                       f"var is of incorrect size: var {tuple(var.shape)} for input "
                       f"{tuple(input.shape)}")
    if reduction not in ("none", "mean", "sum"):
        raise make(ValueError, "gaussian_nll_loss", f"{reduction} is not valid")
    if bool((var < 0).any()):
        raise make(ValueError, "gaussian_nll_loss", "var has negative entry/entries")
    # clamp for stability without stopping the gradient (torch clamps a clone under no_grad)
    var = var + (var.detach().clamp_min(eps) - var.detach())
    loss = 0.5 * (var.log() + (input - target) ** 2 / var)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    return _reduce("gaussian_nll_loss", loss, reduction)


# ---------------------------------------------------------------------- margin losses
@_autocast_composite("margin_ranking_loss")
def margin_ranking_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0,
                        size_average: Any = None, reduce: Any = None,
                        reduction: str = "mean") -> Tensor:
    """``max(0, -target * (input1 - input2) + margin)``."""
    reduction = _reduction(size_average, reduce, reduction)
    _tensors("margin_ranking_loss", input1=input1, input2=input2, target=target)
    if input1.dim() != input2.dim() or input1.dim() != target.dim():
        raise make(RuntimeError, "margin_ranking_loss",
                   f"All input tensors should have same dimension but got sizes: input1: "
                   f"{_tsize(input1)}, input2: {_tsize(input2)}, target: {_tsize(target)} ")
    loss = (-target * (input1 - input2) + margin).clamp_min(0)
    return _reduce("margin_ranking_loss", loss, reduction)


@_autocast_composite("hinge_embedding_loss")
def hinge_embedding_loss(input: Tensor, target: Tensor, margin: float = 1.0,
                         size_average: Any = None, reduce: Any = None,
                         reduction: str = "mean") -> Tensor:
    """``x`` where ``target == 1``; ``max(0, margin - x)`` where ``target == -1``."""
    reduction = _reduction(size_average, reduce, reduction)
    _tensors("hinge_embedding_loss", input=input, target=target)
    zeros = input * 0
    margin_clamp = (margin - input).clamp_min(0)
    out_margin = ember.where(target != 1, margin_clamp, zeros)
    out_self = ember.where(target != -1, input, zeros)
    return _reduce("hinge_embedding_loss", out_margin + out_self, reduction)


@_autocast_composite("multilabel_margin_loss")
def multilabel_margin_loss(input: Tensor, target: Tensor, size_average: Any = None,
                           reduce: Any = None, reduction: str = "mean") -> Tensor:
    """Multi-class multi-label hinge loss; ``target`` holds class indices, padded with -1
    after the last label."""
    reduction = _reduction(size_average, reduce, reduction)
    _tensors("multilabel_margin_loss", input=input, target=target)
    if input.dim() > 2 or tuple(target.shape) != tuple(input.shape):
        raise make(RuntimeError, "multilabel_margin_loss",
                   f"inconsistent target size: {list(target.shape)} for input of size: "
                   f"{list(input.shape)}")
    x = input if input.dim() == 2 else input.reshape(1, -1)
    t = target.reshape(tuple(x.shape)).long()
    n, c = x.shape
    # count[n, j]: how often class j is listed among row n's labels (those before the
    # first -1); a label listed twice counts twice, as in torch's loop over the list
    stop = (t < 0).long().cumsum(1) > 0
    valid = ~stop
    classes = ember.arange(c, device=x.device)
    count = ((t.unsqueeze(2) == classes) & valid.unsqueeze(2)).sum(1)
    is_target = count > 0
    # hinge over pairs (label j, non-label i): max(0, 1 - (x_j - x_i))
    pair = (1 - (x.unsqueeze(2) - x.unsqueeze(1))).clamp_min(0)
    mask = count.unsqueeze(2).to(x.dtype) * (~is_target).unsqueeze(1).to(x.dtype)
    loss = (pair * mask).sum((1, 2)) / c
    if input.dim() < 2:
        loss = loss.reshape(())
    return _reduce("multilabel_margin_loss", loss, reduction)


def multilabel_soft_margin_loss(input: Tensor, target: Tensor, weight: Tensor | None = None,
                                size_average: Any = None, reduce: Any = None,
                                reduction: str = "mean") -> Tensor:
    """``-mean_c [t log sigmoid(x) + (1 - t) log sigmoid(-x)]`` per sample."""
    reduction = _reduction(size_average, reduce, reduction)
    _tensors("multilabel_soft_margin_loss", input=input, target=target)
    loss = -(target * logsigmoid(input) + (1 - target) * logsigmoid(-input))
    if weight is not None:
        loss = loss * weight
    class_dim = input.dim() - 1
    c = input.size(class_dim)
    loss = loss.sum(class_dim) / c
    return _reduce("multilabel_soft_margin_loss", loss, reduction)


@_autocast_composite("multi_margin_loss")
def multi_margin_loss(input: Tensor, target: Tensor, p: int = 1, margin: float = 1.0,
                      weight: Tensor | None = None, size_average: Any = None,
                      reduce: Any = None, reduction: str = "mean") -> Tensor:
    """Multi-class hinge loss ``sum_{i != y} max(0, margin - x_y + x_i)^p / C``."""
    reduction = _reduction(size_average, reduce, reduction)
    _tensors("multi_margin_loss", input=input, target=target)
    if p not in (1, 2):
        raise make(ValueError, "multi_margin_loss", "only p == 1 and p == 2 supported")
    if weight is not None and weight.dim() != 1:
        raise make(ValueError, "multi_margin_loss", "weight must be one-dimensional")
    x = input if input.dim() == 2 else input.reshape(1, -1)
    n, c = x.shape
    t = target.reshape(-1).long()
    if t.shape[0] != n:
        raise make(RuntimeError, "multi_margin_loss",
                   f"inconsistent target size, expected {n} but got {list(target.shape)}")
    if n and (bool((t < 0).any()) or bool((t >= c).any())):
        raise make(RuntimeError, "multi_margin_loss", "target out of range")
    onehot = (t.unsqueeze(1) == ember.arange(c, device=x.device))
    x_y = (x * onehot.to(x.dtype)).sum(1, keepdim=True)
    z = (margin - x_y + x).clamp_min(0)
    if p == 2:
        z = z * z
    if weight is not None:
        z = z * weight[t].unsqueeze(1)
    loss = ember.where(onehot, z * 0, z).sum(1) / c
    if input.dim() < 2:
        loss = loss.reshape(())
    return _reduce("multi_margin_loss", loss, reduction)


@_autocast_composite("soft_margin_loss")
def soft_margin_loss(input: Tensor, target: Tensor, size_average: Any = None,
                     reduce: Any = None, reduction: str = "mean") -> Tensor:
    """``log(1 + exp(-target * input))``."""
    reduction = _reduction(size_average, reduce, reduction)
    _tensors("soft_margin_loss", input=input, target=target)
    _check_same_size("soft_margin_loss", input, target)
    z = -target * input
    loss = z.clamp_min(0) + (-z.abs()).exp().log1p()
    return _reduce("soft_margin_loss", loss, reduction)


@_autocast_composite("cosine_embedding_loss")
def cosine_embedding_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0,
                          size_average: Any = None, reduce: Any = None,
                          reduction: str = "mean") -> Tensor:
    """``1 - cos(x1, x2)`` where ``target == 1``; ``max(0, cos(x1, x2) - margin)`` where
    ``target == -1``."""
    reduction = _reduction(size_average, reduce, reduction)
    _tensors("cosine_embedding_loss", input1=input1, input2=input2, target=target)
    if input1.dim() not in (1, 2) or tuple(input1.shape) != tuple(input2.shape):
        raise make(RuntimeError, "cosine_embedding_loss",
                   f"expected input1 and input2 of the same 1D or 2D shape, got "
                   f"{tuple(input1.shape)} and {tuple(input2.shape)}")
    dim = 1 if input1.dim() == 2 else 0
    eps = 1e-12
    prod_sum = (input1 * input2).sum(dim)
    mag1 = (input1 * input1).sum(dim) + eps
    mag2 = (input2 * input2).sum(dim) + eps
    cos = prod_sum / (mag1 * mag2).sqrt()
    zeros = cos * 0
    pos = 1 - cos
    neg = (cos - margin).clamp_min(0)
    loss = ember.where(target == 1, pos, zeros) + ember.where(target == -1, neg, zeros)
    return _reduce("cosine_embedding_loss", loss, reduction)


@_autocast_composite("triplet_margin_loss")
def triplet_margin_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 1.0,
                        p: float = 2, eps: float = 1e-6, swap: bool = False,
                        size_average: Any = None, reduce: Any = None,
                        reduction: str = "mean") -> Tensor:
    """``max(0, d(a, p) - d(a, n) + margin)`` with the p-norm pairwise distance."""
    reduction = _reduction(size_average, reduce, reduction)
    _tensors("triplet_margin_loss", anchor=anchor, positive=positive, negative=negative)
    dims = (anchor.dim(), positive.dim(), negative.dim())
    if len(set(dims)) != 1 or dims[0] not in (1, 2):
        raise make(RuntimeError, "triplet_margin_loss",
                   f"The anchor, positive, and negative tensors are expected to have the same "
                   f"number of dimensions (1 or 2), but got: anchor {dims[0]}D, positive "
                   f"{dims[1]}D, and negative {dims[2]}D inputs")

    def dist(a: Tensor, b: Tensor) -> Tensor:
        return pairwise_distance(a, b, p, eps)
    return _triplet(anchor, positive, negative, dist, margin, swap, reduction,
                    "triplet_margin_loss")


def triplet_margin_with_distance_loss(anchor: Tensor, positive: Tensor, negative: Tensor, *,
                                      distance_function: Callable | None = None,
                                      margin: float = 1.0, swap: bool = False,
                                      reduction: str = "mean") -> Tensor:
    """Triplet loss with a custom ``distance_function(x, y)`` (default: pairwise_distance)."""
    _tensors("triplet_margin_with_distance_loss", anchor=anchor, positive=positive,
             negative=negative)
    if margin <= 0:
        raise make(ValueError, "triplet_margin_with_distance_loss",
                   f"TripletMarginWithDistanceLoss: expected margin to be greater than 0, got "
                   f"{margin} instead")
    dist = distance_function if distance_function is not None else pairwise_distance
    return _triplet(anchor, positive, negative, dist, margin, swap, reduction,
                    "triplet_margin_with_distance_loss")


def _triplet(anchor: Tensor, positive: Tensor, negative: Tensor, dist: Callable, margin: float,
             swap: bool, reduction: str, name: str) -> Tensor:
    _check_reduction(name, reduction)
    d_pos = dist(anchor, positive)
    d_neg = dist(anchor, negative)
    if swap:
        d_neg = ember.minimum(d_neg, dist(positive, negative))
    loss = (margin + d_pos - d_neg).clamp_min(0)
    return _reduce(name, loss, reduction)


# ---------------------------------------------------------------------- CTC
_NEG = -1e30  # a finite "log 0": keeps logsumexp gradients finite on unreachable states


@_autocast_composite("ctc_loss")
def ctc_loss(log_probs: Tensor, targets: Tensor, input_lengths: Any, target_lengths: Any,
             blank: int = 0, reduction: str = "mean", zero_infinity: bool = False) -> Tensor:
    """Connectionist Temporal Classification loss (Graves et al. 2006).

    The forward (alpha) recursion runs in log space over time, vectorised over the batch and
    the extended label sequence; autograd differentiates it.

    Args:
        log_probs: ``(T, N, C)`` or ``(T, C)`` log-probabilities (e.g. ``log_softmax``).
        targets: ``(N, S)`` padded or ``(sum(target_lengths),)`` concatenated class indices.
        input_lengths: ``(N)`` lengths of the inputs.
        target_lengths: ``(N)`` lengths of the targets.
        blank: the blank label. Default: 0.
        reduction: ``'mean'`` divides each loss by its target length, then averages.
        zero_infinity: replace infinite losses (impossible alignments) by zero.
    """
    _tensors("ctc_loss", log_probs=log_probs, targets=targets)
    _check_reduction("ctc_loss", reduction)
    unbatched = log_probs.dim() == 2
    if unbatched:
        log_probs = log_probs.unsqueeze(1)
        if targets.dim() == 1 and isinstance(target_lengths, int):
            targets = targets.unsqueeze(0)
    if log_probs.dim() != 3:
        raise make(RuntimeError, "ctc_loss", f"log_probs must be (T, N, C) or (T, C), got shape "
                                             f"{tuple(log_probs.shape)}")
    t_max, n, c = log_probs.shape
    il = _lengths(input_lengths, n)
    tl = _lengths(target_lengths, n)
    tg = targets.long().tolist()
    if targets.dim() == 2 or (unbatched and targets.dim() == 2):
        seqs = [list(tg[b][:tl[b]]) for b in range(n)]
    else:
        seqs, off = [], 0
        for b in range(n):
            seqs.append(list(tg[off:off + tl[b]]))
            off += tl[b]
    for b in range(n):
        if il[b] > t_max:
            raise make(RuntimeError, "ctc_loss", f"Expected input_lengths to have value at most "
                                                 f"{t_max}, but got value {il[b]} (while "
                                                 f"checking arguments for ctc_loss_cpu)")
    s_max = max((len(s) for s in seqs), default=0)
    ext_len = 2 * s_max + 1
    ext = [[blank] * ext_len for _ in range(n)]
    allow_skip = [[False] * ext_len for _ in range(n)]
    for b, s in enumerate(seqs):
        for k, lab in enumerate(s):
            ext[b][2 * k + 1] = lab
            if k > 0 and lab != s[k - 1]:
                allow_skip[b][2 * k + 1] = True
    dev = log_probs.device
    ext_t = ember.tensor(ext, device=dev)
    skip = ember.tensor(allow_skip, device=dev)
    valid_len = ember.tensor([2 * len(s) + 1 for s in seqs], device=dev)
    positions = ember.arange(ext_len, device=dev).unsqueeze(0)
    in_range = positions < valid_len.unsqueeze(1)
    rows = ember.arange(n, device=dev).unsqueeze(1)
    neg = ember.full((n, ext_len), _NEG, dtype=log_probs.dtype, device=dev)

    def emit(t: int) -> Tensor:
        return log_probs[t][rows, ext_t]

    init_mask = (positions < 2) & in_range
    alpha = ember.where(init_mask, emit(0), neg)
    lengths_t = ember.tensor(il, device=dev)
    for t in range(1, t_max):
        a1 = ember.cat([neg[:, :1], alpha[:, :-1]], 1)
        a2 = ember.cat([neg[:, :2], alpha[:, :-2]], 1) if ext_len > 2 else neg
        a2 = ember.where(skip, a2, neg)
        stacked = ember.stack([alpha, a1, a2], 0)
        m = stacked.amax(0)
        lse = m + (stacked - m).exp().sum(0).log()
        new = ember.where(in_range, lse + emit(t), neg)
        active = (lengths_t > t).unsqueeze(1)
        alpha = ember.where(active, new, alpha)
    last = (valid_len - 1).unsqueeze(1)
    a_last = alpha[rows, last]
    a_prev = ember.where(valid_len.unsqueeze(1) > 1,
                         alpha[rows, (valid_len - 2).clamp_min(0).unsqueeze(1)],
                         neg[:, :1])
    pair = ember.cat([a_last, a_prev], 1)
    m = pair.amax(1, keepdim=True)
    ll = (m + (pair - m).exp().sum(1, keepdim=True).log()).squeeze(1)
    loss = -ll
    # torch's CTC backward returns exp(log_probs) - posterior for t < input_length (the
    # gradient with respect to the logits when log_probs = log_softmax(logits)); this
    # zero-valued term adds the exp(log_probs) part so gradients match torch exactly.
    t_idx = ember.arange(t_max, device=dev).reshape(t_max, 1)
    live = (t_idx < lengths_t.reshape(1, n)).to(log_probs.dtype).unsqueeze(-1)
    e = log_probs.exp()
    loss = loss + ((e - e.detach()) * live).sum((0, 2))
    impossible = loss > 1e29
    inf = ember.full((n,), float("inf"), dtype=loss.dtype, device=dev)
    loss = ember.where(impossible, loss * 0 if zero_infinity else inf, loss)
    if unbatched:
        loss = loss.squeeze(0)
    if reduction == "mean":
        tl_t = ember.tensor(tl, dtype=loss.dtype, device=dev).clamp_min(1)
        if unbatched:
            tl_t = tl_t.squeeze(0)
        return (loss / tl_t).mean()
    return _reduce("ctc_loss", loss, reduction)


def _lengths(x: Any, n: int) -> list:
    if isinstance(x, Tensor):
        vals = x.reshape(-1).tolist()
    elif isinstance(x, int):
        vals = [x]
    else:
        vals = list(x)
    if len(vals) != n:
        raise make(RuntimeError, "ctc_loss", f"expected {n} lengths, got {len(vals)}")
    return [int(v) for v in vals]
