"""Adafactor: Adam-like steps with a factored (row x column) second-moment estimate."""
from __future__ import annotations

from typing import Any, Callable

import ember
from ember.optim.optimizer import (Optimizer, ParamsT, _bump, _get_scalar_dtype, _lerp_,
                                   _to_scalar, _xp)

__all__ = ["Adafactor", "adafactor_update"]


def _sq_norm_mean(xp: Any, g: Any, axis: int) -> Any:
    """``norm(g, dim=axis, keepdim=True)**2 / g.shape[axis]`` (torch's formulation)."""
    n = xp.sqrt(xp.sum(g * g, axis=axis, keepdims=True))
    n *= n
    n /= g.shape[axis]
    return n


def adafactor_update(xp: Any, param: Any, grad: Any, row_var: Any, col_var: Any, variance: Any,
                     step: float, *, lr: float, beta2_decay: float, eps1: float, eps2: float,
                     d: float, weight_decay: float, maximize: bool) -> None:
    """One Adafactor step on arrays (Shazeer & Stern, "Adafactor: Adaptive Learning Rates with
    Sublinear Memory Cost", 2018), in torch's variant, in place.

    .. math::
        \\hat\\beta_{2,t} = 1 - t^{\\tau},\\quad \\rho_t = \\min(\\gamma, 1/\\sqrt t),\\quad
        \\alpha_t = \\max(\\epsilon_2, \\mathrm{RMS}(\\theta))\\rho_t \\\\
        R \\leftarrow \\mathrm{lerp}(R, \\mathrm{mean}_{-1}(G^2), 1-\\hat\\beta_{2,t}),\\quad
        C \\leftarrow \\mathrm{lerp}(C, \\mathrm{mean}_{-2}(G^2), 1-\\hat\\beta_{2,t}),\\quad
        \\hat V = \\frac{R C}{\\max(\\mathrm{mean}(R), \\epsilon_1)} \\\\
        U = G / \\sqrt{\\max(\\hat V, \\epsilon_1^2)},\\quad
        \\theta \\leftarrow \\theta(1-\\gamma\\lambda) - \\frac{\\alpha_t}{\\max(1, \\mathrm{RMS}(U)/d)} U

    Matrices (ndim > 1) keep only ``row_var`` and ``col_var``; vectors keep ``variance``.
    """
    g = -grad if maximize else grad
    one_minus_beta2_t = step ** beta2_decay
    rho_t = min(lr, 1 / step ** 0.5)
    param_rms = float(xp.sqrt(xp.sum(param * param))) / param.size ** 0.5
    alpha = max(eps2, param_rms) * rho_t
    if weight_decay != 0:
        param *= 1 - lr * weight_decay
    if g.ndim > 1:
        _lerp_(xp, row_var, _sq_norm_mean(xp, g, -1), one_minus_beta2_t)
        _lerp_(xp, col_var, _sq_norm_mean(xp, g, -2), one_minus_beta2_t)
        var_estimate = xp.matmul(row_var, col_var)
        var_estimate /= xp.maximum(xp.mean(row_var, axis=-2, keepdims=True), eps1)
    else:
        _lerp_(xp, variance, g * g, one_minus_beta2_t)
        var_estimate = variance.copy()
    update = xp.maximum(var_estimate, eps1 * eps1, out=var_estimate)
    xp.sqrt(update, out=update)
    xp.divide(1, update, out=update)
    update *= g
    denom = max(1.0, float(xp.sqrt(xp.sum(update * update))) / (update.size ** 0.5 * d))
    update *= -alpha / denom
    param += update


class Adafactor(Optimizer):
    """Adafactor (Shazeer & Stern, 2018): memory-light adaptive steps.

    Args:
        params: parameters or parameter groups (real only).
        lr: caps the relative step size :math:`\\rho_t` and scales the decoupled weight
            decay (default 1e-2).
        beta2_decay: :math:`\\tau`, the decay rate of :math:`\\beta_2` (default -0.8).
        eps: ``(eps1, eps2)``: eps1 stabilizes the denominators (None: the dtype's machine
            epsilon), eps2 floors the parameter scale (default (None, 1e-3)).
        d: update clipping threshold (default 1.0).
        weight_decay: decoupled weight decay coefficient (default 0).
        foreach, maximize: as in torch.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: bool | None = None, maximize: bool = False) -> None:
        if isinstance(lr, ember.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 >= beta2_decay:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        if eps[0] is not None and not 0.0 <= eps[0]:
            raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
        if not 0.0 <= eps[1]:
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
        if not 1.0 <= d:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize)
        super().__init__(params, defaults)

    _group_defaults = {"foreach": None}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:   # its step is a plain scalar tensor (torch's)
            for p in group["params"]:
                p_state = self.state.get(p, [])
                if len(p_state) != 0 and not isinstance(p_state["step"], ember.Tensor):
                    p_state["step"] = ember.tensor(float(p_state["step"]),
                                                   dtype=_get_scalar_dtype())

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step; ``closure`` re-evaluates and returns the loss."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            lr = _to_scalar(group["lr"])
            eps1, eps2 = group["eps"]
            for p in self._params_with_grad(group):
                if p.is_complex():
                    raise RuntimeError("Adafactor does not support complex parameters")
                grad = p._grad
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = ember.tensor(0.0, dtype=_get_scalar_dtype())
                    if grad.dim() > 1:
                        row_shape = list(grad.shape)
                        row_shape[-1] = 1
                        state["row_var"] = ember.zeros(row_shape, dtype=grad.dtype,
                                                       device=grad.device)
                        col_shape = list(grad.shape)
                        col_shape[-2] = 1
                        state["col_var"] = ember.zeros(col_shape, dtype=grad.dtype,
                                                       device=grad.device)
                    else:
                        state["variance"] = ember.zeros_like(grad)
                written = [p, state["step"]] + [state[k] for k in ("row_var", "col_var",
                                                                    "variance") if k in state]
                state["step"]._data += 1
                e1 = ember.finfo(p.dtype).eps if eps1 is None else eps1
                arr = {k: state[k]._data if k in state else None
                       for k in ("row_var", "col_var", "variance")}
                adafactor_update(_xp(p), p._data, grad._data, arr["row_var"], arr["col_var"],
                                 arr["variance"], float(state["step"]._data), lr=lr,
                                 beta2_decay=group["beta2_decay"], eps1=e1, eps2=eps2,
                                 d=group["d"], weight_decay=group["weight_decay"],
                                 maximize=group["maximize"])
                _bump(*written)
        return loss
