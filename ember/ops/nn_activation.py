"""Fused activation primitives: ``gelu`` (exact and tanh) and ``silu``.

Both are composites in principle (``x * Phi(x)``, ``x * sigmoid(x)``); as primitives they run
one array expression and record one node instead of five to seven, which is what transformer
MLPs spend their activation time on. The decompositions are the opdb references
(tests/opdb/nn_activation.py). Half types compute in float32 and round once, as torch does.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ember._state import _State
from ember.backend import cpu_kernels, cpu_team, special
from ember.backend.cpu import parallel_rows, row_threads
from ember.ops import meta as M
from ember.ops.registry import OpDef, register
from ember.tensor import _make

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_C = 0.044715

# Float32 GELU on the CPU. scipy's float32 erf runs at ~20 ns an element, which made GELU
# ~40% of a small transformer's training step. Instead: with a = |x| and
#   h = Phi(-a) = erfc(a / sqrt 2) / 2 = t * exp(-a^2 / 2) * R(t),   t = 1 / (1 + K a),
# (R a degree-7 polynomial, least-squares fitted in relative error to erfcx: 1.2e-7 in
# float64, ~4e-7 evaluated in float32, over the whole range where Phi(-a) is a normal float32)
#   Phi(x) = s + (1 - 2s) h,  s = [x > 0]   (h itself for x <= 0: no cancellation)
#   gelu(x) = x Phi(x),  gelu'(x) = Phi(x) + x phi(x)   (phi reuses exp(-a^2 / 2))
# (without a gradient wanted, gelu(x) = s x - a h: three passes instead of five)
# Measured max error against float64: 2.4e-7 absolute (torch's own CPU kernel: 3.8e-7).
# NumPy runs it over cache-sized chunks: on whole 2 MB arrays every pass misses the cache
# and the same arithmetic was 3x slower. Pass costs decide the form: np.exp is ~15 multiplies,
# np.maximum/np.minimum ~5 (so no clamp and no max(x, 0)), a comparison ~2.
_GELU_K = 0.425 / math.sqrt(2.0)
_GELU_R = tuple(0.5 * c for c in (  # highest power first; the 0.5 of erfc/2 folded in
    0.07219336, -0.3161332, 0.4127406, -0.10796162, 0.25757674, 0.19995181, 0.24196144,
    0.23967075))
_GELU_CHUNK = 1 << 15
_GELU_CHUNK_THREADED = 1 << 16  # on several threads: fewer, longer NumPy calls per chunk


def _gelu_cpu_f32(x: Any, want_grad: bool) -> tuple:
    """``(gelu(x), gelu'(x) or None)`` for a float32 NumPy array (see the note above). Chunks
    run on the cores other processes leave free (NumPy releases the GIL in its loops)."""
    # A dense input in any dim order (a transpose) is processed in memory order and its
    # layout kept, as torch keeps it; anything else is made contiguous first.
    if x.flags.c_contiguous:  # the usual case: no permutation (argsort alone took ~18 us
        inv = None            # of a training step's GELU call, its caches cold)
        xt = x
    else:
        perm = sorted(range(x.ndim), key=lambda i: -x.strides[i])
        xt = x.transpose(perm)
        if not xt.flags.c_contiguous:
            perm, xt = list(range(x.ndim)), np.ascontiguousarray(x)
        inv = np.argsort(perm)
    flat = xt.reshape(-1)
    n = flat.size
    y = np.empty_like(flat)
    d = np.empty_like(flat) if want_grad else None
    nb = cpu_kernels.kernels()
    if nb is not None:  # one fused pass on every spare core
        nb.gelu(flat, y, d)
        return _unflat(y, xt.shape, inv), (_unflat(d, xt.shape, inv) if d is not None else None)
    m = _GELU_CHUNK
    if n >= 8 * _GELU_CHUNK_THREADED and row_threads(-(-n // _GELU_CHUNK_THREADED), 4) > 1:
        m = _GELU_CHUNK_THREADED
    m = max(min(m, n), 1)
    pinf = bool(n) and not flat.max() < math.inf  # +inf (or NaN) somewhere: patch +inf

    def chunks(lo: int, hi: int) -> None:
        bufs = [np.empty(m, np.float32) for _ in range(5)]
        with np.errstate(all="ignore"):  # per thread; inf * 0 at +-inf is patched below
            for c in range(lo, hi):
                i = c * m
                k = min(m, n - i)
                _gelu_chunk(flat[i:i + k], y[i:i + k], d[i:i + k] if d is not None else None,
                            pinf, *(bufs if k == m else [b[:k] for b in bufs]))

    parallel_rows(-(-n // m), chunks, min_rows=4)
    return _unflat(y, xt.shape, inv), (_unflat(d, xt.shape, inv) if d is not None else None)


def _unflat(a: Any, shape: tuple, inv: Any) -> Any:
    """A flat result back in the input's shape and (``inv``: the inverse permutation, or
    None for a C-contiguous input) dim order."""
    a = a.reshape(shape)
    return a if inv is None else a.transpose(inv)


def _gelu_chunk(xs: Any, ys: Any, ds: Any, pinf: bool, a: Any, t: Any, e: Any, r: Any,
                s: Any) -> None:
    """One chunk: ``ys = gelu(xs)`` and, unless ``ds`` is None, ``ds = gelu'(xs)``; ``pinf``:
    the input may hold +inf; the other arguments are scratch buffers of the chunk's size."""
    np.abs(xs, out=a)
    np.multiply(a, _GELU_K, out=t)
    t += 1.0
    np.divide(1.0, t, out=t)  # (NumPy's reciprocal loop is slower than a division)
    np.multiply(a, a, out=e)
    e *= -0.5
    np.exp(e, out=e)
    np.multiply(t, _GELU_R[0], out=r)
    for c in _GELU_R[1:-1]:
        r += c
        r *= t
    r += _GELU_R[-1]
    r *= t
    r *= e  # r = h = Phi(-a)
    np.greater(xs, 0, out=s)
    if ds is not None:
        # P = Phi(x) = s + (1 - 2s) h: h itself for x <= 0 (no cancellation), 1 - h for x > 0
        np.multiply(s, -2.0, out=t)
        t += 1.0
        t *= r
        t += s
        np.multiply(xs, t, out=ys)  # gelu = x Phi(x)
        # gelu' = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
        np.multiply(xs, e, out=e)
        e *= _INV_SQRT_2PI
        np.add(e, t, out=ds)
    else:
        np.multiply(a, r, out=r)  # gelu = s x - a h, exactly
        np.multiply(xs, s, out=ys)
        ys -= r
    if pinf:  # a * h or x * e was inf * 0 at +inf
        at = xs == math.inf
        ys[at] = math.inf
        if ds is not None:
            ds[at] = 1.0


def gelu_tanh(xp: Any, x: Any) -> Any:
    """torch's ``gelu(approximate='tanh')`` of a float array."""
    return 0.5 * x * (1.0 + xp.tanh(_SQRT_2_OVER_PI * (x + _C * x * x * x)))


def gelu_tanh_derivative(x: Any) -> Any:
    """d gelu_tanh / dx of a Tensor, in ember ops (differentiable, for double backward)."""
    t = (_SQRT_2_OVER_PI * (x + _C * x * x * x)).tanh()
    d_inner = _SQRT_2_OVER_PI * (1 + 3 * _C * x * x)
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * d_inner


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
        ctx.approximate = approximate
        ctx.save(input)
        if approximate == "none" and xp is np and x.dtype == np.float32:
            # fast path; the derivative is kept for backward, which then is one multiply
            y, d = _gelu_cpu_f32(x, bool(ctx.needs_input_grad[0]))
            if d is not None:
                ctx.dgelu = d
            return y.astype(input.dtype, copy=False)
        if approximate == "tanh":
            y = gelu_tanh(xp, x)
        else:
            y = 0.5 * x * (1.0 + special(xp).erf(x * _INV_SQRT_2))
        return y.astype(input.dtype, copy=False)

    def backward(ctx, grad):
        (x,) = ctx.saved  # also checks that x was not modified in place since forward
        d = ctx.__dict__.get("dgelu")
        if d is not None and not _State.enabled:  # no graph of the backward wanted
            g = grad._data
            if type(g) is np.ndarray and g.dtype == d.dtype and g.shape == d.shape:
                # the product goes into the saved derivative, which is handed over (no fresh
                # 2 MB block whose lines are fetched before being written: 512K elements in a
                # training step, where these arrays come from memory); a second backward
                # through a retained graph then takes the generic path from x
                del ctx.dgelu
                if g.size < cpu_team.MIN_SIZE or \
                        cpu_team.binary(cpu_team.MUL, g, d, d) is None:
                    np.multiply(g, d, out=d)
                return _make(d, grad._dtype, grad._device), None
            g = g * d
            return _make(g.astype(grad._data.dtype, copy=False), grad._dtype, grad._device), None
        if ctx.approximate == "tanh":
            return grad * gelu_tanh_derivative(x), None
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
