"""Forward-mode AD with dual tensors (torch.autograd.forward_ad): ``dual_level``,
``make_dual``, ``unpack_dual``.

ember's ops declare backward formulas only, so tangents are computed from the reverse graph
by the double-vjp trick instead of being pushed through each op: a dual tensor is a graph
input carrying a tangent, and ``unpack_dual(y)`` returns ``J t`` as the vjp, with respect to
a dummy cotangent ``u``, of ``(J^T u) . t``. Every op with a differentiable backward
(double backward) therefore supports forward AD. The primal computation must run with grad
mode on (it records the graph the tangents are read from).

Example::

    >>> with forward_ad.dual_level():
    ...     x = forward_ad.make_dual(primal, tangent)
    ...     y = x.sin() * 2
    ...     jvp = forward_ad.unpack_dual(y).tangent    # 2 cos(primal) * tangent
"""
from __future__ import annotations

from collections import namedtuple
from typing import Any

from ember.tensor import Tensor

__all__ = ["dual_level", "make_dual", "unpack_dual", "enter_dual_level", "exit_dual_level",
           "UnpackedDualTensor"]

UnpackedDualTensor = namedtuple("UnpackedDualTensor", ["primal", "tangent"])

_LEVELS: list = []   # one list of (dual tensor, tangent) per open level


def enter_dual_level() -> int:
    """Open a new forward-AD level (torch allows one at a time) and return its index."""
    if _LEVELS:
        raise RuntimeError("Entering a new forward AD level but the current level (0) is not "
                           "valid. Make sure you did not forget to exit the previous level.")
    _LEVELS.append([])
    return len(_LEVELS) - 1


def exit_dual_level(*, level: int | None = None) -> None:
    """Close the level; its dual tensors lose their tangents."""
    if not _LEVELS:
        raise RuntimeError("Trying to exit a forward AD level that was not the last one that "
                           "was created. This is not supported.")
    _LEVELS.pop()


class dual_level:
    """Context manager for a forward-AD level: tangents live until it exits."""

    def __enter__(self) -> int:
        return enter_dual_level()

    def __exit__(self, *exc: Any) -> None:
        exit_dual_level()


def _level(level: int | None, fn: str) -> list:
    if not _LEVELS:
        raise RuntimeError(f"Trying to create a dual Tensor for forward AD but no level exists, "
                           f"make sure to enter_dual_level() first.") if fn == "make_dual" \
            else RuntimeError("unpack_dual: no forward AD level is active")
    return _LEVELS[-1 if level is None else level]


def make_dual(tensor: Tensor, tangent: Tensor, *, level: int | None = None) -> Tensor:
    """A tensor equal to ``tensor`` that carries ``tangent`` (same shape) in the current level.

    It stays differentiable with respect to ``tensor`` for reverse mode.
    """
    duals = _level(level, "make_dual")
    if not isinstance(tensor, Tensor) or not isinstance(tangent, Tensor):
        raise TypeError("make_dual expects Tensors for both the primal and the tangent")
    if not (tensor.is_floating_point() or tensor.is_complex()):
        raise ValueError(f"Expected primal to be floating point or complex, but got: "
                         f"{tensor.dtype}")
    if not (tangent.is_floating_point() or tangent.is_complex()):
        raise ValueError(f"Expected tangent to be floating point or complex, but got: "
                         f"{tangent.dtype}")
    if tuple(tensor.shape) != tuple(tangent.shape):
        raise RuntimeError(f"Trying to set a forward gradient that has a different size than "
                           f"that of the original Tensor, this is not supported. Tensor is of "
                           f"size {list(tensor.shape)} while the given forward gradient is of "
                           f"size {list(tangent.shape)}.")
    import ember
    with ember.enable_grad():
        dual = tensor.view_as(tensor) if tensor.requires_grad else \
            tensor.detach().requires_grad_(True)
    duals.append((dual, tangent.detach()))
    return dual


def unpack_dual(tensor: Any, *, level: int | None = None) -> UnpackedDualTensor:
    """``(primal, tangent)`` of ``tensor``: the tangent is the directional derivative along the
    level's dual inputs, or None when ``tensor`` does not depend on any of them."""
    import ember
    if not isinstance(tensor, Tensor) or not _LEVELS:
        return UnpackedDualTensor(tensor, None)
    duals = _LEVELS[-1 if level is None else level]
    for d, t in duals:
        if d is tensor:
            return UnpackedDualTensor(tensor, t)
    if not tensor.requires_grad or not duals:
        return UnpackedDualTensor(tensor, None)
    with ember.enable_grad():
        u = ember.zeros_like(tensor, requires_grad=True)
        inputs = [d for d, _ in duals]
        grads = ember.autograd.grad(tensor, inputs, u, create_graph=True, allow_unused=True)
        used = [(g, t) for g, t in zip(grads, (t for _, t in duals))
                if g is not None and g.requires_grad]
        if not used:
            return UnpackedDualTensor(tensor, None)
        (jt,) = ember.autograd.grad([g for g, _ in used], [u], [t for _, t in used],
                                    allow_unused=True, retain_graph=True)
    if jt is None:
        jt = ember.zeros_like(tensor)
    return UnpackedDualTensor(tensor, jt.detach())
