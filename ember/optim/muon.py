"""Muon: momentum orthogonalized by a Newton-Schulz iteration, for 2-D weight matrices."""
from __future__ import annotations

import math
from typing import Any, Callable

import ember
from ember.optim.optimizer import Optimizer, ParamsT, _bump, _lerp_, _to_scalar, _xp

__all__ = ["Muon", "muon_update"]

EPS = 1e-7
DEFAULT_A = 3.4445
DEFAULT_B = -4.775
DEFAULT_C = 2.0315
DEFAULT_NS_STEPS = 5


def _round_bf16(xp: Any, a: Any) -> Any:
    """Round a float32 array to bfloat16 precision (nearest, ties to even), kept as float32.

    torch runs the Newton-Schulz iteration in bfloat16; this bit-level rounding reproduces
    that on NumPy and CuPy alike (CuPy has no bfloat16 dtype)."""
    u = a.view(xp.uint32)
    u += xp.uint32(0x7FFF) + ((u >> 16) & xp.uint32(1))
    u &= xp.uint32(0xFFFF0000)
    return a


def _bf16(xp: Any, a: Any) -> Any:
    return _round_bf16(xp, xp.array(a, dtype=xp.float32))


def zeropower_via_newtonschulz(xp: Any, grad: Any, ns_coefficients: tuple, ns_steps: int,
                               eps: float) -> Any:
    """An approximate orthogonalization :math:`U V^\\top` of ``grad = U S V^\\top`` by the
    quintic Newton-Schulz iteration :math:`X \\leftarrow aX + (bA + cA^2)X`, :math:`A = XX^\\top`
    (Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024), in
    bfloat16 precision like torch. Returns a float32 array holding bfloat16 values."""
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if grad.ndim != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    a, b, c = ns_coefficients
    x = _bf16(xp, grad)
    tall = grad.shape[0] > grad.shape[1]
    if tall:
        x = x.T
    norm = float(_bf16(xp, xp.sqrt(xp.sum(x * x))))
    x = _bf16(xp, x / max(norm, float(_bf16(xp, eps))))
    for _ in range(ns_steps):
        gram = _bf16(xp, x @ x.T)
        gram_update = _bf16(xp, b * gram + c * (gram @ gram))
        x = _bf16(xp, a * x + gram_update @ x)
    return x.T if tall else x


def _adjust_lr(lr: float, adjust_lr_fn: str | None, param_shape: tuple) -> float:
    """Scale the lr by the matrix shape: ``'original'`` uses :math:`\\sqrt{\\max(1, A/B)}`,
    ``'match_rms_adamw'`` uses :math:`0.2\\sqrt{\\max(A, B)}` (Liu et al., "Muon is Scalable
    for LLM Training", 2025)."""
    A, B = param_shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, A / B))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(A, B))
    else:
        ratio = 1.0
    return lr * ratio


def muon_update(xp: Any, param: Any, grad: Any, buf: Any, *, lr: float, weight_decay: float,
                momentum: float, nesterov: bool, ns_coefficients: tuple, ns_steps: int,
                eps: float, adjust_lr_fn: str | None) -> None:
    """One Muon step on arrays, in place: momentum (optionally Nesterov), orthogonalize the
    update, decoupled weight decay, then :math:`\\theta \\leftarrow \\theta - \\gamma' O`."""
    if grad.ndim != 2:
        raise ValueError("Param gradient must be a 2D matrix")
    _lerp_(xp, buf, grad, 1 - momentum)
    if nesterov:
        update = grad.copy()
        _lerp_(xp, update, buf, momentum)
    else:
        update = buf
    ortho = zeropower_via_newtonschulz(xp, update, ns_coefficients, ns_steps, eps)
    adjusted_lr = _adjust_lr(lr, adjust_lr_fn, param.shape)
    param *= 1 - lr * weight_decay
    param += (-adjusted_lr) * ortho.astype(param.dtype)


class Muon(Optimizer):
    """Muon: MomentUm Orthogonalized by Newton-schulz (2-D parameters only).

    Args:
        params: 2-D parameters or parameter groups.
        lr: learning rate (default 1e-3).
        weight_decay: decoupled weight decay (default 0.1).
        momentum: momentum factor (default 0.95).
        nesterov: use Nesterov momentum (default True).
        ns_coefficients: (a, b, c) of the quintic iteration.
        eps: floor of the norm used to normalize the update (default 1e-7).
        ns_steps: Newton-Schulz iterations (default 5).
        adjust_lr_fn: None / ``'original'`` or ``'match_rms_adamw'``.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple = (DEFAULT_A, DEFAULT_B, DEFAULT_C), eps: float = EPS,
                 ns_steps: int = DEFAULT_NS_STEPS, adjust_lr_fn: str | None = None) -> None:
        if isinstance(lr, ember.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 <= momentum:
            raise ValueError(f"momentum should be >= 0 but is: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight decay should be >= 0 but is: {weight_decay}")
        if adjust_lr_fn is not None and adjust_lr_fn not in ["original", "match_rms_adamw"]:
            raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                        adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon only supports 2D parameters whereas we found a "
                                     f"parameter with size: {p.size()}")

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step; ``closure`` re-evaluates and returns the loss."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            lr = _to_scalar(group["lr"])
            for p in self._params_with_grad(group):
                if p.is_complex():
                    raise RuntimeError("Muon does not support complex parameters")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = ember.zeros_like(p._grad)
                buf = state["momentum_buffer"]
                muon_update(_xp(p), p._data, p._grad._data, buf._data, lr=lr,
                            weight_decay=group["weight_decay"], momentum=group["momentum"],
                            nesterov=group["nesterov"], ns_coefficients=group["ns_coefficients"],
                            ns_steps=group["ns_steps"], eps=group["eps"],
                            adjust_lr_fn=group["adjust_lr_fn"])
                _bump(p, buf)
        return loss

