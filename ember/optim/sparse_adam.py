"""SparseAdam: Adam restricted to the entries present in sparse-layout gradients."""
from __future__ import annotations

from typing import Any, Callable

import ember
from ember.optim.optimizer import Optimizer, ParamsT, _bump, _to_scalar, _xp

__all__ = ["SparseAdam", "sparse_adam_update"]


def sparse_adam_update(xp: Any, param: Any, exp_avg: Any, exp_avg_sq: Any, index: tuple,
                       values: Any, step: int, *, lr: float, beta1: float, beta2: float,
                       eps: float) -> None:
    """Masked Adam on arrays: only the entries at ``index`` (unique, a tuple of index arrays
    as from ``nonzero``) move, with gradient ``values`` there.

    .. math::
        m_i \\leftarrow m_i + (1-\\beta_1)(g_i - m_i),\\quad
        v_i \\leftarrow v_i + (1-\\beta_2)(g_i^2 - v_i),\\quad
        \\theta_i \\leftarrow \\theta_i - \\gamma\\frac{\\sqrt{1-\\beta_2^t}}{1-\\beta_1^t}
            \\frac{m_i}{\\sqrt{v_i} + \\epsilon}
    """
    old_m = exp_avg[index]
    m_upd = (values - old_m) * (1 - beta1)
    exp_avg[index] = old_m + m_upd
    old_v = exp_avg_sq[index]
    v_upd = (values ** 2 - old_v) * (1 - beta2)
    exp_avg_sq[index] = old_v + v_upd
    numer = m_upd + old_m
    denom = xp.sqrt(v_upd + old_v) + eps
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr * bias_correction2 ** 0.5 / bias_correction1
    param[index] += -step_size * (numer / denom)


class SparseAdam(Optimizer):
    """SparseAdam: the masked Adam variant for gradients with a sparse layout
    (e.g. ``nn.Embedding(sparse=True)``); moments and parameters change only where the
    gradient has entries.

    ember tensors are dense (there is no sparse layout yet), so, exactly like torch with a
    dense gradient, ``step`` raises and points to :class:`Adam`; construction, validation
    and state handling follow torch.

    Args:
        params: parameters or parameter groups (dense, real).
        lr: learning rate (default 1e-3).
        betas: running-average coefficients (default (0.9, 0.999)).
        eps: denominator term (default 1e-8).
        maximize: maximize the objective.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, maximize: bool = False) -> None:
        if isinstance(lr, ember.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        defaults = dict(lr=lr, betas=betas, eps=eps, maximize=maximize)
        super().__init__(params, defaults)
        complex_params = [[i, j] for i, group in enumerate(self.param_groups)
                          for j, p in enumerate(group["params"]) if p.is_complex()]
        if complex_params:
            raise ValueError(f"Complex params at indices {complex_params}: SparseAdam does not "
                             "support complex parameters")

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step; ``closure`` re-evaluates and returns the loss."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr = _to_scalar(group["lr"])
            for p in group["params"]:
                grad = p._grad
                if grad is None:
                    continue
                if not getattr(grad, "is_sparse", False):
                    raise RuntimeError("SparseAdam does not support dense gradients, please "
                                       "consider Adam instead")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = ember.zeros_like(p)
                    state["exp_avg_sq"] = ember.zeros_like(p)
                state["step"] += 1
                # a sparse-layout gradient: coalesced COO indices (ndim, nnz) and values
                grad = grad.coalesce()
                index = tuple(grad._indices()._data)
                values = grad._values()._data
                if values.size == 0:
                    continue
                if group.get("maximize", False):
                    values = -values
                sparse_adam_update(_xp(p), p._data, state["exp_avg"]._data,
                                   state["exp_avg_sq"]._data, index, values, state["step"],
                                   lr=lr, beta1=beta1, beta2=beta2, eps=group["eps"])
                _bump(p, state["exp_avg"], state["exp_avg_sq"])
        return loss
