"""Fused activation primitives: ``gelu`` (exact and tanh) and ``silu``.

Both are composites in principle (``x * Phi(x)``, ``x * sigmoid(x)``); as primitives they run
one array expression and record one node instead of five to seven, which is what transformer
MLPs spend their activation time on. The decompositions are the opdb references
(tests/opdb/nn_activation.py). Half types compute in float32 and round once, as torch does.
"""
from __future__ import annotations

import math
from typing import Any

from ember.backend import special
from ember.ops import meta as M
from ember.ops.registry import OpDef, register

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_C = 0.044715


def _float_work(name: str, xp: Any, x: Any) -> Any:
    if x.dtype.kind in "iubc":
        raise RuntimeError(f'"{name}" not implemented for integer dtype {x.dtype}')
    return x.astype(xp.float32) if x.dtype.itemsize < 4 else x


@register("gelu", meta=M.unary, sig="input, approximate='none'", method=False,
          function=False)
class Gelu(OpDef):
    """``x * Phi(x)`` (``approximate='tanh'``: ``0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))``)."""

    def forward(ctx, xp, input, approximate):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate argument must be either none or tanh, got "
                             f"'{approximate}'")
        x = _float_work("gelu", xp, input)
        if approximate == "tanh":
            y = 0.5 * x * (1.0 + xp.tanh(_SQRT_2_OVER_PI * (x + _C * x * x * x)))
        else:
            y = 0.5 * x * (1.0 + special(xp).erf(x * _INV_SQRT_2))
        ctx.approximate = approximate
        ctx.save(input)
        return y.astype(input.dtype, copy=False)

    def backward(ctx, grad):
        (x,) = ctx.saved
        if ctx.approximate == "tanh":
            inner = _SQRT_2_OVER_PI * (x + _C * x * x * x)
            t = inner.tanh()
            d_inner = _SQRT_2_OVER_PI * (1 + 3 * _C * x * x)
            return grad * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * d_inner), None
        cdf = 0.5 * (1 + (x * _INV_SQRT_2).erf())
        pdf = (-0.5 * x * x).exp() * _INV_SQRT_2PI
        return grad * (cdf + x * pdf), None


@register("silu", meta=M.unary, method=False, function=False)
class Silu(OpDef):
    """``x * sigmoid(x)``."""

    def forward(ctx, xp, input):
        x = _float_work("silu", xp, input)
        y = x * special(xp).expit(x)
        ctx.save(input)
        return y.astype(input.dtype, copy=False)

    def backward(ctx, grad):
        (x,) = ctx.saved
        s = x.sigmoid()
        return grad * (s * (1 + x * (1 - s)))
