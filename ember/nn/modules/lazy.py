"""``LazyModuleMixin``: modules whose parameter shapes come from the first input."""
from __future__ import annotations

import itertools
from typing import Any

import ember
from ember.nn.parameter import is_lazy

__all__: list = []  # imported from ember.nn.modules.lazy, as in torch


class LazyModuleMixin:
    """A mixin for modules whose parameter shapes are inferred from the first input.

    The module registers :class:`~ember.nn.UninitializedParameter`\\ s; a forward pre-hook
    calls ``initialize_parameters(*input)`` on the first call, then the module becomes
    ``cls_to_become`` (e.g. ``LazyLinear`` becomes ``Linear``).
    """

    cls_to_become: type | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._load_hook = self._register_load_state_dict_pre_hook(  # type: ignore[attr-defined]
            self._lazy_load_hook)
        self._initialize_hook = self.register_forward_pre_hook(  # type: ignore[attr-defined]
            _infer_parameters, with_kwargs=True)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        for name, param in self._parameters.items():  # type: ignore[attr-defined]
            if param is not None:
                destination[prefix + name] = param if keep_vars or is_lazy(param) \
                    else param.detach()
        for name, buf in self._buffers.items():  # type: ignore[attr-defined]
            if buf is not None and name not in self._non_persistent_buffers_set:  # type: ignore
                destination[prefix + name] = buf if keep_vars or is_lazy(buf) else buf.detach()

    def _lazy_load_hook(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                        missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        for name, param in itertools.chain(self._parameters.items(),  # type: ignore
                                           self._buffers.items()):  # type: ignore
            key = prefix + name
            if key in state_dict and param is not None:
                input_param = state_dict[key]
                if is_lazy(param) and not is_lazy(input_param):
                    with ember.no_grad():
                        param.materialize(input_param.shape)

    def initialize_parameters(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"initialize_parameters is not implemented for "
                                  f"{self.__class__.__name__}")

    def has_uninitialized_params(self) -> bool:
        params = self._parameters.values()  # type: ignore[attr-defined]
        buffers = self._buffers.values()  # type: ignore[attr-defined]
        return any(is_lazy(p) for p in itertools.chain(params, buffers))

    def _replicate_for_data_parallel(self) -> Any:
        raise RuntimeError("Modules with uninitialized parameters can't be used with "
                           "`DataParallel`. Run a dummy forward pass to correctly initialize "
                           "the modules")


def _infer_parameters(module: Any, args: tuple, kwargs: dict | None = None) -> None:
    kwargs = kwargs or {}
    module.initialize_parameters(*args, **kwargs)
    if module.has_uninitialized_params():
        raise RuntimeError(f"module {module._get_name()} has not been fully initialized")
    module._initialize_hook.remove()
    module._load_hook.remove()
    delattr(module, "_initialize_hook")
    delattr(module, "_load_hook")
    if module.cls_to_become is not None:
        module.__class__ = module.cls_to_become


