"""Accumulated-gradient methods: Adagrad and Adadelta."""
from __future__ import annotations

from typing import Any, Callable

import ember
from ember.optim import _differentiable as _diff
from ember.optim.optimizer import (Optimizer, ParamsT, _bump, _check_fused, _check_fused_flags,
                                   _check_lr, _real, _step_tensor, _to_scalar, _xp)

__all__ = ["Adagrad", "Adadelta", "adagrad_update", "adadelta_update"]


def adagrad_update(xp: Any, param: Any, grad: Any, state_sum: Any, step: float, *, lr: float,
                   lr_decay: float, weight_decay: float, eps: float, maximize: bool) -> None:
    """One Adagrad step on arrays (Duchi, Hazan & Singer, "Adaptive Subgradient Methods for
    Online Learning and Stochastic Optimization", JMLR 2011), in place.

    .. math::
        \\tilde\\gamma = \\frac{\\gamma}{1 + (t-1)\\eta},\\quad
        s \\leftarrow s + g^2,\\quad
        \\theta \\leftarrow \\theta - \\tilde\\gamma \\frac{g}{\\sqrt{s} + \\epsilon}
    """
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    clr = lr / (1 + (step - 1) * lr_decay)
    tmp = xp.multiply(g, g)
    state_sum += tmp
    xp.sqrt(state_sum, out=tmp)
    tmp += eps
    xp.divide(g, tmp, out=tmp)
    tmp *= -clr
    param += tmp


def adadelta_update(xp: Any, param: Any, grad: Any, square_avg: Any, acc_delta: Any, *,
                    lr: float, rho: float, eps: float, weight_decay: float,
                    maximize: bool) -> None:
    """One Adadelta step on arrays (Zeiler, "ADADELTA: An Adaptive Learning Rate Method",
    2012), in place.

    .. math::
        v \\leftarrow \\rho v + (1-\\rho) g^2,\\quad
        \\Delta = \\frac{\\sqrt{u + \\epsilon}}{\\sqrt{v + \\epsilon}} g,\\quad
        u \\leftarrow \\rho u + (1-\\rho)\\Delta^2,\\quad
        \\theta \\leftarrow \\theta - \\gamma\\Delta
    """
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    square_avg *= rho
    tmp = xp.multiply(g, g)
    tmp *= 1 - rho
    square_avg += tmp
    std = square_avg + eps
    xp.sqrt(std, out=std)
    delta = acc_delta + eps
    xp.sqrt(delta, out=delta)
    delta /= std
    delta *= g
    acc_delta *= rho
    xp.multiply(delta, delta, out=tmp)
    tmp *= 1 - rho
    acc_delta += tmp
    delta *= -lr
    param += delta


class Adagrad(Optimizer):
    """Adagrad: per-coordinate learning rates from the sum of squared gradients.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-2).
        lr_decay: learning-rate decay per step (default 0).
        weight_decay: L2 penalty (default 0).
        initial_accumulator_value: starting value of the sum of squares (default 0).
        eps: denominator term (default 1e-10).
        foreach, maximize, differentiable, fused: as in torch.

    The state (``step`` and ``sum``) is created for every parameter at construction, as in
    torch, so a fresh optimizer already has a full ``state_dict``.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-2, lr_decay: float = 0,
                 weight_decay: float = 0, initial_accumulator_value: float = 0,
                 eps: float = 1e-10, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        _check_lr(lr)
        if not 0.0 <= lr_decay:
            raise ValueError(f"Invalid lr_decay value: {lr_decay}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= initial_accumulator_value:
            raise ValueError(f"Invalid initial_accumulator_value value: "
                             f"{initial_accumulator_value}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)
        _check_fused_flags(defaults)
        if fused:
            self._need_device_dtype_check_for_fused = True
            self._step_supports_amp_scaling = True
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, group, group["initial_accumulator_value"])

    def _init_state(self, p: "ember.Tensor", group: dict, init: float) -> None:
        state = self.state[p]
        state["step"] = _step_tensor(p, group)
        value = complex(init, init) if p.is_complex() else init
        state["sum"] = ember.full_like(p, value)

    _group_defaults = {"foreach": None, "maximize": False, "differentiable": False, "fused": None}
    _tensor_state_keys = ("step",)

    def share_memory(self) -> None:
        """Kept for torch compatibility: ember state lives in ordinary process memory."""

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step; ``closure`` re-evaluates and returns the loss."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            lr = _to_scalar(group["lr"])
            for p in self._params_with_grad(group):
                state = self.state[p]
                if len(state) == 0:
                    if group["fused"]:
                        _check_fused(p)
                    self._init_state(p, group, self.defaults["initial_accumulator_value"])
                step_t = state["step"]
                step_t._data += 1
                if group["differentiable"]:
                    with ember.enable_grad():
                        _diff.adagrad(p, p._grad, state["sum"], float(step_t._data), lr=lr,
                                      lr_decay=group["lr_decay"],
                                      weight_decay=group["weight_decay"], eps=group["eps"],
                                      maximize=group["maximize"])
                    continue
                adagrad_update(_xp(p), _real(p._data), _real(p._grad._data),
                               _real(state["sum"]._data), float(step_t._data), lr=lr,
                               lr_decay=group["lr_decay"], weight_decay=group["weight_decay"],
                               eps=group["eps"], maximize=group["maximize"])
                _bump(p, step_t, state["sum"])
        return loss


class Adadelta(Optimizer):
    """Adadelta: step sizes from running averages of squared gradients and updates.

    Args:
        params: parameters or parameter groups.
        lr: coefficient scaling delta before it is applied (default 1.0).
        rho: running-average coefficient (default 0.9).
        eps: term added inside the square roots (default 1e-6).
        weight_decay: L2 penalty (default 0).
        foreach, capturable, maximize, differentiable: as in torch.
    """

    def __init__(self, params: ParamsT, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0, foreach: bool | None = None, *,
                 capturable: bool = False, maximize: bool = False,
                 differentiable: bool = False) -> None:
        _check_lr(lr)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        capturable=capturable, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults)

    _group_defaults = {"foreach": None, "maximize": False, "differentiable": False,
                       "capturable": False}
    _tensor_state_keys = ("step",)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step; ``closure`` re-evaluates and returns the loss."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            lr = _to_scalar(group["lr"])
            for p in self._params_with_grad(group):
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = _step_tensor(p, group)
                    state["square_avg"] = ember.zeros_like(p)
                    state["acc_delta"] = ember.zeros_like(p)
                state["step"]._data += 1
                if group["differentiable"]:
                    with ember.enable_grad():
                        _diff.adadelta(p, p._grad, state["square_avg"], state["acc_delta"],
                                       lr=lr, rho=group["rho"], eps=group["eps"],
                                       weight_decay=group["weight_decay"],
                                       maximize=group["maximize"])
                    continue
                adadelta_update(_xp(p), _real(p._data), _real(p._grad._data),
                                _real(state["square_avg"]._data),
                                _real(state["acc_delta"]._data), lr=lr, rho=group["rho"],
                                eps=group["eps"], weight_decay=group["weight_decay"],
                                maximize=group["maximize"])
                _bump(p, state["step"], state["square_avg"], state["acc_delta"])
        return loss
