"""A ResNet block's ReLU tails as one op each, where nothing can tell the difference.

``bn -> relu`` becomes ``_batch_norm_relu`` and ``out + identity -> relu`` becomes
``_add_relu`` (ember/ops/nn_fused.py) when the input is on the GPU, the modules are exactly
``BatchNorm1d/2d/3d`` and ``ReLU`` with their own ``forward``, and no hook (the modules' or a
global one) could observe the intermediate result. The values and gradients are those of the
two separate calls; the fused ops save a dispatch, a kernel, a pass over the activations
and an autograd node each way. Otherwise the modules are called as usual.

``EMBER_FUSE_RELU=0`` turns the fusion off (for A/B measurements).
"""
from __future__ import annotations

import os
from typing import Any

from ember.nn.modules import _hooks as H
from ember.nn.modules.module import Module
from ember.tensor import Tensor

FUSE_RELU = [os.environ.get("EMBER_FUSE_RELU", "1") != "0"]
_TYPES: list = [None]   # (BatchNorm types, ReLU, ember._add_relu), bound on first use


def _types() -> tuple:
    if _TYPES[0] is None:   # bound once: these modules import this package
        import ember
        from ember.nn.modules.activation import ReLU
        from ember.nn.modules.normalization import BatchNorm1d, BatchNorm2d, BatchNorm3d
        _TYPES[0] = ((BatchNorm1d, BatchNorm2d, BatchNorm3d), ReLU, ember._add_relu)
    return _TYPES[0]


def _plain(m: Module) -> bool:
    """No hooks on ``m`` and no ``forward`` replaced on the instance."""
    return not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or m._backward_pre_hooks or "forward" in m.__dict__)


def _no_global_hooks() -> bool:
    return not (H._global_forward_hooks or H._global_forward_pre_hooks
                or H._global_backward_hooks or H._global_backward_pre_hooks)


def _fusable(x: Any, relu: Module) -> bool:
    return (FUSE_RELU[0] and type(x) is Tensor and x._device.type == "cuda"
            and type(relu) is _types()[1] and _plain(relu) and _no_global_hooks())


def batch_norm_relu(bn: Module, relu: Module, x: Tensor) -> Tensor:
    """``relu(bn(x))``.

    Args:
        bn: a batch-norm module. relu: a ``ReLU`` module (its ``inplace`` flag does not
            matter: the batch norm's output is a fresh tensor either way).
        x: the batch norm's input.

    Example::

        >>> out = batch_norm_relu(self.bn1, self.relu, self.conv1(x))
    """
    if _fusable(x, relu) and type(bn) in _types()[0] and _plain(bn):
        return bn._forward(x, True)
    return relu(bn(x))


def add_relu(out: Tensor, identity: Tensor, relu: Module) -> Tensor:
    """``relu(out + identity)`` (a ResNet block's ``out += identity; relu(out)``; ``out``
    is a fresh tensor the block made, so adding out of place changes nothing visible; the
    fused op takes operands of one dtype and shape, as the in-place add keeps ``out``'s)."""
    if _fusable(out, relu) and type(identity) is Tensor and \
            identity._dtype is out._dtype and identity._data.shape == out._data.shape:
        return _types()[2](out, identity)
    out += identity
    return relu(out)
