"""Stochastic gradient descent: SGD (with momentum / Nesterov) and averaged SGD (ASGD)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

import ember
from ember.backend import cpu_kernels, cpu_mkl
from ember.optim import _cuda_fused, _multi_tensor
from ember.optim import _differentiable as _diff
from ember.optim.optimizer import (Optimizer, ParamsT, _bump, _check_fused_flags, _check_lr,
                                   _get_scalar_dtype, _real, _to_scalar, _xp)
from ember.tensor import _make

__all__ = ["SGD", "ASGD", "sgd_update", "asgd_update"]


def sgd_update(xp: Any, param: Any, grad: Any, buf: Any, *, lr: float, momentum: float,
               dampening: float, weight_decay: float, nesterov: bool, maximize: bool) -> Any:
    """One SGD step on arrays, in place on ``param`` (and ``buf``).

    .. math::
        g \\leftarrow \\pm\\nabla + \\lambda\\theta,\\quad
        b \\leftarrow \\mu b + (1-\\tau) g \\;(b_1 = g),\\quad
        \\theta \\leftarrow \\theta - \\gamma\\,(g + \\mu b \\text{ if nesterov else } b)

    Nesterov momentum follows Sutskever et al., "On the importance of initialization and
    momentum in deep learning" (2013), in torch's formulation.

    Returns:
        the momentum buffer (a new array on the first step), or None without momentum.
        On CUDA (float32/float64) the step runs as one fused kernel.
    """
    if xp.__name__ != "numpy" and _cuda_fused.supported(xp, param, grad):
        first = momentum != 0 and buf is None
        if first:
            buf = xp.empty_like(param)
        _cuda_fused.sgd(xp, param, grad, buf, first, lr=lr, momentum=momentum,
                        dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        maximize=maximize)
        return buf
    if xp.__name__ == "numpy" and momentum != 0 and buf is not None and \
            _sgd_numba(param, grad, buf, lr, momentum, dampening, weight_decay, nesterov,
                       maximize):
        return buf
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    if momentum != 0:
        if buf is None:
            buf = g.copy()
        else:
            buf *= momentum
            if dampening == 0:
                buf += g      # no scaled temporary (the default)
            else:
                buf += (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    param -= lr * g
    return buf


def _sgd_numba(param: Any, grad: Any, buf: Any, lr: float, momentum: float, dampening: float,
               weight_decay: float, nesterov: bool, maximize: bool) -> bool:
    """:func:`sgd_update`'s momentum step as one numba loop over contiguous float32/float64
    arrays of one dtype (4-6 NumPy passes and a temporary before); False when the kernels
    are off or the arrays do not qualify."""
    nb = cpu_kernels.kernels()
    if nb is None or not _numba_arrays(param, grad, buf):
        return False
    nb.sgd(param.reshape(-1), grad.reshape(-1), buf.reshape(-1),
           *_numba_scalars(param.dtype, lr, momentum, dampening, weight_decay, nesterov,
                           maximize))
    return True


def _numba_arrays(param: Any, grad: Any, buf: Any) -> bool:
    """Whether the numba SGD kernel takes these: C-contiguous NumPy float32/float64 arrays of
    one dtype."""
    dt = param.dtype
    return dt in (np.float32, np.float64) and all(
        type(a) is np.ndarray and a.dtype == dt and a.flags.c_contiguous
        for a in (param, grad, buf))


def _numba_scalars(dt: Any, lr: float, momentum: float, dampening: float, weight_decay: float,
                   nesterov: bool, maximize: bool) -> tuple:
    """The numba SGD kernel's scalar arguments, in the arrays' dtype."""
    c = dt.type
    return (c(lr), c(momentum), c(1 - dampening), dampening != 0, c(weight_decay),
            bool(nesterov), bool(maximize))


def _sgd_cpu_group(opt: "SGD", group: dict, params: list, lr: float, momentum: float) -> list:
    """The momentum step over the group's CPU float32/float64 parameters that already have
    a momentum buffer: MKL's passes over the spare cores for large parameters
    (``cpu_mkl.sgd_momentum``), else the numba kernel, with the scalars converted once per
    dtype instead of per parameter (the Python around each kernel call was ~15 us a
    parameter, a tenth of an MLP step). Returns the parameters it did not take, for the
    general loop; same results up to float rounding."""
    nb = cpu_kernels.kernels()
    if nb is None or group["differentiable"]:
        return params
    dampening, wd, nesterov, maximize = (group["dampening"], _to_scalar(group["weight_decay"]),
                                         group["nesterov"], group["maximize"])
    # buf = momentum * buf + g_scale * grad + decay * param (torch: g = +-grad + wd * param,
    # buf = momentum * buf + (1 - dampening) * g); Nesterov's step needs g again: numba
    g_scale = -(1 - dampening) if maximize else 1 - dampening
    decay = (1 - dampening) * wd
    big = cpu_mkl.SGD_MIN if not nesterov else None
    state_of = opt.state
    scalars: dict = {}
    rest = []
    for p in params:
        buf_t = state_of[p].get("momentum_buffer") if p in state_of else None
        a = p._data
        if buf_t is None or not _numba_arrays(a, p._grad._data, buf_t._data):
            rest.append(p)
            continue
        flat = a.reshape(-1)
        g = p._grad._data.reshape(-1)
        b = buf_t._data.reshape(-1)
        if big is None or a.size < big or \
                not cpu_mkl.sgd_momentum(flat, g, b, lr, momentum, g_scale, decay):
            sc = scalars.get(a.dtype)
            if sc is None:
                sc = scalars[a.dtype] = _numba_scalars(a.dtype, lr, momentum, dampening, wd,
                                                       nesterov, maximize)
            nb.sgd(flat, g, b, *sc)
        p._version[0] += 1
        buf_t._version[0] += 1
    return rest


def _sgd_cpu_plain(group: dict, params: list, lr: float) -> list:
    """The momentum-free step of the group's large CPU float32/float64 parameters as one
    MKL pass each (``cpu_mkl.sgd_plain``) when there is no weight decay (whose step torch
    rounds as ``grad + wd * param`` first); returns the parameters it did not take."""
    if group["differentiable"] or _to_scalar(group["weight_decay"]) != 0:
        return params
    g_scale = -1.0 if group["maximize"] else 1.0
    rest = []
    for p in params:
        a, g = p._data, p._grad._data
        if a.size < cpu_mkl.SGD_MIN or not _numba_arrays(a, g, g) or \
                not cpu_mkl.sgd_plain(a.reshape(-1), g.reshape(-1), lr, g_scale):
            rest.append(p)
            continue
        _bump(p)
    return rest


def asgd_update(xp: Any, param: Any, grad: Any, ax: Any, eta: float, mu: float, *,
                lambd: float, weight_decay: float, maximize: bool) -> None:
    """One averaged-SGD step on arrays (Polyak & Juditsky, "Acceleration of stochastic
    approximation by averaging", 1992), in place on ``param`` and the average ``ax``.

    .. math::
        \\theta \\leftarrow \\theta (1 - \\lambda\\eta) - \\eta g,\\quad
        \\bar\\theta \\leftarrow \\bar\\theta + \\mu(\\theta - \\bar\\theta)
    """
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    param *= 1 - lambd * eta
    param -= eta * g
    if mu != 1:
        ax += (param - ax) * mu
    else:
        ax[...] = param


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum and Nesterov momentum.

    Args:
        params: parameters or parameter groups to optimize.
        lr: learning rate (default 1e-3).
        momentum: momentum factor (default 0).
        dampening: dampening of the momentum (default 0).
        weight_decay: L2 penalty (default 0).
        nesterov: use Nesterov momentum (needs momentum > 0 and dampening 0).
        maximize: maximize the objective instead of minimizing.
        foreach, differentiable, fused: as in torch; on CUDA, ``foreach`` (the default
            there) and ``fused`` update all parameters of a group in one multi-tensor kernel.

    Example::

        >>> opt = ember.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: float = 0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        _check_lr(lr)
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                        foreach=foreach, differentiable=differentiable, fused=fused)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, defaults)
        if fused:
            self._step_supports_amp_scaling = True
            self._need_device_dtype_check_for_fused = True
        _check_fused_flags(defaults)

    _group_defaults = {"nesterov": False, "maximize": False, "foreach": None,
                       "differentiable": False, "fused": False}

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step; ``closure`` re-evaluates and returns the loss."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            params = self._params_with_grad(group)
            if _multi_tensor.sgd(self, group, params):   # CUDA foreach / fused
                continue
            lr = _to_scalar(group["lr"])
            momentum = group["momentum"]
            if params and params[0]._device.type == "cpu":
                params = _sgd_cpu_group(self, group, params, lr, momentum) if momentum != 0 \
                    else _sgd_cpu_plain(group, params, lr)
            for p in params:
                buf_t = self.state[p].get("momentum_buffer") if momentum != 0 else None
                if group["differentiable"]:
                    with ember.enable_grad():
                        new_t = _diff.sgd(p, p._grad, buf_t, lr=lr, momentum=momentum,
                                          dampening=group["dampening"],
                                          weight_decay=_to_scalar(group["weight_decay"]),
                                          nesterov=group["nesterov"],
                                          maximize=group["maximize"])
                    if momentum != 0 and buf_t is None:
                        self.state[p]["momentum_buffer"] = new_t
                    continue
                buf = None if buf_t is None else _real(buf_t._data)
                new_buf = sgd_update(_xp(p), _real(p._data), _real(p._grad._data), buf, lr=lr,
                                     momentum=momentum, dampening=group["dampening"],
                                     weight_decay=_to_scalar(group["weight_decay"]),
                                     nesterov=group["nesterov"], maximize=group["maximize"])
                _bump(p)
                if momentum != 0:
                    if buf_t is None:
                        data = new_buf.view(p._data.dtype) if p.is_complex() else new_buf
                        self.state[p]["momentum_buffer"] = _make(data, p.dtype, p.device)
                    else:
                        _bump(buf_t)
        return loss


class ASGD(Optimizer):
    """Averaged stochastic gradient descent.

    From Polyak & Juditsky, "Acceleration of stochastic approximation by averaging" (1992).
    The step size decays as :math:`\\eta_t = \\gamma / (1 + \\lambda\\gamma t)^\\alpha`; the
    running average ``state['ax']`` starts after ``t0`` steps with weight
    :math:`\\mu_t = 1/\\max(1, t - t_0)`.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-2).
        lambd: decay term (default 1e-4).
        alpha: power for the eta update (default 0.75).
        t0: step at which averaging starts (default 1e6).
        weight_decay: L2 penalty (default 0).
        foreach, maximize, differentiable, capturable: as in torch.
    """

    _capturable_names = "params, mus, etas, and state_steps"

    def __init__(self, params: ParamsT, lr: float = 1e-2, lambd: float = 1e-4,
                 alpha: float = 0.75, t0: float = 1e6, weight_decay: float = 0,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, capturable: bool = False) -> None:
        _check_lr(lr)
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize, differentiable=differentiable,
                        capturable=capturable)
        super().__init__(params, defaults)

    _group_defaults = {"foreach": None, "maximize": False, "differentiable": False,
                       "capturable": False}
    _tensor_state_keys = ("step", "eta", "mu")

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step; ``closure`` re-evaluates and returns the loss."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            lr = _to_scalar(group["lr"])
            lambd, alpha, t0 = group["lambd"], group["alpha"], group["t0"]
            for p in self._params_with_grad(group):
                state = self.state[p]
                if len(state) == 0:
                    sdt = _get_scalar_dtype()
                    state["step"] = ember.zeros((), device=p.device, dtype=sdt)
                    state["eta"] = ember.full((), lr, device=p.device, dtype=sdt)
                    state["mu"] = ember.ones((), device=p.device, dtype=sdt)
                    state["ax"] = ember.zeros_like(p)
                step_t, eta_t, mu_t, ax_t = state["step"], state["eta"], state["mu"], state["ax"]
                step_t._data += 1
                # eta and mu live in float32 scalar tensors: read back the rounded values,
                # exactly as torch does, so trajectories agree bit for bit.
                if group["differentiable"]:
                    with ember.enable_grad():
                        _diff.asgd(p, p._grad, ax_t, float(eta_t._data), float(mu_t._data),
                                   lambd=lambd, weight_decay=group["weight_decay"],
                                   maximize=group["maximize"])
                else:
                    asgd_update(_xp(p), _real(p._data), _real(p._grad._data),
                                _real(ax_t._data), float(eta_t._data), float(mu_t._data),
                                lambd=lambd, weight_decay=group["weight_decay"],
                                maximize=group["maximize"])
                step = float(step_t._data)
                # torch builds the new values with as_tensor(python float), i.e. rounded to
                # the default dtype, before copying them into eta / mu: round the same way.
                eta_t._data[...] = ember.tensor(lr / ((1 + lambd * lr * step) ** alpha)).item()
                mu_t._data[...] = ember.tensor(1 / max(1, step - t0)).item()
                _bump(p, step_t, eta_t, mu_t, ax_t)
        return loss
