"""Special functions and more elementwise math: erfinv, lgamma, digamma, polygamma, mvlgamma,
Bessel i0/i0e/i1/i1e, sinc, xlogy/xlog1py, logit, hypot, logaddexp(2), copysign, nextafter,
frexp/ldexp, float_power, fmax/fmin, heaviside, gcd/lcm, nan_to_num, sign/inf/real tests,
isclose/allclose/equal, deg2rad/rad2deg, and the ``special_*`` ops behind ``ember.special``
(erfcx, log_ndtr, ndtr, ndtri, entr, zeta).

Forwards use ``ember.backend.special(xp)`` (scipy.special or cupyx.scipy.special).
"""
from __future__ import annotations

import math
from collections import namedtuple
from typing import Any, Callable

import numpy as np

from ember import dtypes as _dt
from ember.backend import special
from ember.errors import check, make
from ember.ops import meta as M
from ember.ops.elementwise import unary_op, _where
from ember.ops.registry import OPS, OpDef, TensorMeta, composite, register
from ember.ops.scatter import inplace_variant
from ember.tensor import Tensor

SQRT_PI = math.sqrt(math.pi)
SQRT_2PI = math.sqrt(2 * math.pi)
LN2 = math.log(2.0)


def _sp(xp: Any, name: str) -> Callable:
    return getattr(special(xp), name)


def _keep(xp: Any, y: Any, x: Any) -> Any:
    """The result in the input's (already promoted) dtype: SciPy may compute in float64."""
    return xp.asarray(y).astype(x.dtype, copy=False)


def _unary(name: str, fwd: Callable, bwd: Callable | None, *, save: str = "x",
           promote: str | None = "int_to_float", inplace: bool = True, method: bool = True,
           function: bool | str = True, node: str | None = None, doc: str = "") -> None:
    """Declare a unary op through the shared factory (``elementwise.unary_op``)."""
    unary_op(name, fwd, bwd, save=save, promote=promote, inplace=inplace, method=method,
             function=function, node=node, doc=doc or f"Elementwise ``{name}``.")


def _float_fwd(fn: str) -> Callable:
    def fwd(xp, x):
        if x.dtype.kind not in "f":
            raise make(RuntimeError, fn, f'"{fn}" not implemented for dtype {x.dtype}')
        work = x.astype(xp.float32) if x.dtype.itemsize < 4 else x
        return _keep(xp, _sp(xp, fn)(work), x)
    return fwd


# ---------------------------------------------------------------------- gamma family, erfinv
_unary("erfinv", _float_fwd("erfinv"),
       lambda g, x, y: g * (SQRT_PI / 2) * (y * y).exp(), save="y",
       doc="Inverse error function: ``erf(erfinv(x)) = x`` on (-1, 1).")
_unary("lgamma", _float_fwd("gammaln"), lambda g, x, y: g * x.digamma(),
       doc="``log(|gamma(x)|)``.")
_unary("digamma", _float_fwd("psi"), lambda g, x, y: g * OPS["polygamma"].function(1, x),
       doc="The logarithmic derivative of gamma, ``psi(x)`` (``-inf`` at 0, like torch).")


def _polygamma_meta(op: Any, n: int, input: Any) -> TensorMeta:
    check(isinstance(n, (int, np.integer)) and not isinstance(n, bool), "polygamma",
          f"argument 'n' must be int, not {type(n).__name__}", TypeError)
    check(n >= 0, "polygamma", f"polygamma(n, x) does not support negative n, got n={n}")
    return M.unary(op, input)


@register("polygamma", meta=_polygamma_meta, promote="int_to_float", promote_args=(1,),
          method=False)
class Polygamma(OpDef):
    """The ``n``-th derivative of digamma at ``input``."""

    def forward(ctx, xp, n, input):
        ctx.n = n
        ctx.save(input)
        work = input.astype(xp.float32) if input.dtype.itemsize < 4 else input
        if n == 0:
            return _keep(xp, _sp(xp, "psi")(work), input)
        # an array order: cupyx's polygamma broadcasts n with x
        order = xp.full(work.shape, n, dtype=work.dtype)
        return _keep(xp, _sp(xp, "polygamma")(order, work), input)

    def backward(ctx, grad):
        (x,) = ctx.saved
        return None, grad * OPS["polygamma"].function(ctx.n + 1, x)


def _polygamma_method(self: Tensor, n: int) -> Tensor:
    """``polygamma(n, self)``."""
    return OPS["polygamma"].function(n, self)


Tensor.polygamma = _polygamma_method
Tensor.polygamma_ = inplace_variant("polygamma_", _polygamma_method)


@composite()
def mvlgamma(input: Tensor, p: int) -> Tensor:
    """Multivariate log-gamma of dimension ``p``:
    ``sum_{i<p} lgamma(x - i/2) + p(p-1)/4 log(pi)``."""
    check(p >= 1, "mvlgamma", f"p has to be greater than or equal to 1, got {p}")
    x = input if input.dtype.category >= 2 else input.to(_dt.get_default_dtype())
    total = x.lgamma()
    for i in range(1, p):
        total = total + (x - i / 2).lgamma()
    return total + p * (p - 1) / 4 * math.log(math.pi)


Tensor.mvlgamma_ = inplace_variant("mvlgamma_", mvlgamma)

# ---------------------------------------------------------------------- Bessel functions
_unary("i0", _float_fwd("i0"), lambda g, x, y: g * OPS["special_i1"].function(x),
       doc="Modified Bessel function of the first kind, order 0.")
def _nz(x: Tensor) -> Tensor:
    """``x`` with zeros replaced by one (the zero branch is chosen by ``where``)."""
    return _where(x == 0, x * 0 + 1, x)


def _unary_xy(name: str, fn: str, bwd: Callable, node: str) -> None:
    """A ``special_*`` unary op whose backward needs both ``x`` and ``y``."""
    fwd = _float_fwd(fn)

    class UnaryXY(OpDef):
        __doc__ = f"Elementwise ``scipy.special.{fn}``."

        def forward(ctx, xp, input):
            y = fwd(xp, input)
            ctx.save(input, y)
            return y

        def backward(ctx, grad):
            x, y = ctx.saved
            return bwd(grad, x, y)

    register(name, meta=M.unary, promote="int_to_float", function=False, method=False,
             node_name=node)(UnaryXY)


# ---------------------------------------------------------------------- sinc, logit, angles
def _sinc_bwd(g: Tensor, x: Tensor, y: Any) -> Tensor:
    px = x * math.pi
    safe = _nz(x)
    d = (px * px.cos() - px.sin()) / (math.pi * safe * safe)
    return g * _where(x == 0, x * 0, d)


_unary("sinc", lambda xp, x: _keep(xp, xp.sinc(x), x), _sinc_bwd,
       doc="Normalized sinc: ``sin(pi x) / (pi x)``, 1 at 0.")
_unary("deg2rad", lambda xp, x: x * (math.pi / 180), lambda g, x, y: g * (math.pi / 180),
       save="", doc="Degrees to radians.")
_unary("rad2deg", lambda xp, x: x * (180 / math.pi), lambda g, x, y: g * (180 / math.pi),
       save="", doc="Radians to degrees.")


@register("logit", meta=M.unary, promote="int_to_float", inplace=True, sig="input, eps=None")
class Logit(OpDef):
    """``log(p / (1 - p))``; with ``eps``, ``p`` is first clamped to ``[eps, 1 - eps]``."""

    def forward(ctx, xp, input, eps):
        x = xp.clip(input, eps, 1 - eps) if eps is not None else input
        ctx.eps = eps
        ctx.save(input)
        with np.errstate(divide="ignore", invalid="ignore"):
            return _keep(xp, xp.log(x / (1 - x)), input)

    def backward(ctx, grad):
        (x,) = ctx.saved
        g = grad / (x * (1 - x))
        if ctx.eps is not None:
            g = _where((x < ctx.eps) | (x > 1 - ctx.eps), g * 0, g)
        return g, None


@register("nan_to_num", meta=M.unary, inplace=True,
          sig="input, nan=0.0, posinf=None, neginf=None")
class NanToNum(OpDef):
    """Replace NaN by ``nan``, +inf by ``posinf`` and -inf by ``neginf`` (the dtype's largest
    and smallest finite values by default)."""

    def forward(ctx, xp, input, nan, posinf, neginf):
        ctx.save(input)
        if input.dtype.kind not in "fc":
            return input.copy()
        info = np.finfo(input.dtype)
        hi = float(info.max) if posinf is None else posinf
        lo = float(info.min) if neginf is None else neginf
        out = xp.where(xp.isnan(input), nan, input)
        out = xp.where(xp.isposinf(input), hi, out)
        return xp.where(xp.isneginf(input), lo, out).astype(input.dtype)

    def backward(ctx, grad):
        (x,) = ctx.saved
        return grad * x.isfinite(), None, None, None


def _bool_unary(name: str, fn: Callable, doc: str) -> None:
    class Test(OpDef):
        __doc__ = doc

        def forward(ctx, xp, input):
            return fn(xp, input)

    register(name, meta=M.unary, differentiable=False)(Test)


def _no_complex(name: str, x: Any) -> None:
    if x.dtype.kind == "c":
        raise TypeError(f"{name} is not implemented for complex tensors.")


def _isposinf(xp: Any, x: Any) -> Any:
    _no_complex("isposinf", x)
    return xp.isposinf(x) if x.dtype.kind == "f" else xp.zeros(x.shape, bool)


def _isneginf(xp: Any, x: Any) -> Any:
    _no_complex("isneginf", x)
    return xp.isneginf(x) if x.dtype.kind == "f" else xp.zeros(x.shape, bool)


def _signbit(xp: Any, x: Any) -> Any:
    _no_complex("signbit", x)
    return xp.signbit(x) if x.dtype.kind != "b" else xp.zeros(x.shape, bool)


_bool_unary("signbit", _signbit, "Whether the sign bit is set (true for -0.0 too).")
_bool_unary("isposinf", _isposinf, "Whether each element is +inf.")
_bool_unary("isneginf", _isneginf, "Whether each element is -inf.")
_bool_unary("isreal", lambda xp, x: (x.imag == 0) if x.dtype.kind == "c"
            else xp.ones(x.shape, bool), "Whether each element has a zero imaginary part.")


# ---------------------------------------------------------------------- special_* unaries
_unary_xy("special_erfcx", "erfcx",
          lambda g, x, y: g * (2 * x * y - 2 / SQRT_PI), "SpecialErfcx")
_unary_xy("special_log_ndtr", "log_ndtr",
          lambda g, x, y: g * (-(x * x) / 2 - y).exp() / SQRT_2PI, "SpecialLogNdtr")
_unary_xy("special_ndtr", "ndtr",
          lambda g, x, y: g * (-(x * x) / 2).exp() / SQRT_2PI, "SpecialNdtr")
_unary_xy("special_ndtri", "ndtri",
          lambda g, x, y: g * SQRT_2PI * (y * y / 2).exp(), "SpecialNdtri")


def _entr(xp: Any, x: Any) -> Any:
    with np.errstate(divide="ignore", invalid="ignore"):
        y = xp.where(x > 0, -x * xp.log(xp.where(x > 0, x, 1)), 0.0)
        y = xp.where(x < 0, -xp.inf, y)
        return _keep(xp, xp.where(xp.isnan(x), xp.nan, y), x)


def _entr_bwd(g: Tensor, x: Tensor, y: Any) -> Tensor:
    return g * -(1 + x.log())


_unary("special_entr", _entr, _entr_bwd, function=False, method=False, inplace=False,
       node="SpecialEntr")

_unary_xy("special_i0e", "i0e",
          lambda g, x, y: g * (OPS["special_i1e"].function(x) - x.sign() * y), "SpecialI0e")
_unary_xy("special_i1", "i1",
          lambda g, x, y: g * _where(x == 0, x * 0 + 0.5, x.i0() - y / _nz(x)), "SpecialI1")
_unary_xy("special_i1e", "i1e",
          lambda g, x, y: g * _where(x == 0, x * 0 + 0.5, OPS["special_i0e"].function(x)
                                     - y * (x.sign() + 1 / _nz(x))), "SpecialI1e")


# ---------------------------------------------------------------------- binary math
def _binary(name: str, fwd: Callable, bwd: Callable | None, *, promote: str = "int_to_float",
            inplace: bool = True, method: bool = True, function: bool = True,
            node: str | None = None, sig: str = "input, other", doc: str = "") -> None:
    class Binary(OpDef):
        __doc__ = doc

        def forward(ctx, xp, input, other):
            y = fwd(xp, input, other)
            ctx.save(input, other, y)
            return y

        def backward(ctx, grad):
            a, b, y = ctx.saved
            return bwd(grad, a, b, y, ctx.next_edges)

    register(name, meta=M.elementwise, promote=promote, promote_args=(0, 1), inplace=inplace,
             method=method, function=function, differentiable=bwd is not None, sig=sig,
             node_name=node)(Binary)


def _result_dtype(xp: Any, a: Any, b: Any) -> Any:
    return (a if hasattr(a, "dtype") else xp.asarray(b)).dtype


def _xlogy_fwd(log: Callable) -> Callable:
    def fwd(xp, x, y):
        dt = x.dtype if hasattr(x, "dtype") else y.dtype
        with np.errstate(divide="ignore", invalid="ignore"):
            out = x * log(xp, y)
        out = xp.where((xp.asarray(x) == 0) & ~xp.isnan(xp.asarray(y)), 0, out)
        return xp.asarray(out).astype(dt, copy=False)
    return fwd


def _xlogy_bwd(name: str, shift: float) -> Callable:
    def bwd(g, a, b, y, edges):
        ga = gb = None
        if edges[0] is not None:
            nz = (a != 0).to(g.dtype) if isinstance(a, Tensor) else float(a != 0)
            ga = g * OPS[name].function(nz, b)
        if edges[1] is not None:
            gb = g * a / (b + shift) if shift else g * a / b
        return ga, gb
    return bwd


_binary("xlogy", _xlogy_fwd(lambda xp, y: xp.log(y)), _xlogy_bwd("xlogy", 0.0),
        sig="input, other", doc="``input * log(other)``, 0 where ``input`` is 0 (unless "
                                "``other`` is NaN).")
_binary("special_xlog1py", _xlogy_fwd(lambda xp, y: xp.log1p(y)),
        _xlogy_bwd("special_xlog1py", 1.0), inplace=False, method=False, function=False,
        node="SpecialXlog1py", doc="``input * log1p(other)``, 0 where ``input`` is 0.")


def _float_pair(name: str) -> Callable:
    def check_float(xp, a, b):
        dt = _result_dtype(xp, a, b)
        if dt.kind != "f":
            raise make(RuntimeError, name, f'"{name}" not implemented for dtype {dt}')
    return check_float


def _hypot_fwd(xp, a, b):
    _float_pair("hypot")(xp, a, b)
    return xp.hypot(a, b)


_binary("hypot", _hypot_fwd,
        lambda g, a, b, y, e: (g * a / y if e[0] is not None else None,
                               g * b / y if e[1] is not None else None),
        promote="default", doc="``sqrt(input**2 + other**2)``.")
_binary("logaddexp", lambda xp, a, b: (_float_pair("logaddexp")(xp, a, b), xp.logaddexp(a, b))[1],
        lambda g, a, b, y, e: (g * (a - y).exp() if e[0] is not None else None,
                               g * (b - y).exp() if e[1] is not None else None),
        promote="default", inplace=False, doc="``log(exp(input) + exp(other))``, stably.")
_binary("logaddexp2", lambda xp, a, b: (_float_pair("logaddexp2")(xp, a, b),
                                        xp.logaddexp2(a, b))[1],
        lambda g, a, b, y, e: (g * (a - y).exp2() if e[0] is not None else None,
                               g * (b - y).exp2() if e[1] is not None else None),
        promote="default", inplace=False, doc="``log2(2**input + 2**other)``, stably.")


def _copysign_bwd(g, a, b, y, e):
    ga = None
    if e[0] is not None:
        ratio = y / _nz(a)
        ga = g * _where(a == 0, ratio * 0, ratio)
    gb = g * 0 if e[1] is not None else None
    return ga, gb


_binary("copysign", lambda xp, a, b: xp.copysign(a, b), _copysign_bwd,
        doc="The magnitude of ``input`` with the sign of ``other``.")


def _nextafter_fwd(xp, a, b):
    _float_pair("nextafter")(xp, a, b)
    return xp.nextafter(a, b)


_binary("nextafter", _nextafter_fwd, None, promote="default",
        doc="The next representable floating-point value after ``input`` towards ``other``.")


def _fminmax(name: str, fn: str, ge: Callable) -> None:
    def bwd(g, a, b, y, e):
        pick_a = ge(a, b) | b.isnan() if isinstance(b, Tensor) else ge(a, b)
        ga = g.masked_fill(~pick_a, 0) if e[0] is not None else None
        gb = g.masked_fill(pick_a, 0) if e[1] is not None else None
        return ga, gb

    _binary(name, lambda xp, a, b: getattr(xp, fn)(a, b), bwd, promote="default",
            inplace=False, doc=f"Elementwise {fn[1:]}imum; a NaN loses to a number.")


_fminmax("fmax", "fmax", lambda a, b: a >= b)
_fminmax("fmin", "fmin", lambda a, b: a <= b)


def _heaviside_fwd(xp, a, b):
    if getattr(a, "dtype", None) != getattr(b, "dtype", None):
        raise RuntimeError("heaviside is not yet implemented for tensors with different dtypes.")
    if a.dtype.kind == "c":
        raise TypeError("heaviside is not yet implemented for complex tensors.")
    return xp.where(a == 0, b, (a > 0).astype(a.dtype)).astype(a.dtype)


def _heaviside_meta(op: Any, input: Any, values: Any) -> TensorMeta:
    check(isinstance(values, Tensor), "heaviside", f"argument 'values' must be Tensor, not "
                                                   f"{type(values).__name__}", TypeError)
    check(input._dtype is values._dtype, "heaviside",
          f"heaviside is not yet implemented for tensors with different dtypes: input "
          f"{input._dtype}, values {values._dtype}")
    return M.elementwise(op, input, values)


@register("heaviside", meta=_heaviside_meta, inplace=True, differentiable=False)
class Heaviside(OpDef):
    """Step function: 0 for negative, 1 for positive, ``values`` at zero."""

    def forward(ctx, xp, input, values):
        return _heaviside_fwd(xp, input, values)


def _int_binary(name: str, fn: str) -> None:
    def fwd(xp, a, b):
        dt = _result_dtype(xp, a, b)
        if dt.kind not in "iu":
            raise make(RuntimeError, name, f'"{name}" not implemented for dtype {dt}; it needs '
                                           f'integer tensors')
        return getattr(xp, fn)(a, b)
    _binary(name, fwd, None, promote="default",
            doc=f"Elementwise {'greatest common divisor' if fn == 'gcd' else 'least common multiple'} "
                f"of integer tensors.")


_int_binary("gcd", "gcd")
_int_binary("lcm", "lcm")


def _zeta_fwd(xp, x, q):
    _float_pair("zeta")(xp, x, q)
    dt = _result_dtype(xp, x, q)
    return xp.asarray(_sp(xp, "zeta")(x, q)).astype(dt, copy=False)


def _zeta_bwd(g, x, q, y, e):
    gq = None
    if e[1] is not None:
        gq = g * -x * OPS["special_zeta"].function(x + 1, q)
    if e[0] is not None:
        raise make(RuntimeError, "special_zeta", "the derivative for 'zeta' with respect to "
                                                 "'self' (x) is not implemented (as in torch)")
    return None, gq


_binary("special_zeta", _zeta_fwd, _zeta_bwd, promote="default", inplace=False, method=False,
        function=False, node="SpecialZeta", doc="Hurwitz zeta function ``zeta(x, q)``.")


# ---------------------------------------------------------------------- frexp / ldexp / powers
frexp_out = namedtuple("frexp", ("mantissa", "exponent"))
frexp_out.__module__ = "ember.return_types"


def _frexp_meta(op: Any, input: Any) -> TensorMeta:
    check(input._dtype.category == 2, "frexp", f"torch.frexp() only supports floating-point "
                                               f"dtypes, got {input._dtype}")
    return M.unary(op, input)


@register("frexp", meta=_frexp_meta, nondiff_outputs=(1,), out_type=frexp_out)
class Frexp(OpDef):
    """Split into mantissa in ``[0.5, 1)`` and an int32 exponent: ``x = m * 2**e``."""

    def forward(ctx, xp, input):
        work = input.astype(xp.float32) if input.dtype.itemsize < 4 else input
        m, e = xp.frexp(work)
        ctx.save(e.astype(input.dtype))
        return m.astype(input.dtype), e.astype(xp.int32)

    def backward(ctx, gm, ge):
        (e,) = ctx.saved
        return gm / e.exp2()


@composite()
def ldexp(input: Tensor, other: Any) -> Tensor:
    """``input * 2**other`` (``other`` a tensor, as in torch)."""
    check(isinstance(other, Tensor), "ldexp", f"ldexp(): argument 'other' (position 2) must "
                                              f"be Tensor, not {type(other).__name__}", TypeError)
    return input * OPS["pow"].function(2.0, other)


Tensor.ldexp_ = inplace_variant("ldexp_", ldexp)


@composite()
def float_power(input: Any, exponent: Any) -> Tensor:
    """``input ** exponent`` computed in double precision (complex128 for complex input)."""
    def up(v):
        if isinstance(v, Tensor):
            return v.to(_dt.complex128 if v.dtype.is_complex else _dt.float64)
        return v
    a, b = up(input), up(exponent)
    if not isinstance(a, Tensor):
        a = float(a) if not isinstance(a, complex) else a
    return OPS["pow"].function(a, b)


def _checked_float_power(self: Tensor, exponent: Any) -> Tensor:
    # in place, the result dtype (double) must be self's dtype
    check(self.dtype in (_dt.float64, _dt.complex128), "float_power_",
          f"the base given to float_power_ has dtype {self.dtype} but the operation's result "
          f"requires dtype Double")
    return float_power(self, exponent)


Tensor.float_power_ = inplace_variant("float_power_", _checked_float_power)


# ---------------------------------------------------------------------- closeness
def _isclose_meta(op: Any, input: Any, other: Any, rtol: float = 1e-5, atol: float = 1e-8,
                  equal_nan: bool = False) -> TensorMeta:
    for name, t in (("input", input), ("other", other)):
        check(isinstance(t, Tensor), "isclose", f"argument '{name}' must be Tensor, not "
                                                f"{type(t).__name__}", TypeError)
    check(input._dtype is other._dtype, "isclose",
          f"{input._dtype} did not match {other._dtype}", RuntimeError,
          hint="isclose compares tensors of one dtype; cast one side")
    check(rtol >= 0 and atol >= 0, "isclose", f"rtol and atol must be non-negative, got "
                                              f"rtol={rtol}, atol={atol}")
    return M.elementwise(op, input, other)


@register("isclose", meta=_isclose_meta, differentiable=False,
          sig="input, other, rtol=1e-05, atol=1e-08, equal_nan=False")
class IsClose(OpDef):
    """``|input - other| <= atol + rtol * |other|`` elementwise (infinities must be equal;
    NaN equals NaN only with ``equal_nan``)."""

    def forward(ctx, xp, input, other, rtol, atol, equal_nan):
        if input.dtype.kind == "b":
            return xp.equal(input, other)
        a = input.astype(xp.float64) if input.dtype.kind in "iuf" and input.dtype.itemsize < 8 \
            or input.dtype.kind in "iu" else input
        b = other.astype(a.dtype) if other.dtype != a.dtype else other
        with np.errstate(invalid="ignore", over="ignore"):
            close = (a == b) | (xp.isfinite(a) & xp.isfinite(b)
                                & (xp.abs(a - b) <= atol + rtol * xp.abs(b)))
        if equal_nan and a.dtype.kind in "fc":
            close = close | (xp.isnan(a) & xp.isnan(b))
        return close


@composite()
def allclose(input: Tensor, other: Tensor, rtol: float = 1e-05, atol: float = 1e-08,
             equal_nan: bool = False) -> bool:
    """Whether every element of ``input`` is close to ``other`` (see :func:`isclose`)."""
    return bool(OPS["isclose"].function(input, other, rtol, atol, equal_nan).all())


@composite()
def equal(input: Tensor, other: Tensor) -> bool:
    """True when the tensors have the same shape and the same values (NaN != NaN)."""
    check(isinstance(input, Tensor) and isinstance(other, Tensor), "equal",
          "equal() expects two Tensors", TypeError)
    if tuple(input.shape) != tuple(other.shape):
        return False
    return bool((input == other).all())
