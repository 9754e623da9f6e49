"""``swap_in_optimizer_params_and_state``: run an optimizer on other params and state."""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any, Iterator, NamedTuple

import ember

__all__ = ["swap_in_optimizer_params_and_state"]

_NAME = "swap_in_optimizer_params_and_state"


class _GroupSwapinInfo(NamedTuple):
    live_group: dict            # the live optimizer.param_groups[i], mutated in place
    swapin_group: dict          # hyperparameters and packed 'params' ids from the state dict
    swapin_params: list         # replacement tensors, in the order of swapin_group['params']


def _validate_state_field(state: Any) -> dict:
    if not isinstance(state, dict):
        raise RuntimeError(f"{_NAME} requires swapin_optim_state['state'] to be a dict mapping "
                           "packed parameter ids to per-param state dicts, got "
                           f"{type(state).__name__}.")
    if any(isinstance(k, ember.Tensor) for k in state):
        raise RuntimeError(f"{_NAME} requires optimizer.state_dict()-style state keyed by "
                           "packed parameter ids.")
    if any(isinstance(k, int) and not isinstance(v, dict) for k, v in state.items()):
        raise RuntimeError(f"{_NAME} requires per-parameter optimizer state entries to be "
                           "dictionaries.")
    return state


def _validate_param_groups_field(optimizer: Any, param_groups: Any) -> list:
    if not isinstance(param_groups, list):
        raise RuntimeError(f"{_NAME} requires swapin_optim_state['param_groups'] to be a list of "
                           f"param-group dicts, got {type(param_groups).__name__}.")
    if len(optimizer.param_groups) != len(param_groups):
        raise RuntimeError("swapin_optim_state has a different number of parameter groups than "
                           "the live optimizer.")
    return param_groups


def _validate_group_against_live(idx: int, group: dict, swapin_group: Any) -> list:
    if not isinstance(swapin_group, dict):
        raise RuntimeError(f"{_NAME} requires each optimizer param group to be a dictionary.")
    ids = swapin_group.get("params")
    if not isinstance(ids, list) or not all(isinstance(pid, int) for pid in ids):
        raise RuntimeError(f"{_NAME} requires optimizer.state_dict()-style "
                           "param_groups[*]['params'] entries keyed by packed parameter ids.")
    if len(group["params"]) != len(ids):
        raise RuntimeError(f"swapin_optim_state param group {idx} has a different number of "
                           "params than the live optimizer param group.")
    swapin_only = [k for k in swapin_group if k not in group]
    live_only = [k for k in group if k not in swapin_group]
    if swapin_only or live_only:
        raise RuntimeError(f"{_NAME} requires optimizer.state_dict()-style param group keys to "
                           f"exactly match the live optimizer group keys for group {idx}. Keys "
                           f"only in swap-in: {swapin_only}. Keys only in live: {live_only}.")
    return ids


def _prepare_swap_in(optimizer: Any, swapin_parameters: dict, swapin_optim_state: dict) -> tuple:
    if not optimizer.state:
        raise RuntimeError(f"{_NAME} requires initialized optimizer state.")
    if not isinstance(swapin_optim_state, dict):
        raise RuntimeError(f"{_NAME} requires a DCP-style optimizer state_dict.")
    swapin_state = _validate_state_field(swapin_optim_state.get("state"))
    swapin_groups = _validate_param_groups_field(optimizer,
                                                 swapin_optim_state.get("param_groups"))
    flat = list(swapin_parameters.values())
    offset = 0
    seen: set = set()
    infos = []
    for idx, (group, swapin_group) in enumerate(zip(optimizer.param_groups, swapin_groups)):
        ids = _validate_group_against_live(idx, group, swapin_group)
        seen.update(ids)
        nxt = offset + len(ids)
        if nxt > len(flat):
            raise RuntimeError(f"{_NAME} requires the explicit parameter state to match "
                               "optimizer.param_groups ordering.")
        infos.append(_GroupSwapinInfo(group, swapin_group, flat[offset:nxt]))
        offset = nxt
    extra = [k for k in swapin_state if k not in seen]
    if extra:
        raise RuntimeError(f"{_NAME} requires swapin_optim_state['state'] to be keyed only by "
                           f"packed parameter ids from param_groups[*]['params']; got extra keys "
                           f"{extra!r}.")
    return swapin_state, infos


@contextlib.contextmanager
def swap_in_optimizer_params_and_state(optimizer: Any, swapin_parameters: dict,
                                       swapin_optim_state: dict) -> Iterator[None]:
    """Temporarily replace an optimizer's parameters and state, restoring them on exit.

    Args:
        optimizer: the live optimizer; its state must already be initialized.
        swapin_parameters: tensors to optimize inside the context, in the order of the
            optimizer's parameters (e.g. ``dict(model.named_parameters())`` of a copy).
        swapin_optim_state: an ``optimizer.state_dict()``-shaped dict whose state tensors are
            used (and updated in place) by ``step()`` inside the context.

    Unlike :meth:`Optimizer.load_state_dict`, the parameters are swapped too, so a
    ``step()`` inside the context updates ``swapin_parameters`` and leaves the live model
    and state untouched.
    """
    state, infos = _prepare_swap_in(optimizer, swapin_parameters, swapin_optim_state)
    original_state = optimizer.state
    snapshots = [dict(g) for g in optimizer.param_groups]
    try:
        swapin_state: defaultdict = defaultdict(dict)
        for info in infos:
            info.live_group["params"] = info.swapin_params
            for key, value in info.swapin_group.items():
                if key != "params":
                    info.live_group[key] = value
            for param, pid in zip(info.swapin_params, info.swapin_group["params"]):
                swapin_state[param] = dict(state.get(pid, {}))
        optimizer.state = swapin_state
        yield
    finally:
        for group, snapshot in zip(optimizer.param_groups, snapshots):
            group.clear()
            group.update(snapshot)
        optimizer.state = original_state
