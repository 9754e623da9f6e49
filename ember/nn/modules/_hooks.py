"""Module hook machinery: removable handles, the global (all-module) hook registries, and
the identity autograd Function through which full backward hooks see gradients (torch's
``BackwardHook`` design: inputs and outputs of the hooked call pass through it)."""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any, Callable

import ember
from ember.autograd.graph import RemovableHandle as _BaseHandle
from ember.tensor import Tensor


class RemovableHandle(_BaseHandle):
    """A hook handle that can also clear the hook's entries in companion dicts (the
    ``with_kwargs`` / ``always_call`` flags), like ``torch.utils.hooks.RemovableHandle``."""

    __slots__ = ("_extra",)

    def __init__(self, store: dict, *, extra_dict: Any = None) -> None:
        super().__init__(store)
        if extra_dict is None:
            extra = ()
        elif isinstance(extra_dict, (list, tuple)):
            extra = tuple(extra_dict)
        else:
            extra = (extra_dict,)
        self._extra = extra

    @property
    def id(self) -> int:
        return self._key

    def remove(self) -> None:
        super().remove()
        for d in self._extra:
            d.pop(self._key, None)


# ---------------------------------------------------------------------- global hooks
_global_buffer_registration_hooks: dict = OrderedDict()
_global_module_registration_hooks: dict = OrderedDict()
_global_parameter_registration_hooks: dict = OrderedDict()
_global_backward_pre_hooks: dict = OrderedDict()
_global_backward_hooks: dict = OrderedDict()
_global_is_full_backward_hook: bool | None = None
_global_forward_pre_hooks: dict = OrderedDict()
_global_forward_hooks: dict = OrderedDict()
_global_forward_hooks_always_called: dict = OrderedDict()
_global_forward_hooks_with_kwargs: dict = OrderedDict()


def _register(table: dict, hook: Callable) -> RemovableHandle:
    """Add ``hook`` to a global hook table; the handle removes it."""
    handle = RemovableHandle(table)
    table[handle.id] = hook
    return handle


def register_module_buffer_registration_hook(hook: Callable) -> RemovableHandle:
    """Register ``hook(module, name, buffer) -> None | Tensor`` run by every ``register_buffer``."""
    return _register(_global_buffer_registration_hooks, hook)


def register_module_module_registration_hook(hook: Callable) -> RemovableHandle:
    """Register ``hook(module, name, submodule) -> None | Module`` run by every ``add_module``."""
    return _register(_global_module_registration_hooks, hook)


def register_module_parameter_registration_hook(hook: Callable) -> RemovableHandle:
    """Register ``hook(module, name, param) -> None | Parameter`` run by ``register_parameter``."""
    return _register(_global_parameter_registration_hooks, hook)


def register_module_forward_pre_hook(hook: Callable) -> RemovableHandle:
    """Register ``hook(module, args) -> None | new args`` run before every module's forward."""
    return _register(_global_forward_pre_hooks, hook)


def register_module_forward_hook(hook: Callable, *, with_kwargs: bool = False,
                                 always_call: bool = False) -> RemovableHandle:
    """Register ``hook(module, args, output) -> None | new output`` run after every forward."""
    handle = RemovableHandle(_global_forward_hooks,
                             extra_dict=[_global_forward_hooks_always_called,
                                         _global_forward_hooks_with_kwargs])
    _global_forward_hooks[handle.id] = hook
    if with_kwargs:
        _global_forward_hooks_with_kwargs[handle.id] = True
    if always_call:
        _global_forward_hooks_always_called[handle.id] = True
    return handle


def register_module_full_backward_pre_hook(hook: Callable) -> RemovableHandle:
    """Register ``hook(module, grad_output) -> None | new grad_output`` for every module."""
    return _register(_global_backward_pre_hooks, hook)


def register_module_full_backward_hook(hook: Callable) -> RemovableHandle:
    """Register ``hook(module, grad_input, grad_output) -> None | new grad_input`` for every
    module."""
    global _global_is_full_backward_hook
    if _global_is_full_backward_hook is False:
        raise RuntimeError("Cannot use both regular backward hooks and full backward hooks as a "
                           "global Module hook. Please use only one of them.")
    _global_is_full_backward_hook = True
    return _register(_global_backward_hooks, hook)


# ---------------------------------------------------------------------- backward hooks
class _HookState:
    """Carries grad_output from the output identity node to the input identity node."""

    __slots__ = ("module", "grad_outputs", "n_inputs", "input_hooked", "pre_hooks", "hooks")

    def __init__(self, module: Any, pre_hooks: list, hooks: list) -> None:
        self.module = module
        self.grad_outputs: tuple | None = None
        self.n_inputs = 0
        self.input_hooked = False
        self.pre_hooks = pre_hooks
        self.hooks = hooks


class _BackwardHookFn(ember.autograd.Function):
    """Identity on a group of tensors; its backward runs the module's backward hooks."""

    @staticmethod
    def forward(ctx: Any, state: _HookState, is_output: bool, *tensors: Tensor) -> Any:
        ctx.state = state
        ctx.is_output = is_output
        ctx.set_materialize_grads(False)
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        st = ctx.state
        grads = tuple(grads)
        if ctx.is_output:
            for hook in st.pre_hooks:
                res = hook(st.module, grads)
                if res is not None:
                    grads = _check_hook_result("backward pre", res, grads)
            st.grad_outputs = grads
            if not st.input_hooked:
                # No input requires grad: torch calls the hooks with grad_input all None.
                if st.hooks:
                    warnings.warn("Full backward hook is firing when gradients are computed with "
                                  "respect to module outputs since no inputs require gradients. "
                                  "See https://docs.pytorch.org/docs/main/generated/torch.nn."
                                  "Module.html#torch.nn.Module.register_full_backward_hook for "
                                  "more details.", stacklevel=2)
                for hook in st.hooks:
                    res = hook(st.module, (None,) * max(st.n_inputs, 1), grads)
                    if res is not None and any(r is not None for r in res):
                        raise RuntimeError("Cannot return a non-None gradient for an input of a "
                                           "module whose inputs do not require gradient")
        else:
            for hook in st.hooks:
                res = hook(st.module, grads, st.grad_outputs)
                if res is not None:
                    grads = _check_hook_result("backward", res, grads)
        return (None, None) + grads


def _check_hook_result(kind: str, res: Any, grads: tuple) -> tuple:
    if not isinstance(res, tuple):
        res = (res,)
    if len(res) != len(grads):
        raise RuntimeError(f"[Module {kind} hook] Hook returned {len(res)} gradients but "
                           f"{len(grads)} were expected")
    return res


def _apply_hook_fn(state: _HookState, is_output: bool, value: Any) -> Any:
    """Route every Tensor in ``value`` (a Tensor or a tuple/list of them) through the hook
    Function; returns the same structure."""
    if isinstance(value, Tensor):
        if not value.requires_grad:
            return value
        return _BackwardHookFn.apply(state, is_output, value)[0]
    if isinstance(value, (tuple, list)):
        pos = [i for i, v in enumerate(value) if isinstance(v, Tensor) and v.requires_grad]
        if not pos:
            return value
        new = _BackwardHookFn.apply(state, is_output, *[value[i] for i in pos])
        out = list(value)
        for i, t in zip(pos, new):
            out[i] = t
        return type(value)(out) if not hasattr(value, "_fields") else type(value)(*out)
    return value
