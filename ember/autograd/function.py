"""Custom autograd functions: ``ember.autograd.Function``.

Subclass it with static ``forward(ctx, *args)`` and ``backward(ctx, *grads)``; call
``MyFn.apply(*args)``. The ctx is the graph node, as in torch.
"""
from __future__ import annotations

import functools
from typing import Any

from ember.autograd.grad_mode import _State
from ember.autograd.graph import Node, accumulate_node
from ember.tensor import Tensor, _make


class FunctionCtx(Node):
    """The ``ctx`` of a custom Function, and its ``grad_fn`` node."""

    _pre_hooks = None
    _tensor_pre_hooks = None
    _post_hooks = None
    _retains = None
    _traceback = None

    def __init__(self) -> None:
        super().__init__()
        self._saved: tuple = ()
        self._released = False
        self._non_diff: set = set()
        self._dirty: tuple = ()
        self.materialize_grads = True
        self.needs_input_grad: tuple = ()
        self._fn_cls: Any = None

    def save_for_backward(self, *tensors: Any) -> None:
        """Save tensors (or None) for backward; read them back with ``ctx.saved_tensors``."""
        for t in tensors:
            if t is not None and not isinstance(t, Tensor):
                raise TypeError("save_for_backward can only save variables, but argument "
                                f"{tensors.index(t)} is of type {type(t).__name__}")
        self._saved = tuple((t, t._version[0]) if t is not None else (None, 0) for t in tensors)

    def save_for_forward(self, *tensors: Any) -> None:
        self._saved_forward = tensors

    @property
    def saved_tensors(self) -> tuple:
        if self._released:
            raise RuntimeError("Trying to backward through the graph a second time (or directly "
                               "access saved tensors after they have already been freed). Specify "
                               "retain_graph=True if you need to backward through the graph a "
                               "second time.")
        out = []
        for t, v in self._saved:
            if t is not None and t._version[0] != v:
                from ember.ops.registry import _version_error
                raise _version_error(t, self, v)
            out.append(t)
        return tuple(out)

    saved_variables = saved_tensors

    def mark_non_differentiable(self, *tensors: Tensor) -> None:
        """Outputs that never need gradients (e.g. indices)."""
        self._non_diff.update(id(t) for t in tensors)

    def mark_dirty(self, *tensors: Tensor) -> None:
        """Inputs that forward modified in place."""
        self._dirty = tensors

    def set_materialize_grads(self, value: bool) -> None:
        """Whether undefined output grads reach backward as zeros (True) or None."""
        self.materialize_grads = bool(value)

    def apply_backward(self, grads: list) -> tuple:
        import ember
        if self.materialize_grads:
            grads = [g if g is not None else ember.zeros(m[0], dtype=m[1], device=m[2])
                     for g, m in zip(grads, self.out_meta)]
        res = self._fn_cls.backward(self, *grads)
        if not isinstance(res, tuple):
            res = (res,)
        n = len(self.next_edges)
        if len(res) > n:
            extra = res[n:]
            if any(r is not None for r in extra):
                raise RuntimeError(f"function {self._name} returned an incorrect number of "
                                   f"gradients (expected {n}, got {len(res)})")
            res = res[:n]
        if len(res) < n:
            raise RuntimeError(f"function {self._name} returned an incorrect number of gradients "
                               f"(expected {n}, got {len(res)})")
        return res

    def release(self) -> None:
        self._saved = ()
        self._released = True


class _FunctionMeta(type):
    def __init__(cls, name: str, bases: tuple, attrs: dict) -> None:
        super().__init__(name, bases, attrs)
        cls._backward_cls = type(f"{name}Backward", (FunctionCtx,), {"_name": f"{name}Backward"})


class Function(metaclass=_FunctionMeta):
    """Base class for custom differentiable operations.

    Example::

        >>> class Exp(Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         y = x.exp()
        ...         ctx.save_for_backward(y)
        ...         return y
        ...     @staticmethod
        ...     def backward(ctx, g):
        ...         (y,) = ctx.saved_tensors
        ...         return g * y
        >>> Exp.apply(ember.randn(3, requires_grad=True))
    """

    @staticmethod
    def forward(ctx: Any, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("You must implement the forward function for custom "
                                  "autograd.Function.")

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> Any:
        return _NO_SETUP

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise NotImplementedError("You must implement either the backward or vjp method for your "
                                  "custom autograd.Function to use it with backward mode AD.")

    vjp = backward

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> Any:
        ctx = cls._backward_cls()
        ctx._fn_cls = cls
        tin = [a for a in args if isinstance(a, Tensor)]
        ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a._requires_grad for a in args)
        uses_setup = cls.setup_context is not Function.setup_context
        # no_grad() without its context-manager object (this runs once per call)
        prev = _State.enabled, _State.inference
        _State.enabled = False
        try:
            if uses_setup:
                output = cls.forward(*args, **kwargs)
            else:
                output = cls.forward(ctx, *args, **kwargs)
        finally:
            _State.enabled, _State.inference = prev
        if uses_setup:
            cls.setup_context(ctx, args, output)
        is_tuple = isinstance(output, tuple)
        outs = list(output) if is_tuple else [output]
        need = _State.enabled and any(t._requires_grad for t in tin)
        dirty = {id(t) for t in ctx._dirty} if ctx._dirty else _EMPTY
        input_ids = {id(t) for t in tin}
        for k, o in enumerate(outs):
            if type(o) is not Tensor and not isinstance(o, Tensor):
                continue
            if id(o) in input_ids and id(o) not in dirty:
                # Returning an input unchanged: hand back a new tensor sharing its data.
                alias = _make(o._data, o._dtype, o._device)
                alias._version = o._version
                outs[k] = alias
        if need:
            edges = []
            for a in args:
                if isinstance(a, Tensor) and a._requires_grad:
                    node = a._grad_fn if a._grad_fn is not None else accumulate_node(a)
                    edges.append((node, a._output_nr, a._data.shape, a._dtype))
                else:
                    edges.append(None)
            for t in ctx._dirty:
                if t._grad_fn is None and t._requires_grad:
                    raise RuntimeError("a leaf Variable that requires grad has been used in an "
                                       "in-place operation.")
            ctx.next_edges = edges
            ctx.n_outputs = len(outs)
            ctx.out_meta = [(o._data.shape, o._dtype, o._device) if isinstance(o, Tensor)
                            else ((), None, None) for o in outs]
            for k, o in enumerate(outs):
                if not isinstance(o, Tensor):
                    continue
                if id(o) in ctx._non_diff or o._dtype.category < 2:
                    o._requires_grad = False
                    continue
                o._grad_fn = ctx
                o._output_nr = k
                o._requires_grad = True
        if ctx._dirty:
            # In-place ops inside forward already bumped the versions; saved versions are
            # taken at the end of forward, as torch does.
            ctx._saved = tuple((t, t._version[0]) if t is not None and id(t) in dirty else (t, v)
                               for t, v in ctx._saved)
        return tuple(outs) if is_tuple else outs[0]


_NO_SETUP = object()
_EMPTY: frozenset = frozenset()


def once_differentiable(fn: Any) -> Any:
    """Decorate a ``backward`` that is not itself differentiable: it runs without recording."""
    @functools.wraps(fn)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        prev = _State.enabled, _State.inference   # no_grad() without its object
        _State.enabled = False
        try:
            out = fn(ctx, *grads)
        finally:
            _State.enabled, _State.inference = prev
        if _State.enabled and any(isinstance(g, Tensor) and g._requires_grad for g in grads):
            outs = out if isinstance(out, tuple) else (out,)
            marked = []
            for o in outs:
                if isinstance(o, Tensor):
                    o = o.detach()
                    o._grad_fn = _OnceDiffError()
                    o._requires_grad = True
                marked.append(o)
            return tuple(marked) if isinstance(out, tuple) else marked[0]
        return out
    return wrapper


class _OnceDiffError(Node):
    _name = "DelayedError"
    _pre_hooks = None
    _tensor_pre_hooks = None
    _post_hooks = None
    _retains = None
    _traceback = None

    def apply_backward(self, grads: list) -> tuple:
        raise RuntimeError("trying to differentiate twice a function that was marked with "
                           "@once_differentiable")
