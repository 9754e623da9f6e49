"""Gradient clipping: ``clip_grad_norm_``, ``clip_grad_value_``, ``get_total_norm``,
``clip_grads_with_norm_``. All run under ``no_grad``; ``foreach`` is accepted and ignored
(ember has one implementation)."""
from __future__ import annotations

import warnings
from typing import Any

import ember
from ember.tensor import Tensor, _make

__all__ = ["clip_grad_norm_", "clip_grad_norm", "clip_grad_value_", "get_total_norm",
           "clip_grads_with_norm_"]


def _as_list(tensors: Any) -> list:
    if isinstance(tensors, Tensor):
        return [tensors]
    return list(tensors)


# The common case (2-norm, real gradients of one dtype on one device) runs on the arrays:
# one BLAS dot per tensor for its squared norm and one in-place scale, instead of a norm op,
# a stack and a multiply op per parameter (the LSTM LM clips 8 tensors every step).
_CHUNK = 1 << 16


def _plain(tensors: list) -> bool:
    first = tensors[0]
    return all(t._dtype is first._dtype and t._device is first._device and
               t._data.dtype.kind == "f" and not t._requires_grad for t in tensors)


def _total_norm2(tensors: list) -> Tensor | None:
    """The 2-norm of all ``tensors`` as one vector (per-tensor norms in the tensors' dtype,
    then the norm of those, as torch), or None when the fast path does not apply."""
    if not _plain(tensors):
        return None
    from ember.backend import get_xp
    xp = get_xp(tensors[0]._device)
    dt = tensors[0]._data.dtype
    if xp.__name__ == "numpy":
        # BLAS dots over 64K-element chunks, summed in float64: one float32 dot over
        # millions of elements drifts by ~1e-5 relative
        sq = []
        for t in tensors:
            a = t._data.ravel()   # a view for contiguous gradients
            acc = 0.0
            for i in range(0, a.size, _CHUNK):
                c = a[i:i + _CHUNK]
                acc += float(xp.dot(c, c))
            sq.append(acc)
        norms = xp.sqrt(xp.array(sq)).astype(dt)   # per-tensor norms in the dtype, as torch
        total = xp.sqrt(xp.dot(norms.astype(xp.float64), norms))
    else:
        from ember.backend.cuda_ops import kernels_optim as mt
        arrays = [t._data for t in tensors]
        if mt.clip_covered(arrays):
            # all per-tensor sums of squares in one multi-tensor launch, and the rest on the
            # device too: a few launches instead of several per tensor (GPT-2 has ~150), and
            # no cuBLAS call, so a CUDA graph capture can hold it
            norms = xp.sqrt(mt.sq_norms(arrays)).astype(dt)
            n64 = norms.astype(xp.float64)
            total = xp.sqrt((n64 * n64).sum())
        else:
            norms = xp.stack([xp.sqrt(xp.vdot(t._data, t._data)) for t in tensors])
            total = xp.sqrt(xp.dot(norms, norms))
    return _make(xp.asarray(total, dtype=dt), tensors[0]._dtype, tensors[0]._device)


def _scale_arrays(grads: list, max_norm: float, total_norm: Tensor) -> bool:
    """Multiply the gradients in place by ``min(max_norm / (total + 1e-6), 1)`` computed in
    the norm's dtype (as torch); False when the fast path does not apply."""
    if not _plain(grads) or total_norm._requires_grad or \
            total_norm._device is not grads[0]._device or total_norm._data.dtype.kind != "f":
        return False
    tot = total_norm._data
    dt = tot.dtype.type
    from ember.backend import get_xp
    xp = get_xp(grads[0]._device)
    coef = xp.minimum(dt(max_norm) / (tot + dt(1e-6)), dt(1.0)).astype(grads[0]._data.dtype)
    # multiplying by exactly 1 changes nothing: skip the passes (on the CPU, where reading
    # the coefficient costs no device sync), still counting the write like torch's mul_
    skip = xp.__name__ == "numpy" and coef == 1
    if xp.__name__ != "numpy":
        from ember.backend.cuda_ops import kernels_optim as mt
        arrays = [g._data for g in grads]
        if mt.clip_covered(arrays):
            mt.scale_(arrays, coef.reshape(1))   # one launch for all the gradients
            for g in grads:
                g._version[0] += 1
            return True
    for g in grads:
        if not skip:
            g._data *= coef
        g._version[0] += 1
    return True


def get_total_norm(tensors: Any, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                   foreach: bool | None = None) -> Tensor:
    """The ``norm_type`` norm of all ``tensors`` viewed as one vector."""
    tensors = [t for t in _as_list(tensors) if t is not None]
    norm_type = float(norm_type)
    if len(tensors) == 0:
        return ember.tensor(0.0)
    total = _total_norm2(tensors) if norm_type == 2.0 else None
    if total is None:
        with ember.no_grad():
            norms = ember.stack([ember.linalg_vector_norm(t, norm_type) for t in tensors])
            total = ember.linalg_vector_norm(norms, norm_type)
    if error_if_nonfinite and bool(total.isnan() | total.isinf()):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale the gradients "
            "by the non-finite norm anyway, set `error_if_nonfinite=False`")
    return total


def clip_grads_with_norm_(parameters: Any, max_norm: float, total_norm: Tensor,
                          foreach: bool | None = None) -> None:
    """Scale the gradients by ``max_norm / (total_norm + 1e-6)`` when that is below 1."""
    grads = [p.grad for p in _as_list(parameters) if p.grad is not None]
    if not grads:
        return
    if _scale_arrays(grads, max_norm, total_norm):
        return
    with ember.no_grad():
        clip_coef = float(max_norm) / (total_norm + 1e-6)
        clip_coef_clamped = clip_coef.clamp(max=1.0)
        for g in grads:
            g.mul_(clip_coef_clamped.to(g.dtype))


def clip_grad_norm_(parameters: Any, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> Tensor:
    """Rescale the gradients of ``parameters`` so their joint norm is at most ``max_norm``.

    Args:
        parameters: a Tensor or an iterable of Tensors whose ``.grad`` is clipped in place.
        max_norm: the maximum norm.
        norm_type: the p of the p-norm (``inf`` for the max norm). Default: 2.
        error_if_nonfinite: raise if the total norm is nan or inf. Default: ``False``.
        foreach: ignored.

    Returns:
        The total norm of the gradients before clipping (a 0-dim tensor).

    Example::

        >>> total = nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)  # doctest: +SKIP
    """
    params = _as_list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    total = get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    clip_grads_with_norm_(params, max_norm, total, foreach)
    return total


def clip_grad_norm(parameters: Any, max_norm: float, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False, foreach: bool | None = None) -> Tensor:
    """Deprecated alias of :func:`clip_grad_norm_`."""
    warnings.warn("`torch.nn.utils.clip_grad_norm` is now deprecated in favor of "
                  "`torch.nn.utils.clip_grad_norm_`.", FutureWarning, stacklevel=2)
    return clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)


def clip_grad_value_(parameters: Any, clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every gradient of ``parameters`` to ``[-clip_value, clip_value]`` in place."""
    clip_value = float(clip_value)
    with ember.no_grad():
        for p in _as_list(parameters):
            if p.grad is not None:
                p.grad.clamp_(-clip_value, clip_value)
