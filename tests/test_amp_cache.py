"""Autocast's cast cache, batch_norm's autocast dtype and leaf-gradient layouts (CPU, vs
torch where it is installed), plus the flat-layout helpers of the CUDA kernels."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.amp import autocast_mode as am
from ember.backend.cuda_ops import _layout as L

torch = pytest.importorskip("torch")


def _count_casts(t) -> int:
    """Number of distinct ToCopy nodes reachable from ``t``'s graph."""
    seen, stack, n = set(), [t.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        n += node.name().startswith("ToCopy")
        stack.extend(e[0] for e in node.next_functions if e[0] is not None)
    return n


def test_shared_weight_is_cast_once_and_grads_match_torch():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 6)).astype(np.float32)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    grads = {}
    for m in (torch, ember):
        wt = m.tensor(w, requires_grad=True)
        with m.autocast("cpu", dtype=m.bfloat16):
            h = m.nn.functional.linear(m.tensor(x), wt)
            y = m.nn.functional.linear(h, wt)   # the same parameter twice
            assert y.dtype == m.bfloat16
        y.float().square().sum().backward()
        grads[m.__name__] = wt.grad.float().numpy()
        if m is ember:
            assert _count_casts(y) == 1
    np.testing.assert_allclose(grads["ember"], grads["torch"], rtol=3e-2, atol=3e-2)
    assert not am._CACHE                   # emptied when the region exits


def test_cache_dropped_on_version_change_and_outside_grad_mode():
    w = ember.randn(4, 4, requires_grad=True)
    x = ember.randn(2, 4)
    with ember.autocast("cpu", dtype=ember.bfloat16):
        a = ember.nn.functional.linear(x, w)
        with ember.no_grad():
            w.mul_(2.0)                    # in-place update inside the region
        b = ember.nn.functional.linear(x, w)
        np.testing.assert_allclose(b.detach().float().numpy(), 2 * a.detach().float().numpy(),
                                   rtol=2e-2)
        with ember.no_grad():              # a cast made without history is not cached
            ember.nn.functional.linear(x, w)
        c = ember.nn.functional.linear(x, w)
        assert c.requires_grad and c.grad_fn is not None
        with ember.autocast("cpu", dtype=ember.bfloat16, cache_enabled=False):
            d = ember.nn.functional.linear(x, w)
        assert _count_casts(b + c + d) == 2   # b and c share the cached cast; d made its own
    assert not am._CACHE


def test_batch_norm_under_autocast_keeps_input_dtype_like_torch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    out = {}
    for m in (torch, ember):
        conv = m.nn.Conv2d(3, 3, 3, padding=1, bias=False)
        bn = m.nn.BatchNorm2d(3)
        with m.no_grad():
            conv.weight.copy_(m.tensor(np.linspace(-1, 1, 81, dtype=np.float32)
                                       .reshape(3, 3, 3, 3)))
        with m.autocast("cpu", dtype=m.bfloat16):
            y = bn(conv(m.tensor(x)))
        out[m.__name__] = (str(y.dtype).split(".")[-1], y.float().detach().numpy(),
                           bn.running_mean.dtype == m.float32, bn.running_mean.numpy())
    assert out["ember"][0] == out["torch"][0] == "bfloat16"
    assert out["ember"][2] and out["torch"][2]
    np.testing.assert_allclose(out["ember"][1], out["torch"][1], rtol=5e-2, atol=5e-2)
    np.testing.assert_allclose(out["ember"][3], out["torch"][3], rtol=2e-2, atol=2e-3)


def test_channels_last_leaf_gradient_keeps_the_leaf_layout_like_torch():
    g = np.random.default_rng(2).standard_normal((4, 3, 2, 2)).astype(np.float32)
    strides = {}
    for m in (torch, ember):
        w = m.tensor(g).to(memory_format=m.channels_last).requires_grad_()
        w.backward(m.tensor(g))                      # a C-ordered gradient: copied into w's layout
        (w * 2).sum().backward()                     # then accumulated
        strides[m.__name__] = (tuple(w.grad.stride()), w.grad.numpy().copy())
        v = m.tensor(g).to(memory_format=m.channels_last).requires_grad_()
        (v * 3).sum().backward()
        strides[m.__name__ + "v"] = tuple(v.grad.stride())
    assert strides["ember"][0] == strides["torch"][0] == (12, 1, 6, 3)
    np.testing.assert_allclose(strides["ember"][1], strides["torch"][1], rtol=1e-6)
    assert strides["emberv"] == strides["torchv"]


def test_layout_helpers():
    a = np.zeros((2, 3, 4, 5), np.float32).transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
    assert L.dense_order(a) == [0, 2, 3, 1] and L.is_channels_last(a)
    assert L.dense_order(np.zeros((4, 6))[:, ::2]) is None
    assert L.dense_order(np.zeros((4, 6))[::-1]) is None
    assert L.same_layout(a, np.ascontiguousarray(a)) is None
    b = np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5)
    c = L.as_layout(np, b, a)
    assert c.strides == a.strides and np.array_equal(c, b)
    assert L.same_layout(a, c) == [0, 2, 3, 1]
    e = L.empty_like(np, a, np.float16)
    assert e.dtype == np.float16 and e.strides == tuple(s // 2 for s in a.strides)
    one = np.zeros((2, 3, 1, 1), np.float32)          # size-1 axes: both layouts at once
    assert L.is_channels_last(one) and L.dense_order(one) is not None
