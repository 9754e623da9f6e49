"""``ember.autograd``: reverse-mode automatic differentiation.

Public API: ``backward``, ``grad``, ``Function``, grad modes, ``gradcheck``/``gradgradcheck``
and anomaly detection. ``ember.autograd.functional`` holds jacobian/hessian/vjp/jvp.
"""
from __future__ import annotations

from typing import Any, Sequence

from ember.autograd.engine import run_backward
from ember.autograd.function import Function, FunctionCtx, once_differentiable
from ember.autograd.grad_mode import (
    _State, enable_grad, inference_mode, is_grad_enabled, is_inference_mode_enabled, no_grad,
    set_grad_enabled)
from ember.autograd.gradcheck import GradcheckError, gradcheck, gradgradcheck
from ember.autograd.graph import Node
from ember.tensor import Tensor

__all__ = ["backward", "grad", "Function", "FunctionCtx", "once_differentiable", "no_grad",
           "enable_grad", "set_grad_enabled", "inference_mode", "is_grad_enabled",
           "gradcheck", "gradgradcheck", "GradcheckError", "detect_anomaly",
           "set_detect_anomaly", "is_anomaly_enabled", "Node"]


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, Tensor):
        return [x]
    return list(x)


def backward(tensors: Any, grad_tensors: Any = None, retain_graph: bool | None = None,
             create_graph: bool = False, inputs: Any = None) -> None:
    """Accumulate gradients of ``tensors`` into the ``.grad`` of graph leaves.

    Args:
        tensors: outputs to differentiate.
        grad_tensors: gradients with respect to each output (None for scalars).
        retain_graph: keep the graph for another backward; defaults to ``create_graph``.
        create_graph: record the backward pass for higher-order derivatives.
        inputs: only these tensors accumulate ``.grad``.
    """
    outs = _as_list(tensors)
    grads = _as_list(grad_tensors) if grad_tensors is not None else [None] * len(outs)
    if len(grads) != len(outs):
        raise RuntimeError(f"grad_tensors has {len(grads)} elements but tensors has {len(outs)}")
    if retain_graph is None:
        retain_graph = create_graph
    ins = _as_list(inputs) if inputs is not None else None
    if ins is not None and not ins:
        raise RuntimeError("'inputs' argument to backward() cannot be empty.")
    run_backward(outs, grads, retain_graph, create_graph, inputs=ins)


def grad(outputs: Any, inputs: Any, grad_outputs: Any = None, retain_graph: bool | None = None,
         create_graph: bool = False, only_inputs: bool = True, allow_unused: bool | None = None,
         is_grads_batched: bool = False, materialize_grads: bool = False) -> tuple:
    """Return the gradients of ``outputs`` with respect to ``inputs`` (no ``.grad`` is touched).

    Example::

        >>> x = ember.tensor(3.0, requires_grad=True)
        >>> (g,) = ember.autograd.grad(x ** 2, x)
        >>> g
        tensor(6.)
    """
    outs = _as_list(outputs)
    ins = _as_list(inputs)
    grads = _as_list(grad_outputs) if grad_outputs is not None else [None] * len(outs)
    if len(grads) != len(outs):
        raise RuntimeError(f"grad_outputs has {len(grads)} elements but outputs has {len(outs)}")
    if retain_graph is None:
        retain_graph = create_graph
    if allow_unused is None:
        allow_unused = materialize_grads
    if is_grads_batched:
        import ember
        results = [grad(outs, ins, [g[i] for g in grads], retain_graph=True,
                        create_graph=create_graph, allow_unused=allow_unused,
                        materialize_grads=materialize_grads) for i in range(len(grads[0]))]
        return tuple(ember.stack([r[k] for r in results]) for k in range(len(ins)))
    res = run_backward(outs, grads, retain_graph, create_graph, inputs=ins, capture=True,
                       allow_unused=allow_unused)
    if materialize_grads:
        import ember
        res = [r if r is not None else ember.zeros_like(t) for r, t in zip(res, ins)]
    return tuple(res)


class detect_anomaly:
    """Context manager (and decorator) that names the op whose backward made NaN/Inf.

    Inside it, every node records the forward stack; a backward that returns NaN raises a
    RuntimeError naming that op, with a warning that shows where it was created.
    """

    def __init__(self, check_nan: bool = True) -> None:
        self.check_nan = check_nan

    def __enter__(self) -> None:
        self.prev = _State.anomaly
        _State.anomaly = True

    def __exit__(self, *exc: Any) -> None:
        _State.anomaly = self.prev

    def __call__(self, fn: Any) -> Any:
        import functools

        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            with detect_anomaly(self.check_nan):
                return fn(*a, **k)
        return wrapper


class set_detect_anomaly:
    """Turn anomaly detection on or off (also as a context manager)."""

    def __init__(self, mode: bool, check_nan: bool = True) -> None:
        self.prev = _State.anomaly
        _State.anomaly = bool(mode)

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: Any) -> None:
        _State.anomaly = self.prev


def is_anomaly_enabled() -> bool:
    return _State.anomaly


from ember.autograd import forward_ad, functional  # noqa: E402,F401  (torch.autograd.*)
