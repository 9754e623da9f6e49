"""Convolutions: ``conv1d/2d/3d``, ``conv_transpose1d/2d/3d``, ``unfold`` and ``fold``.

Each is a thin front over the ``convolution`` / ``im2col`` / ``col2im`` primitives
(ember/ops/nn_conv.py): it accepts unbatched input, string padding, and checks the input's
rank with a message that names the function.
"""
from __future__ import annotations

from typing import Any

import ember
from ember.errors import check, make
from ember.ops.nn_conv import ntuple
from ember.ops.registry import OPS, apply
from ember.tensor import Tensor

__all__ = ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "unfold", "fold", "conv_tbc"]

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def _batched(name: str, input: Any, nd: int) -> tuple[Tensor, bool]:
    """``input`` with a batch dim, and whether one was added (unbatched input)."""
    # checks format their messages only on failure (this runs on every conv call)
    if not isinstance(input, Tensor):
        raise make(TypeError, name, f"argument 'input' must be Tensor, not "
                                    f"{type(input).__name__}")
    if input._data.ndim == nd + 2:
        return input, False
    if input.ndim == nd + 1:
        return input.unsqueeze(0), True
    if input.ndim != nd + 2:
        raise make(RuntimeError, name,
                   f"Expected {nd + 1}D (unbatched) or {nd + 2}D (batched) input to {name}, but "
                   f"got input of size: {list(input.shape)}",
                   hint=f"{name} takes (N, C, {_SPATIAL[nd]}) or unbatched (C, {_SPATIAL[nd]})")
    return input, False


def _same_padding(name: str, input: Tensor, weight: Tensor, stride: tuple, dilation: tuple,
                  nd: int) -> tuple[Tensor, tuple]:
    """Input (extra-padded on the right where needed) and symmetric padding for 'same'."""
    check(all(s == 1 for s in stride), name, "padding='same' is not supported for strided "
                                             "convolutions", ValueError)
    pads = []
    extra = []
    for i in range(nd):
        total = dilation[i] * (weight.shape[2 + i] - 1)
        left = total // 2
        pads.append(left)
        extra.append(total - 2 * left)
    if any(extra):
        # torch pads the odd remainder on the right (end) of each spatial dim
        flat = []
        for e in reversed(extra):
            flat += [0, e]
        input = apply(OPS["_pad"], (input, tuple(flat), "constant", 0.0))
    return input, tuple(pads)


def _conv(name: str, nd: int, input: Tensor, weight: Tensor, bias: Tensor | None, stride: Any,
          padding: Any, dilation: Any, groups: int) -> Tensor:
    x, unbatched = _batched(name, input, nd)
    if not isinstance(weight, Tensor):
        raise make(TypeError, name, f"argument 'weight' must be Tensor, not "
                                    f"{type(weight).__name__}")
    if weight._data.ndim != nd + 2:
        raise make(RuntimeError, name,
                   f"weight expects {nd + 2} dims (out, in/groups, {', '.join(['k'] * nd)}), "
                   f"got shape {tuple(weight.shape)}",
                   hint=f"for {weight.ndim - 2}-d kernels use conv{weight.ndim - 2}d"
                   if weight.ndim >= 3 else None)
    stride = ntuple(stride, nd, "stride", name)
    dilation = ntuple(dilation, nd, "dilation", name)
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * nd
        elif padding == "same":
            x, padding = _same_padding(name, x, weight, stride, dilation, nd)
        else:
            raise make(ValueError, name, f"Invalid padding string '{padding}', should be one of "
                                         f"'valid' or 'same'")
    else:
        padding = ntuple(padding, nd, "padding", name)
    out = apply(OPS["convolution"], (x, weight, bias, stride, padding, dilation, False,
                                     (0,) * nd, groups))
    return out.squeeze(0) if unbatched else out


def conv1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
           padding: Any = 0, dilation: Any = 1, groups: int = 1) -> Tensor:
    """1-d convolution of ``input (N, C_in, L)`` with ``weight (C_out, C_in/groups, k)``.

    ``padding`` may be an int, a tuple, ``'valid'`` or ``'same'`` (stride 1).
    """
    return _conv("conv1d", 1, input, weight, bias, stride, padding, dilation, groups)


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
           padding: Any = 0, dilation: Any = 1, groups: int = 1) -> Tensor:
    """2-d convolution of ``input (N, C_in, H, W)`` with ``weight (C_out, C_in/groups, kH, kW)``.

    Example::

        >>> x = ember.randn(1, 3, 8, 8)
        >>> conv2d(x, ember.randn(4, 3, 3, 3), padding=1).shape
        ember.Size([1, 4, 8, 8])
    """
    return _conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups)


def conv3d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
           padding: Any = 0, dilation: Any = 1, groups: int = 1) -> Tensor:
    """3-d convolution of ``input (N, C_in, D, H, W)`` with ``weight (C_out, C_in/groups, kD, kH, kW)``."""
    return _conv("conv3d", 3, input, weight, bias, stride, padding, dilation, groups)


def _conv_t(name: str, nd: int, input: Tensor, weight: Tensor, bias: Tensor | None,
            stride: Any, padding: Any, output_padding: Any, groups: int,
            dilation: Any) -> Tensor:
    x, unbatched = _batched(name, input, nd)
    check(isinstance(weight, Tensor), name, f"argument 'weight' must be Tensor, not "
                                            f"{type(weight).__name__}", TypeError)
    check(weight.ndim == nd + 2, name,
          f"weight expects {nd + 2} dims (in, out/groups, {', '.join(['k'] * nd)}), got shape "
          f"{tuple(weight.shape)}")
    if isinstance(padding, str):
        raise make(TypeError, name, f"padding must be an int or a tuple of ints, got "
                                    f"'{padding}'", hint="string padding is only for convNd")
    args = (x, weight, bias, ntuple(stride, nd, "stride", name),
            ntuple(padding, nd, "padding", name), ntuple(dilation, nd, "dilation", name), True,
            ntuple(output_padding, nd, "output_padding", name), groups)
    out = apply(OPS["convolution"], args)
    return out.squeeze(0) if unbatched else out


def conv_transpose1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
                     padding: Any = 0, output_padding: Any = 0, groups: int = 1,
                     dilation: Any = 1) -> Tensor:
    """1-d transposed convolution; ``weight`` is ``(C_in, C_out/groups, k)``."""
    return _conv_t("conv_transpose1d", 1, input, weight, bias, stride, padding, output_padding,
                   groups, dilation)


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
                     padding: Any = 0, output_padding: Any = 0, groups: int = 1,
                     dilation: Any = 1) -> Tensor:
    """2-d transposed convolution ("deconvolution"); ``weight`` is ``(C_in, C_out/groups, kH, kW)``.

    The output size is ``(in - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1``.
    """
    return _conv_t("conv_transpose2d", 2, input, weight, bias, stride, padding, output_padding,
                   groups, dilation)


def conv_transpose3d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
                     padding: Any = 0, output_padding: Any = 0, groups: int = 1,
                     dilation: Any = 1) -> Tensor:
    """3-d transposed convolution; ``weight`` is ``(C_in, C_out/groups, kD, kH, kW)``."""
    return _conv_t("conv_transpose3d", 3, input, weight, bias, stride, padding, output_padding,
                   groups, dilation)


def conv_tbc(input: Tensor, weight: Tensor, bias: Tensor, pad: int = 0) -> Tensor:
    """1-d convolution over ``(time, batch, channel)`` input with ``weight (k, C_in, C_out)``."""
    x = input.permute(1, 2, 0)
    out = conv1d(x, weight.permute(2, 1, 0), bias, padding=pad)
    return out.permute(2, 0, 1)


def unfold(input: Tensor, kernel_size: Any, dilation: Any = 1, padding: Any = 0,
           stride: Any = 1) -> Tensor:
    """Extract sliding local blocks: ``(N, C, *spatial)`` -> ``(N, C * prod(kernel_size), L)``.

    Unbatched ``(C, H, W)`` input gives ``(C * prod(kernel_size), L)``.
    """
    check(isinstance(input, Tensor), "unfold", f"argument 'input' must be Tensor, not "
                                               f"{type(input).__name__}", TypeError)
    check(input.ndim in (3, 4), "unfold",
          f"Input Error: Only 3D or 4D input Tensors are supported (got {input.ndim}D, shape "
          f"{tuple(input.shape)})", NotImplementedError if False else RuntimeError)
    unbatched = input.ndim == 3
    x = input.unsqueeze(0) if unbatched else input
    out = apply(OPS["im2col"], (x, ntuple(kernel_size, 2, "kernel_size", "unfold"),
                                ntuple(dilation, 2, "dilation", "unfold"),
                                ntuple(padding, 2, "padding", "unfold"),
                                ntuple(stride, 2, "stride", "unfold")))
    return out.squeeze(0) if unbatched else out


def fold(input: Tensor, output_size: Any, kernel_size: Any, dilation: Any = 1, padding: Any = 0,
         stride: Any = 1) -> Tensor:
    """Combine sliding local blocks ``(N, C * prod(kernel_size), L)`` into ``(N, C, *output_size)``
    (overlapping values are summed); the adjoint of :func:`unfold`."""
    check(isinstance(input, Tensor), "fold", f"argument 'input' must be Tensor, not "
                                             f"{type(input).__name__}", TypeError)
    check(input.ndim in (2, 3), "fold",
          f"Input Error: Only unbatched (2D) or batched (3D) input Tensors are supported (got "
          f"{input.ndim}D, shape {tuple(input.shape)})")
    unbatched = input.ndim == 2
    x = input.unsqueeze(0) if unbatched else input
    out = apply(OPS["col2im"], (x, ntuple(output_size, 2, "output_size", "fold"),
                                ntuple(kernel_size, 2, "kernel_size", "fold"),
                                ntuple(dilation, 2, "dilation", "fold"),
                                ntuple(padding, 2, "padding", "fold"),
                                ntuple(stride, 2, "stride", "fold")))
    return out.squeeze(0) if unbatched else out
