"""Layer parity against torch: copy torch's parameters and buffers into the ember layer, run
both on the same float64 input, and compare outputs, input gradients, parameter gradients and
buffers (running statistics)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

import ember


def sync(e_mod: Any, t_mod: Any) -> None:
    """Make ``e_mod``'s parameters and buffers equal to ``t_mod``'s (both float64)."""
    t_state = dict(t_mod.named_parameters())
    t_state.update(dict(t_mod.named_buffers()))
    e_state = dict(e_mod.named_parameters())
    e_state.update(dict(e_mod.named_buffers()))
    assert sorted(e_state) == sorted(t_state), f"names {sorted(e_state)} != {sorted(t_state)}"
    with ember.no_grad():
        for name, t in t_state.items():
            e = e_state[name]
            assert tuple(e.shape) == tuple(t.shape), f"{name}: {tuple(e.shape)} != {tuple(t.shape)}"
            e.copy_(ember.tensor(t.detach().numpy()))


def _outs(y: Any) -> list:
    return list(y) if isinstance(y, (tuple, list)) else [y]


def compare(e_mod: Any, t_mod: Any, torch: Any, *inputs: np.ndarray, train: bool = True,
            atol: float = 1e-9, grad: bool = True, call: Callable | None = None,
            steps: int = 1, seed: int = 0) -> None:
    """Forward/backward parity of a layer (``steps`` calls, checking buffers after each)."""
    t_mod.double()
    e_mod.double()
    sync(e_mod, t_mod)
    t_mod.train(train)
    e_mod.train(train)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        xs_t = [torch.tensor(x, requires_grad=grad and x.dtype.kind == "f") for x in inputs]
        xs_e = [ember.tensor(x, requires_grad=grad and x.dtype.kind == "f") for x in inputs]
        yt = _outs(call(t_mod, *xs_t) if call else t_mod(*xs_t))
        ye = _outs(call(e_mod, *xs_e) if call else e_mod(*xs_e))
        assert len(yt) == len(ye)
        for a, b in zip(ye, yt):
            assert tuple(a.shape) == tuple(b.shape), f"shape {tuple(a.shape)} != {tuple(b.shape)}"
            assert str(a.dtype).split(".")[-1] == str(b.dtype).split(".")[-1]
            np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=atol,
                                       rtol=1e-7)
        if grad:
            gys = [rng.standard_normal(tuple(b.shape)) for b in yt if b.dtype.is_floating_point]
            lt = sum((b * torch.tensor(g)).sum() for b, g in zip(yt, gys))
            le = sum((a * ember.tensor(g)).sum() for a, g in zip(ye, gys))
            lt.backward()
            le.backward()
            for a, b in zip(xs_e, xs_t):
                if b.grad is not None:
                    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=atol,
                                               rtol=1e-7)
            e_params = dict(e_mod.named_parameters())
            for name, p in t_mod.named_parameters():
                if p.grad is None:
                    assert e_params[name].grad is None
                    continue
                np.testing.assert_allclose(e_params[name].grad.numpy(), p.grad.numpy(),
                                           atol=atol, rtol=1e-7, err_msg=name)
                p.grad = None
                e_params[name].grad = None
        e_bufs = dict(e_mod.named_buffers())
        for name, b in t_mod.named_buffers():
            np.testing.assert_allclose(e_bufs[name].numpy(), b.numpy(), atol=atol, rtol=1e-7,
                                       err_msg=name)
