"""Normalization layers: BatchNorm1d/2d/3d, InstanceNorm1d/2d/3d, LayerNorm, GroupNorm,
RMSNorm and LocalResponseNorm (and LazyBatchNorm*).

Parameter and buffer names, defaults, init and ``extra_repr`` follow torch: ``weight`` ones,
``bias`` zeros, buffers ``running_mean`` (zeros), ``running_var`` (ones) and
``num_batches_tracked`` (int64 0). ``momentum=None`` uses a cumulative moving average.
"""
from __future__ import annotations

import numbers
from typing import Any, Sequence

import ember
from ember.nn import functional as F
from ember.nn import init
from ember.nn.functional.normalization import _batch_norm
from ember.nn.modules.module import LazyModuleMixin, Module
from ember.nn.parameter import Parameter, UninitializedBuffer, UninitializedParameter
from ember.tensor import Tensor

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "InstanceNorm1d",
           "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm",
           "LocalResponseNorm", "CrossMapLRN2d", "LazyBatchNorm1d", "LazyBatchNorm2d",
           "LazyBatchNorm3d", "LazyInstanceNorm1d", "LazyInstanceNorm2d", "LazyInstanceNorm3d"]


class _NormBase(Module):
    """Common state of batch and instance norm: affine parameters and running statistics."""

    _version = 2
    __constants__ = ["track_running_stats", "momentum", "eps", "num_features", "affine"]

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device: Any = None,
                 dtype: Any = None, *, bias: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if self.affine:
            self.weight = Parameter(ember.empty(num_features, device=device, dtype=dtype))
            if bias:
                self.bias = Parameter(ember.empty(num_features, device=device, dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", ember.zeros(num_features, device=device,
                                                             dtype=dtype))
            self.register_buffer("running_var", ember.ones(num_features, device=device,
                                                           dtype=dtype))
            self.register_buffer("num_batches_tracked",
                                 ember.tensor(0, dtype=ember.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            with ember.no_grad():
                self.running_mean.zero_()
                self.running_var.fill_(1)
                self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError  # pragma: no cover - each subclass defines its ranks

    def extra_repr(self) -> str:
        return ("{num_features}, eps={eps}, momentum={momentum}, affine={affine}, "
                "bias={use_bias}, track_running_stats={track_running_stats}".format(
                    **self.__dict__, use_bias=self.bias is not None))

    def _check_features(self, input: Tensor, dim: int) -> None:
        # the array's shape tuple: ``input.shape`` makes an ember.Size on every call
        if input._data.shape[dim] != self.num_features:
            raise self._layer_error(
                RuntimeError, f"expected input with {self.num_features} channels (num_features) "
                              f"at dim {dim}, got input of shape {tuple(input.shape)}")


class _BatchNorm(_NormBase):
    _ranks: tuple = ()

    def _check_input_dim(self, input: Any) -> None:
        if not isinstance(input, Tensor) or input._data.ndim not in self._ranks:
            got = f"{input.dim()}D input" if isinstance(input, Tensor) else type(input).__name__
            ranks = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(f"[{type(self).__name__}] expected {ranks} input (got {got}"
                             f"{', shape ' + str(tuple(input.shape)) if isinstance(input, Tensor) else ''})")

    def forward(self, input: Tensor) -> Tensor:
        return self._forward(input, False)

    def _forward(self, input: Tensor, relu: bool) -> Tensor:
        """The layer's forward; with ``relu``, ``relu`` of it as one op (a ResNet block's
        ``bn -> relu``, ember/nn/modules/fused.py)."""
        self._check_input_dim(input)
        self._check_features(input, 1)
        # buffers and parameters straight from their dicts: each ``self.<name>`` goes through
        # Module.__getattr__, and this runs per layer and step (53 a ResNet-50 step on the GPU)
        # (a name missing from its dict, e.g. parametrized, is read the usual way)
        bufs, params = self._buffers, self._parameters
        rm = bufs["running_mean"] if "running_mean" in bufs else self.running_mean
        rv = bufs["running_var"] if "running_var" in bufs else self.running_var
        nbt = bufs["num_batches_tracked"] if "num_batches_tracked" in bufs else \
            getattr(self, "num_batches_tracked", None)
        weight = params["weight"] if "weight" in params else self.weight
        bias = params["bias"] if "bias" in params else self.bias
        training, momentum = self.training, self.momentum
        factor = 0.0 if momentum is None else momentum
        count = None   # the counter F's batch_norm increments (with the running statistics)
        if training and self.track_running_stats and nbt is not None:
            if momentum is None:  # cumulative moving average: the factor needs the count now
                # the counter's `add_(1)` directly on its array (it never needs autograd)
                nbt._data += 1
                nbt._version[0] += 1
                factor = 1.0 / float(nbt.item())
            else:
                count = nbt
        bn_training = training or (rm is None and rv is None)
        use_running = not training or self.track_running_stats
        return _batch_norm(input, rm if use_running else None, rv if use_running else None,
                           weight, bias, bn_training, factor, self.eps, count, relu)


class BatchNorm1d(_BatchNorm):
    """Batch normalization over ``(N, C)`` or ``(N, C, L)`` input.

    In training it normalizes with the batch statistics and updates ``running_mean`` /
    ``running_var`` (``momentum`` 0.1; ``None`` for a cumulative average); in eval mode it
    uses the running statistics.

    Example::

        >>> bn = nn.BatchNorm1d(100)
        >>> bn(ember.randn(20, 100)).shape
        ember.Size([20, 100])
    """

    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization over ``(N, C, H, W)`` input (statistics per channel).

    Example::

        >>> nn.BatchNorm2d(3, affine=False)(ember.randn(4, 3, 5, 5)).shape
        ember.Size([4, 3, 5, 5])
    """

    _ranks = (4,)


class BatchNorm3d(_BatchNorm):
    """Batch normalization over ``(N, C, D, H, W)`` input."""

    _ranks = (5,)


class SyncBatchNorm(_BatchNorm):
    """Batch normalization over ``(N, C, *)``; in a single process it equals BatchNorm."""

    _ranks = (2, 3, 4, 5)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group: Any = None, device: Any = None, dtype: Any = None, *,
                 bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias)
        self.process_group = process_group


class _LazyNormBase(LazyModuleMixin, _NormBase):
    weight: UninitializedParameter
    bias: UninitializedParameter

    def __init__(self, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None, *,
                 bias: bool = True) -> None:
        super().__init__(0, eps, momentum, False, False)
        self.affine = affine
        self.track_running_stats = track_running_stats
        if self.affine:
            self.weight = UninitializedParameter(device=device, dtype=dtype)
            if bias:
                self.bias = UninitializedParameter(device=device, dtype=dtype)
        if self.track_running_stats:
            self.running_mean = UninitializedBuffer(device=device, dtype=dtype)
            self.running_var = UninitializedBuffer(device=device, dtype=dtype)
            self.num_batches_tracked = ember.tensor(0, dtype=ember.long, device=device)

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.num_features != 0:
            super().reset_parameters()

    def _channel_dim(self, input: Tensor) -> int:
        return 1

    def initialize_parameters(self, input: Tensor) -> None:
        if self.has_uninitialized_params():
            self.num_features = input.shape[self._channel_dim(input)]
            if self.affine:
                self.weight.materialize((self.num_features,))
                if self.bias is not None:
                    self.bias.materialize((self.num_features,))
            if self.track_running_stats:
                self.running_mean.materialize((self.num_features,))
                self.running_var.materialize((self.num_features,))
            self.reset_parameters()


class LazyBatchNorm1d(_LazyNormBase, _BatchNorm):
    """A :class:`BatchNorm1d` whose ``num_features`` comes from the first input."""

    cls_to_become = BatchNorm1d
    _ranks = (2, 3)


class LazyBatchNorm2d(_LazyNormBase, _BatchNorm):
    """A :class:`BatchNorm2d` whose ``num_features`` comes from the first input."""

    cls_to_become = BatchNorm2d
    _ranks = (4,)


class LazyBatchNorm3d(_LazyNormBase, _BatchNorm):
    """A :class:`BatchNorm3d` whose ``num_features`` comes from the first input."""

    cls_to_become = BatchNorm3d
    _ranks = (5,)


# ---------------------------------------------------------------------- instance norm
class _InstanceNorm(_NormBase):
    _nd = 1

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = False, track_running_stats: bool = False, device: Any = None,
                 dtype: Any = None, *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias)

    def _check_input_dim(self, input: Any) -> None:
        nd = self._nd
        if not isinstance(input, Tensor) or input.dim() not in (nd + 1, nd + 2):
            got = f"{input.dim()}D input" if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"[{type(self).__name__}] expected {nd + 1}D or {nd + 2}D input "
                             f"(got {got})")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        nd = self._nd
        feature_dim = input.dim() - (nd + 1)
        if input.shape[feature_dim] != self.num_features:
            if self.affine:
                raise ValueError(
                    f"[{type(self).__name__}] expected input's size at dim={feature_dim} to "
                    f"match num_features ({self.num_features}), but got: "
                    f"{input.shape[feature_dim]} (input shape {tuple(input.shape)}).")
            import warnings
            warnings.warn(f"input's size at dim={feature_dim} does not match num_features. You "
                          "can silence this warning by not passing in num_features, which is "
                          "not used because affine=False")
        if input.dim() == nd + 1:
            return self._apply_norm(input.unsqueeze(0)).squeeze(0)
        return self._apply_norm(input)

    def _apply_norm(self, input: Tensor) -> Tensor:
        return F.instance_norm(input, self.running_mean, self.running_var, self.weight,
                               self.bias, self.training or not self.track_running_stats,
                               self.momentum if self.momentum is not None else 0.0, self.eps)


class InstanceNorm1d(_InstanceNorm):
    """Instance normalization of ``(N, C, L)`` (or ``(C, L)``): each sample and channel is
    normalized over its length. ``affine`` and ``track_running_stats`` default to False."""

    _nd = 1


class InstanceNorm2d(_InstanceNorm):
    """Instance normalization of ``(N, C, H, W)`` (or ``(C, H, W)``) over the spatial dims.

    Example::

        >>> nn.InstanceNorm2d(3, affine=True)(ember.randn(2, 3, 4, 4)).shape
        ember.Size([2, 3, 4, 4])
    """

    _nd = 2


class InstanceNorm3d(_InstanceNorm):
    """Instance normalization of ``(N, C, D, H, W)`` over the spatial dims."""

    _nd = 3


# ---------------------------------------------------------------------- layer/group/rms norm
class LayerNorm(Module):
    """Layer normalization over the trailing ``normalized_shape`` dims.

    Args:
        normalized_shape: trailing shape to normalize over (an int for the last dim).
        eps: added to the variance. Default: 1e-5.
        elementwise_affine: learnable ``weight`` (ones) and ``bias`` (zeros). Default: True.
        bias: with ``elementwise_affine``, also learn ``bias``. Default: True.

    Example::

        >>> nn.LayerNorm(10)(ember.randn(20, 5, 10)).shape
        ember.Size([20, 5, 10])
    """

    __constants__ = ["normalized_shape", "eps", "elementwise_affine"]

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if self.elementwise_affine:
            self.weight = Parameter(ember.empty(self.normalized_shape, device=device,
                                                dtype=dtype))
            if bias:
                self.bias = Parameter(ember.empty(self.normalized_shape, device=device,
                                                  dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        ns = self.normalized_shape
        # plain tuples of the array (no ember.Size per call): this runs on every call
        if not isinstance(input, Tensor) or input._data.ndim < len(ns) or \
                input._data.shape[input._data.ndim - len(ns):] != ns:
            got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise self._layer_error(
                RuntimeError, f"expected input (*, {', '.join(map(str, ns))}), got {got}",
                hint="normalized_shape must equal the trailing dims of the input")
        return F.layer_norm(input, ns, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return ("{normalized_shape}, eps={eps}, elementwise_affine={elementwise_affine}, "
                "bias={use_bias}".format(**self.__dict__, use_bias=self.bias is not None))


class GroupNorm(Module):
    """Group normalization: channels of ``(N, C, *)`` split into ``num_groups`` groups, each
    normalized over its channels and the spatial dims, then a per-channel affine.

    Example::

        >>> nn.GroupNorm(3, 6)(ember.randn(20, 6, 10, 10)).shape
        ember.Size([20, 6, 10, 10])
    """

    __constants__ = ["num_groups", "num_channels", "eps", "affine"]

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, device: Any = None, dtype: Any = None, *,
                 bias: bool = True) -> None:
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError("num_channels must be divisible by num_groups")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        if self.affine:
            self.weight = Parameter(ember.empty(num_channels, device=device, dtype=dtype))
            if bias:
                self.bias = Parameter(ember.empty(num_channels, device=device, dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor) or input.dim() < 2 or \
                input.shape[1] != self.num_channels:
            got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise self._layer_error(
                RuntimeError, f"expected input (N, C={self.num_channels}, *), got {got}")
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return ("{num_groups}, {num_channels}, eps={eps}, affine={affine}, "
                "bias={use_bias}".format(**self.__dict__, use_bias=self.bias is not None))


class RMSNorm(Module):
    """Root-mean-square normalization over the trailing ``normalized_shape`` dims:
    ``x / sqrt(mean(x^2) + eps) * weight``. ``eps=None`` uses the dtype's machine epsilon.

    Example::

        >>> nn.RMSNorm([2, 3])(ember.randn(2, 2, 3)).shape
        ember.Size([2, 2, 3])
    """

    __constants__ = ["normalized_shape", "eps", "elementwise_affine"]

    def __init__(self, normalized_shape: int | Sequence[int], eps: float | None = None,
                 elementwise_affine: bool = True, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if self.elementwise_affine:
            self.weight = Parameter(ember.empty(self.normalized_shape, device=device,
                                                dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        ns = self.normalized_shape
        if not isinstance(x, Tensor) or x.dim() < len(ns) or \
                tuple(x.shape[x.dim() - len(ns):]) != ns:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise self._layer_error(
                RuntimeError, f"expected input (*, {', '.join(map(str, ns))}), got {got}")
        return F.rms_norm(x, ns, self.weight, self.eps)

    def extra_repr(self) -> str:
        return ("{normalized_shape}, eps={eps}, "
                "elementwise_affine={elementwise_affine}".format(**self.__dict__))


class LocalResponseNorm(Module):
    """Local response normalization across channels (AlexNet).

    Example::

        >>> nn.LocalResponseNorm(2)(ember.randn(32, 5, 24, 24)).shape
        ember.Size([32, 5, 24, 24])
    """

    __constants__ = ["size", "alpha", "beta", "k"]

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75,
                 k: float = 1.0) -> None:
        super().__init__()
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k

    def forward(self, input: Tensor) -> Tensor:
        return F.local_response_norm(input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return "{size}, alpha={alpha}, beta={beta}, k={k}".format(**self.__dict__)


class _CrossMapLRN2dFn(ember.autograd.Function):
    """torch's legacy cross-map LRN: its forward recurrence and its own backward formula (a
    symmetric window, not the exact derivative of the forward), both reproduced for parity."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, size: int, alpha: float, beta: float,
                k: float) -> Tensor:
        channels = input.shape[1]
        sq = input * input
        pre_pad = int((size - 1) / 2 + 1)
        scales = [sq[:, :min(pre_pad, channels)].sum(1)]
        for c in range(1, channels):
            cur = scales[-1]
            if c < channels - pre_pad + 1:
                cur = cur + sq[:, c + pre_pad - 1]
            if c > pre_pad:
                cur = cur - sq[:, c - pre_pad]
            scales.append(cur)
        scale = ember.stack(scales, 1) * (alpha / size) + k
        output = input * scale.pow(-beta)
        ctx.save_for_backward(input, output, scale)
        ctx.params = (size, alpha, beta)
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple:
        input, output, scale = ctx.saved_tensors
        size, alpha, beta = ctx.params
        channels = input.shape[1]
        grad_input = scale.pow(-beta) * grad_output
        ratio = grad_output * output / scale
        before = int(size - (size - 1) / 2)
        after = channels + size - 1 - before - channels
        padded = F.pad(ratio, (0, 0, 0, 0, before, max(after, 0)))[:, :channels + size - 1]
        cs = F.pad(padded.cumsum(1), (0, 0, 0, 0, 1, 0))
        accum = cs[:, size:size + channels] - cs[:, :channels]  # window sums of `size`
        grad_input = grad_input - (2 * alpha * beta / size) * input * accum
        return grad_input, None, None, None, None


class CrossMapLRN2d(Module):
    """Legacy cross-channel LRN over 4-d input (torch's CrossMapLRN2d, from Lua torch):
    ``x * (k + alpha/size * running sum of x^2 over channels) ** -beta``, with the legacy
    running-window recurrence reproduced as is."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1) -> None:
        super().__init__()
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor) or input.dim() != 4:
            got = f"{input.dim()}D" if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"[CrossMapLRN2d] Expected input to be 4D, got {got} instead.")
        return _CrossMapLRN2dFn.apply(input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return "{size}, alpha={alpha}, beta={beta}, k={k}".format(**self.__dict__)


class _LazyInstanceNorm(_LazyNormBase, _InstanceNorm):
    """An instance norm whose ``num_features`` comes from the first input (channel dim)."""

    def _channel_dim(self, input: Tensor) -> int:
        return input.dim() - (self._nd + 1)   # (C, *) unbatched or (N, C, *)


class LazyInstanceNorm1d(_LazyInstanceNorm):
    """An :class:`InstanceNorm1d` whose ``num_features`` comes from the first input."""

    cls_to_become = InstanceNorm1d
    _nd = 1


class LazyInstanceNorm2d(_LazyInstanceNorm):
    """An :class:`InstanceNorm2d` whose ``num_features`` comes from the first input."""

    cls_to_become = InstanceNorm2d
    _nd = 2


class LazyInstanceNorm3d(_LazyInstanceNorm):
    """An :class:`InstanceNorm3d` whose ``num_features`` comes from the first input."""

    cls_to_become = InstanceNorm3d
    _nd = 3
