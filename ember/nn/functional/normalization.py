"""Normalization: batch_norm, instance_norm, layer_norm, group_norm, rms_norm and
local_response_norm (torch.nn.functional's signatures).

batch/layer/group/rms norm run on fused primitives (ember/ops/nn_norm.py); instance_norm is
batch_norm over ``(1, N*C, *)`` as in torch; local_response_norm is a composite of avg_pool.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

import ember
from ember.errors import check, make
from ember.ops.registry import OPS, apply
from ember.tensor import Tensor

__all__ = ["batch_norm", "instance_norm", "layer_norm", "group_norm", "rms_norm",
           "local_response_norm"]


def _update_running(running: Tensor | None, value: Tensor, momentum: float) -> None:
    """``running = (1 - momentum) * running + momentum * value``, in place (a buffer update)."""
    if running is None:
        return
    with ember.no_grad():
        running.mul_(1.0 - momentum)
        running.add_(value.to(running.dtype) * momentum)


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalization over the channel dim 1 of ``(N, C, *)``.

    In training, the batch mean and (biased) variance normalize, and the running statistics
    (if given) are updated in place: ``running = (1 - momentum) * running + momentum * stat``,
    with the unbiased variance. In evaluation the running statistics normalize.
    """
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum,
                       eps, None)


def _batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                weight: Tensor | None, bias: Tensor | None, training: bool, momentum: float,
                eps: float, num_batches_tracked: Tensor | None, relu: bool = False) -> Tensor:
    """:func:`batch_norm`, plus a BatchNorm layer's ``num_batches_tracked += 1`` when given
    (after a successful call). On CUDA the fused forward's finalize kernel updates the
    running statistics and the counter (``kernels_batchnorm.arm_running``), else one kernel
    after the call does: no separate small ops. With ``relu``, ``relu`` of the result as one
    op (``_batch_norm_relu``: on CUDA inside the batch-norm kernels)."""
    if not isinstance(input, Tensor):
        raise make(TypeError, "batch_norm",
                   f"argument 'input' must be Tensor, not {type(input).__name__}")
    size = input._data.shape   # a plain tuple (no ember.Size): this wrapper runs per BN call
    if training:
        per_channel = input._data.size // size[1] if len(size) >= 2 and size[1] else 0
        if len(size) >= 2 and per_channel == 1:
            raise make(ValueError, "batch_norm",
                       f"Expected more than 1 value per channel when training, got input size "
                       f"{ember.Size(size)}",
                       hint="use a batch size > 1, or call .eval() for single-sample inference")
    op = OPS["_batch_norm_relu" if relu else "_batch_norm"]
    args = (input, weight, bias, running_mean, running_var, bool(training), float(eps))
    if not (training and (running_mean is not None or running_var is not None)):
        y, mean, var = apply(op, args)
    elif input._device.type == "cuda":
        n = input._data.size // size[1]
        KB = _KB[0]
        if KB is None:
            from ember.backend.cuda_ops import kernels_batchnorm as KB
            _KB[0] = KB
        # the fused forward's finalize kernel updates the running statistics (and the
        # counter) when it runs; else one kernel after it, else the generic ops below
        armed = KB.arm_running(running_mean, running_var, momentum, n, num_batches_tracked)
        try:
            y, mean, var = apply(op, args)
        finally:
            KB.disarm_running()
        if armed is not None and armed[0]:
            for t in (running_mean, running_var, num_batches_tracked):
                if t is not None:
                    t._version[0] += 1
            return y
        if KB.update_running(running_mean, running_var, mean, var, momentum, n,
                             num_batches_tracked):
            return y   # one fused kernel instead of about ten small ops
        _update_running(running_mean, mean, momentum)
        _update_running(running_var, var * (n / max(n - 1, 1)), momentum)
    else:
        y, mean, var = apply(op, args)
        n = input._data.size // size[1]
        if not _update_running_cpu(running_mean, running_var, mean, var, momentum, n):
            _update_running(running_mean, mean, momentum)
            _update_running(running_var, var * (n / max(n - 1, 1)), momentum)
    if num_batches_tracked is not None:
        # the counter's `add_(1)` directly on its array (it never needs autograd)
        num_batches_tracked._data += 1
        num_batches_tracked._version[0] += 1
    return y


# ember.backend.cuda_ops.kernels_batchnorm, bound at the first CUDA call (an import statement
# per call cost ~1 us on each of a ResNet-50 step's 53 batch norms)
_KB: list = [None]


def _update_running_cpu(running_mean: Tensor | None, running_var: Tensor | None, mean: Tensor,
                        var: Tensor, momentum: float, n: int) -> bool:
    """The running-statistics update on NumPy arrays, in place, with the same operations
    and rounding as :func:`_update_running` (a buffer update never needs autograd): six
    dispatcher round trips were two thirds of a small BatchNorm2d call's host time. False
    (nothing written) for what it does not cover: half or non-float buffers."""
    pairs = [(r, v) for r, v in ((running_mean, mean), (running_var, var)) if r is not None]
    for r, v in pairs:
        a = r._data
        if type(a) is not np.ndarray or a.dtype.kind != "f" or a.dtype.itemsize < 4 or \
                type(v._data) is not np.ndarray or not a.flags.writeable:
            return False
    for r, v in pairs:
        val = v._data
        if v is var:
            val = val * (n / max(n - 1, 1))
        a = r._data
        a *= 1.0 - momentum
        a += val.astype(a.dtype, copy=False) * momentum
        r._version[0] += 1
    return True


def instance_norm(input: Tensor, running_mean: Tensor | None = None,
                  running_var: Tensor | None = None, weight: Tensor | None = None,
                  bias: Tensor | None = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Normalize each ``(n, c)`` instance of ``(N, C, *)`` over its spatial dims."""
    check(isinstance(input, Tensor), "instance_norm", f"argument 'input' must be Tensor, not "
                                                      f"{type(input).__name__}", TypeError)
    check(input.ndim >= 3, "instance_norm", f"expected input with at least 3 dims (N, C, *), got "
                                            f"shape {tuple(input.shape)}")
    if use_input_stats:
        per = 1
        for s in input.shape[2:]:
            per *= s
        if per == 1:
            raise make(ValueError, "instance_norm",
                       f"Expected more than 1 spatial element when training, got input size "
                       f"{ember.Size(input.shape)}")
    b, c = input.shape[:2]
    x = input.reshape(1, b * c, *input.shape[2:])
    w = weight.repeat(b) if weight is not None else None
    bb = bias.repeat(b) if bias is not None else None
    rm = running_mean.repeat(b) if running_mean is not None else None
    rv = running_var.repeat(b) if running_var is not None else None
    out = batch_norm(x, rm, rv, w, bb, use_input_stats, momentum, eps)
    with ember.no_grad():
        if running_mean is not None and use_input_stats:
            running_mean.copy_(rm.reshape(b, c).mean(0))
        if running_var is not None and use_input_stats:
            running_var.copy_(rv.reshape(b, c).mean(0))
    return out.reshape(input.shape)


def layer_norm(input: Tensor, normalized_shape: Sequence[int], weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalize over the trailing ``normalized_shape`` dims, then ``* weight + bias``."""
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return apply(OPS["layer_norm"], (input, ns, weight, bias, float(eps), True))


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalize ``(N, C, *)`` over groups of ``C / num_groups`` channels and all spatial dims."""
    return apply(OPS["group_norm"], (input, num_groups, weight, bias, float(eps), True))


def rms_norm(input: Tensor, normalized_shape: Sequence[int], weight: Tensor | None = None,
             eps: float | None = None) -> Tensor:
    """Root-mean-square normalization over the trailing ``normalized_shape`` dims."""
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return apply(OPS["rms_norm"], (input, ns, weight, eps))


def local_response_norm(input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> Tensor:
    """Normalize each channel by the activity of ``size`` neighbouring channels (AlexNet):
    ``x / (k + alpha * mean of x^2 over the channel window) ** beta``."""
    check(isinstance(input, Tensor), "local_response_norm",
          f"argument 'input' must be Tensor, not {type(input).__name__}", TypeError)
    dim = input.ndim
    check(dim >= 3, "local_response_norm",
          f"Expected 3D or higher dimensionality input (got {dim} dimensions, shape "
          f"{tuple(input.shape)})", ValueError)
    if input.numel() == 0:
        return input
    from ember.nn.functional.pooling import avg_pool2d, avg_pool3d
    from ember.nn.functional.vision import pad
    div = input * input
    if dim == 3:
        div = div.unsqueeze(1)
        div = pad(div, (0, 0, size // 2, (size - 1) // 2))
        div = avg_pool2d(div, (size, 1), stride=1).squeeze(1)
    else:
        sizes = input.shape
        div = div.reshape(sizes[0], 1, sizes[1], sizes[2], -1)
        div = pad(div, (0, 0, 0, 0, size // 2, (size - 1) // 2))
        div = avg_pool3d(div, (size, 1, 1), stride=1).squeeze(1)
        div = div.reshape(sizes)
    div = (div * alpha + k).pow(beta)
    return input / div
