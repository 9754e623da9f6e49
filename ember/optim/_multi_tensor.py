"""Multi-tensor (``foreach`` / ``fused``) steps of Adam, AdamW and SGD for CUDA parameters.

torch runs its foreach implementation by default when every tensor of a group is on CUDA
(``foreach=None``), and its fused kernel for ``fused=True``; ember does the same through one
multi-tensor kernel per (device, dtype) bucket of a group
(``ember.backend.cuda_ops.kernels_optim``). ``foreach=False`` keeps the per-parameter path,
and so do CPU tensors (where torch's ``fused=True`` runs a per-parameter CPU kernel too).

Step counts follow torch: host tensors normally, device float32 scalars for ``fused=True``
and device tensors for ``capturable=True``; device steps are incremented and read on the
GPU, so a captured step replays without host values baked in.
"""
from __future__ import annotations

from typing import Any

import ember
from ember.optim.optimizer import _bump, _check_fused, _real, _step_tensor, _to_scalar


def _wanted(group: dict, params: list) -> bool:
    if not params or group.get("differentiable"):
        return False
    if not group.get("fused") and group.get("foreach") is False:
        return False
    return params[0].device.type == "cuda"


def _buckets(params: list) -> dict | None:
    """Parameters grouped by (device, storage dtype), or None when a tensor is not covered
    (a CPU tensor, a non-contiguous array, a grad of another dtype, an uncovered dtype)."""
    from ember.backend.cuda_ops import kernels_optim  # noqa: PLC0415 - CUDA only
    out: dict = {}
    for p in params:
        if p.device.type != "cuda":
            return None
        a, g = _real(p._data), _real(p._grad._data)
        if (g.dtype != a.dtype or not kernels_optim.covered(a.dtype)
                or not a.flags.c_contiguous or not g.flags.c_contiguous
                or p._grad.device != p.device):
            return None
        out.setdefault((p.device, a.dtype), []).append(p)
    return out


def _same_layout(t: "ember.Tensor | None", p: "ember.Tensor") -> bool:
    """Whether a state tensor can go to the kernels beside ``p`` (same device, dtype, size,
    C-contiguous); a loaded or user-edited state may differ."""
    if t is None or t.device != p.device or t.dtype != p.dtype:
        return False
    a = t._data
    return a.size == p._data.size and a.flags.c_contiguous


def adam(group: dict, params: list, state: Any) -> bool:
    """One Adam/AdamW step of ``group`` over ``params`` (those with a grad) through the
    multi-tensor kernels. Returns False, having changed nothing but the lazily created state,
    when they do not apply; the caller then runs the per-parameter path."""
    if not _wanted(group, params):
        return False
    buckets = _buckets(params)
    if buckets is None:
        return False
    from ember.backend.cuda_ops import kernels_optim  # noqa: PLC0415
    amsgrad = group["amsgrad"]
    for p in params:
        st = state[p]
        if len(st) == 0:
            if group["fused"]:
                _check_fused(p)
            st["step"] = _step_tensor(p, group)
            st["exp_avg"] = ember.zeros_like(p)
            st["exp_avg_sq"] = ember.zeros_like(p)
            if amsgrad:
                st["max_exp_avg_sq"] = ember.zeros_like(p)
    keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if amsgrad else ("exp_avg", "exp_avg_sq")
    if not all(_same_layout(state[p].get(k), p) for p in params for k in keys):
        return False
    plans = []
    for (device, dtype), ps in buckets.items():
        steps = [state[p]["step"] for p in ps]
        on_device = [s.device == device for s in steps]
        if all(on_device):
            sdt = steps[0]._data.dtype
            if sdt.name not in ("float32", "float64") or any(s._data.dtype != sdt
                                                             for s in steps):
                return False
            plans.append((ps, steps, True))
        elif not any(s.is_cuda for s in steps):
            plans.append((ps, steps, False))
        else:
            return False
    lr = group["lr"]
    beta1, beta2 = (_to_scalar(b) for b in group["betas"])
    kw = dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
              amsgrad=amsgrad, maximize=group["maximize"],
              decoupled_weight_decay=group["decoupled_weight_decay"])
    for ps, steps, device_steps in plans:
        p_lr = lr
        if isinstance(lr, ember.Tensor):
            # a float32 CUDA lr is read by the kernel (capturable); anything else once here
            if not (device_steps and lr.device == ps[0].device and lr.dtype is ember.float32):
                p_lr = lr.item()
            else:
                p_lr = lr._data.reshape(())
        arrays = [_real(p._data) for p in ps]
        grads = [_real(p._grad._data) for p in ps]
        m = [_real(state[p]["exp_avg"]._data) for p in ps]
        v = [_real(state[p]["exp_avg_sq"]._data) for p in ps]
        vmax = [_real(state[p]["max_exp_avg_sq"]._data) for p in ps] if amsgrad else None
        if device_steps:
            kernels_optim.adam(arrays, grads, m, v, vmax, [s._data for s in steps], 0.0,
                               lr=p_lr, **kw)
        else:
            # host steps: one launch per distinct step value (normally a single one)
            by_step: dict = {}
            for i, s in enumerate(steps):
                s._data += 1
                by_step.setdefault(float(s._data), []).append(i)
            for step, idx in by_step.items():
                sel = (lambda xs: [xs[i] for i in idx]) if len(idx) != len(ps) else \
                    (lambda xs: xs)
                kernels_optim.adam(sel(arrays), sel(grads), sel(m), sel(v),
                                   sel(vmax) if amsgrad else None, None, step, lr=p_lr, **kw)
        for p, s in zip(ps, steps):
            st = state[p]
            _bump(p, s, st["exp_avg"], st["exp_avg_sq"])
            if amsgrad:
                _bump(st["max_exp_avg_sq"])
    return True


def sgd(group: dict, params: list, state: Any) -> bool:
    """One SGD step of ``group`` over ``params`` through the multi-tensor kernels; False
    (nothing changed) when they do not apply."""
    if not _wanted(group, params):
        return False
    buckets = _buckets(params)
    if buckets is None:
        return False
    from ember.backend.cuda_ops import kernels_optim  # noqa: PLC0415
    momentum = group["momentum"]
    if momentum != 0:
        for p in params:
            buf = state[p].get("momentum_buffer")
            if buf is not None and not _same_layout(buf, p):
                return False
    lr = _to_scalar(group["lr"])
    kw = dict(lr=lr, momentum=momentum, dampening=group["dampening"],
              weight_decay=_to_scalar(group["weight_decay"]), nesterov=group["nesterov"],
              maximize=group["maximize"])
    for ps in buckets.values():
        if momentum == 0:
            kernels_optim.sgd([_real(p._data) for p in ps], [_real(p._grad._data) for p in ps],
                              None, False, **kw)
            for p in ps:
                _bump(p)
            continue
        # parameters with a buffer decay it; the others get one filled with the gradient
        old, new = [], []
        for p in ps:
            (old if state[p].get("momentum_buffer") is not None else new).append(p)
        for sub, first in ((old, False), (new, True)):
            if not sub:
                continue
            if first:
                for p in sub:
                    state[p]["momentum_buffer"] = ember.empty_like(p)
            bufs = [state[p]["momentum_buffer"] for p in sub]
            kernels_optim.sgd([_real(p._data) for p in sub],
                              [_real(p._grad._data) for p in sub],
                              [_real(b._data) for b in bufs], first, **kw)
            for p, b in zip(sub, bufs):
                _bump(p, b)
    return True
