"""Activation layers; each stores its settings and calls its ``ember.nn.functional`` form."""
from __future__ import annotations

from typing import Any

import ember
from ember.nn import functional as F
from ember.nn.modules.module import Module
from ember.nn.parameter import Parameter
from ember.tensor import Tensor

__all__ = ["Threshold", "ReLU", "RReLU", "Hardtanh", "ReLU6", "Sigmoid", "Hardsigmoid", "Tanh",
           "SiLU", "Mish", "Hardswish", "ELU", "CELU", "SELU", "GLU", "GELU", "Hardshrink",
           "LeakyReLU", "LogSigmoid", "Softplus", "Softshrink", "PReLU", "Softsign",
           "Tanhshrink", "Softmin", "Softmax", "Softmax2d", "LogSoftmax"]


def _inplace_str(inplace: bool, first: bool = False) -> str:
    if not inplace:
        return ""
    return "inplace=True" if first else ", inplace=True"


class Threshold(Module):
    """``y = x if x > threshold else value``.

    Args:
        threshold: the threshold.
        value: the value used below it.
        inplace: do the operation in place. Default: ``False``.

    Shape:
        - Input: ``(*)``; Output: ``(*)``, same shape.

    Example::

        >>> nn.Threshold(0.1, 20)(ember.tensor([0.0, 0.5]))
        tensor([20.0000,  0.5000])
    """

    __constants__ = ["threshold", "value", "inplace"]

    def __init__(self, threshold: float, value: float, inplace: bool = False) -> None:
        super().__init__()
        self.threshold = threshold
        self.value = value
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        return F.threshold(input, self.threshold, self.value, self.inplace)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, value={self.value}{_inplace_str(self.inplace)}"


class _Inplace(Module):
    """An activation whose only setting is ``inplace``."""

    __constants__ = ["inplace"]
    _fn: Any = None

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        return type(self)._fn(input, inplace=self.inplace)

    def extra_repr(self) -> str:
        return _inplace_str(self.inplace, first=True)


class ReLU(_Inplace):
    """``max(0, x)`` elementwise.

    Args:
        inplace: do the operation in place. Default: ``False``.

    Example::

        >>> nn.ReLU()(ember.tensor([-1.0, 2.0]))
        tensor([0., 2.])
    """

    _fn = staticmethod(F.relu)


class SELU(_Inplace):
    """``scale * (max(0, x) + min(0, alpha * (exp(x) - 1)))`` with the SELU constants.

    Args:
        inplace: do the operation in place. Default: ``False``.
    """

    _fn = staticmethod(F.selu)


class SiLU(_Inplace):
    """``x * sigmoid(x)``.

    Args:
        inplace: do the operation in place. Default: ``False``.
    """

    _fn = staticmethod(F.silu)


class Mish(_Inplace):
    """``x * tanh(softplus(x))``.

    Args:
        inplace: do the operation in place. Default: ``False``.
    """

    _fn = staticmethod(F.mish)


class Hardsigmoid(_Inplace):
    """``clamp(x / 6 + 1/2, 0, 1)``.

    Args:
        inplace: do the operation in place. Default: ``False``.
    """

    _fn = staticmethod(F.hardsigmoid)

    def extra_repr(self) -> str:
        return ""


class Hardswish(_Inplace):
    """``x * relu6(x + 3) / 6``.

    Args:
        inplace: do the operation in place. Default: ``False``.
    """

    _fn = staticmethod(F.hardswish)

    def extra_repr(self) -> str:
        return ""


class RReLU(Module):
    """Randomized leaky ReLU: negative slope ~ U(lower, upper) in training, the mean in eval.

    Args:
        lower: lower bound of the slope. Default: 1/8.
        upper: upper bound of the slope. Default: 1/3.
        inplace: do the operation in place. Default: ``False``.
    """

    __constants__ = ["lower", "upper", "inplace"]

    def __init__(self, lower: float = 1.0 / 8, upper: float = 1.0 / 3,
                 inplace: bool = False) -> None:
        super().__init__()
        self.lower = lower
        self.upper = upper
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        return F.rrelu(input, self.lower, self.upper, self.training, self.inplace)

    def extra_repr(self) -> str:
        return f"lower={self.lower}, upper={self.upper}{_inplace_str(self.inplace)}"


class Hardtanh(Module):
    """Clamp to ``[min_val, max_val]``.

    Args:
        min_val: minimum. Default: -1.
        max_val: maximum. Default: 1.
        inplace: do the operation in place. Default: ``False``.
    """

    __constants__ = ["min_val", "max_val", "inplace"]

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False,
                 min_value: float | None = None, max_value: float | None = None) -> None:
        super().__init__()
        if min_value is not None:
            min_val = min_value
        if max_value is not None:
            max_val = max_value
        self.min_val = min_val
        self.max_val = max_val
        self.inplace = inplace
        if self.max_val <= self.min_val:
            raise ValueError(f"[Hardtanh] max_val ({max_val}) must be greater than min_val "
                             f"({min_val})")

    def forward(self, input: Tensor) -> Tensor:
        return F.hardtanh(input, self.min_val, self.max_val, self.inplace)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}{_inplace_str(self.inplace)}"


class ReLU6(Hardtanh):
    """``min(max(0, x), 6)``.

    Args:
        inplace: do the operation in place. Default: ``False``.
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__(0.0, 6.0, inplace)

    def extra_repr(self) -> str:
        return _inplace_str(self.inplace, first=True)


class Sigmoid(Module):
    """``1 / (1 + exp(-x))``."""

    def forward(self, input: Tensor) -> Tensor:
        return input.sigmoid()


class Tanh(Module):
    """``tanh(x)``."""

    def forward(self, input: Tensor) -> Tensor:
        return input.tanh()


class ELU(Module):
    """``x if x > 0 else alpha * (exp(x) - 1)``.

    Args:
        alpha: the scale of the negative part. Default: 1.0.
        inplace: do the operation in place. Default: ``False``.
    """

    __constants__ = ["alpha", "inplace"]

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__()
        self.alpha = alpha
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        return F.elu(input, self.alpha, self.inplace)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}{_inplace_str(self.inplace)}"


class CELU(ELU):
    """``max(0, x) + min(0, alpha * (exp(x / alpha) - 1))``.

    Args:
        alpha: the CELU alpha. Default: 1.0.
        inplace: do the operation in place. Default: ``False``.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.celu(input, self.alpha, self.inplace)


class GLU(Module):
    """Gated linear unit: ``a * sigmoid(b)`` with ``a, b`` the halves along ``dim``.

    Args:
        dim: the dim to split. Default: -1.

    Shape:
        - Input: ``(*, N, *)``; Output: ``(*, N / 2, *)``.
    """

    __constants__ = ["dim"]

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, input: Tensor) -> Tensor:
        return F.glu(input, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class GELU(Module):
    """Gaussian error linear unit ``x * Phi(x)``.

    Args:
        approximate: ``'none'`` (exact, erf) or ``'tanh'``. Default: ``'none'``.

    Example::

        >>> nn.GELU(approximate="tanh")(ember.randn(2)).shape
        ember.Size([2])
    """

    __constants__ = ["approximate"]

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, input: Tensor) -> Tensor:
        return F.gelu(input, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={repr(self.approximate)}"


class Hardshrink(Module):
    """``x if |x| > lambd else 0``.

    Args:
        lambd: the threshold. Default: 0.5.
    """

    __constants__ = ["lambd"]

    def __init__(self, lambd: float = 0.5) -> None:
        super().__init__()
        self.lambd = lambd

    def forward(self, input: Tensor) -> Tensor:
        return F.hardshrink(input, self.lambd)

    def extra_repr(self) -> str:
        return f"{self.lambd}"


class Softshrink(Hardshrink):
    """``x - lambd if x > lambd; x + lambd if x < -lambd; else 0``.

    Args:
        lambd: the threshold (>= 0). Default: 0.5.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.softshrink(input, self.lambd)

    def extra_repr(self) -> str:
        return str(self.lambd)


class LeakyReLU(Module):
    """``x if x >= 0 else negative_slope * x``.

    Args:
        negative_slope: slope for negative inputs. Default: 0.01.
        inplace: do the operation in place. Default: ``False``.
    """

    __constants__ = ["inplace", "negative_slope"]

    def __init__(self, negative_slope: float = 1e-2, inplace: bool = False) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        return F.leaky_relu(input, self.negative_slope, self.inplace)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}{_inplace_str(self.inplace)}"


class LogSigmoid(Module):
    """``log(1 / (1 + exp(-x)))``."""

    def forward(self, input: Tensor) -> Tensor:
        return F.logsigmoid(input)


class Softplus(Module):
    """``log(1 + exp(beta x)) / beta``, linear above ``threshold``.

    Args:
        beta: the beta value. Default: 1.
        threshold: above ``beta * x > threshold`` the output is ``x``. Default: 20.
    """

    __constants__ = ["beta", "threshold"]

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        super().__init__()
        self.beta = beta
        self.threshold = threshold

    def forward(self, input: Tensor) -> Tensor:
        return F.softplus(input, self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


class PReLU(Module):
    """``x if x >= 0 else a * x`` with a learnable ``a`` (one, or one per channel = dim 1).

    Args:
        num_parameters: 1 or the number of channels. Default: 1.
        init: initial value of ``a``. Default: 0.25.

    Example::

        >>> nn.PReLU(3)(ember.randn(2, 3, 4)).shape
        ember.Size([2, 3, 4])
    """

    __constants__ = ["num_parameters"]

    def __init__(self, num_parameters: int = 1, init: float = 0.25, device: Any = None,
                 dtype: Any = None) -> None:
        self.num_parameters = num_parameters
        super().__init__()
        self.init = init
        self.weight = Parameter(ember.empty(num_parameters, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with ember.no_grad():
            self.weight.fill_(self.init)

    def forward(self, input: Tensor) -> Tensor:
        if self.num_parameters != 1:
            channels = input.shape[1] if input.dim() >= 2 else (input.shape[0] if input.dim()
                                                                 else 1)
            if channels != self.num_parameters:
                raise self._layer_error(
                    RuntimeError, f"expected input with {self.num_parameters} channels (dim 1), "
                                  f"got shape {tuple(input.shape)}")
        return F.prelu(input, self.weight)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"


class Softsign(Module):
    """``x / (1 + |x|)``."""

    def forward(self, input: Tensor) -> Tensor:
        return F.softsign(input)


class Tanhshrink(Module):
    """``x - tanh(x)``."""

    def forward(self, input: Tensor) -> Tensor:
        return F.tanhshrink(input)


class _DimModule(Module):
    __constants__ = ["dim"]

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if not hasattr(self, "dim"):
            self.dim = None

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Softmin(_DimModule):
    """``softmax(-x)`` along ``dim``.

    Args:
        dim: the dim to normalise over.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.softmin(input, self.dim, _stacklevel=5)


class Softmax(_DimModule):
    """``exp(x_i) / sum_j exp(x_j)`` along ``dim``.

    Args:
        dim: the dim to normalise over.

    Example::

        >>> nn.Softmax(dim=1)(ember.randn(2, 3)).sum(1)
        tensor([1., 1.])
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.softmax(input, self.dim, _stacklevel=5)


class Softmax2d(Module):
    """Softmax over the channel dim of ``(N, C, H, W)`` or ``(C, H, W)`` input."""

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() not in (3, 4):
            raise self._layer_error(ValueError, f"Softmax2d: expected input to be 3D or 4D, got "
                                                f"{input.dim()}D instead (shape "
                                                f"{tuple(input.shape)})")
        return F.softmax(input, -3, _stacklevel=5)


class LogSoftmax(_DimModule):
    """``log(softmax(x))`` along ``dim``.

    Args:
        dim: the dim to normalise over.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.log_softmax(input, self.dim, _stacklevel=5)
