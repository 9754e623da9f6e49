"""Padding layers: Constant/Zero/Reflection/Replication/CircularPad 1d-3d over ``F.pad``.

``padding`` is an int (all sides) or a tuple ``(left, right[, top, bottom[, front, back]])``
and is stored as that tuple, as in torch.
"""
from __future__ import annotations

from typing import Any

from ember.nn import functional as F
from ember.nn.modules.module import Module
from ember.tensor import Tensor

__all__ = ["ConstantPad1d", "ConstantPad2d", "ConstantPad3d", "ZeroPad1d", "ZeroPad2d",
           "ZeroPad3d", "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d",
           "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d", "CircularPad1d",
           "CircularPad2d", "CircularPad3d"]


def _pads(padding: Any, nd: int) -> tuple:
    if isinstance(padding, (list, tuple)):
        padding = tuple(int(p) for p in padding)
        if len(padding) != 2 * nd:
            raise ValueError(f"padding must be an int or a {2 * nd}-tuple, got {padding}")
        return padding
    return (int(padding),) * (2 * nd)


class _PadNd(Module):
    _nd = 1
    _mode = "constant"
    __constants__ = ["padding"]

    def __init__(self, padding: Any) -> None:
        super().__init__()
        self.padding = _pads(padding, self._nd)

    def _check_rank(self, input: Any) -> None:
        nd = self._nd
        if not isinstance(input, Tensor) or input.dim() not in (nd + 1, nd + 2):
            got = f"{input.dim()}D input" if isinstance(input, Tensor) else type(input).__name__
            shape = f", shape {tuple(input.shape)}" if isinstance(input, Tensor) else ""
            raise ValueError(f"[{type(self).__name__}] expected {nd + 1}D or {nd + 2}D input "
                             f"(got {got}{shape})")

    def forward(self, input: Tensor) -> Tensor:
        self._check_rank(input)
        return F.pad(input, self.padding, self._mode)

    def extra_repr(self) -> str:
        return f"{self.padding}"


class _ConstantPadNd(_PadNd):
    __constants__ = ["padding", "value"]

    def __init__(self, padding: Any, value: float) -> None:
        super().__init__(padding)
        self.value = value

    def forward(self, input: Tensor) -> Tensor:
        return F.pad(input, self.padding, "constant", self.value)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, value={self.value}"


class ConstantPad1d(_ConstantPadNd):
    """Pad the last dim with a constant ``value``."""

    _nd = 1


class ConstantPad2d(_ConstantPadNd):
    """Pad the last 2 dims with a constant ``value``.

    Example::

        >>> nn.ConstantPad2d((1, 1, 2, 0), 3.5)(ember.randn(1, 2, 2)).shape
        ember.Size([1, 4, 4])
    """

    _nd = 2


class ConstantPad3d(_ConstantPadNd):
    """Pad the last 3 dims with a constant ``value``."""

    _nd = 3


class _ZeroPadNd(_ConstantPadNd):
    def __init__(self, padding: Any) -> None:
        super().__init__(padding, 0.0)

    def extra_repr(self) -> str:
        return f"{self.padding}"


class ZeroPad1d(_ZeroPadNd):
    """Pad the last dim with zeros."""

    _nd = 1


class ZeroPad2d(_ZeroPadNd):
    """Pad the last 2 dims with zeros."""

    _nd = 2


class ZeroPad3d(_ZeroPadNd):
    """Pad the last 3 dims with zeros."""

    _nd = 3


class ReflectionPad1d(_PadNd):
    """Pad the last dim by reflecting the input at its border (padding < input size)."""

    _nd = 1
    _mode = "reflect"


class ReflectionPad2d(_PadNd):
    """Pad the last 2 dims by reflection.

    Example::

        >>> nn.ReflectionPad2d(1)(ember.arange(9.).reshape(1, 1, 3, 3)).shape
        ember.Size([1, 1, 5, 5])
    """

    _nd = 2
    _mode = "reflect"


class ReflectionPad3d(_PadNd):
    """Pad the last 3 dims by reflection."""

    _nd = 3
    _mode = "reflect"


class ReplicationPad1d(_PadNd):
    """Pad the last dim by repeating the border value."""

    _nd = 1
    _mode = "replicate"


class ReplicationPad2d(_PadNd):
    """Pad the last 2 dims by repeating the border values."""

    _nd = 2
    _mode = "replicate"


class ReplicationPad3d(_PadNd):
    """Pad the last 3 dims by repeating the border values."""

    _nd = 3
    _mode = "replicate"


class CircularPad1d(_PadNd):
    """Pad the last dim circularly (wrap around)."""

    _nd = 1
    _mode = "circular"


class CircularPad2d(_PadNd):
    """Pad the last 2 dims circularly."""

    _nd = 2
    _mode = "circular"


class CircularPad3d(_PadNd):
    """Pad the last 3 dims circularly."""

    _nd = 3
    _mode = "circular"
