"""Activation functions and distance helpers of ``torch.nn.functional``.

Each is a composite of ember ops (gradients, devices and tracing come from the primitives);
``gelu`` and ``silu`` call fused primitives from ``ember/ops/nn_activation.py`` (one node each,
instead of five to seven). ``inplace=True`` writes the result back into ``input`` the way
torch does, through an in-place copy that autograd records.
"""
from __future__ import annotations

import warnings
from typing import Any

import ember
from ember.errors import check, make
from ember.ops import nn_activation as _nn_activation  # noqa: F401  (registers gelu, silu)
from ember.ops.registry import OPS, apply
from ember.tensor import Tensor
from ember.amp.autocast_mode import composite as _autocast_composite

__all__ = ["threshold", "threshold_", "relu", "relu_", "relu6", "hardtanh", "hardtanh_",
           "elu", "elu_", "selu", "selu_", "celu", "celu_", "leaky_relu", "leaky_relu_", "prelu",
           "rrelu", "rrelu_", "glu", "gelu", "logsigmoid", "hardshrink", "tanhshrink",
           "softsign", "softplus", "softmin", "softmax", "log_softmax", "softshrink",
           "gumbel_softmax", "tanh", "sigmoid", "hardsigmoid", "silu", "mish", "hardswish",
           "normalize", "cosine_similarity", "pairwise_distance", "pdist", "one_hot"]

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _tensor_arg(name: str, input: Any) -> None:
    check(isinstance(input, Tensor), name,
          f"argument 'input' must be Tensor, not {type(input).__name__}", TypeError)


def _src(input: Tensor, inplace: bool) -> Tensor:
    """The tensor to compute from. For an in-place call that autograd records, a clone: the
    graph then saves the clone, which the final write into ``input`` does not invalidate."""
    if inplace and input.requires_grad and ember.is_grad_enabled():
        return input.clone()
    return input


def _finish(input: Tensor, out: Tensor, inplace: bool) -> Tensor:
    """Return ``out``, or write it into ``input`` (torch's ``inplace=True``)."""
    if inplace:
        return input.copy_(out)
    return out


def threshold(input: Tensor, threshold: float, value: float, inplace: bool = False) -> Tensor:
    """``y = x if x > threshold else value``."""
    _tensor_arg("threshold", input)
    x = _src(input, inplace)
    out = ember.where(x > threshold, x, ember.tensor(value, dtype=x.dtype, device=x.device))
    return _finish(input, out, inplace)


def threshold_(input: Tensor, threshold: float, value: float) -> Tensor:
    return globals()["threshold"](input, threshold, value, inplace=True)


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """``max(0, x)``."""
    _tensor_arg("relu", input)
    return input.relu_() if inplace else input.relu()


def relu_(input: Tensor) -> Tensor:
    return input.relu_()


def hardtanh(input: Tensor, min_val: float = -1.0, max_val: float = 1.0,
             inplace: bool = False) -> Tensor:
    """Clamp to ``[min_val, max_val]``."""
    _tensor_arg("hardtanh", input)
    if min_val > max_val:
        raise ValueError("min_val cannot be greater than max_val")
    if inplace:
        return input.clamp_(min_val, max_val)
    return input.clamp(min_val, max_val)


def hardtanh_(input: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    return hardtanh(input, min_val, max_val, inplace=True)


def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    """``min(max(0, x), 6)``."""
    return hardtanh(input, 0.0, 6.0, inplace)


def _elu_core(input: Tensor, alpha: float, scale: float = 1.0, input_scale: float = 1.0) -> Tensor:
    # expm1 on the clamped negative part only: no overflow for large positive x
    neg = (input.clamp(max=0) * input_scale).expm1() * alpha
    return ember.where(input > 0, input, neg) * scale if scale != 1.0 else \
        ember.where(input > 0, input, neg)


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """``x if x > 0 else alpha * (exp(x) - 1)``."""
    _tensor_arg("elu", input)
    return _finish(input, _elu_core(_src(input, inplace), alpha), inplace)


def elu_(input: Tensor, alpha: float = 1.0) -> Tensor:
    return elu(input, alpha, inplace=True)


def selu(input: Tensor, inplace: bool = False) -> Tensor:
    """``scale * elu(x, alpha)`` with the self-normalising constants."""
    _tensor_arg("selu", input)
    return _finish(input, _elu_core(_src(input, inplace), _SELU_ALPHA, _SELU_SCALE), inplace)


def selu_(input: Tensor) -> Tensor:
    return selu(input, inplace=True)


def celu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """``max(0, x) + min(0, alpha * (exp(x / alpha) - 1))``."""
    _tensor_arg("celu", input)
    if alpha == 0:
        raise make(RuntimeError, "celu", "ZeroDivisionError: alpha must not be 0")
    return _finish(input, _elu_core(_src(input, inplace), alpha, 1.0, 1.0 / alpha), inplace)


def celu_(input: Tensor, alpha: float = 1.0) -> Tensor:
    return celu(input, alpha, inplace=True)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """``x if x >= 0 else negative_slope * x``."""
    _tensor_arg("leaky_relu", input)
    x = _src(input, inplace)
    out = ember.where(x > 0, x, x * negative_slope)
    return _finish(input, out, inplace)


def leaky_relu_(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    return leaky_relu(input, negative_slope, inplace=True)


@_autocast_composite("prelu")
def prelu(input: Tensor, weight: Tensor) -> Tensor:
    """``x if x >= 0 else weight * x``; ``weight`` has 1 or C (= dim 1 of input) entries."""
    _tensor_arg("prelu", input)
    n = weight.numel()
    if weight.dim() > 1:
        raise make(RuntimeError, "prelu", f"weight must be 0-D or 1-D, got shape "
                                          f"{tuple(weight.shape)}")
    if n != 1:
        channels = input.shape[1] if input.dim() >= 2 else (input.shape[0] if input.dim() else 1)
        if n != channels:
            raise make(RuntimeError, "prelu",
                       f"Mismatch of parameter numbers and input channel size. Found parameter "
                       f"numbers = {n} and channel size = {channels} (input {tuple(input.shape)})")
        if input.dim() >= 2:
            w = weight.reshape((1, n) + (1,) * (input.dim() - 2))
        else:
            w = weight
    else:
        w = weight.reshape(())
    return ember.where(input > 0, input, w * input)


def rrelu(input: Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3, training: bool = False,
          inplace: bool = False) -> Tensor:
    """Randomized leaky ReLU: slope ~ U(lower, upper) per element in training, else the mean."""
    _tensor_arg("rrelu", input)
    x = _src(input, inplace)
    if training:
        slope = ember.empty(tuple(x.shape), dtype=x.dtype, device=x.device).uniform_(lower, upper)
        out = ember.where(x >= 0, x, x * slope)
    else:
        out = leaky_relu(x, (lower + upper) / 2)
    return _finish(input, out, inplace)


def rrelu_(input: Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3,
           training: bool = False) -> Tensor:
    return rrelu(input, lower, upper, training, inplace=True)


def glu(input: Tensor, dim: int = -1) -> Tensor:
    """``a * sigmoid(b)`` where ``a, b`` are the halves of ``input`` along ``dim``."""
    _tensor_arg("glu", input)
    if input.dim() == 0:
        raise make(RuntimeError, "glu", "glu does not support scalars because halving size must "
                                        "be even")
    size = input.shape[dim]
    if size % 2:
        raise make(RuntimeError, "glu", f"Halving dimension must be even, but dimension {dim} is "
                                        f"size {size} (input {tuple(input.shape)})")
    a, b = input.chunk(2, dim)
    return a * b.sigmoid()


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """Gaussian error linear unit: ``x * Phi(x)``; ``approximate='tanh'`` uses
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    _tensor_arg("gelu", input)
    if approximate not in ("none", "tanh"):
        raise make(RuntimeError, "gelu", f"approximate argument must be either none or tanh, got "
                                         f"'{approximate}'")
    return apply(OPS["gelu"], (input, approximate))


def logsigmoid(input: Tensor) -> Tensor:
    """``log(sigmoid(x)) = -softplus(-x)``, computed stably."""
    _tensor_arg("logsigmoid", input)
    return input.clamp(max=0) - (-input.abs()).exp().log1p()


def hardshrink(input: Tensor, lambd: float = 0.5) -> Tensor:
    """``x if |x| > lambd else 0``."""
    _tensor_arg("hardshrink", input)
    return ember.where(input.abs() > lambd, input, input * 0)


def tanhshrink(input: Tensor) -> Tensor:
    """``x - tanh(x)``."""
    _tensor_arg("tanhshrink", input)
    return input - input.tanh()


def softsign(input: Tensor) -> Tensor:
    """``x / (1 + |x|)``."""
    _tensor_arg("softsign", input)
    return input / (input.abs() + 1)


@_autocast_composite("softplus")
def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """``log(1 + exp(beta x)) / beta``; linear where ``beta x > threshold``."""
    _tensor_arg("softplus", input)
    bx = input * beta
    # log1p(exp(-|bx|)) + max(bx, 0) never overflows
    soft = (bx.clamp(min=0) + (-bx.abs()).exp().log1p()) / beta
    return ember.where(bx > threshold, input, soft)


def softshrink(input: Tensor, lambd: float = 0.5) -> Tensor:
    """``x - lambd if x > lambd; x + lambd if x < -lambd; else 0``."""
    _tensor_arg("softshrink", input)
    if lambd < 0:
        raise make(RuntimeError, "softshrink", f"lambda must be greater or equal to 0, but found "
                                               f"to be {lambd}.")
    return ember.where(input > lambd, input - lambd,
                       ember.where(input < -lambd, input + lambd, input * 0))


def _get_softmax_dim(name: str, ndim: int, stacklevel: int) -> int:
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the call "
                  "to include dim=X as an argument.", stacklevel=stacklevel)
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3,
            dtype: Any = None) -> Tensor:
    """``exp(x) / sum(exp(x), dim)``; ``dtype`` casts the input first."""
    _tensor_arg("softmax", input)
    if dim is None:
        dim = _get_softmax_dim("softmax", input.dim(), _stacklevel)
    return input.softmax(dim, dtype)


@_autocast_composite("softmin")
def softmin(input: Tensor, dim: int | None = None, _stacklevel: int = 3,
            dtype: Any = None) -> Tensor:
    """``softmax(-x)``."""
    _tensor_arg("softmin", input)
    if dim is None:
        dim = _get_softmax_dim("softmin", input.dim(), _stacklevel)
    x = input.to(dtype) if dtype is not None else input
    return (-x).softmax(dim)


def log_softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3,
                dtype: Any = None) -> Tensor:
    """``x - logsumexp(x, dim)``."""
    _tensor_arg("log_softmax", input)
    if dim is None:
        dim = _get_softmax_dim("log_softmax", input.dim(), _stacklevel)
    return input.log_softmax(dim, dtype)


def gumbel_softmax(logits: Tensor, tau: float = 1, hard: bool = False, eps: float = 1e-10,
                   dim: int = -1) -> Tensor:
    """Samples from the Gumbel-softmax distribution; ``hard=True`` returns one-hot samples
    with the soft sample's gradient (straight-through)."""
    _tensor_arg("gumbel_softmax", logits)
    gumbels = -ember.empty(tuple(logits.shape), dtype=logits.dtype,
                           device=logits.device).exponential_().log()
    y_soft = ((logits + gumbels) / tau).softmax(dim)
    if hard:
        index = y_soft.argmax(dim, keepdim=True)
        d = dim % y_soft.dim()
        shape = [1] * y_soft.dim()
        shape[d] = y_soft.shape[d]
        classes = ember.arange(y_soft.shape[d], device=y_soft.device).reshape(shape)
        y_hard = (classes == index).to(y_soft.dtype)
        return y_hard - y_soft.detach() + y_soft
    return y_soft


def tanh(input: Tensor) -> Tensor:
    """``tanh(x)``."""
    return input.tanh()


def sigmoid(input: Tensor) -> Tensor:
    """``1 / (1 + exp(-x))``."""
    return input.sigmoid()


def hardsigmoid(input: Tensor, inplace: bool = False) -> Tensor:
    """``clamp(x / 6 + 1/2, 0, 1)``."""
    _tensor_arg("hardsigmoid", input)
    x = _src(input, inplace)
    return _finish(input, (x / 6 + 0.5).clamp(0.0, 1.0), inplace)


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """``x * sigmoid(x)`` (swish)."""
    _tensor_arg("silu", input)
    return _finish(input, apply(OPS["silu"], (_src(input, inplace),)), inplace)


def mish(input: Tensor, inplace: bool = False) -> Tensor:
    """``x * tanh(softplus(x))``."""
    _tensor_arg("mish", input)
    x = _src(input, inplace)
    return _finish(input, x * softplus(x).tanh(), inplace)


def hardswish(input: Tensor, inplace: bool = False) -> Tensor:
    """``x * relu6(x + 3) / 6``."""
    _tensor_arg("hardswish", input)
    x = _src(input, inplace)
    return _finish(input, x * (x + 3).clamp(0.0, 6.0) / 6, inplace)


# ---------------------------------------------------------------------- distances
@_autocast_composite("normalize")
def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12,
              out: Tensor | None = None) -> Tensor:
    """``x / max(||x||_p, eps)`` along ``dim``."""
    _tensor_arg("normalize", input)
    denom = input.norm(p, dim, keepdim=True).clamp_min(eps).expand_as(input)
    res = input / denom
    if out is not None:
        return out.copy_(res)
    return res


@_autocast_composite("cosine_similarity")
def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """``x1 . x2 / (max(||x1||, eps) * max(||x2||, eps))`` along ``dim`` (broadcasting)."""
    _tensor_arg("cosine_similarity", x1)
    from ember.ops.meta import broadcast_shapes
    shape = broadcast_shapes("cosine_similarity", tuple(x1.shape), tuple(x2.shape))
    a = x1.expand(shape)
    b = x2.expand(shape)
    # torch normalises each input first (better conditioned than dividing the dot product)
    na = (a * a).sum(dim, keepdim=True).sqrt().clamp_min(eps)
    nb = (b * b).sum(dim, keepdim=True).sqrt().clamp_min(eps)
    return ((a / na) * (b / nb)).sum(dim)


def pairwise_distance(x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6,
                      keepdim: bool = False) -> Tensor:
    """``||x1 - x2 + eps||_p`` along the last dim."""
    _tensor_arg("pairwise_distance", x1)
    nd = max(x1.dim(), x2.dim())
    diff = x1 - x2 + eps
    if nd == 0:
        return diff.abs()
    return ember.linalg_vector_norm(diff, p, -1, keepdim) if hasattr(
        ember, "linalg_vector_norm") else diff.norm(p, -1, keepdim)


@_autocast_composite("pdist")
def pdist(input: Tensor, p: float = 2) -> Tensor:
    """Distances between all pairs of rows of a 2-D ``input``: the upper triangle, row-major,
    ``N (N - 1) / 2`` values."""
    _tensor_arg("pdist", input)
    if input.dim() != 2:
        raise make(RuntimeError, "pdist", f"pdist only supports 2D tensors, got: "
                                          f"{input.dim()}D (shape {tuple(input.shape)})")
    if p < 0:
        raise make(RuntimeError, "pdist", "pdist only supports non-negative p values")
    n = input.shape[0]
    rows, cols = [], []
    for i in range(n):
        for j in range(i + 1, n):
            rows.append(i)
            cols.append(j)
    if not rows:
        return input.new_zeros((0,))
    ri = ember.tensor(rows, device=input.device)
    ci = ember.tensor(cols, device=input.device)
    diff = input[ri] - input[ci]
    return diff.norm(p, 1)


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
    """int64 one-hot encoding with a new last dim of size ``num_classes`` (default max + 1)."""
    _tensor_arg("one_hot", tensor)
    if tensor.dtype is not ember.int64:
        raise make(RuntimeError, "one_hot", f"one_hot is only applicable to index tensor of type "
                                            f"LongTensor, got {tensor.dtype}")
    if tensor.numel() == 0:
        if num_classes <= 0:
            raise make(RuntimeError, "one_hot", "Can not infer total number of classes from "
                                                "empty tensor.")
    elif int(tensor.min()) < 0:
        raise make(RuntimeError, "one_hot", "Class values must be non-negative.")
    if num_classes == -1:
        num_classes = int(tensor.max()) + 1 if tensor.numel() else 0
    elif tensor.numel() and int(tensor.max()) >= num_classes:
        raise make(RuntimeError, "one_hot", f"Class values must be smaller than num_classes "
                                            f"(got max {int(tensor.max())}, num_classes="
                                            f"{num_classes}).")
    classes = ember.arange(num_classes, device=tensor.device)
    return (tensor.unsqueeze(-1) == classes).long()
