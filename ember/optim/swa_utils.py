"""Weight averaging: stochastic weight averaging (SWA) and exponential moving averages (EMA).

SWA is from Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
Generalization" (2018): keep a running equal-weight average of the weights visited late in
training (often under :class:`SWALR`), then recompute BatchNorm statistics with
:func:`update_bn`. EMA keeps :math:`\\bar\\theta \\leftarrow \\delta\\bar\\theta + (1-\\delta)\\theta`.
"""
from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable
from copy import deepcopy
from typing import Any

import ember
from ember.nn import Module
from ember.optim.lr_scheduler import LRScheduler, _format_param
from ember.optim.optimizer import Optimizer, _bump, _lerp_, _xp

__all__ = ["AveragedModel", "update_bn", "SWALR", "get_ema_multi_avg_fn",
           "get_swa_multi_avg_fn", "get_ema_avg_fn", "get_swa_avg_fn"]

PARAM_LIST = Any  # a list or tuple of Tensors


def _is_float(t: "ember.Tensor") -> bool:
    return t.is_floating_point() or t.is_complex()


def get_ema_multi_avg_fn(decay: float = 0.999) -> Callable:
    """An in-place EMA update over lists of tensors:
    :math:`\\bar\\theta \\leftarrow \\bar\\theta + (1-\\delta)(\\theta - \\bar\\theta)`."""
    if decay < 0.0 or decay > 1.0:
        raise ValueError(f"Invalid decay value {decay} provided. Please provide a value in [0,1] "
                         "range.")

    @ember.no_grad()
    def ema_update(ema_param_list: PARAM_LIST, current_param_list: PARAM_LIST, _: Any) -> None:
        if _is_float(ema_param_list[0]):
            for p_ema, p_model in zip(ema_param_list, current_param_list):
                _lerp_(_xp(p_ema), p_ema._data, p_model._data, 1 - decay)
                _bump(p_ema)
        else:
            for p_ema, p_model in zip(ema_param_list, current_param_list):
                p_ema.copy_(p_ema * decay + p_model * (1 - decay))

    return ema_update


def get_swa_multi_avg_fn() -> Callable:
    """An in-place equal-weight running average over lists of tensors:
    :math:`\\bar\\theta \\leftarrow \\bar\\theta + (\\theta - \\bar\\theta)/(n+1)`."""

    @ember.no_grad()
    def swa_update(averaged_param_list: PARAM_LIST, current_param_list: PARAM_LIST,
                   num_averaged: Any) -> None:
        if _is_float(averaged_param_list[0]):
            # torch computes the weight as a default-dtype tensor 1 / (n + 1)
            weight = float((1 / (num_averaged + 1)) if not isinstance(num_averaged, ember.Tensor)
                           else (1 / (num_averaged + 1)).item())
            for p_avg, p_model in zip(averaged_param_list, current_param_list):
                _lerp_(_xp(p_avg), p_avg._data, p_model._data, weight)
                _bump(p_avg)
        else:
            for p_avg, p_model in zip(averaged_param_list, current_param_list):
                diff = p_model - p_avg
                if isinstance(num_averaged, ember.Tensor):
                    p_avg.copy_(p_avg + diff / (num_averaged + 1))
                else:
                    p_avg.copy_(p_avg + diff * (1.0 / (num_averaged + 1)))

    return swa_update


def get_ema_avg_fn(decay: float = 0.999) -> Callable:
    """An EMA ``avg_fn(averaged, current, n) -> new averaged`` (returns a new tensor)."""
    if decay < 0.0 or decay > 1.0:
        raise ValueError(f"Invalid decay value {decay} provided. Please provide a value in [0,1] "
                         "range.")

    @ember.no_grad()
    def ema_update(ema_param: "ember.Tensor", current_param: "ember.Tensor",
                   num_averaged: Any) -> "ember.Tensor":
        return decay * ema_param + (1 - decay) * current_param

    return ema_update


def get_swa_avg_fn() -> Callable:
    """The SWA ``avg_fn(averaged, current, n) -> averaged + (current - averaged) / (n + 1)``."""

    @ember.no_grad()
    def swa_update(averaged_param: "ember.Tensor", current_param: "ember.Tensor",
                   num_averaged: Any) -> "ember.Tensor":
        return averaged_param + (current_param - averaged_param) / (num_averaged + 1)

    return swa_update


class AveragedModel(Module):
    """A copy of ``model`` whose parameters are a running average of ``model``'s.

    Args:
        model: the model to average (deep-copied).
        device: move the copy there (e.g. keep the average on the CPU).
        avg_fn: ``avg_fn(averaged, current, num_averaged) -> Tensor``, per parameter.
        multi_avg_fn: ``multi_avg_fn(averaged_list, current_list, num_averaged)``, in place.
            At most one of the two; without either, the SWA equal-weight average is used.
        use_buffers: average buffers (e.g. BatchNorm statistics) too, instead of copying them.

    Example::

        >>> swa_model = ember.optim.swa_utils.AveragedModel(model)
        >>> ema_model = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999))
        >>> swa_model.update_parameters(model)   # after each optimizer step / epoch
    """

    def __init__(self, model: Module, device: Any = None, avg_fn: Callable | None = None,
                 multi_avg_fn: Callable | None = None, use_buffers: bool = False) -> None:
        super().__init__()
        if avg_fn is not None and multi_avg_fn is not None:
            raise AssertionError("Only one of avg_fn and multi_avg_fn should be provided")
        self.module = deepcopy(model)
        if device is not None:
            self.module = self.module.to(device)
        self.register_buffer("n_averaged", ember.tensor(0, dtype=ember.long, device=device))
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = use_buffers

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def update_parameters(self, model: Module) -> None:
        """Fold ``model``'s current parameters into the average (the first call copies)."""
        with ember.no_grad():
            self._update_parameters(model)

    def _update_parameters(self, model: Module) -> None:
        self_param = (itertools.chain(self.module.parameters(), self.module.buffers())
                      if self.use_buffers else self.parameters())
        model_param = (itertools.chain(model.parameters(), model.buffers())
                       if self.use_buffers else model.parameters())
        self_detached: list = []
        model_detached: list = []
        copy_param = bool(self.n_averaged == 0)
        for p_averaged, p_model in zip(self_param, model_param):
            p_model_ = p_model.detach().to(p_averaged.device)
            self_detached.append(p_averaged.detach())
            model_detached.append(p_model_)
            if copy_param:
                p_averaged.detach().copy_(p_model_)

        if self.n_averaged > 0:
            if self.multi_avg_fn is not None:
                # one call per (device, dtype) group, as torch does
                groups: dict = {}
                for a, m in zip(self_detached, model_detached):
                    key = (a.device, a.dtype)
                    groups.setdefault(key, ([], []))
                    groups[key][0].append(a)
                    groups[key][1].append(m)
                for (device, _), (avg_list, model_list) in groups.items():
                    self.multi_avg_fn(avg_list, model_list, self.n_averaged.to(device))
            else:
                avg_fn = self.avg_fn if self.avg_fn is not None else get_swa_avg_fn()
                for p_averaged, p_model in zip(self_detached, model_detached):
                    n_averaged = self.n_averaged.to(p_averaged.device)
                    p_averaged.copy_(avg_fn(p_averaged, p_model, n_averaged))

        if not self.use_buffers:
            # buffers are not averaged: keep them in sync with the model
            for b_swa, b_model in zip(self.module.buffers(), model.buffers()):
                b_swa.detach().copy_(b_model.detach().to(b_swa.device))
        self.n_averaged += 1


def _is_batchnorm(module: Any) -> bool:
    """torch tests ``isinstance(m, _BatchNorm)``; match by class hierarchy names so this
    works with ember.nn's BatchNorm family (and user subclasses) without a hard import."""
    return any(c.__name__ in ("_BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
                              "SyncBatchNorm") for c in type(module).__mro__)


@ember.no_grad()
def update_bn(loader: Iterable[Any], model: Module, device: Any = None) -> None:
    """Recompute the BatchNorm running statistics of ``model`` with one pass over ``loader``.

    The statistics are reset and accumulated as a cumulative average (``momentum=None``);
    each batch is ``input`` or ``(input, ...)`` (the first element is used).
    """
    momenta = {}
    for module in model.modules():
        if _is_batchnorm(module):
            module.reset_running_stats()
            momenta[module] = module.momentum
    if not momenta:
        return
    was_training = model.training
    model.train()
    for module in momenta:
        module.momentum = None
    for input in loader:
        if isinstance(input, (list, tuple)):
            input = input[0]
        if device is not None:
            input = input.to(device)
        model(input)
    for bn_module in momenta:
        bn_module.momentum = momenta[bn_module]
    model.train(was_training)


class SWALR(LRScheduler):
    """Anneal each group's lr to a fixed ``swa_lr`` over ``anneal_epochs``, then hold it.

    With :math:`\\alpha_t` = ``anneal_func(min(1, t / anneal_epochs))`` (cosine
    :math:`(1-\\cos\\pi t)/2` or linear), :math:`\\eta_t = \\alpha_t\\eta_{swa} + (1-\\alpha_t)\\eta_0`.

    Args:
        optimizer: the wrapped optimizer.
        swa_lr: the target lr (one value, or one per group).
        anneal_epochs: epochs of annealing (default 10).
        anneal_strategy: ``'cos'`` (default) or ``'linear'``.
        last_epoch: as in :class:`LRScheduler`.
    """

    def __init__(self, optimizer: Optimizer, swa_lr: float, anneal_epochs: int = 10,
                 anneal_strategy: str = "cos", last_epoch: int = -1) -> None:
        swa_lrs = _format_param("swa_lr", optimizer, swa_lr)
        for lr, group in zip(swa_lrs, optimizer.param_groups):
            group["swa_lr"] = lr
        if anneal_strategy not in ["cos", "linear"]:
            raise ValueError(f"anneal_strategy must be one of 'cos' or 'linear', instead got "
                             f"{anneal_strategy}")
        self._set_anneal_func(anneal_strategy)
        if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
            raise ValueError(f"anneal_epochs must be equal or greater than 0, got {anneal_epochs}")
        self.anneal_epochs = anneal_epochs
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _linear_anneal(t: float) -> float:
        return t

    @staticmethod
    def _cosine_anneal(t: float) -> float:
        return (1 - math.cos(math.pi * t)) / 2

    @staticmethod
    def _get_initial_lr(lr: float, swa_lr: float, alpha: float) -> float:
        # Invert the previous step's blend to recover the lr before annealing, so the
        # schedule composes with whatever lr the optimizer currently has.
        if alpha == 1:
            return swa_lr
        return (lr - alpha * swa_lr) / (1 - alpha)

    def get_lr(self) -> list:
        if not self._get_lr_called_within_step:
            warnings.warn("To get the last learning rate computed by the scheduler, please use "
                          "`get_last_lr()`.", UserWarning, stacklevel=2)
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        prev_t = max(0, min(1, (step - 1) / max(1, self.anneal_epochs)))
        prev_alpha = self.anneal_func(prev_t)
        prev_lrs = [self._get_initial_lr(group["lr"], group["swa_lr"], prev_alpha)
                    for group in self.optimizer.param_groups]
        t = max(0, min(1, step / max(1, self.anneal_epochs)))
        alpha = self.anneal_func(t)
        return [group["swa_lr"] * alpha + lr * (1 - alpha)
                for group, lr in zip(self.optimizer.param_groups, prev_lrs)]

    def _set_anneal_func(self, anneal_strategy: str) -> None:
        self._anneal_strategy = anneal_strategy
        self.anneal_func = self._cosine_anneal if anneal_strategy == "cos" else self._linear_anneal

    def state_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items()
                if key not in ("optimizer", "anneal_func")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
        self._set_anneal_func(self._anneal_strategy)
