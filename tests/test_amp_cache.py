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


def _mlp_steps(m, model, x, steps, bulk_cpu=False, modify=None):
    """Per step: autocast forward, float loss, backward; the outputs and the weight grads."""
    out = []
    for k in range(steps):
        model.zero_grad()
        with m.autocast("cpu", dtype=m.bfloat16):
            y = model(x)
        y.float().square().sum().backward()
        out.append([y.float().detach().numpy()] +
                   [p.grad.float().numpy() for p in model.parameters()])
        if modify is not None:
            modify(k)
    return out


def test_bulk_weight_casts_match_torch(monkeypatch):
    # the bulk path (on CUDA by default; switched on here for the CPU): from the second
    # region on, the weights are cast together at the region's first cast; outputs and
    # gradients, step after step with the weights changed in place between steps, agree
    # with torch's autocast within bf16 error (1% of the largest value here) and equal the
    # per-cast path bit for bit
    from ember.ops import registry
    adopted = []
    real = registry._adopt_cast
    monkeypatch.setattr(registry, "_adopt_cast", lambda *a: adopted.append(1) or real(*a))
    monkeypatch.setattr(am, "_SEQS", {})
    rng = np.random.default_rng(5)
    ws = [rng.standard_normal(s).astype(np.float32) for s in ((8, 6), (8,), (4, 8), (4,))]
    x = rng.standard_normal((5, 6)).astype(np.float32)
    res = {}
    for m, bulk in ((torch, False), (ember, False), (ember, True)):
        monkeypatch.setattr(am, "_BULK_CPU", [bulk])
        model = m.nn.Sequential(m.nn.Linear(6, 8), m.nn.Tanh(), m.nn.Linear(8, 4))
        with m.no_grad():
            for p, w in zip(model.parameters(), ws):
                p.copy_(m.tensor(w))

        def bump(k, model=model, m=m):
            with m.no_grad():
                for p in model.parameters():
                    p.mul_(0.5 + 0.1 * k)
        res[m.__name__, bulk] = _mlp_steps(m, model, m.tensor(x), 3, modify=bump)
    seqs = list(am._SEQS.values())
    assert len(seqs) == 1 and len(seqs[0]) == 4   # 4 parameters, cast in one sequence
    assert len(adopted) == 8                      # steps 2 and 3 took every cast in bulk
    for got, plain, want in zip(res["ember", True], res["ember", False], res["torch", False]):
        for a, b, c in zip(got, plain, want):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_allclose(a, c, rtol=0, atol=0.02 * np.abs(c).max())


def test_bulk_cast_entries_checked_at_use(monkeypatch):
    # a parameter changed in place after the bulk cast but before its use is cast again;
    # a cast made under no_grad never comes from (or feeds) the bulk entries
    monkeypatch.setattr(am, "_BULK_CPU", [True])
    monkeypatch.setattr(am, "_SEQS", {})
    w1 = ember.nn.Parameter(ember.randn(4, 4))
    w2 = ember.nn.Parameter(ember.randn(4, 4))
    x = ember.randn(2, 4)

    def region(change_w2=False):
        with ember.autocast("cpu", dtype=ember.bfloat16):
            h = ember.nn.functional.linear(x, w1)
            if change_w2:
                with ember.no_grad():
                    w2.add_(1.0)
            return ember.nn.functional.linear(h, w2)
    region()
    assert [r() for r in am._SEQS[id(w1)]] == [w1, w2]
    y = region(change_w2=True)            # w2's bulk copy is stale: cast again
    want = (x.to(ember.bfloat16) @ w1.detach().to(ember.bfloat16).T) @ \
        w2.detach().to(ember.bfloat16).T
    np.testing.assert_array_equal(y.float().detach().numpy(), want.float().numpy())
    y.float().sum().backward()
    assert w1.grad is not None and w2.grad is not None and w2.grad.dtype == ember.float32
    with ember.no_grad(), ember.autocast("cpu", dtype=ember.bfloat16):
        ember.nn.functional.linear(x, w1)
    assert not am._BULK and not am._SEQ


@pytest.mark.cuda
def test_bulk_cast_layouts():
    # kernels_pointwise.bulk_cast on the GPU: each result has its source's shape, values and
    # (channels-last too) element strides, starts 256-byte aligned in one block; others come
    # back None
    import cupy as cp
    import ml_dtypes
    from ember.backend.cuda_ops import kernels_pointwise as kp
    rng = np.random.default_rng(2)
    cl = rng.standard_normal((8, 5, 3, 3)).astype(np.float32).transpose(0, 2, 3, 1).copy() \
        .transpose(0, 3, 1, 2)                                   # dense, channels-last
    host = [rng.standard_normal((7, 3)).astype(np.float32), cl,
            rng.standard_normal(5).astype(np.float32), np.ones(3, np.float64)]
    arrays = [cp.asarray(a) for a in host[:1]] + \
        [cp.asarray(cl.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)] + \
        [cp.asarray(a) for a in host[2:]] + \
        [cp.asarray(rng.standard_normal((4, 6)).astype(np.float32))[:, ::2],   # not dense
         cp.zeros((0, 4), cp.float32)]
    assert arrays[1].strides == cl.strides
    bf16 = np.dtype(ml_dtypes.bfloat16)
    out = kp.bulk_cast(cp, arrays, bf16)
    assert out[3] is None and out[4] is None and out[5] is None
    base = min(d.data.ptr for d in out[:3])
    for a, d in zip(host[:3], out[:3]):
        assert d.shape == a.shape and d.dtype == bf16
        assert [s // 2 for s in d.strides] == [s // 4 for s in a.strides]
        got = cp.asnumpy(d.view(cp.uint16)).view(bf16).astype(np.float64)
        np.testing.assert_array_equal(got, a.astype(bf16).astype(np.float64))
        assert (d.data.ptr - base) % 256 == 0
