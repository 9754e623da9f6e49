"""Fused CUDA kernels (CuPy ElementwiseKernel) for the hottest updates: Adam/AdamW and SGD.

On the GPU an unfused step launches a dozen tiny kernels per parameter and is bound by launch
latency; one fused kernel per parameter does the same maths in a single pass over memory.
The arithmetic follows the NumPy path (and torch's single-tensor formulas) operation by
operation, so results agree to rounding. Used only for float32/float64 CuPy arrays; other
dtypes and NumPy take the generic path. The module only touches the ``xp`` it is handed.
"""
from __future__ import annotations

from typing import Any

_CACHE: dict = {}

_ADAM = """
    T g = maximize ? -g_in : g_in;
    if (wd != 0) {
        if (decoupled) { p = p * (1 - lr * wd); } else { g = g + wd * p; }
    }
    T w = 1 - beta1;
    if (fabs(w) < 0.5) { m = m + w * (g - m); } else { m = g - (g - m) * (1 - w); }
    v = v * beta2 + g * g * (1 - beta2);
    T vv = v;
    AMSGRAD
    T denom = sqrt(vv) / bc2_sqrt + eps;
    p = p + (m / denom) * (-step_size);
"""

_SGD = """
    T g = maximize ? -g_in : g_in;
    if (wd != 0) { g = g + wd * p; }
    if (first) { buf = g; } else { buf = buf * momentum + g * (1 - dampening); }
    g = nesterov ? g + momentum * buf : buf;
    p = p - lr * g;
"""

_SGD_PLAIN = """
    T g = maximize ? -g_in : g_in;
    if (wd != 0) { g = g + wd * p; }
    p = p - lr * g;
"""


def supported(xp: Any, *arrays: Any) -> bool:
    """Whether the fused kernels apply: CuPy arrays of float32 or float64."""
    if not hasattr(xp, "ElementwiseKernel"):
        return False
    dt = arrays[0].dtype
    return dt.kind == "f" and dt.itemsize in (4, 8) and all(a.dtype == dt for a in arrays)


def _adam_kernel(xp: Any, amsgrad: bool) -> Any:
    key = ("adam", amsgrad)
    if key not in _CACHE:
        out = "T p, T m, T v, T vmax" if amsgrad else "T p, T m, T v"
        body = _ADAM.replace("AMSGRAD", "vmax = max(vmax, v); vv = vmax;" if amsgrad else "")
        _CACHE[key] = xp.ElementwiseKernel(
            "T g_in, T lr, T beta1, T beta2, T eps, T wd, T step_size, T bc2_sqrt, "
            "bool maximize, bool decoupled", out, body,
            "ember_adam_amsgrad" if amsgrad else "ember_adam")
    return _CACHE[key]


def adam(xp: Any, param: Any, grad: Any, exp_avg: Any, exp_avg_sq: Any, max_exp_avg_sq: Any,
         step: float, *, lr: float, beta1: float, beta2: float, eps: float,
         weight_decay: float, amsgrad: bool, maximize: bool,
         decoupled_weight_decay: bool) -> None:
    """The fused form of :func:`ember.optim.adam.adam_update` (same arguments)."""
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    dt = param.dtype.type
    args = [grad, dt(lr), dt(beta1), dt(beta2), dt(eps), dt(weight_decay), dt(step_size),
            dt(bias_correction2 ** 0.5), bool(maximize), bool(decoupled_weight_decay),
            param, exp_avg, exp_avg_sq]
    if amsgrad:
        args.append(max_exp_avg_sq)
    _adam_kernel(xp, amsgrad)(*args)


def sgd(xp: Any, param: Any, grad: Any, buf: Any, first: bool, *, lr: float, momentum: float,
        dampening: float, weight_decay: float, nesterov: bool, maximize: bool) -> None:
    """The fused form of :func:`ember.optim.sgd.sgd_update`; with momentum, ``buf`` must
    exist (it is filled with the gradient when ``first``)."""
    dt = param.dtype.type
    if momentum == 0:
        if "sgd_plain" not in _CACHE:
            _CACHE["sgd_plain"] = xp.ElementwiseKernel(
                "T g_in, T lr, T wd, bool maximize", "T p", _SGD_PLAIN, "ember_sgd_plain")
        _CACHE["sgd_plain"](grad, dt(lr), dt(weight_decay), bool(maximize), param)
        return
    if "sgd" not in _CACHE:
        _CACHE["sgd"] = xp.ElementwiseKernel(
            "T g_in, T lr, T momentum, T dampening, T wd, bool nesterov, bool maximize, "
            "bool first", "T p, T buf", _SGD, "ember_sgd")
    _CACHE["sgd"](grad, dt(lr), dt(momentum), dt(dampening), dt(weight_decay), bool(nesterov),
                  bool(maximize), bool(first), param, buf)
