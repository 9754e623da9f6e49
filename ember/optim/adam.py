"""Adam and AdamW (Adam with decoupled weight decay; AdamW extends Adam)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

import ember
from ember.backend import cpu_kernels
from ember.optim import _cuda_fused, _multi_tensor
from ember.optim import _differentiable as _diff
from ember.optim.optimizer import (Optimizer, ParamsT, _adam_moments_, _bump, _check_fused,
                                   _check_fused_flags, _check_lr, _real, _step_tensor,
                                   _to_scalar, _xp)

__all__ = ["Adam", "AdamW", "adam_update"]


def adam_update(xp: Any, param: Any, grad: Any, exp_avg: Any, exp_avg_sq: Any,
                max_exp_avg_sq: Any, step: float, *, lr: float, beta1: float, beta2: float,
                eps: float, weight_decay: float, amsgrad: bool, maximize: bool,
                decoupled_weight_decay: bool) -> None:
    """One Adam step on arrays, in place on ``param`` and the moment buffers.

    Kingma & Ba, "Adam: A Method for Stochastic Optimization" (2015); AMSGrad from Reddi et
    al., "On the Convergence of Adam and Beyond" (2018); decoupled weight decay (AdamW) from
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2019).

    .. math::
        m \\leftarrow \\beta_1 m + (1-\\beta_1) g,\\quad
        v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2,\\quad
        \\theta \\leftarrow \\theta - \\frac{\\gamma}{1-\\beta_1^t}
            \\frac{m}{\\sqrt{v}/\\sqrt{1-\\beta_2^t} + \\epsilon}

    ``step`` is the step count *after* increment (t >= 1). On CUDA (float32/float64) the
    same maths runs as one fused kernel.
    """
    # (the NumPy test first: supported()'s hasattr probe on numpy costs ~7 us a parameter)
    if xp.__name__ != "numpy" and _cuda_fused.supported(xp, param, grad):
        _cuda_fused.adam(xp, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr=lr,
                         beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize,
                         decoupled_weight_decay=decoupled_weight_decay)
        return
    if xp.__name__ == "numpy" and _adam_numba(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq,
                                              step, lr, beta1, beta2, eps, weight_decay,
                                              maximize, decoupled_weight_decay):
        return
    g, tmp = _adam_moments_(xp, param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1,
                            beta2=beta2, weight_decay=weight_decay,
                            decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)

    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2 ** 0.5
    if amsgrad:
        xp.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        xp.sqrt(max_exp_avg_sq, out=tmp)
    else:
        xp.sqrt(exp_avg_sq, out=tmp)
    tmp /= bias_correction2_sqrt
    tmp += eps
    xp.divide(exp_avg, tmp, out=tmp)
    tmp *= -step_size
    param += tmp


def _adam_scalars(dt: Any, step: float, lr: float, beta1: float, beta2: float, eps: float,
                  weight_decay: float, maximize: bool, decoupled: bool) -> tuple:
    """The numba kernel's arguments after the arrays: :func:`adam_update`'s scalars in the
    parameters' dtype ``dt`` (NumPy's float32 passes compute with them in float32)."""
    c = dt.type
    w1 = 1 - beta1
    bc1 = 1 - beta1 ** step
    return (c(1 - lr * weight_decay) if decoupled and weight_decay != 0 else c(1),
            c(0) if decoupled else c(weight_decay), bool(maximize),
            c(1 - w1) if abs(w1) >= 0.5 else c(w1), abs(w1) >= 0.5, c(beta2), c(1 - beta2),
            c(lr / bc1), c((1 - beta2 ** step) ** 0.5), c(eps))


def _adam_numba(param: Any, grad: Any, exp_avg: Any, exp_avg_sq: Any, max_exp_avg_sq: Any,
                step: float, lr: float, beta1: float, beta2: float, eps: float,
                weight_decay: float, maximize: bool, decoupled: bool) -> bool:
    """:func:`adam_update`'s passes as one numba loop over contiguous float32/float64 arrays
    of one dtype (~10 NumPy passes and a temporary per parameter before); False when the
    kernels are off or the arrays do not qualify."""
    arrays = [param, grad, exp_avg, exp_avg_sq] + \
        ([max_exp_avg_sq] if max_exp_avg_sq is not None else [])
    dt = param.dtype
    if dt not in (np.float32, np.float64) or \
            any(a.dtype != dt or not a.flags.c_contiguous for a in arrays):
        return False
    nb = cpu_kernels.kernels()
    if nb is None:
        return False
    flat = [a.reshape(-1) for a in arrays]
    vmax = flat[4] if max_exp_avg_sq is not None else flat[0][:0]
    nb.adam(flat[0], flat[1], flat[2], flat[3], vmax,
            *_adam_scalars(dt, step, lr, beta1, beta2, eps, weight_decay, maximize, decoupled))
    return True


def _flat32_64(a: Any, dt: Any) -> Any:
    """``a`` as a 1-D view when it is a C-contiguous NumPy array of dtype ``dt``, else None."""
    if type(a) is not np.ndarray or a.dtype != dt or not a.flags.c_contiguous:
        return None
    return a.reshape(-1)


def _adam_cpu_group(opt: "Adam", group: dict, params: list, lr: float, beta1: float,
                    beta2: float) -> list:
    """The numba kernel over the group's CPU float32/float64 parameters, with the per-step
    scalars computed once per (step, dtype) rather than per parameter (the Python around
    each kernel call was ~20 us a parameter: a third of a tiny-GPT AdamW step). Returns
    the parameters it did not take, for the general loop; same results as that loop."""
    nb = cpu_kernels.kernels()
    if nb is None or group["differentiable"] or group["fused"]:
        return params
    rest = []
    scalars: dict = {}
    amsgrad = group["amsgrad"]
    state_of = opt.state
    eps, wd, maximize = group["eps"], group["weight_decay"], group["maximize"]
    decoupled = group["decoupled_weight_decay"]
    for p in params:
        a = p._data
        dt = a.dtype
        if type(a) is not np.ndarray or dt not in (np.float32, np.float64):
            rest.append(p)
            continue
        state = state_of[p]
        if len(state) == 0:
            rest.append(p)  # the general loop creates the state (and checks the flags)
            continue
        fa = _flat32_64(a, dt)
        fg = _flat32_64(p._grad._data, dt)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        fm = _flat32_64(m._data, dt)
        fv = _flat32_64(v._data, dt)
        vm = state.get("max_exp_avg_sq") if amsgrad else None
        step_t = state["step"]
        sa = step_t._data
        if fa is None or fg is None or fm is None or fv is None or \
                (amsgrad and vm is None) or type(sa) is not np.ndarray:
            rest.append(p)
            continue
        fvm = fa[:0]  # the kernel's "no AMSGrad" (an empty maximum)
        if vm is not None:
            fvm = _flat32_64(vm._data, dt)
            if fvm is None:
                rest.append(p)
                continue
        sa += 1
        step = float(sa)
        key = (step, dt)
        sc = scalars.get(key)
        if sc is None:
            sc = scalars[key] = _adam_scalars(dt, step, lr, beta1, beta2, eps, wd, maximize,
                                              decoupled)
        nb.adam(fa, fg, fm, fv, fvm, *sc)
        p._version[0] += 1
        step_t._version[0] += 1
        m._version[0] += 1
        v._version[0] += 1
        if vm is not None:
            vm._version[0] += 1
    return rest


class Adam(Optimizer):
    """Adam: adaptive moment estimation (Kingma & Ba, 2015).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-3); a one-element Tensor is accepted.
        betas: coefficients of the running averages of the gradient and its square
            (default (0.9, 0.999)).
        eps: added to the denominator for numerical stability (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0), or decoupled from it
            when ``decoupled_weight_decay=True`` (which makes this AdamW).
        amsgrad: use the AMSGrad variant (maximum of past squared-gradient averages).
        foreach, maximize, capturable, differentiable, fused: as in torch. On CUDA,
            ``foreach`` (the default there) and ``fused`` update every parameter of a group
            in one multi-tensor kernel; ``capturable``/``fused`` keep the step count on the
            device so the step can be captured in a CUDA graph.

    Example::

        >>> opt = ember.optim.Adam(model.parameters(), lr=1e-3)
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False) -> None:
        if isinstance(lr, ember.Tensor):
            if foreach and not capturable:
                raise ValueError("lr as a Tensor is not supported for capturable=False and "
                                 "foreach=True")
        _check_lr(lr)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not ((isinstance(betas[0], float) and isinstance(betas[1], float))
                or (isinstance(betas[0], ember.Tensor) and isinstance(betas[1], ember.Tensor))):
            raise ValueError("betas must be either both floats or both Tensors")
        for i in (0, 1):
            if isinstance(betas[i], ember.Tensor):
                if not capturable and foreach:
                    raise ValueError(f"betas[{i}] as a Tensor is not supported for "
                                     "capturable=False and foreach=True")
                if betas[i].numel() != 1:
                    raise ValueError(f"Tensor betas[{i}] must be 1-element")
        betas = tuple(b.squeeze() if isinstance(b, ember.Tensor) and b.dim() != 0 else b
                      for b in betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                        capturable=capturable, differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)
        if fused:
            self._step_supports_amp_scaling = True
        _check_fused_flags(defaults)

    _group_defaults = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                       "differentiable": False, "decoupled_weight_decay": False, "fused": None}
    _tensor_state_keys = ("step",)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step; ``closure`` re-evaluates and returns the loss."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            params = self._params_with_grad(group)
            if _multi_tensor.adam(self, group, params):   # CUDA foreach / fused
                continue
            lr = _to_scalar(group["lr"])
            beta1, beta2 = (_to_scalar(b) for b in group["betas"])
            amsgrad = group["amsgrad"]
            if params and params[0]._device.type == "cpu":
                params = _adam_cpu_group(self, group, params, lr, beta1, beta2)
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    if group["fused"]:
                        _check_fused(p)
                    state["step"] = _step_tensor(p, group)
                    state["exp_avg"] = ember.zeros_like(p)
                    state["exp_avg_sq"] = ember.zeros_like(p)
                    if amsgrad:
                        state["max_exp_avg_sq"] = ember.zeros_like(p)
                step_t = state["step"]
                step_t._data += 1
                if group["differentiable"]:
                    with ember.enable_grad():
                        _diff.adam(p, p._grad, state["exp_avg"], state["exp_avg_sq"],
                                   state.get("max_exp_avg_sq"), step_t, lr=lr, beta1=beta1,
                                   beta2=beta2, eps=group["eps"],
                                   weight_decay=group["weight_decay"], amsgrad=amsgrad,
                                   maximize=group["maximize"],
                                   decoupled_weight_decay=group["decoupled_weight_decay"])
                    continue
                max_sq = _real(state["max_exp_avg_sq"]._data) if amsgrad else None
                adam_update(_xp(p), _real(p._data), _real(p._grad._data),
                            _real(state["exp_avg"]._data), _real(state["exp_avg_sq"]._data),
                            max_sq, float(step_t._data), lr=lr, beta1=beta1, beta2=beta2,
                            eps=group["eps"], weight_decay=group["weight_decay"],
                            amsgrad=amsgrad, maximize=group["maximize"],
                            decoupled_weight_decay=group["decoupled_weight_decay"])
                _bump(p, step_t, state["exp_avg"], state["exp_avg_sq"])
                if amsgrad:
                    _bump(state["max_exp_avg_sq"])
        return loss


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    The parameter first shrinks by :math:`\\theta \\leftarrow \\theta(1-\\gamma\\lambda)`,
    then takes the Adam step; the decay never enters the moment estimates.
    Same arguments as :class:`Adam`, with ``weight_decay`` defaulting to 1e-2.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        # AdamW always decouples, whatever a loaded state says.
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
