"""Dropout family: ``dropout``, ``dropout1d/2d/3d``, ``alpha_dropout``,
``feature_alpha_dropout``.

Masks are drawn from the input's device generator (``ember.manual_seed`` makes them
reproducible). With ``training=False`` each returns its input unchanged, as torch does.
"""
from __future__ import annotations

import warnings

import ember
from ember.errors import check, make
from ember.tensor import Tensor

__all__ = ["dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
           "feature_alpha_dropout"]

# SELU's negative saturation value -scale * alpha: alpha dropout sets dropped units to it
_ALPHA_P = -1.7580993408473766


def _check_p(name: str, p: float) -> None:
    if p < 0.0 or p > 1.0:
        raise make(ValueError, name, f"dropout probability has to be between 0 and 1, but got "
                                     f"{p}")


def _keep_mask(input: Tensor, shape: tuple, p: float) -> Tensor:
    """A {0, 1} mask of ``shape`` in the input's dtype, each entry kept with probability 1-p."""
    return ember.empty(shape, dtype=input.dtype, device=input.device).bernoulli_(1.0 - p)


def _finish(input: Tensor, out: Tensor, inplace: bool) -> Tensor:
    return input.copy_(out) if inplace else out


def _src(input: Tensor, inplace: bool) -> Tensor:
    # in-place under autograd: compute from a clone so the saved operand stays valid
    if inplace and input.requires_grad and ember.is_grad_enabled():
        return input.clone()
    return input


def _dropout_with_mask(input: Tensor, p: float, mask_shape: tuple, inplace: bool) -> Tensor:
    x = _src(input, inplace)
    if p == 1.0:
        return _finish(input, x * 0, inplace)
    if x._device.type == "cuda" and mask_shape == tuple(x.shape):
        # one fused kernel each way, mask hashed from the CUDA generator (backend/cuda_ops)
        from ember.backend.cuda_ops.kernels_dropout import fused_dropout
        out = fused_dropout(x, p)
        if out is not NotImplemented:
            return _finish(input, out, inplace)
    mask = _keep_mask(input, mask_shape, p)
    return _finish(input, x * (mask / (1.0 - p)), inplace)


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``.

    Args:
        input: any shape.
        p: drop probability. Default: 0.5.
        training: apply dropout only if True. Default: True.
        inplace: write into ``input``. Default: False.

    Example::

        >>> F.dropout(ember.ones(4), 0.5).unique().tolist()  # doctest: +SKIP
        [0.0, 2.0]
    """
    check(isinstance(input, Tensor), "dropout",
          f"argument 'input' must be Tensor, not {type(input).__name__}", TypeError)
    _check_p("dropout", p)
    if not training or p == 0.0:
        return input
    return _dropout_with_mask(input, p, tuple(input.shape), inplace)


def _feature_mask_shape(input: Tensor) -> tuple:
    # one draw per (batch, channel): (N, C, 1, 1, ...)
    return tuple(input.shape[:2]) + (1,) * (input.dim() - 2)


def _feature_dropout(name: str, input: Tensor, p: float, training: bool, inplace: bool,
                     batched_dims: int) -> Tensor:
    check(isinstance(input, Tensor), name,
          f"argument 'input' must be Tensor, not {type(input).__name__}", TypeError)
    _check_p(name, p)
    if input.dim() not in (batched_dims - 1, batched_dims):
        raise make(RuntimeError, name,
                   f"Expected {batched_dims - 1}D or {batched_dims}D input, but received a "
                   f"{input.dim()}D input (shape {tuple(input.shape)}).")
    if not training or p == 0.0:
        return input
    unbatched = input.dim() == batched_dims - 1
    x = input.unsqueeze(0) if unbatched else input
    shape = _feature_mask_shape(x)
    if unbatched:
        shape = shape[1:]
    return _dropout_with_mask(input, p, shape, inplace)


def dropout1d(input: Tensor, p: float = 0.5, training: bool = True,
              inplace: bool = False) -> Tensor:
    """Zero whole channels of ``(N, C, L)`` or ``(C, L)`` input with probability ``p``."""
    return _feature_dropout("dropout1d", input, p, training, inplace, 3)


def dropout2d(input: Tensor, p: float = 0.5, training: bool = True,
              inplace: bool = False) -> Tensor:
    """Zero whole channels of ``(N, C, H, W)`` input with probability ``p``.

    As in torch, a 3-D input is treated as ``(N, C, L)`` (channel-wise 1-D dropout), with a
    warning.
    """
    check(isinstance(input, Tensor), "dropout2d",
          f"argument 'input' must be Tensor, not {type(input).__name__}", TypeError)
    _check_p("dropout2d", p)
    if input.dim() not in (3, 4):
        warnings.warn(f"dropout2d: Received a {input.dim()}-D input to dropout2d, which is "
                      "deprecated and will result in an error in a future release. To retain the "
                      "behavior and silence this warning, please use dropout instead. Note that "
                      "dropout2d exists to provide channel-wise dropout on inputs with 2 spatial "
                      "dimensions, a channel dimension, and an optional batch dimension (i.e. 3D "
                      "or 4D inputs).", stacklevel=2)
    if input.dim() == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that "
                      "channel-wise 1D dropout behavior is desired - input is interpreted as "
                      "shape (N, C, L), where C is the channel dim. This behavior will change in "
                      "a future release to interpret the input as one without a batch dimension, "
                      "i.e. shape (C, H, W). To maintain the 1D channel-wise dropout behavior, "
                      "please switch to using dropout1d instead.", stacklevel=2)
    if not training or p == 0.0:
        return input
    if input.dim() < 2:
        return _dropout_with_mask(input, p, tuple(input.shape), inplace)
    return _dropout_with_mask(input, p, _feature_mask_shape(input), inplace)


def dropout3d(input: Tensor, p: float = 0.5, training: bool = True,
              inplace: bool = False) -> Tensor:
    """Zero whole channels of ``(N, C, D, H, W)`` or ``(C, D, H, W)`` input."""
    check(isinstance(input, Tensor), "dropout3d",
          f"argument 'input' must be Tensor, not {type(input).__name__}", TypeError)
    _check_p("dropout3d", p)
    if input.dim() not in (4, 5):
        warnings.warn(f"dropout3d: Received a {input.dim()}-D input to dropout3d, which is "
                      "deprecated and will result in an error in a future release. To retain the "
                      "behavior and silence this warning, please use dropout instead. Note that "
                      "dropout3d exists to provide channel-wise dropout on inputs with 3 spatial "
                      "dimensions, a channel dimension, and an optional batch dimension (i.e. 4D "
                      "or 5D inputs).", stacklevel=2)
    if not training or p == 0.0:
        return input
    if input.dim() == 4:
        shape = (input.shape[0],) + (1,) * 3
    elif input.dim() >= 2:
        shape = _feature_mask_shape(input)
    else:
        shape = tuple(input.shape)
    return _dropout_with_mask(input, p, shape, inplace)


def _alpha(name: str, input: Tensor, p: float, training: bool, inplace: bool,
           mask_shape: tuple) -> Tensor:
    _check_p(name, p)
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return _finish(input, input * 0, inplace)
    keep = _keep_mask(input, mask_shape, p)
    a = ((1 - p) * (1 + p * _ALPHA_P ** 2)) ** -0.5
    b = -a * _ALPHA_P * p
    # kept units: a * x + b; dropped units: a * alpha' + b (keeps SELU's mean and variance)
    x = _src(input, inplace)
    out = x * (keep * a) + ((1 - keep) * (a * _ALPHA_P) + b)
    return _finish(input, out, inplace)


def alpha_dropout(input: Tensor, p: float = 0.5, training: bool = False,
                  inplace: bool = False) -> Tensor:
    """Dropout that keeps zero mean and unit variance of SELU activations (Klambauer et al.)."""
    check(isinstance(input, Tensor), "alpha_dropout",
          f"argument 'input' must be Tensor, not {type(input).__name__}", TypeError)
    return _alpha("alpha_dropout", input, p, training, inplace, tuple(input.shape))


def feature_alpha_dropout(input: Tensor, p: float = 0.5, training: bool = False,
                          inplace: bool = False) -> Tensor:
    """Alpha dropout of whole channels (dim 1)."""
    check(isinstance(input, Tensor), "feature_alpha_dropout",
          f"argument 'input' must be Tensor, not {type(input).__name__}", TypeError)
    shape = _feature_mask_shape(input) if input.dim() >= 2 else tuple(input.shape)
    return _alpha("feature_alpha_dropout", input, p, training, inplace, shape)
