"""The Optimizer base class: parameter groups, per-parameter state, hooks, state dicts.

Every ember optimizer keeps torch's public layout so checkpoints move between the two:
``param_groups`` is a list of dicts (hyperparameters plus ``'params'``), ``state`` maps each
parameter Tensor to a dict of ember Tensors named as in torch (``'step'``, ``'exp_avg'`` ...),
and :meth:`Optimizer.state_dict` replaces parameters by their integer position.

The updates themselves are per-parameter functions over raw arrays (``p._data``), written
once against the array module of the parameter (NumPy or CuPy). They run in place, so a
step allocates only temporaries, and each write bumps the tensor's version counter once.
"""
from __future__ import annotations

import functools
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from copy import deepcopy
from itertools import chain
from typing import Any

import ember
from ember.autograd.graph import RemovableHandle
from ember.backend import get_xp

__all__ = ["Optimizer", "register_optimizer_step_pre_hook", "register_optimizer_step_post_hook",
           "required"]

StateDict = dict
ParamsT = Any

_global_optimizer_pre_hooks: "OrderedDict[int, Callable]" = OrderedDict()
_global_optimizer_post_hooks: "OrderedDict[int, Callable]" = OrderedDict()


class _RequiredParameter:
    """Marker for a hyperparameter with no default (a group must set it)."""

    def __repr__(self) -> str:
        return "<required parameter>"


required = _RequiredParameter()


# ---------------------------------------------------------------------- shared helpers
def _xp(t: "ember.Tensor") -> Any:
    """The array module (numpy or cupy) holding ``t``'s data."""
    return get_xp(t.device)


def _get_scalar_dtype(is_fused: bool | None = None) -> "ember.dtype":
    """torch's dtype for scalar state (``step``, ``mu_product``, ``eta`` ...): float32, or
    float64 when that is the default dtype; fused implementations always use float32."""
    if is_fused:
        return ember.float32
    return ember.float64 if ember.get_default_dtype() is ember.float64 else ember.float32


def _to_scalar(x: Any) -> Any:
    """A hyperparameter as a Python number (a one-element Tensor lr is read once per step)."""
    if isinstance(x, ember.Tensor):
        return x.item()
    return x


_get_value = _to_scalar


def _step_tensor(p: "ember.Tensor", group: dict, value: float = 0.0) -> "ember.Tensor":
    """A fresh ``step`` counter: on the CPU unless the group is fused or capturable, where
    torch keeps it on the parameter's device (and fused makes it float32)."""
    fused = group.get("fused", False)
    if group.get("capturable", False) or fused:
        return ember.full((), value, dtype=_get_scalar_dtype(is_fused=fused), device=p.device)
    return ember.tensor(value, dtype=_get_scalar_dtype())


def _upgrade_steps(opt: "Optimizer", keys: tuple = ("step",)) -> None:
    """Old checkpoints stored scalar state as Python floats; make them tensors (as torch)."""
    for group in opt.param_groups:
        for p in group["params"]:
            p_state = opt.state.get(p, [])
            if len(p_state) == 0:
                continue
            for key in keys:
                if key in p_state and not isinstance(p_state[key], ember.Tensor):
                    p_state[key] = _step_tensor(p, group, float(p_state[key]))


def _bump(*tensors: "ember.Tensor") -> None:
    """Record one in-place write on each tensor (autograd's version check relies on it)."""
    for t in tensors:
        t._version[0] += 1


def _real(a: Any) -> Any:
    """A complex array as interleaved real pairs (torch's ``view_as_real``), else ``a``.
    Optimizers treat real and imaginary parts as independent coordinates."""
    if a.dtype.kind == "c":
        return a.view(a.real.dtype)
    return a


def _lerp_(xp: Any, start: Any, end: Any, weight: float, tmp: Any = None) -> None:
    """``start += weight * (end - start)`` in place, with torch's two-sided formula
    (``end - (end - start) * (1 - weight)`` for weight >= 0.5), which keeps it exact at 1."""
    diff = xp.subtract(end, start, out=tmp) if tmp is not None else end - start
    if abs(weight) < 0.5:
        diff *= weight
        start += diff
    else:
        diff *= 1.0 - weight
        xp.subtract(end, diff, out=start)


def _adam_moments_(xp: Any, param: Any, grad: Any, exp_avg: Any, exp_avg_sq: Any, *,
                   lr: float, beta1: float, beta2: float, weight_decay: float,
                   decoupled_weight_decay: bool, maximize: bool) -> tuple[Any, Any]:
    """The first half of an Adam-family step on arrays, in place: the gradient (negated to
    maximize; L2 or decoupled weight decay applied) folded into the first moment (torch's
    lerp) and the second. Returns the gradient used and a scratch array shaped like param."""
    g = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled_weight_decay:
            param *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * param
    tmp = xp.empty_like(param)
    _lerp_(xp, exp_avg, g, 1 - beta1, tmp)
    exp_avg_sq *= beta2
    xp.multiply(g, g, out=tmp)
    tmp *= 1 - beta2
    exp_avg_sq += tmp
    return g, tmp


def _check_fused(p: "ember.Tensor") -> None:
    if not p.is_floating_point():
        raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                           f"supported devices: ['cpu', 'cuda'] but {p.dtype} and "
                           f"{p.device.type}")


def _check_lr(lr: Any) -> None:
    if isinstance(lr, ember.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def _check_fused_flags(defaults: dict) -> None:
    if defaults.get("fused"):
        if defaults.get("differentiable"):
            raise RuntimeError("`fused` does not support `differentiable`")
        if defaults.get("foreach"):
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def register_optimizer_step_pre_hook(hook: Callable) -> RemovableHandle:
    """Register ``hook(optimizer, args, kwargs) -> None | (args, kwargs)`` run before the
    ``step`` of every optimizer."""
    handle = RemovableHandle(_global_optimizer_pre_hooks)
    _global_optimizer_pre_hooks[handle._key] = hook
    return handle


def register_optimizer_step_post_hook(hook: Callable) -> RemovableHandle:
    """Register ``hook(optimizer, args, kwargs) -> None`` run after the ``step`` of every
    optimizer."""
    handle = RemovableHandle(_global_optimizer_post_hooks)
    _global_optimizer_post_hooks[handle._key] = hook
    return handle


def _hooked_step(func: Callable) -> Callable:
    """Wrap a ``step`` so that global and per-instance pre/post hooks run around it."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        self = args[0]
        for pre_hook in chain(_global_optimizer_pre_hooks.values(),
                              self._optimizer_step_pre_hooks.values()):
            result = pre_hook(self, args, kwargs)
            if result is not None:
                if isinstance(result, tuple) and len(result) == 2:
                    args, kwargs = result
                else:
                    raise RuntimeError(f"{func} must return None or a tuple of (new_args, "
                                       f"new_kwargs), but got {result}.")
        out = func(*args, **kwargs)
        for post_hook in chain(self._optimizer_step_post_hooks.values(),
                               _global_optimizer_post_hooks.values()):
            post_hook(self, args, kwargs)
        return out

    wrapper.hooked = True
    return wrapper


class Optimizer:
    """Base class of all optimizers.

    Args:
        params: an iterable of Tensors, of ``(name, Tensor)`` pairs (``named_parameters()``),
            or of dicts defining parameter groups (each with ``'params'`` and optional
            per-group hyperparameters).
        defaults: the default hyperparameters, used for groups that do not set them.

    Subclasses implement ``step(closure=None)``.
    """

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        self._optimizer_step_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._patch_step_function()

        if isinstance(params, ember.Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            "Tensors or dicts, but got " + ember.typename(params))

        self.state: defaultdict = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []

        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for param_group in param_groups:
            self.add_param_group(param_group)

    # ------------------------------------------------------------------ pickling / repr
    def __getstate__(self) -> dict[str, Any]:
        return {"defaults": self.defaults, "state": self.state, "param_groups": self.param_groups}

    # What an unpickled optimizer from an older version lacks: group options (with torch's
    # defaults) and per-parameter state once stored as Python numbers, now tensors.
    _group_defaults: dict[str, Any] = {}
    _tensor_state_keys: tuple[str, ...] = ()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for name in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks",
                     "_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks",
                     "_optimizer_load_state_dict_pre_hooks",
                     "_optimizer_load_state_dict_post_hooks"):
            if name not in self.__dict__:
                setattr(self, name, OrderedDict())
        self._patch_step_function()
        self.defaults.setdefault("differentiable", False)
        for group in self.param_groups:
            for key, value in self._group_defaults.items():
                group.setdefault(key, value)
        if self._tensor_state_keys:
            _upgrade_steps(self, self._tensor_state_keys)

    def __repr__(self) -> str:
        format_string = self.__class__.__name__ + " ("
        for i, group in enumerate(self.param_groups):
            format_string += "\n"
            format_string += f"Parameter Group {i}\n"
            for key in sorted(group.keys()):
                if key != "params":
                    format_string += f"    {key}: {group[key]}\n"
        format_string += ")"
        return format_string

    def _patch_step_function(self) -> None:
        # torch patches the class's step once, so hooks run even for user subclasses.
        self._zero_grad_profile_name = f"Optimizer.zero_grad#{self.__class__.__name__}.zero_grad"
        if not getattr(self.__class__.step, "hooked", False):
            self.__class__.step = _hooked_step(self.__class__.step)

    # ------------------------------------------------------------------ hooks
    def register_step_pre_hook(self, hook: Callable) -> RemovableHandle:
        """Register ``hook(optimizer, args, kwargs) -> None | (args, kwargs)`` before step."""
        handle = RemovableHandle(self._optimizer_step_pre_hooks)
        self._optimizer_step_pre_hooks[handle._key] = hook
        return handle

    def register_step_post_hook(self, hook: Callable) -> RemovableHandle:
        """Register ``hook(optimizer, args, kwargs) -> None`` after step."""
        handle = RemovableHandle(self._optimizer_step_post_hooks)
        self._optimizer_step_post_hooks[handle._key] = hook
        return handle

    @staticmethod
    def _register(store: OrderedDict, hook: Callable, prepend: bool) -> RemovableHandle:
        handle = RemovableHandle(store)
        store[handle._key] = hook
        if prepend:
            store.move_to_end(handle._key, last=False)
        return handle

    def register_state_dict_pre_hook(self, hook: Callable, prepend: bool = False
                                     ) -> RemovableHandle:
        """Register ``hook(optimizer) -> None`` run before :meth:`state_dict`."""
        return self._register(self._optimizer_state_dict_pre_hooks, hook, prepend)

    def register_state_dict_post_hook(self, hook: Callable, prepend: bool = False
                                      ) -> RemovableHandle:
        """Register ``hook(optimizer, state_dict) -> state_dict | None`` run after it."""
        return self._register(self._optimizer_state_dict_post_hooks, hook, prepend)

    def register_load_state_dict_pre_hook(self, hook: Callable, prepend: bool = False
                                          ) -> RemovableHandle:
        """Register ``hook(optimizer, state_dict) -> state_dict | None`` run before loading."""
        return self._register(self._optimizer_load_state_dict_pre_hooks, hook, prepend)

    def register_load_state_dict_post_hook(self, hook: Callable, prepend: bool = False
                                           ) -> RemovableHandle:
        """Register ``hook(optimizer) -> None`` run after :meth:`load_state_dict`."""
        return self._register(self._optimizer_load_state_dict_post_hooks, hook, prepend)

    # ------------------------------------------------------------------ state dicts
    def state_dict(self) -> StateDict:
        """The optimizer state as ``{'state': {index: {...}}, 'param_groups': [...]}``.

        Parameters are replaced by their position across all groups (torch's layout), so the
        dict can be loaded into a fresh optimizer over the same parameters, in ember or torch.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)

        param_mappings: dict[int, int] = {}
        start_index = 0

        def pack_group(group: dict[str, Any]) -> dict[str, Any]:
            nonlocal start_index
            packed = {k: v for k, v in group.items() if k != "params"}
            param_mappings.update({id(p): i for i, p in enumerate(group["params"], start_index)
                                   if id(p) not in param_mappings})
            packed["params"] = [param_mappings[id(p)] for p in group["params"]]
            start_index += len(packed["params"])
            return packed

        param_groups = [pack_group(g) for g in self.param_groups]
        packed_state = {(param_mappings[id(k)] if isinstance(k, ember.Tensor) else k): v
                        for k, v in self.state.items()}
        state_dict = {"state": packed_state, "param_groups": param_groups}

        for post_hook in self._optimizer_state_dict_post_hooks.values():
            hook_result = post_hook(self, state_dict)
            if hook_result is not None:
                state_dict = hook_result
        return state_dict

    @staticmethod
    def _process_value_according_to_param_policy(param: "ember.Tensor", value: "ember.Tensor",
                                                 param_id: Any, param_groups: list,
                                                 key: Any = None) -> "ember.Tensor":
        # Floating state follows the parameter's dtype and device; 'step' keeps its own
        # dtype (torch issue 74424) unless the group is fused or capturable.
        fused = False
        capturable = False
        for pg in param_groups:
            if param_id in pg["params"]:
                fused = pg.get("fused", False)
                capturable = pg.get("capturable", False)
                break
        if key == "step":
            if capturable or fused:
                return value.to(dtype=ember.float32, device=param.device)
            return value
        if param.is_floating_point():
            return value.to(dtype=param.dtype, device=param.device)
        return value.to(device=param.device)

    def load_state_dict(self, state_dict: StateDict) -> None:
        """Load a state produced by :meth:`state_dict` (of ember, or torch's converted).

        Raises:
            ValueError: if the number of groups or of parameters per group differs.
        """
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            hook_result = pre_hook(self, state_dict)
            if hook_result is not None:
                state_dict = hook_result

        groups = self.param_groups
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match "
                             "the size of optimizer's group")

        id_map = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                          chain.from_iterable(g["params"] for g in groups)))

        def _cast(param: Any, value: Any, param_id: Any = None, param_groups: Any = None,
                  key: Any = None) -> Any:
            if isinstance(value, ember.Tensor):
                return Optimizer._process_value_according_to_param_policy(
                    param, value, param_id, param_groups, key)
            if isinstance(value, dict):
                return {k: _cast(param, v, param_id=param_id, param_groups=param_groups, key=k)
                        for k, v in value.items()}
            if isinstance(value, Iterable) and not isinstance(value, str):
                return type(value)(_cast(param, v, param_id=param_id, param_groups=param_groups)
                                   for v in value)
            return value

        state: defaultdict = defaultdict(dict)
        for k, v in state_dict["state"].items():
            if k in id_map:
                param = id_map[k]
                state[param] = _cast(param, v, param_id=k,
                                     param_groups=state_dict["param_groups"])
            else:
                state[k] = v

        def update_group(group: dict[str, Any], new_group: dict[str, Any]) -> dict[str, Any]:
            new_group["params"] = group["params"]
            if "param_names" in group and "param_names" not in new_group:
                new_group["param_names"] = group["param_names"]
            return new_group

        param_groups = [update_group(g, ng) for g, ng in zip(groups, saved_groups)]
        self.__setstate__({"state": state, "param_groups": param_groups})

        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    # ------------------------------------------------------------------ gradients / groups
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all optimized tensors.

        Args:
            set_to_none: set ``.grad`` to None (the default) instead of filling it with zeros.
                Optimizers skip parameters whose grad is None, but step on zero gradients.
        """
        for group in self.param_groups:
            for p in group["params"]:
                g = p._grad
                if g is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if g.grad_fn is not None:
                        g.detach_()
                    else:
                        g.requires_grad_(False)
                    g._data[...] = 0
                    _bump(g)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step (implemented by each optimizer)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters (with optional per-group hyperparameters).

        Raises:
            TypeError: for a non-dict group, a set of params, or a non-Tensor param.
            ValueError: for a non-leaf param, a missing required hyperparameter, or a param
                already in another group.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")

        params = param_group["params"]
        if isinstance(params, ember.Tensor):
            param_group["params"] = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, "
                            "but the ordering of tensors in sets will change between runs. "
                            "Please use a list instead.")
        else:
            param_group["params"] = list(params)

        tensors: list = []
        names: list = []
        for param in param_group["params"]:
            if isinstance(param, tuple):
                names.append(param[0])
                tensors.append(param[1])
            else:
                tensors.append(param)
        param_group["params"] = tensors
        if names:
            if len(names) == len(tensors):
                param_group["param_names"] = names
            else:
                raise ValueError("all optimizer params should be with/without names. Some param "
                                 "names are missing")

        for param in param_group["params"]:
            if not isinstance(param, ember.Tensor):
                raise TypeError("optimizer can only optimize Tensors, but one of the params is "
                                + ember.typename(param))
            if not self.defaults.get("differentiable", None) and not (
                    param.is_leaf or param.retains_grad):
                raise ValueError("can't optimize a non-leaf Tensor")

        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                raise ValueError(f"parameter group didn't specify a value of required "
                                 f"optimization parameter {name}")
            param_group.setdefault(name, default)

        params = param_group["params"]
        if len(params) != len(set(params)):
            warnings.warn("optimizer contains a parameter group with duplicate parameters; in "
                          "future, this will cause an error; see "
                          "github.com/pytorch/pytorch/issues/40967 for more information",
                          stacklevel=3)

        param_set: set = set()
        for group in self.param_groups:
            param_set.update(set(group["params"]))
            if ("param_names" in param_group) != ("param_names" in group):
                current = "with names" if "param_names" in param_group else "without names"
                raise ValueError("all optimizer param groups should be with/without names. "
                                 f"cannot add param group {current} to the optimizer")
        if not param_set.isdisjoint(set(param_group["params"])):
            raise ValueError("some parameters appear in more than one parameter group")

        self.param_groups.append(param_group)

    # ------------------------------------------------------------------ step plumbing
    def _run_closure(self, closure: Callable[[], Any] | None) -> Any:
        if closure is None:
            return None
        with ember.enable_grad():
            return closure()

    def _params_with_grad(self, group: dict) -> list:
        """The group's parameters that have a gradient (the others are skipped, as in torch).

        Raises RuntimeError for sparse gradients, which ember does not produce."""
        out = []
        # torch's fused kernels ignore `capturable` (fused=True, capturable=True runs on CPU)
        capturable = group.get("capturable", False) and not group.get("fused")
        for p in group["params"]:
            if p._grad is not None:
                if group.get("fused") and getattr(self, "_need_device_dtype_check_for_fused",
                                                  True):
                    _check_fused(p)
                if capturable and p.device.type not in _CAPTURABLE_DEVICES:
                    # torch asserts this too: capturable state lives on the accelerator
                    raise AssertionError(f"If capturable=True, {self._capturable_names} must be "
                                         f"on supported devices: {_CAPTURABLE_DEVICES}.")
                out.append(p)
        return out

    _capturable_names = "params and state_steps"


_CAPTURABLE_DEVICES = ["cuda"]
