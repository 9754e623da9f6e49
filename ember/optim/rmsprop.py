"""Sign- and RMS-scaled methods: RMSprop and Rprop."""
from __future__ import annotations

from typing import Any, Callable

import ember
from ember.optim import _differentiable as _diff
from ember.optim.optimizer import (Optimizer, ParamsT, _bump, _check_lr, _lerp_, _real,
                                   _step_tensor, _to_scalar, _xp)

__all__ = ["RMSprop", "Rprop", "rmsprop_update", "rprop_update"]


def rmsprop_update(xp: Any, param: Any, grad: Any, square_avg: Any, grad_avg: Any, buf: Any, *,
                   lr: float, alpha: float, eps: float, weight_decay: float, momentum: float,
                   centered: bool, maximize: bool) -> None:
    """One RMSprop step on arrays (Hinton, Coursera lecture 6e, 2012; the centered form from
    Graves, "Generating Sequences With Recurrent Neural Networks", 2013), in place.

    .. math::
        v \\leftarrow \\alpha v + (1-\\alpha) g^2,\\quad
        \\bar g \\leftarrow \\alpha \\bar g + (1-\\alpha) g \\text{ (centered)},\\quad
        d = \\sqrt{v - \\bar g^2} + \\epsilon,\\quad
        b \\leftarrow \\mu b + g/d,\\quad \\theta \\leftarrow \\theta - \\gamma b
    """
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    square_avg *= alpha
    tmp = xp.multiply(g, g)
    tmp *= 1 - alpha
    square_avg += tmp
    if centered:
        _lerp_(xp, grad_avg, g, 1 - alpha, tmp)
        xp.multiply(grad_avg, grad_avg, out=tmp)
        xp.subtract(square_avg, tmp, out=tmp)
        avg = xp.sqrt(tmp, out=tmp)
    else:
        avg = xp.sqrt(square_avg, out=tmp)
    avg += eps
    if momentum > 0:
        buf *= momentum
        xp.divide(g, avg, out=avg)
        buf += avg
        xp.multiply(buf, -lr, out=avg)
        param += avg
    else:
        xp.divide(g, avg, out=avg)
        avg *= -lr
        param += avg


def rprop_update(xp: Any, param: Any, grad: Any, prev: Any, step_size: Any, *, etaminus: float,
                 etaplus: float, step_size_min: float, step_size_max: float,
                 maximize: bool) -> None:
    """One Rprop step on arrays (Riedmiller & Braun, "A Direct Adaptive Method for Faster
    Backpropagation Learning: The RPROP Algorithm", 1993), in place.

    Each coordinate's step size grows by ``etaplus`` while the gradient keeps its sign and
    shrinks by ``etaminus`` when it flips (then that coordinate skips the update and forgets
    its gradient); the parameter moves by ``-sign(g) * step_size``.
    """
    g = -grad if maximize else grad
    sign = xp.sign(g * prev)
    # Masked assignments, not where(): NaN signs stay NaN exactly as in torch.
    sign[sign > 0] = etaplus
    sign[sign < 0] = etaminus
    sign[sign == 0] = 1
    step_size *= sign
    xp.clip(step_size, step_size_min, step_size_max, out=step_size)
    g = g.copy()
    g[sign == etaminus] = 0
    xp.sign(g, out=sign)
    sign *= step_size
    param -= sign
    prev[...] = g


class RMSprop(Optimizer):
    """RMSprop: gradients divided by a running RMS of their recent magnitudes.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-2).
        alpha: smoothing constant (default 0.99).
        eps: denominator term (default 1e-8).
        weight_decay: L2 penalty (default 0).
        momentum: momentum factor (default 0).
        centered: normalize by an estimate of the gradient's variance.
        capturable, foreach, maximize, differentiable: as in torch.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0,
                 centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False) -> None:
        _check_lr(lr)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                        maximize=maximize, differentiable=differentiable)
        super().__init__(params, defaults)

    _group_defaults = {"momentum": 0, "centered": False, "foreach": None, "maximize": False,
                       "differentiable": False, "capturable": False}
    _tensor_state_keys = ("step",)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step; ``closure`` re-evaluates and returns the loss."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            lr = _to_scalar(group["lr"])
            momentum, centered = group["momentum"], group["centered"]
            for p in self._params_with_grad(group):
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = _step_tensor(p, group)
                    state["square_avg"] = ember.zeros_like(p)
                    if momentum > 0:
                        state["momentum_buffer"] = ember.zeros_like(p)
                    if centered:
                        state["grad_avg"] = ember.zeros_like(p)
                written = [p, state["step"], state["square_avg"]]
                buf = grad_avg = None
                if momentum > 0:
                    buf = _real(state["momentum_buffer"]._data)
                    written.append(state["momentum_buffer"])
                if centered:
                    grad_avg = _real(state["grad_avg"]._data)
                    written.append(state["grad_avg"])
                state["step"]._data += 1
                if group["differentiable"]:
                    with ember.enable_grad():
                        _diff.rmsprop(p, p._grad, state["square_avg"], state.get("grad_avg"),
                                      state.get("momentum_buffer"), lr=lr, alpha=group["alpha"],
                                      eps=group["eps"], weight_decay=group["weight_decay"],
                                      momentum=momentum, centered=centered,
                                      maximize=group["maximize"])
                    continue
                rmsprop_update(_xp(p), _real(p._data), _real(p._grad._data),
                               _real(state["square_avg"]._data), grad_avg, buf, lr=lr,
                               alpha=group["alpha"], eps=group["eps"],
                               weight_decay=group["weight_decay"], momentum=momentum,
                               centered=centered, maximize=group["maximize"])
                _bump(*written)
        return loss


class Rprop(Optimizer):
    """Rprop: resilient backpropagation, driven by gradient signs only.

    Args:
        params: parameters or parameter groups.
        lr: initial step size (default 1e-2).
        etas: (etaminus, etaplus) multiplicative decrease and increase (default (0.5, 1.2)).
        step_sizes: (min, max) allowed step sizes (default (1e-6, 50)).
        capturable, foreach, maximize, differentiable: as in torch.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-2, etas: tuple = (0.5, 1.2),
                 step_sizes: tuple = (1e-6, 50), *, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False) -> None:
        _check_lr(lr)
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")
        defaults = dict(lr=lr, etas=etas, step_sizes=step_sizes, foreach=foreach,
                        maximize=maximize, differentiable=differentiable,
                        capturable=capturable)
        super().__init__(params, defaults)

    _group_defaults = {"foreach": None, "maximize": False, "differentiable": False,
                       "capturable": False}
    _tensor_state_keys = ("step",)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step; ``closure`` re-evaluates and returns the loss."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            etaminus, etaplus = group["etas"]
            step_size_min, step_size_max = group["step_sizes"]
            for p in self._params_with_grad(group):
                state = self.state[p]
                if len(state) == 0:
                    lr = _to_scalar(group["lr"])
                    state["step"] = _step_tensor(p, group)
                    state["prev"] = ember.zeros_like(p)
                    value = complex(lr, lr) if p.is_complex() else lr
                    state["step_size"] = ember.full_like(p._grad, value)
                state["step"]._data += 1
                if group["differentiable"]:
                    with ember.enable_grad():
                        _diff.rprop(p, p._grad, state["prev"], state["step_size"],
                                    etaminus=etaminus, etaplus=etaplus,
                                    step_size_min=step_size_min, step_size_max=step_size_max,
                                    maximize=group["maximize"])
                    continue
                rprop_update(_xp(p), _real(p._data), _real(p._grad._data),
                             _real(state["prev"]._data), _real(state["step_size"]._data),
                             etaminus=etaminus, etaplus=etaplus, step_size_min=step_size_min,
                             step_size_max=step_size_max, maximize=group["maximize"])
                _bump(p, state["step"], state["prev"], state["step_size"])
        return loss
