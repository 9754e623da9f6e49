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

from operator import attrgetter, is_
from typing import Any

import ember
from ember.backend.cuda import stream_capturing
from ember.optim.optimizer import _bump, _check_fused, _real, _step_tensor, _to_scalar

_DATA = attrgetter("_data")


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
                or not _flat(a) or not _flat_like(g, a)
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
    return a.size == p._data.size and _flat_like(a, _real(p._data))


def _state_like(p: "ember.Tensor", zero: bool = False) -> "ember.Tensor":
    """A state tensor in ``p``'s memory layout (torch's ``preserve_format``), so the flat
    kernels address the same element of both; a channels-last weight gets a channels-last
    buffer."""
    from ember.backend.cuda_ops import _layout as L  # noqa: PLC0415 - CUDA only
    from ember.tensor import _make  # noqa: PLC0415
    import cupy  # noqa: PLC0415 - the multi-tensor path takes CUDA parameters only
    arr = L.empty_like(cupy, p._data)
    if zero:
        arr.fill(0)
    return _make(arr, p._dtype, p._device)


def _flat(a: Any) -> bool:
    """Whether the kernels can update ``a`` as one flat block: C-contiguous, or dense in
    another memory order (a channels-last conv weight, which torch's foreach path takes too)."""
    if a.flags.c_contiguous:
        return True
    from ember.backend.cuda_ops._layout import dense_order  # noqa: PLC0415 - CUDA only
    return dense_order(a) is not None


def _flat_like(a: Any, ref: Any) -> bool:
    """Whether ``a`` (a gradient or state) lies in memory as ``ref`` (a flat-updatable
    parameter) does, so one flat index addresses the same element of both."""
    if ref.flags.c_contiguous:
        return a.flags.c_contiguous
    return a.shape == ref.shape and a.strides == ref.strides


class _Plan:
    """What a group's step launches, kept between steps: the parameter and state arrays per
    (device, dtype) bucket. Checked by identity each step (a replaced ``.data``, a loaded
    state dict, another parameter list rebuild it); only the gradients are read anew."""

    __slots__ = ("ids", "datas", "dicts", "firsts", "buckets")

    def __init__(self, params: list, state: Any, buckets: list, first_key: str | None) -> None:
        self.ids = tuple(map(id, params))
        self.datas = [p._data for p in params]
        self.dicts = [state[p] for p in params]
        self.firsts = [d[first_key]._data for d in self.dicts] if first_key else []
        self.buckets = buckets

    def valid(self, params: list, state: Any, first_key: str | None) -> bool:
        if tuple(map(id, params)) != self.ids:
            return False
        dicts = [state[p] for p in params]
        if not (all(map(is_, map(_DATA, params), self.datas))
                and all(map(is_, dicts, self.dicts))):
            return False
        if first_key is None:
            return True
        firsts = [d.get(first_key) for d in dicts]
        return all(t is not None and t._data is a for t, a in zip(firsts, self.firsts))


def _grads_of(ps: list, dtype: Any) -> list | None:
    """The bucket's gradient arrays, or None if one cannot go to the kernel as it is."""
    gs = [_real(p._grad._data) for p in ps]
    for g, p in zip(gs, ps):
        if g.dtype != dtype or not _flat_like(g, _real(p._data)):
            return None
    return gs


def _plans(opt: Any) -> dict:
    plans = opt.__dict__.get("_multi_tensor_plans")
    if plans is None:
        plans = opt.__dict__["_multi_tensor_plans"] = {}
    return plans


def _adam_plan(group: dict, params: list, state: Any) -> _Plan | None:
    from ember.backend.cuda_ops import kernels_optim  # noqa: PLC0415
    buckets = _buckets(params)
    if buckets is None:
        return None
    amsgrad = group["amsgrad"]
    for p in params:
        st = state[p]
        if len(st) == 0:
            if group["fused"]:
                _check_fused(p)
            st["step"] = _step_tensor(p, group)
            st["exp_avg"] = _state_like(p, zero=True)
            st["exp_avg_sq"] = _state_like(p, zero=True)
            if amsgrad:
                st["max_exp_avg_sq"] = _state_like(p, zero=True)
    keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if amsgrad else ("exp_avg", "exp_avg_sq")
    if not all(_same_layout(state[p].get(k), p) for p in params for k in keys):
        return None
    out = []
    for (device, dtype), ps in buckets.items():
        steps = [state[p]["step"] for p in ps]
        if all(s.device == device for s in steps):
            sdt = steps[0]._data.dtype
            if sdt.name not in ("float32", "float64") or any(s._data.dtype != sdt
                                                             for s in steps):
                return None
            device_steps = True
        elif not any(s.is_cuda for s in steps):
            device_steps = False
        else:
            return None
        sts = [state[p] for p in ps]
        step_arrays = [s._data for s in steps]
        arrays = [_real(p._data) for p in ps]
        m = [_real(st["exp_avg"]._data) for st in sts]
        v = [_real(st["exp_avg_sq"]._data) for st in sts]
        vmax = [_real(st["max_exp_avg_sq"]._data) for st in sts] if amsgrad else None
        static = kernels_optim.static_key([arrays, None, m, v, vmax],
                                          step_arrays if device_steps else None)
        out.append((ps, dtype, device_steps, steps, step_arrays, arrays, m, v, vmax,
                    [t for st in sts for t in (st["exp_avg"], st["exp_avg_sq"])
                     + ((st["max_exp_avg_sq"],) if amsgrad else ())], static))
    return _Plan(params, state, out, "exp_avg")


def adam(opt: Any, group: dict, params: list) -> bool:
    """One Adam/AdamW step of ``group`` over ``params`` (those with a grad) through the
    multi-tensor kernels. Returns False, having changed nothing but the lazily created state,
    when they do not apply; the caller then runs the per-parameter path."""
    if not _wanted(group, params):
        return False
    if not group["capturable"] and stream_capturing():
        # torch's _cuda_graph_capture_health_check: host steps would be baked into the graph
        raise RuntimeError(f"Attempting CUDA graph capture of step() for an instance of "
                           f"{type(opt).__name__} but param_groups' capturable is False.")
    state = opt.state
    plans = _plans(opt)
    plan = plans.get(id(group))
    if plan is None or group["amsgrad"] != (plan.buckets[0][8] is not None) \
            or not plan.valid(params, state, "exp_avg"):
        plan = _adam_plan(group, params, state)
        if plan is None:
            plans.pop(id(group), None)
            return False
        plans[id(group)] = plan
    grads = [_grads_of(b[0], b[1]) for b in plan.buckets]
    if any(g is None for g in grads):
        return False
    from ember.backend.cuda_ops import kernels_optim  # noqa: PLC0415
    lr = group["lr"]
    beta1, beta2 = (_to_scalar(b) for b in group["betas"])
    kw = dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
              amsgrad=group["amsgrad"], maximize=group["maximize"],
              decoupled_weight_decay=group["decoupled_weight_decay"])
    for (ps, _, device_steps, steps, step_arrays, arrays, m, v, vmax, states, static), gs in \
            zip(plan.buckets, grads):
        p_lr = lr
        if isinstance(lr, ember.Tensor):
            # a float32 CUDA lr is read by the kernel (capturable); anything else once here
            if not (device_steps and lr.device == ps[0].device and lr.dtype is ember.float32):
                p_lr = lr.item()
            else:
                p_lr = lr._data.reshape(())
        if device_steps:
            kernels_optim.adam(arrays, gs, m, v, vmax, step_arrays, 0.0, lr=p_lr,
                               static=static, **kw)
        else:
            # host steps: one launch per distinct step value (normally a single one)
            for step, idx in _bump_host_steps(step_arrays).items():
                if len(idx) == len(ps):
                    kernels_optim.adam(arrays, gs, m, v, vmax, None, step, lr=p_lr,
                                       static=static, **kw)
                    continue
                sel = [arrays[i] for i in idx], [gs[i] for i in idx], [m[i] for i in idx], \
                    [v[i] for i in idx], [vmax[i] for i in idx] if vmax else None
                kernels_optim.adam(*sel, None, step, lr=p_lr, **kw)
        for t in ps:
            t._version[0] += 1
        for t in steps:
            t._version[0] += 1
        for t in states:
            t._version[0] += 1
    return True


def _bump_host_steps(arrays: list) -> dict:
    """Add 1 to each host step array (NumPy 0-d, float32 or float64); return {new step:
    [indices]}. The usual case, every step equal and no array shared, reads each value and
    writes the incremented one (a 0-d in-place ufunc costs ~1 us a parameter; the float32
    rounding of ``s + 1`` equals that of ``a += 1``)."""
    vals = [a.item() for a in arrays]
    s = vals[0]
    if vals.count(s) == len(vals) and len(set(map(id, arrays))) == len(arrays):
        new = s + 1
        for a in arrays:
            a[()] = new
        return {arrays[0].item(): list(range(len(arrays)))}
    by_step: dict = {}
    for i, a in enumerate(arrays):
        a += 1
        by_step.setdefault(float(a), []).append(i)
    return by_step


def sgd(opt: Any, group: dict, params: list) -> bool:
    """One SGD step of ``group`` over ``params`` through the multi-tensor kernels; False
    (nothing changed) when they do not apply."""
    if not _wanted(group, params):
        return False
    from ember.backend.cuda_ops import kernels_optim  # noqa: PLC0415
    state = opt.state
    momentum = group["momentum"]
    key = "momentum_buffer" if momentum != 0 else None
    lr = _to_scalar(group["lr"])
    kw = dict(lr=lr, momentum=momentum, dampening=group["dampening"],
              weight_decay=_to_scalar(group["weight_decay"]), nesterov=group["nesterov"],
              maximize=group["maximize"])
    plans = _plans(opt)
    plan = plans.get(id(group))
    if plan is not None and plan.buckets[0][4] == key and plan.valid(params, state, key):
        grads = [_grads_of(b[0], b[1]) for b in plan.buckets]
        if all(g is not None for g in grads):
            for (ps, _, arrays, bufs, _, tensors, static), gs in zip(plan.buckets, grads):
                kernels_optim.sgd(arrays, gs, bufs, False, static=static, **kw)
                for t in tensors:
                    t._version[0] += 1
            return True
    plans.pop(id(group), None)
    buckets = _buckets(params)
    if buckets is None:
        return False
    if momentum != 0:
        for p in params:
            buf = state[p].get("momentum_buffer")
            if buf is not None and not _same_layout(buf, p):
                return False
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
                    state[p]["momentum_buffer"] = _state_like(p)
            bufs = [state[p]["momentum_buffer"] for p in sub]
            kernels_optim.sgd([_real(p._data) for p in sub],
                              [_real(p._grad._data) for p in sub],
                              [_real(b._data) for b in bufs], first, **kw)
            for p, b in zip(sub, bufs):
                _bump(p, b)
    # the next steps take the fast path: every tensor and buffer as it is now
    out = []
    for (_, dtype), ps in buckets.items():
        bts = [state[p][key] for p in ps] if key else []
        arrays = [_real(p._data) for p in ps]
        bufs = [_real(b._data) for b in bts] if key else None
        out.append((ps, dtype, arrays, bufs, key, list(ps) + bts,
                    kernels_optim.static_key([arrays, None, bufs], None)))
    plans[id(group)] = _Plan(params, state, out, key)
    return True
