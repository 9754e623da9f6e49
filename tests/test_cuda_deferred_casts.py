"""Autocast's bulk weight casts on CUDA: the backward engine casts their gradients back to
float32 together after the sweep (``engine._defer``) instead of one cast node at a time.
The gradients are checked against NumPy float64 (the convolution's and the linear layer's),
against the per-node path, in the leaf's layout, accumulated over two backwards, and with
hooks (which keep the per-node path). Marked ``cuda``."""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.autograd import engine
from cuda_cases import rounded

pytestmark = pytest.mark.cuda


def _bf16(a: np.ndarray) -> np.ndarray:
    return rounded(a, "bfloat16")


def _params(rng, cl: bool = True) -> tuple:
    w1 = ember.tensor(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
                      device="cuda")
    if cl:
        w1 = w1.to(memory_format=ember.channels_last)
    w2 = ember.tensor(rng.standard_normal((5, 8 * 6 * 6)).astype(np.float32) * 0.1,
                      device="cuda")
    b2 = ember.tensor(rng.standard_normal(5).astype(np.float32), device="cuda")
    return tuple(p.requires_grad_() for p in (w1, w2, b2))


def _step(params: tuple, x, r) -> None:
    w1, w2, b2 = params
    with ember.autocast("cuda", dtype=ember.bfloat16):
        h = F.relu(F.conv2d(x, w1, padding=1))
        y = F.linear(h.flatten(1), w2, b2)
    (y.float() * r).sum().backward()


def _data(rng):
    x = ember.tensor(rng.standard_normal((2, 3, 6, 6)).astype(np.float32), device="cuda") \
        .to(memory_format=ember.channels_last)
    r = ember.tensor(rng.standard_normal((2, 5)).astype(np.float32), device="cuda")
    return x, r


def _grads(params: tuple) -> list:
    return [p.grad.cpu().numpy().copy() for p in params]


def _same(got: list, want: list, scale=(1, 1, 1)) -> None:
    """Equal gradients (w1's within bf16 rounding: cuDNN may sum a weight gradient in a
    different order from run to run; the GEMM's are reproducible, so exact)."""
    np.testing.assert_allclose(got[0], scale[0] * want[0].astype(np.float64), rtol=2e-2,
                               atol=1e-3)
    for g, w, k in zip(got[1:], want[1:], scale[1:]):
        np.testing.assert_array_equal(g, k * w)


def _run(monkeypatch, defer: bool, steps: int = 2, seed: int = 0) -> tuple:
    """Grads after ``steps`` steps (the bulk casts start at the second region), zeroed in
    between unless the caller accumulates; and how many deferred groups were cast."""
    monkeypatch.setattr(engine, "_DEFER_CASTS", defer)
    from ember.backend.cuda_ops import kernels_pointwise as kp
    calls = []
    real = kp.cast_all
    monkeypatch.setattr(kp, "cast_all", lambda xp, arrays, dt: calls.append(len(arrays)) or
                        real(xp, arrays, dt))
    rng = np.random.default_rng(seed)
    params = _params(rng)
    x, r = _data(rng)
    for _ in range(steps):
        for p in params:
            p.grad = None
        calls.clear()
        _step(params, x, r)
    return params, x, r, calls


def test_deferred_casts_match_float64_and_the_per_node_path(monkeypatch):
    params, x, r, calls = _run(monkeypatch, True)
    assert calls == [3]   # w1, w2 and b2 in one launch
    got = _grads(params)
    assert all(g.dtype == np.float32 for g in got)
    # the leaf's layout: a channels-last weight keeps a channels-last gradient
    assert params[0].grad.is_contiguous(memory_format=ember.channels_last)
    assert not params[0].grad.is_contiguous()
    # float64 reference for the linear layer: dW = r^T h, db = sum r (bf16 GEMM inputs; the
    # bf16 gradient rounded once, then widened exactly)
    w1, w2, b2 = params
    with ember.no_grad(), ember.autocast("cuda", dtype=ember.bfloat16):
        h = F.relu(F.conv2d(x, w1, padding=1)).flatten(1).float().cpu().numpy()
    rr = _bf16(r.cpu().numpy())
    want_w2 = _bf16(rr.T @ h.astype(np.float64))
    np.testing.assert_allclose(got[1], want_w2, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(got[2], _bf16(rr.sum(0)), rtol=1e-2, atol=1e-3)
    # and for the convolution: dW1[o, i, a, b] = sum over n, y, z of dh[n, o, y, z] *
    # xpad[n, i, y + a, z + b], dh the bf16 gradient at the conv output (ReLU-masked)
    dh = _bf16(rr @ _bf16(w2.detach().cpu().numpy())).reshape(2, 8, 6, 6) * \
        (h.reshape(2, 8, 6, 6) > 0)
    xpad = np.pad(_bf16(x.cpu().numpy()), ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xpad, (3, 3), axis=(2, 3))  # n i y z a b
    want_w1 = _bf16(np.einsum("noyz,niyzab->oiab", dh, win))
    np.testing.assert_allclose(got[0], want_w1, rtol=2e-2, atol=2e-2)
    # the per-node path casts each gradient on its own, to the same values
    ref, *_, calls = _run(monkeypatch, False)
    assert calls == []
    _same(got, _grads(ref))


def test_deferred_casts_accumulate_into_existing_grads(monkeypatch):
    params, x, r, calls = _run(monkeypatch, True)
    first = _grads(params)
    _step(params, x, r)          # no zeroing: the second backward adds
    for p, g in zip(params, first):
        np.testing.assert_allclose(p.grad.cpu().numpy(), 2 * g.astype(np.float64),
                                   rtol=1e-6, atol=1e-7)
    assert params[0].grad.is_contiguous(memory_format=ember.channels_last)


def test_hooks_and_retained_graphs_keep_the_gradients_right(monkeypatch):
    ref, *_ = _run(monkeypatch, False)
    want = _grads(ref)
    monkeypatch.setattr(engine, "_DEFER_CASTS", True)
    rng = np.random.default_rng(0)
    params = _params(rng)
    x, r = _data(rng)
    _step(params, x, r)
    seen = []
    params[1].register_hook(lambda g: seen.append(g.dtype) or g * 2)   # w2: per-node path
    for p in params:
        p.grad = None
    _step(params, x, r)
    assert seen == [ember.float32]
    _same(_grads(params), want, (1, 2, 1))
    # retain_graph: a second backward through the same graph casts again, and adds
    for p in params:
        p.grad = None
    w1, w2, b2 = params
    with ember.autocast("cuda", dtype=ember.bfloat16):
        y = F.linear(F.relu(F.conv2d(x, w1, padding=1)).flatten(1), w2, b2)
    loss = (y.float() * r).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    _same(_grads(params), want, (2, 4, 2))   # w2's hook still doubles each backward's


def test_autograd_grad_and_double_backward_take_the_per_node_path(monkeypatch):
    ref, x, r, _ = _run(monkeypatch, False)
    want = _grads(ref)
    params, x, r, calls = _run(monkeypatch, True, steps=1)
    w1, w2, b2 = params
    for _ in range(2):   # the second region uses the bulk casts
        with ember.autocast("cuda", dtype=ember.bfloat16):
            y = F.linear(F.relu(F.conv2d(x, w1, padding=1)).flatten(1), w2, b2)
        calls.clear()
        gs = ember.autograd.grad((y.float() * r).sum(), [w1, w2, b2])
    assert calls == []
    _same([g.cpu().numpy() for g in gs], want)
