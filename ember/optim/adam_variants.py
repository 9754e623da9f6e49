"""Adam variants: Adamax (infinity norm), NAdam (Nesterov momentum), RAdam (rectified)."""
from __future__ import annotations

from typing import Any, Callable

import ember
from ember.optim import _differentiable as _diff
from ember.optim.optimizer import (Optimizer, ParamsT, _adam_moments_, _bump, _check_lr,
                                   _lerp_, _real, _step_tensor, _to_scalar, _xp)

__all__ = ["Adamax", "NAdam", "RAdam", "adamax_update", "nadam_update", "radam_update"]


def _check_adam_args(lr: Any, betas: tuple, eps: float, weight_decay: float) -> None:
    _check_lr(lr)
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def adamax_update(xp: Any, param: Any, grad: Any, exp_avg: Any, exp_inf: Any, step: float, *,
                  lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                  maximize: bool) -> None:
    """One Adamax step on arrays (Kingma & Ba, 2015, section 7.1), in place.

    .. math::
        m \\leftarrow \\beta_1 m + (1-\\beta_1) g,\\quad
        u \\leftarrow \\max(\\beta_2 u, |g| + \\epsilon),\\quad
        \\theta \\leftarrow \\theta - \\frac{\\gamma}{1-\\beta_1^t}\\frac{m}{u}
    """
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    tmp = xp.empty_like(param)
    _lerp_(xp, exp_avg, g, 1 - beta1, tmp)
    exp_inf *= beta2
    xp.abs(g, out=tmp)
    tmp += eps
    xp.maximum(exp_inf, tmp, out=exp_inf)
    clr = lr / (1 - beta1 ** step)
    xp.divide(exp_avg, exp_inf, out=tmp)
    tmp *= -clr
    param += tmp


def nadam_update(xp: Any, param: Any, grad: Any, exp_avg: Any, exp_avg_sq: Any, step: float,
                 mu: float, mu_next: float, mu_product: float, *, lr: float, beta1: float,
                 beta2: float, eps: float, weight_decay: float, decoupled_weight_decay: bool,
                 maximize: bool) -> None:
    """One NAdam step on arrays (Dozat, "Incorporating Nesterov Momentum into Adam", 2016),
    in place. ``mu_product`` is the product of the momentum coefficients up to this step.

    .. math::
        \\theta \\leftarrow \\theta
          - \\gamma\\frac{1-\\mu_t}{1-\\prod_{i\\le t}\\mu_i}\\frac{g}{\\sqrt{\\hat v}+\\epsilon}
          - \\gamma\\frac{\\mu_{t+1}}{1-\\prod_{i\\le t+1}\\mu_i}\\frac{m}{\\sqrt{\\hat v}+\\epsilon}
    """
    bias_correction2 = 1 - beta2 ** step
    g, tmp = _adam_moments_(xp, param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1,
                            beta2=beta2, weight_decay=weight_decay,
                            decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    denom = exp_avg_sq / bias_correction2
    xp.sqrt(denom, out=denom)
    denom += eps
    mu_product_next = mu_product * mu_next
    xp.divide(g, denom, out=tmp)
    tmp *= -lr * (1.0 - mu) / (1.0 - mu_product)
    param += tmp
    xp.divide(exp_avg, denom, out=tmp)
    tmp *= (-lr * mu_next) / (1.0 - mu_product_next)
    param += tmp


def radam_update(xp: Any, param: Any, grad: Any, exp_avg: Any, exp_avg_sq: Any, step: float, *,
                 lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                 decoupled_weight_decay: bool, maximize: bool) -> None:
    """One RAdam step on arrays (Liu et al., "On the Variance of the Adaptive Learning Rate
    and Beyond", 2020), in place.

    With :math:`\\rho_\\infty = 2/(1-\\beta_2) - 1` and
    :math:`\\rho_t = \\rho_\\infty - 2t\\beta_2^t/(1-\\beta_2^t)`, the adaptive term is used
    only once the variance is tractable (:math:`\\rho_t > 5`), scaled by the rectification
    :math:`r_t = \\sqrt{(\\rho_t-4)(\\rho_t-2)\\rho_\\infty / ((\\rho_\\infty-4)(\\rho_\\infty-2)\\rho_t)}`;
    before that the step is plain momentum SGD on the bias-corrected first moment.
    """
    g, tmp = _adam_moments_(xp, param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1,
                            beta2=beta2, weight_decay=weight_decay,
                            decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)

    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    update = exp_avg / bias_correction1
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2
    update *= lr
    if rho_t > 5.0:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        xp.sqrt(exp_avg_sq, out=tmp)
        tmp += eps
        xp.divide(bias_correction2 ** 0.5, tmp, out=tmp)
        update *= tmp
        update *= rect
    param -= update


class Adamax(Optimizer):
    """Adamax: Adam with the infinity norm in place of the second moment (Kingma & Ba, 2015).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 2e-3).
        betas: running-average coefficients (default (0.9, 0.999)).
        eps: added to ``|g|`` for stability (default 1e-8).
        weight_decay: L2 penalty (default 0).
        foreach, maximize, differentiable, capturable: as in torch.
    """

    def __init__(self, params: ParamsT, lr: float = 2e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False,
                 capturable: bool = False) -> None:
        _check_adam_args(lr, betas, eps, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize, differentiable=differentiable,
                        capturable=capturable)
        super().__init__(params, defaults)

    _group_defaults = {"foreach": None, "maximize": False, "differentiable": False,
                       "capturable": False}
    _tensor_state_keys = ("step",)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step; ``closure`` re-evaluates and returns the loss."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            lr = _to_scalar(group["lr"])
            beta1, beta2 = group["betas"]
            for p in self._params_with_grad(group):
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = _step_tensor(p, group)
                    state["exp_avg"] = ember.zeros_like(p)
                    state["exp_inf"] = ember.zeros_like(p)
                step_t = state["step"]
                step_t._data += 1
                if group["differentiable"]:
                    with ember.enable_grad():
                        _diff.adamax(p, p._grad, state["exp_avg"], state["exp_inf"],
                                     float(step_t._data), lr=lr, beta1=beta1, beta2=beta2,
                                     eps=group["eps"], weight_decay=group["weight_decay"],
                                     maximize=group["maximize"])
                    continue
                adamax_update(_xp(p), _real(p._data), _real(p._grad._data),
                              _real(state["exp_avg"]._data), _real(state["exp_inf"]._data),
                              float(step_t._data), lr=lr, beta1=beta1, beta2=beta2,
                              eps=group["eps"], weight_decay=group["weight_decay"],
                              maximize=group["maximize"])
                _bump(p, step_t, state["exp_avg"], state["exp_inf"])
        return loss


class NAdam(Optimizer):
    """NAdam: Adam with Nesterov momentum (Dozat, 2016).

    The momentum coefficient warms up as
    :math:`\\mu_t = \\beta_1(1 - \\tfrac12 0.96^{t\\psi})` with ``psi = momentum_decay``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 2e-3).
        betas: running-average coefficients (default (0.9, 0.999)).
        eps: denominator term (default 1e-8).
        weight_decay: L2 penalty (default 0).
        momentum_decay: ``psi`` above (default 4e-3).
        decoupled_weight_decay: shrink the weights as in AdamW (NAdamW) instead.
        foreach, maximize, capturable, differentiable: as in torch.
    """

    _capturable_names = "params, mu_products and state_steps"

    def __init__(self, params: ParamsT, lr: float = 2e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False) -> None:
        _check_adam_args(lr, betas, eps, weight_decay)
        if not 0.0 <= momentum_decay:
            raise ValueError(f"Invalid momentum_decay value: {momentum_decay}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                        foreach=foreach, capturable=capturable, differentiable=differentiable)
        super().__init__(params, defaults)

    _group_defaults = {"maximize": False, "foreach": None, "capturable": False,
                       "differentiable": False, "decoupled_weight_decay": False}
    _tensor_state_keys = ("step", "mu_product")

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step; ``closure`` re-evaluates and returns the loss."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            lr = _to_scalar(group["lr"])
            beta1, beta2 = group["betas"]
            psi = group["momentum_decay"]
            for p in self._params_with_grad(group):
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = _step_tensor(p, group)
                    state["mu_product"] = _step_tensor(p, group, 1.0)
                    state["exp_avg"] = ember.zeros_like(p)
                    state["exp_avg_sq"] = ember.zeros_like(p)
                step_t, mu_prod_t = state["step"], state["mu_product"]
                step_t._data += 1
                step = float(step_t._data)
                if group["differentiable"]:
                    with ember.enable_grad():
                        _diff.nadam(p, p._grad, state["exp_avg"], state["exp_avg_sq"],
                                    mu_prod_t, step, lr=lr, beta1=beta1, beta2=beta2,
                                    eps=group["eps"], weight_decay=group["weight_decay"],
                                    momentum_decay=psi,
                                    decoupled_weight_decay=group["decoupled_weight_decay"],
                                    maximize=group["maximize"])
                    continue
                mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * psi)))
                mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * psi)))
                # mu_product is a float32 scalar tensor in torch: accumulate in its dtype.
                mu_prod_t._data *= mu
                nadam_update(_xp(p), _real(p._data), _real(p._grad._data),
                             _real(state["exp_avg"]._data), _real(state["exp_avg_sq"]._data),
                             step, mu, mu_next, float(mu_prod_t._data), lr=lr, beta1=beta1,
                             beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                             decoupled_weight_decay=group["decoupled_weight_decay"],
                             maximize=group["maximize"])
                _bump(p, step_t, mu_prod_t, state["exp_avg"], state["exp_avg_sq"])
        return loss


class RAdam(Optimizer):
    """RAdam: Adam with a rectified adaptive learning rate (Liu et al., 2020).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-3).
        betas: running-average coefficients (default (0.9, 0.999)).
        eps: denominator term (default 1e-8).
        weight_decay: L2 penalty (default 0).
        decoupled_weight_decay: shrink the weights as in AdamW instead.
        foreach, maximize, capturable, differentiable: as in torch.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False) -> None:
        _check_adam_args(lr, betas, eps, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        decoupled_weight_decay=decoupled_weight_decay,
                        differentiable=differentiable)
        super().__init__(params, defaults)

    _group_defaults = {"foreach": None, "maximize": False, "differentiable": False,
                       "decoupled_weight_decay": False, "capturable": False}
    _tensor_state_keys = ("step",)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step; ``closure`` re-evaluates and returns the loss."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            lr = _to_scalar(group["lr"])
            beta1, beta2 = group["betas"]
            for p in self._params_with_grad(group):
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = _step_tensor(p, group)
                    state["exp_avg"] = ember.zeros_like(p)
                    state["exp_avg_sq"] = ember.zeros_like(p)
                step_t = state["step"]
                step_t._data += 1
                if group["differentiable"]:
                    with ember.enable_grad():
                        _diff.radam(p, p._grad, state["exp_avg"], state["exp_avg_sq"],
                                    float(step_t._data), lr=lr, beta1=beta1, beta2=beta2,
                                    eps=group["eps"], weight_decay=group["weight_decay"],
                                    decoupled_weight_decay=group["decoupled_weight_decay"],
                                    maximize=group["maximize"])
                    continue
                radam_update(_xp(p), _real(p._data), _real(p._grad._data),
                             _real(state["exp_avg"]._data), _real(state["exp_avg_sq"]._data),
                             float(step_t._data), lr=lr, beta1=beta1, beta2=beta2,
                             eps=group["eps"], weight_decay=group["weight_decay"],
                             decoupled_weight_decay=group["decoupled_weight_decay"],
                             maximize=group["maximize"])
                _bump(p, step_t, state["exp_avg"], state["exp_avg_sq"])
        return loss

