"""Differentiable updates: the same maths as the array updates, written in ember Tensor ops.

With ``differentiable=True`` torch records the optimizer step in the autograd graph, so a
loss computed after ``step()`` can be differentiated with respect to whatever produced the
parameters, gradients or hyperparameter tensors (meta-learning, hypergradients). The array
updates in the other files bypass autograd for speed; these functions are the recorded path.
They follow torch's single-tensor ``differentiable`` branches op for op, including its
``clone()`` calls that keep saved tensors unmodified by the in-place updates.
Each function updates ``param`` and the state tensors in place; ``step`` is the count after
this step's increment (a Python float, or the 0-dim ``step`` tensor where torch uses it).
"""
from __future__ import annotations

from typing import Any

import ember

Tensor = Any  # ember.Tensor


def sgd(param: Tensor, grad: Tensor, buf: Tensor | None, *, lr: float, momentum: float,
        dampening: float, weight_decay: float, nesterov: bool, maximize: bool) -> Tensor | None:
    """SGD; returns the momentum buffer (new on the first step, detached as in torch)."""
    grad = -grad if maximize else grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    if momentum != 0:
        if buf is None:
            buf = grad.detach().clone()
        else:
            buf.mul_(momentum).add_(grad, alpha=1 - dampening)
        grad = grad.add(buf, alpha=momentum) if nesterov else buf
    param.add_(grad, alpha=-lr)
    return buf


def adam(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
         max_exp_avg_sq: Tensor | None, step_t: Tensor, *, lr: float, beta1: float,
         beta2: float, eps: float, weight_decay: float, amsgrad: bool, maximize: bool,
         decoupled_weight_decay: bool) -> None:
    """Adam / AdamW; bias corrections use the ``step`` tensor (float32, as torch does)."""
    grad = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1 ** step_t
    bias_correction2 = 1 - beta2 ** step_t
    step_size_neg = (lr / bias_correction1).neg()
    bias_correction2_sqrt = bias_correction2.sqrt()
    if amsgrad:
        previous = max_exp_avg_sq.clone()
        max_exp_avg_sq.copy_(ember.maximum(previous, exp_avg_sq))
        second = max_exp_avg_sq.sqrt()
    else:
        second = exp_avg_sq.sqrt()
    denom = (second / (bias_correction2_sqrt * step_size_neg)).add_(eps / step_size_neg)
    param.addcdiv_(exp_avg.clone(), denom)


def adamax(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_inf: Tensor, step: float, *,
           lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
           maximize: bool) -> None:
    """Adamax; the running infinity norm is an ``amax`` over a stacked pair, as in torch."""
    grad = -grad if maximize else grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    norm_buf = ember.cat([exp_inf.mul_(beta2).unsqueeze(0), grad.abs().add_(eps).unsqueeze(0)],
                         0)
    exp_inf.copy_(ember.amax(norm_buf, 0, keepdim=False))
    clr = lr / (1 - beta1 ** step)
    param.addcdiv_(exp_avg, exp_inf, value=-clr)


def nadam(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
          mu_product: Tensor, step: float, *, lr: float, beta1: float, beta2: float,
          eps: float, weight_decay: float, momentum_decay: float,
          decoupled_weight_decay: bool, maximize: bool) -> None:
    """NAdam (``mu_product`` is the 0-dim state tensor, updated in place)."""
    grad = -grad if maximize else grad
    bias_correction2 = 1 - beta2 ** step
    if weight_decay != 0:
        if decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
    mu_product *= mu
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    # ember's ops save every tensor operand, so read the state through clones: the next
    # step's in-place updates must not invalidate what this step's graph saved.
    denom = exp_avg_sq.clone().div(bias_correction2).sqrt().add(eps)
    mu_product_next = mu_product * mu_next
    grad = grad * (-lr * (1.0 - mu) / (1.0 - mu_product))
    scaled_avg = exp_avg.clone() * (-lr * mu_next / (1.0 - mu_product_next))
    param.addcdiv_(grad, denom)
    param.addcdiv_(scaled_avg, denom)


def radam(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: float, *,
          lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
          decoupled_weight_decay: bool, maximize: bool) -> None:
    """RAdam (rectified once :math:`\\rho_t > 5`)."""
    grad = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    corrected = exp_avg.clone() / bias_correction1  # clone: see nadam
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2
    if rho_t > 5.0:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        adaptive = (bias_correction2 ** 0.5) / exp_avg_sq.sqrt().add(eps)
        param.add_(corrected * lr * adaptive * rect, alpha=-1.0)
    else:
        param.add_(corrected * lr, alpha=-1.0)


def adagrad(param: Tensor, grad: Tensor, state_sum: Tensor, step: float, *, lr: float,
            lr_decay: float, weight_decay: float, eps: float, maximize: bool) -> None:
    """Adagrad."""
    grad = -grad if maximize else grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    clr = lr / (1 + (step - 1) * lr_decay)
    state_sum.addcmul_(grad, grad, value=1)
    std = state_sum.sqrt() + eps
    param.addcdiv_(grad, std, value=-clr)


def adadelta(param: Tensor, grad: Tensor, square_avg: Tensor, acc_delta: Tensor, *,
             lr: float, rho: float, eps: float, weight_decay: float, maximize: bool) -> None:
    """Adadelta."""
    grad = -grad if maximize else grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
    std = square_avg.add(eps).sqrt_()
    delta = acc_delta.add(eps).sqrt_().clone()
    delta.div_(std).mul_(grad)
    acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
    param.add_(delta, alpha=-lr)


def rmsprop(param: Tensor, grad: Tensor, square_avg: Tensor, grad_avg: Tensor | None,
            buf: Tensor | None, *, lr: float, alpha: float, eps: float, weight_decay: float,
            momentum: float, centered: bool, maximize: bool) -> None:
    """RMSprop (optionally centered, with momentum)."""
    grad = -grad if maximize else grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    if centered:
        grad_avg.lerp_(grad, 1 - alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    avg = avg.add(eps)
    if momentum > 0:
        buf.mul_(momentum).addcdiv_(grad, avg)
        param.add_(buf, alpha=-lr)
    else:
        param.addcdiv_(grad, avg, value=-lr)


def rprop(param: Tensor, grad: Tensor, prev: Tensor, step_size: Tensor, *, etaminus: float,
          etaplus: float, step_size_min: float, step_size_max: float, maximize: bool) -> None:
    """Rprop (the sign pattern itself carries no gradient)."""
    grad = -grad if maximize else grad
    sign = grad.mul(prev.clone()).sign()
    sign[sign.gt(0)] = etaplus
    sign[sign.lt(0)] = etaminus
    sign[sign.eq(0)] = 1
    step_size.mul_(sign).clamp_(step_size_min, step_size_max)
    grad = grad.clone()
    grad[sign.eq(etaminus)] = 0
    param.addcmul_(grad.sign(), step_size, value=-1)
    prev.copy_(grad)


def asgd(param: Tensor, grad: Tensor, ax: Tensor, eta: float, mu: float, *, lambd: float,
         weight_decay: float, maximize: bool) -> None:
    """ASGD (``eta`` and ``mu`` are the current scalar values)."""
    grad = -grad if maximize else grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    param.mul_(1 - lambd * eta)
    param.add_(grad, alpha=-eta)
    if mu != 1:
        ax.add_(param.sub(ax).mul_(mu))
    else:
        ax.copy_(param)
