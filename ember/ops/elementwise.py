"""Elementwise ops: unary math, binary arithmetic, comparisons, logical ops and ternaries.

Unary ops are declared through :func:`unary_op`, one line each: name, forward on ``xp``,
backward in ember ops, and what backward needs saved (the input ``x`` or the output ``y``).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as _np

from ember import dtypes as _dt
from ember._state import _State
from ember.backend import cpu_kernels, cpu_team, special
from ember.errors import check, make
from ember.ops import meta as M
from ember.ops.registry import OPS, OpDef, register
from ember.ops.registry import _DEST, _NO_CTX
from ember.ops.registry import apply as _apply
from ember.tensor import Tensor, _make

LN2 = math.log(2.0)
LN10 = math.log(10.0)


def unary_op(name: str, fwd: Callable, bwd: Callable | None, *, save: str = "x",
             promote: str | None = "int_to_float", onnx: str | None = None,
             inplace: bool = True, method: bool = True, function: bool | str = True,
             node: str | None = None, doc: str = "") -> OpDef:
    """Declare a unary op. ``bwd(g, x, y)`` gets the saved input ``x`` or output ``y``."""
    differentiable = bwd is not None
    conj = name != "abs"

    class Unary(OpDef):
        __doc__ = doc or f"Elementwise ``{name}`` of ``input``."

        def forward(ctx, xp, input):
            y = fwd(xp, input)
            if save == "x":
                ctx.save(input)
            elif save == "y":
                ctx.save(y)
            return y

        def backward(ctx, grad):
            saved = ctx.saved   # (also raises when the graph was freed)
            if not save:
                return bwd(grad, None, None)
            v = saved[0]
            # holomorphic f: torch's complex gradient is grad * conj(f'(z)); the dtype test
            # inline, as this runs for every unary node of a backward
            if conj and v._dtype.category == 3:
                v = v.conj()
            return bwd(grad, v, None) if save == "x" else bwd(grad, None, v)

    return register(name, meta=M.unary, promote=promote, inplace=inplace, onnx=onnx,
                    differentiable=differentiable, method=method, function=function,
                    node_name=node)(Unary)


def _sp(xp: Any, fn: str) -> Callable:
    return getattr(special(xp), fn)


# Unary math (int inputs promote to the default float, as torch does).
unary_op("exp", lambda xp, x: xp.exp(x), lambda g, x, y: g * y, save="y", onnx="Exp")
unary_op("exp2", lambda xp, x: xp.exp2(x), lambda g, x, y: g * y * LN2, save="y")
unary_op("expm1", lambda xp, x: xp.expm1(x), lambda g, x, y: g * (y + 1), save="y")
unary_op("log", lambda xp, x: xp.log(x), lambda g, x, y: g / x, onnx="Log")
unary_op("log2", lambda xp, x: xp.log2(x), lambda g, x, y: g / (x * LN2))
unary_op("log10", lambda xp, x: xp.log10(x), lambda g, x, y: g / (x * LN10))
unary_op("log1p", lambda xp, x: xp.log1p(x), lambda g, x, y: g / (x + 1))
unary_op("sqrt", lambda xp, x: xp.sqrt(x), lambda g, x, y: g / (2 * y), save="y", onnx="Sqrt")
unary_op("rsqrt", lambda xp, x: 1 / xp.sqrt(x), lambda g, x, y: -0.5 * g * y * y * y, save="y")
unary_op("sin", lambda xp, x: xp.sin(x), lambda g, x, y: g * x.cos(), onnx="Sin")
unary_op("cos", lambda xp, x: xp.cos(x), lambda g, x, y: -g * x.sin(), onnx="Cos")
unary_op("tan", lambda xp, x: xp.tan(x), lambda g, x, y: g * (1 + y * y), save="y")
unary_op("asin", lambda xp, x: xp.arcsin(x), lambda g, x, y: g * (1 - x * x).rsqrt())
unary_op("acos", lambda xp, x: xp.arccos(x), lambda g, x, y: -g * (1 - x * x).rsqrt())
unary_op("atan", lambda xp, x: xp.arctan(x), lambda g, x, y: g / (1 + x * x))
unary_op("sinh", lambda xp, x: xp.sinh(x), lambda g, x, y: g * x.cosh())
unary_op("cosh", lambda xp, x: xp.cosh(x), lambda g, x, y: g * x.sinh())
unary_op("tanh", lambda xp, x: xp.tanh(x), lambda g, x, y: g * (1 - y * y), save="y",
         onnx="Tanh")
unary_op("asinh", lambda xp, x: xp.arcsinh(x), lambda g, x, y: g * (x * x + 1).rsqrt())
unary_op("acosh", lambda xp, x: xp.arccosh(x), lambda g, x, y: g * (x * x - 1).rsqrt())
unary_op("atanh", lambda xp, x: xp.arctanh(x), lambda g, x, y: g / (1 - x * x))
unary_op("sigmoid", lambda xp, x: _sp(xp, "expit")(x), lambda g, x, y: g * y * (1 - y),
         save="y", onnx="Sigmoid")
unary_op("erf", lambda xp, x: _sp(xp, "erf")(x),
         lambda g, x, y: g * (2 / math.sqrt(math.pi)) * (-(x * x)).exp(), onnx="Erf")
unary_op("erfc", lambda xp, x: _sp(xp, "erfc")(x),
         lambda g, x, y: g * (-2 / math.sqrt(math.pi)) * (-(x * x)).exp())
unary_op("reciprocal", lambda xp, x: 1 / x, lambda g, x, y: -g * y * y, save="y",
         onnx="Reciprocal")


def _keep_int(fn: Callable) -> Callable:
    """Rounding ops leave integer tensors unchanged (NumPy would make them float64)."""
    def fwd(xp, x):
        return x.copy() if x.dtype.kind in "iub" else fn(xp, x)
    return fwd


def _no_int(name: str, x: Any) -> Any:
    raise RuntimeError(f'"{name}" not implemented for integer dtype {x.dtype}')


def _cj(t: Any) -> Any:
    """Conjugate for complex tensors (Wirtinger gradients); real tensors pass through."""
    if isinstance(t, complex):  # a Python complex scalar operand
        return t.conjugate()
    return t.conj() if isinstance(t, Tensor) and t._dtype.is_complex else t


def _zeros_bwd(g: Tensor, x: Any, y: Any) -> Tensor:
    return g * 0


unary_op("floor", _keep_int(lambda xp, x: xp.floor(x)), _zeros_bwd, save="", promote=None,
         onnx="Floor")
unary_op("ceil", _keep_int(lambda xp, x: xp.ceil(x)), _zeros_bwd, save="", promote=None,
         onnx="Ceil")
unary_op("trunc", _keep_int(lambda xp, x: xp.trunc(x)), _zeros_bwd, save="", promote=None)
unary_op("frac", lambda xp, x: x - xp.trunc(x) if x.dtype.kind in "fc" else _no_int("frac", x),
         lambda g, x, y: g, save="", promote=None)
unary_op("neg", lambda xp, x: -x, lambda g, x, y: -g, save="", promote=None, onnx="Neg")
unary_op("positive", lambda xp, x: x.copy(), lambda g, x, y: g, save="", promote=None,
         inplace=False)
unary_op("abs", lambda xp, x: xp.abs(x),
         lambda g, x, y: g * (x.sgn() if x.is_complex() else x.sign()), promote=None, onnx="Abs")
unary_op("sign", lambda xp, x: xp.sign(x), _zeros_bwd, save="", promote=None, onnx="Sign")
unary_op("square", lambda xp, x: x * x, lambda g, x, y: 2 * g * x, promote=None)
unary_op("relu", lambda xp, x: _relu(xp, x), lambda g, x, y: _relu_backward(g, y),
         save="y", promote=None, onnx="Relu")
unary_op("conj", lambda xp, x: xp.conj(x) if x.dtype.kind == "c" else x.copy(),
         lambda g, x, y: g.conj(), save="", promote=None, inplace=False)
unary_op("logical_not", lambda xp, x: xp.logical_not(x), None, promote=None, onnx="Not")
unary_op("bitwise_not", lambda xp, x: _bitwise_not(xp, x), None, promote=None)
unary_op("isnan", lambda xp, x: xp.isnan(x), None, promote=None, inplace=False, onnx="IsNaN")
unary_op("isinf", lambda xp, x: xp.isinf(x), None, promote=None, inplace=False, onnx="IsInf")
unary_op("isfinite", lambda xp, x: xp.isfinite(x), None, promote=None, inplace=False)

# ---------------------------------------------------------------------- relu
# NumPy's maximum against a scalar runs a scalar loop (~0.5 ns an element on the bench
# machine); against an array it runs its SIMD loop (~0.17 ns), so the CPU relu takes its
# zeros from a read-only block, in slices. Blocks of 2**17 elements measured as fast as one
# input-sized zeros array (LeNet's 1.2 MB activations).
_RELU_BLOCK = 1 << 17
_zero_blocks: dict = {}


def _relu(xp: Any, x: Any) -> Any:
    """``max(x, 0)``, NaN propagating (torch's clamp_min)."""
    if x.size < 4096 or xp.__name__ != "numpy" or x.dtype.kind != "f" or \
            not (x.flags.c_contiguous or x.flags.f_contiguous):
        y = xp.maximum(x, 0)
        # NumPy promotes bool with a Python int; only then is a cast needed (astype's call
        # costs ~0.3 us even when it returns its input)
        return y if y.dtype == x.dtype else y.astype(x.dtype)
    if x.dtype.itemsize >= 4:
        nb = cpu_kernels.kernels()
        if nb is not None:
            out = xp.empty_like(x)
            order = "C" if x.flags.c_contiguous else "F"
            nb.relu(x.reshape(-1, order=order), out.reshape(-1, order=order))
            return out
    zeros = _zero_blocks.get(x.dtype)
    if zeros is None:
        zeros = _zero_blocks[x.dtype] = xp.zeros(_RELU_BLOCK, x.dtype)
        zeros.flags.writeable = False
    out = xp.empty_like(x)  # same memory order as x (F-ordered stays F-ordered)
    order = "C" if x.flags.c_contiguous else "F"
    src, dst = x.reshape(-1, order=order), out.reshape(-1, order=order)
    n = src.size
    for i in range(0, n, _RELU_BLOCK):
        j = min(i + _RELU_BLOCK, n)
        xp.maximum(src[i:j], zeros[:j - i], out=dst[i:j])
    return out


def _relu_backward(grad: Tensor, y: Tensor) -> Tensor:
    """relu's gradient from its output. When no graph of the backward is wanted (the engine's
    usual mode) and both are NumPy arrays of one shape, the select runs on the arrays: the
    dispatcher round trip was about half of a small relu node's backward. (On CUDA relu's
    own fused backward runs instead.) Otherwise the differentiable op."""
    g = grad._data
    if not _State.enabled and type(g) is _np.ndarray and type(y._data) is _np.ndarray and \
            g.shape == y._data.shape and _DEST[0] is None:
        return _make(OPS["threshold_backward"].forward(_NO_CTX, _np, g, y._data, 0),
                     grad._dtype, grad._device)
    return _threshold_backward(grad, y, 0)


def _threshold_backward(grad: Tensor, input: Tensor, threshold: float) -> Tensor:
    return _apply(OPS["threshold_backward"], (grad, input, threshold))


def _threshold_backward_meta(op: Any, grad: Any, input: Any, threshold: Any) -> M.TensorMeta:
    shape = grad._data.shape
    if shape != input._data.shape:  # message built only on failure: this runs per relu node
        raise make(RuntimeError, op.name, f"grad {tuple(shape)} and input "
                                          f"{tuple(input._data.shape)} must have the same shape")
    return M.TensorMeta(shape)


# Below this many elements the exact select (NumPy's where) is cheaper than the multiply's
# fixed costs (an errstate block, a max and an isnan check: ~4 us); above it the multiply's
# one mixed-type pass wins (~3x faster per element). Measured crossover ~4K float32 elements.
_THRESHOLD_SELECT_MAX = 4096


@register("threshold_backward", meta=_threshold_backward_meta, method=False, function=False)
class ThresholdBackward(OpDef):
    """``grad`` where ``input <= threshold`` is false, else 0 (a select, as torch: an inf or
    NaN gradient of a clipped element gives 0); the gradient of relu (``input`` may be relu's
    output), in one op instead of a comparison and a promoting multiply."""

    def forward(ctx, xp, grad, input, threshold):
        ctx.save(input)
        ctx.threshold = threshold
        if grad.dtype.kind != "f" or grad.size < _THRESHOLD_SELECT_MAX:
            # NaN <= threshold is False: a NaN input passes the gradient, as in torch
            return xp.where(input <= threshold, grad.dtype.type(0), grad)
        if xp is _np and grad.dtype == input.dtype and grad.dtype.itemsize >= 4 and \
                grad.shape == input.shape and grad.flags.c_contiguous and \
                input.flags.c_contiguous:
            nb = cpu_kernels.kernels()
            if nb is not None:
                out = xp.empty_like(grad)
                nb.threshold_backward(grad.reshape(-1), input.reshape(-1),
                                      grad.dtype.type(threshold), out.reshape(-1))
                return out
        mask = xp.asarray(input <= threshold)  # 0-d inputs compare to a scalar
        xp.logical_not(mask, out=mask)  # torch passes the gradient where input is NaN
        # float * bool is one mixed-type ufunc pass, ~10x faster than NumPy's where; it differs
        # from the select only where an inf/NaN gradient meets a clipped element (0 * inf is
        # NaN), which a NaN max reveals (one reduction, ~1/4 of the multiply's time)
        with _np.errstate(invalid="ignore"):
            out = xp.multiply(grad, mask)
        if xp.isnan(out.max()):
            out = xp.where(mask, grad, grad.dtype.type(0))
        return out

    def backward(ctx, gg):
        # linear in grad, with the same selection; no gradient through the comparison
        (input,) = ctx.saved
        return _threshold_backward(gg, input, ctx.threshold), None, None


def _bitwise_not(xp: Any, x: Any) -> Any:
    if x.dtype.kind == "f":
        raise TypeError("bitwise_not is only supported for integer and boolean tensors")
    return xp.invert(x)


@register("round", meta=M.unary, inplace=True, onnx="Round")
class Round(OpDef):
    """Round to the nearest integer (half to even), or to ``decimals`` places."""

    def forward(ctx, xp, input, decimals=0):
        if input.dtype.kind in "iub":
            if decimals:
                raise RuntimeError(f'"round_decimals" not implemented for {input.dtype}')
            return input.copy()
        if decimals == 0:
            return xp.round(input)
        scale = 10.0 ** decimals
        return (xp.round(input * scale) / scale).astype(input.dtype)

    def backward(ctx, grad):
        return grad * 0, None


# ---------------------------------------------------------------------- binary arithmetic
def _check_alpha(name: str, alpha: Any, dt: Any) -> None:
    if isinstance(alpha, float) and dt.kind in "iub":
        raise make(RuntimeError, name, f"For integral input tensors, argument alpha must not "
                                       f"be a floating point number (got {alpha}).")


@register("add", meta=M.elementwise, promote="default", promote_args=(0, 1), inplace=True,
          sig="input, other, alpha=1", dunders=("__add__", "__radd__"), onnx="Add")
class Add(OpDef):
    """``input + alpha * other``, with broadcasting and torch's type promotion."""

    def forward(ctx, xp, input, other, alpha):
        if alpha != 1:
            _check_alpha("add", alpha, getattr(input, "dtype", getattr(other, "dtype", None)))
            ctx.alpha = alpha
            return xp.add(input, other * alpha)
        ctx.alpha = 1
        if xp is _np and getattr(input, "size", 0) >= cpu_team.MIN_SIZE:
            # (a residual add: two cores of MKL's OpenMP team, see backend/cpu_team)
            out = cpu_team.binary(cpu_team.ADD, input, other)
            if out is not None:
                return out
        return xp.add(input, other)

    def backward(ctx, grad):
        return grad, (grad if ctx.alpha == 1 else grad * ctx.alpha), None


@register("sub", meta=M.elementwise, promote="default", promote_args=(0, 1), inplace=True,
          sig="input, other, alpha=1", dunders=("__sub__",), onnx="Sub")
class Sub(OpDef):
    """``input - alpha * other``."""

    def forward(ctx, xp, input, other, alpha):
        dt = getattr(input, "dtype", getattr(other, "dtype", None))
        if dt is not None and dt.kind == "b":
            raise RuntimeError("Subtraction, the `-` operator, with two bool tensors is not "
                            "supported. Use the `^` or `logical_xor()` operator instead.")
        ctx.alpha = alpha
        return xp.subtract(input, other * alpha if alpha != 1 else other)

    def backward(ctx, grad):
        return grad, -grad if ctx.alpha == 1 else grad * (-ctx.alpha), None


@register("mul", meta=M.elementwise, promote="default", promote_args=(0, 1), inplace=True,
          dunders=("__mul__", "__rmul__"), onnx="Mul")
class Mul(OpDef):
    """Elementwise product ``input * other``."""

    def forward(ctx, xp, input, other):
        # each operand is needed only for the other's gradient
        need = ctx.needs_input_grad
        ctx.save(input if need[1] else None, other if need[0] else None)
        return xp.multiply(input, other)

    def backward(ctx, grad):
        a, b = ctx.saved
        ga = grad * _cj(b) if ctx.next_edges[0] is not None else None
        gb = grad * _cj(a) if ctx.next_edges[1] is not None else None
        return ga, gb


def _div_kind(args: tuple) -> str:
    return "int_to_float" if len(args) < 3 or args[2] is None else "default"


@register("div", meta=M.elementwise, promote=_div_kind, promote_args=(0, 1), inplace=True,
          sig="input, other, *, rounding_mode=None", dunders=("__truediv__",), onnx="Div")
class Div(OpDef):
    """``input / other``; ``rounding_mode`` 'trunc' or 'floor' rounds the quotient."""

    def forward(ctx, xp, input, other, rounding_mode):
        ctx.mode = rounding_mode
        if rounding_mode is None:
            ctx.save(input, other)
            return xp.true_divide(input, other)
        if rounding_mode not in ("trunc", "floor"):
            raise ValueError(f"div expected rounding_mode to be one of None, 'trunc', or 'floor' "
                             f"but found '{rounding_mode}'")
        dt = getattr(input, "dtype", None) or getattr(other, "dtype")
        if dt.kind in "iu":
            if xp.any(xp.asarray(other) == 0):
                raise ZeroDivisionError("ZeroDivisionError")
            if rounding_mode == "floor":
                return xp.floor_divide(input, other)
            q = xp.floor_divide(xp.abs(input), xp.abs(other))
            return (q * xp.sign(input) * xp.sign(other)).astype(dt)
        q = xp.true_divide(input, other)
        return xp.floor(q) if rounding_mode == "floor" else xp.trunc(q)

    def backward(ctx, grad):
        if ctx.mode is not None:
            return grad * 0, grad * 0, None
        a, b = ctx.saved
        ga = grad / _cj(b) if ctx.next_edges[0] is not None else None
        gb = -grad * _cj(a) / _cj(b * b) if ctx.next_edges[1] is not None else None
        return ga, gb, None


@register("remainder", meta=M.elementwise, promote="default", promote_args=(0, 1), inplace=True,
          dunders=("__mod__",))
class Remainder(OpDef):
    """Python-style modulus: the result has the sign of ``other``."""

    def forward(ctx, xp, input, other):
        if getattr(input, "dtype", getattr(other, "dtype", None)).kind in "iu" and xp.any(
                xp.asarray(other) == 0):
            raise ZeroDivisionError("ZeroDivisionError")
        ctx.save(input, other)
        return xp.remainder(input, other)

    def backward(ctx, grad):
        a, b = ctx.saved
        gb = -grad * (a / b).floor() if ctx.next_edges[1] is not None else None
        return grad, gb


@register("fmod", meta=M.elementwise, promote="default", promote_args=(0, 1), inplace=True)
class Fmod(OpDef):
    """C-style remainder: the result has the sign of ``input``."""

    def forward(ctx, xp, input, other):
        ctx.save(input, other)
        return xp.fmod(input, other)

    def backward(ctx, grad):
        a, b = ctx.saved
        gb = -grad * (a / b).trunc() if ctx.next_edges[1] is not None else None
        return grad, gb


@register("floor_divide", meta=M.elementwise, promote="default", promote_args=(0, 1),
          inplace=True, dunders=("__floordiv__",), differentiable=False)
class FloorDivide(OpDef):
    """``floor(input / other)``."""

    def forward(ctx, xp, input, other):
        if getattr(input, "dtype", getattr(other, "dtype", None)).kind in "iu" and xp.any(
                xp.asarray(other) == 0):
            raise ZeroDivisionError("ZeroDivisionError")
        return xp.floor_divide(input, other)

    def backward(ctx, grad):
        return grad * 0, grad * 0


@register("pow", meta=M.elementwise, promote="default", promote_args=(0, 1), inplace=True,
          sig="input, exponent", dunders=("__pow__",), onnx="Pow")
class Pow(OpDef):
    """``input ** exponent``; either may be a Python number."""

    def forward(ctx, xp, input, exponent):
        dt = getattr(input, "dtype", None)
        if dt is None:
            dt = exponent.dtype
        if dt.kind in "iu":
            e = xp.asarray(exponent)
            if e.dtype.kind in "iu" and bool((e < 0).any()):
                raise RuntimeError("Integers to negative integer powers are not allowed.")
        y = xp.power(input, exponent)
        ctx.save(input, exponent, y)
        return y

    def backward(ctx, grad):
        x, e, y = ctx.saved
        gx = ge = None
        if ctx.next_edges[0] is not None:
            if isinstance(e, Tensor):
                gx = _where(e == 0, grad * 0, grad * _cj(e * x.pow(e - 1)))
            else:
                gx = grad * 0 if e == 0 else grad * _cj(e * x.pow(e - 1))
        if ctx.next_edges[1] is not None:
            ge = grad * _cj(y * x.log()) if isinstance(x, Tensor) else grad * _cj(y) * math.log(x)
            if isinstance(x, Tensor):
                ge = _where((x == 0) & (e >= 0), grad * 0, ge)
        return gx, ge


@register("atan2", meta=M.elementwise, promote="int_to_float", promote_args=(0, 1), inplace=True,
          sig="input, other")
class Atan2(OpDef):
    """Elementwise arctangent of ``input / other`` with quadrant."""

    def forward(ctx, xp, input, other):
        ctx.save(input, other)
        return xp.arctan2(input, other)

    def backward(ctx, grad):
        a, b = ctx.saved
        denom = a * a + b * b
        return grad * b / denom, -grad * a / denom


def _minmax(name: str, fn: str, onnx: str) -> None:
    pick_first = (lambda a, b: a > b) if fn == "maximum" else (lambda a, b: a < b)

    class MinMax(OpDef):
        __doc__ = f"Elementwise {fn} of two tensors (NaN propagates)."

        def forward(ctx, xp, input, other):
            ctx.save(input, other)
            return getattr(xp, fn)(input, other)

        def backward(ctx, grad):
            a, b = ctx.saved
            first = pick_first(a, b)
            tie = a == b
            wa = first.to(grad.dtype) + tie.to(grad.dtype) * 0.5
            return grad * wa, grad * (1 - wa)

    register(name, meta=M.elementwise, promote="default", promote_args=(0, 1), onnx=onnx)(MinMax)


_minmax("maximum", "maximum", "Max")
_minmax("minimum", "minimum", "Min")


# ---------------------------------------------------------------------- comparisons and logic
def _compare(name: str, fn: str, dunder: str, onnx: str | None) -> None:
    class Compare(OpDef):
        __doc__ = f"Elementwise ``{fn}`` comparison; returns a bool tensor."

        def forward(ctx, xp, input, other):
            return getattr(xp, fn)(input, other)

    register(name, meta=M.elementwise, promote="bool", promote_args=(0, 1), inplace=True,
             differentiable=False, dunders=(dunder,), onnx=onnx)(Compare)


_compare("eq", "equal", "__eq__", "Equal")
_compare("ne", "not_equal", "__ne__", None)
_compare("lt", "less", "__lt__", "Less")
_compare("le", "less_equal", "__le__", "LessOrEqual")
_compare("gt", "greater", "__gt__", "Greater")
_compare("ge", "greater_equal", "__ge__", "GreaterOrEqual")


def _logical(name: str, fn: str, onnx: str | None) -> None:
    class Logical(OpDef):
        __doc__ = f"Elementwise ``{fn}`` of the truth values; returns a bool tensor."

        def forward(ctx, xp, input, other):
            return getattr(xp, fn)(input, other)

    register(name, meta=M.elementwise, promote="bool", promote_args=(0, 1), inplace=True,
             differentiable=False, onnx=onnx)(Logical)


_logical("logical_and", "logical_and", "And")
_logical("logical_or", "logical_or", "Or")
_logical("logical_xor", "logical_xor", "Xor")


def _bitwise(name: str, fn: str, dunders: tuple) -> None:
    class Bitwise(OpDef):
        __doc__ = f"Elementwise ``{fn}`` of integer or bool tensors."

        def forward(ctx, xp, input, other):
            for v in (input, other):
                if getattr(v, "dtype", None) is not None and v.dtype.kind in "fc" or isinstance(
                        v, float):
                    raise TypeError(f"{name} is only supported for integer and boolean tensors")
            return getattr(xp, fn)(input, other)

    register(name, meta=M.elementwise, promote="default", promote_args=(0, 1), inplace=True,
             differentiable=False, dunders=dunders)(Bitwise)


_bitwise("bitwise_and", "bitwise_and", ("__and__", "__rand__"))
_bitwise("bitwise_or", "bitwise_or", ("__or__", "__ror__"))
_bitwise("bitwise_xor", "bitwise_xor", ("__xor__", "__rxor__"))
_bitwise("bitwise_left_shift", "left_shift", ("__lshift__",))
_bitwise("bitwise_right_shift", "right_shift", ("__rshift__",))


# ---------------------------------------------------------------------- ternary
def _where_meta(op: Any, condition: Any, input: Any, other: Any) -> Any:
    check(isinstance(condition, Tensor), "where",
          f"argument 'condition' must be Tensor, not {type(condition).__name__}", TypeError)
    check(condition._dtype is _dt.bool or condition._dtype is _dt.uint8, "where",
          f"where expected condition to be a boolean tensor, but got a tensor with dtype "
          f"{condition._dtype}", RuntimeError)
    return M.elementwise(op, condition, input, other)


@register("where", meta=_where_meta, promote="default", promote_args=(1, 2), method=True,
          onnx="Where", sig="condition, input, other")
class Where(OpDef):
    """Pick ``input`` where ``condition`` holds, else ``other``."""

    def forward(ctx, xp, condition, input, other):
        ctx.save(condition)
        return xp.where(condition, input, other)

    def backward(ctx, grad):
        (c,) = ctx.saved
        zero = grad * 0
        return None, _where(c, grad, zero), _where(c, zero, grad)


def _where(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    from ember.ops.registry import OPS, apply
    return apply(OPS["where"], (c, a, b))


def _clamp_meta(op: Any, input: Any, min: Any = None, max: Any = None) -> Any:
    check(min is not None or max is not None, "clamp",
          "At least one of 'min' or 'max' must not be None")
    return M.elementwise(op, input, min, max)


@register("clamp", meta=_clamp_meta, promote="default", promote_args=(0, 1, 2), inplace=True,
          sig="input, min=None, max=None", onnx="Clip")
class Clamp(OpDef):
    """Limit ``input`` to ``[min, max]``; either bound may be a tensor or a number."""

    def forward(ctx, xp, input, min, max):
        ctx.save(input, min if isinstance(min, xp.ndarray) else None,
                 max if isinstance(max, xp.ndarray) else None)
        ctx.min_s = min
        ctx.max_s = max
        out = input
        if min is not None:
            out = xp.maximum(out, min)
        if max is not None:
            out = xp.minimum(out, max)
        return xp.asarray(out).astype(input.dtype, copy=out is input)

    def backward(ctx, grad):
        x, tmin, tmax = ctx.saved
        lo = tmin if tmin is not None else ctx.min_s
        hi = tmax if tmax is not None else ctx.max_s
        keep = None
        if lo is not None:
            keep = x >= lo
        if hi is not None:
            keep = (x <= hi) if keep is None else keep & (x <= hi)
        gmin = grad * (x < lo) if tmin is not None else None
        gmax = grad * (x > hi) if tmax is not None else None
        return grad * keep, gmin, gmax


@register("lerp", meta=M.elementwise, promote="default", promote_args=(0, 1, 2), inplace=True,
          sig="input, end, weight")
class Lerp(OpDef):
    """``input + weight * (end - input)``."""

    def forward(ctx, xp, input, end, weight):
        ctx.save(input, end, weight if isinstance(weight, xp.ndarray) else None)
        ctx.w = weight
        return (input + weight * (end - input)).astype(input.dtype, copy=False)

    def backward(ctx, grad):
        x, e, tw = ctx.saved
        w = tw if tw is not None else ctx.w
        gw = grad * (e - x) if tw is not None else None
        return grad * (1 - w), grad * w, gw


@register("addcmul", meta=M.elementwise, promote="default", promote_args=(0, 1, 2), inplace=True,
          sig="input, tensor1, tensor2, *, value=1")
class Addcmul(OpDef):
    """``input + value * tensor1 * tensor2``."""

    def forward(ctx, xp, input, tensor1, tensor2, value):
        ctx.save(tensor1, tensor2)
        ctx.value = value
        return input + value * tensor1 * tensor2

    def backward(ctx, grad):
        a, b = ctx.saved
        v = ctx.value
        return grad, grad * b * v, grad * a * v, None


@register("addcdiv", meta=M.elementwise, promote="default", promote_args=(0, 1, 2), inplace=True,
          sig="input, tensor1, tensor2, *, value=1")
class Addcdiv(OpDef):
    """``input + value * tensor1 / tensor2``."""

    def forward(ctx, xp, input, tensor1, tensor2, value):
        if tensor1.dtype.kind in "iub" and tensor2.dtype.kind in "iub":
            raise RuntimeError("Integer division with addcdiv is no longer supported, and in a "
                               "future release addcdiv will perform a true division of tensor1 "
                               "and tensor2.")
        ctx.save(tensor1, tensor2)
        ctx.value = value
        return input + value * tensor1 / tensor2

    def backward(ctx, grad):
        a, b = ctx.saved
        v = ctx.value
        return grad, grad * v / b, -grad * v * a / (b * b), None
