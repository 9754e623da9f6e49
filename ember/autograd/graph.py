"""Autograd graph nodes.

A node is created by each differentiable op call that needs gradients; it doubles as the
op's ``ctx``. ``next_edges[i]`` is ``(node, output_nr, shape, dtype)`` for the i-th tensor input
that requires grad, or ``None``; the engine sums gradients to that shape and casts to that dtype.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

from ember._state import _State


class RemovableHandle:
    """Handle returned by ``register_*hook``; ``remove()`` unregisters the hook."""

    __slots__ = ("_store", "_key")
    _next = [0]

    def __init__(self, store: dict) -> None:
        self._store = weakref.ref(store) if not isinstance(store, dict) else store
        RemovableHandle._next[0] += 1
        self._key = RemovableHandle._next[0]

    def remove(self) -> None:
        self._store.pop(self._key, None)

    def __enter__(self) -> "RemovableHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


class Node:
    """Base of all graph nodes (``grad_fn`` objects)."""

    next_edges: Any
    _name = "Node"
    # Class-level defaults, set on an instance only when used: nodes are made per op call and
    # per parameter and step (op nodes even skip __init__), so their construction stays lean.
    _pre_hooks: dict | None = None        # output_nr-agnostic hooks on grad_outputs
    _tensor_pre_hooks: dict | None = None  # {output_nr: {key: fn}}
    _post_hooks: dict | None = None
    _retains: dict | None = None          # {output_nr: weakref(tensor)}
    _traceback: list | None = None
    _defer = False   # an autocast bulk weight cast: the engine may defer its backward
    n_outputs = 1
    out_meta: Any = ()                    # [(shape, dtype, device)] per output

    def __init__(self) -> None:
        self.next_edges = []
        if _State.anomaly:
            import traceback
            self._traceback = traceback.format_stack()[:-3]

    @property
    def metadata(self) -> dict:
        """A dict for the user's annotations (torch's ``Node.metadata``), made on first use."""
        md = self.__dict__.get("_metadata")
        if md is None:
            md = self.__dict__["_metadata"] = {}
        return md

    # -- torch-compatible introspection
    def name(self) -> str:
        return self._name

    @property
    def next_functions(self) -> tuple:
        return tuple((e[0], e[1]) if e is not None else (None, 0) for e in self.next_edges)

    def register_hook(self, fn: Callable) -> RemovableHandle:
        """``fn(grad_inputs, grad_outputs)`` runs after this node's backward."""
        if self._post_hooks is None:
            self._post_hooks = {}
        h = RemovableHandle(self._post_hooks)
        self._post_hooks[h._key] = fn
        return h

    def register_prehook(self, fn: Callable) -> RemovableHandle:
        """``fn(grad_outputs)`` runs before this node's backward and may return new grads."""
        if self._pre_hooks is None:
            self._pre_hooks = {}
        h = RemovableHandle(self._pre_hooks)
        self._pre_hooks[h._key] = fn
        return h

    def apply_backward(self, grads: list) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def release(self) -> None:
        """Free what this node saved; called after backward unless ``retain_graph``."""

    def __repr__(self) -> str:
        return f"<{self._name} object at {hex(id(self))}>"

    def __call__(self, *grads: Any) -> Any:
        out = self.apply_backward(list(grads))
        return out[0] if len(out) == 1 else out


class AccumulateGrad(Node):
    """The sink for a leaf tensor: adds incoming gradients into ``leaf.grad``."""

    _name = "AccumulateGrad"
    next_edges = ()   # a leaf's sink has no inputs

    def __init__(self, leaf: Any) -> None:
        # (one is made per parameter and step: no list of edges, the base's defaults)
        self.variable = leaf
        if _State.anomaly:
            import traceback
            self._traceback = traceback.format_stack()[:-3]

    @property
    def out_meta(self) -> list:
        leaf = self.variable
        return [(leaf._data.shape, leaf._dtype, leaf._device)]

    def _register_hook_dict(self) -> dict:
        return self.variable._hooks_dict()


def accumulate_node(leaf: Any) -> AccumulateGrad:
    """The (cached) AccumulateGrad node of a leaf; the leaf holds it by weak reference."""
    ref = leaf._acc
    node = ref() if ref is not None else None
    if node is None:
        node = AccumulateGrad(leaf)
        leaf._acc = weakref.ref(node)
    return node
