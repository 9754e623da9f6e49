"""The float32 CPU fast paths of fused nn ops (GELU's erf-free kernel, attention, layer norm,
embedding backward, AdamW) against float64 references and torch, including the values those
rewrites could get wrong: signed zeros, infinities, NaN, the far tails."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special as sp

import ember
import ember.nn.functional as F

torch = pytest.importorskip("torch")
# CPU kernels (NumPy fast paths); under EMBER_TEST_DEVICE=cuda the GPU ones are tested in
# tests/test_cuda_*.py instead
pytestmark = pytest.mark.host_only


def _gelu64(x):
    return 0.5 * x * sp.erfc(-x / math.sqrt(2))


def _dgelu64(x):
    return 0.5 * sp.erfc(-x / math.sqrt(2)) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def test_gelu_float32_accuracy_over_the_whole_range():
    x = np.linspace(-16, 16, 320001).astype(np.float32)
    t = ember.tensor(x, requires_grad=True)
    y = F.gelu(t)
    y.sum().backward()
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y.detach().numpy(), _gelu64(x64), rtol=5e-6, atol=3e-7)
    np.testing.assert_allclose(t.grad.numpy(), _dgelu64(x64), rtol=5e-6, atol=3e-7)


def test_gelu_float32_special_values_match_torch():
    vals = [math.inf, -math.inf, math.nan, 0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30]
    e = F.gelu(ember.tensor(vals)).numpy()
    # torch in float64 on the float32 inputs (its float32 AVX-512 GELU gives NaN at +inf)
    t = torch.nn.functional.gelu(torch.tensor(np.array(vals, np.float32).astype(np.float64)))
    t = t.numpy()
    np.testing.assert_array_equal(np.isnan(e), np.isnan(t))
    np.testing.assert_allclose(e, t, rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape", [(0,), (7,), (3, 40000), (5, 1, 3)])
@pytest.mark.parametrize("transpose", [False, True])
def test_gelu_float32_shapes_and_noncontiguous(shape, transpose):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32) * 3
    e = ember.tensor(x, requires_grad=True)
    tt = torch.tensor(x.astype(np.float64), requires_grad=True)   # torch float64: exact
    ei, ti = (e.transpose(0, -1), tt.transpose(0, -1)) if transpose else (e, tt)
    y, yt = F.gelu(ei), torch.nn.functional.gelu(ti)
    g = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    y.backward(ember.tensor(g))
    yt.backward(torch.tensor(g.astype(np.float64)))
    np.testing.assert_allclose(y.detach().numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e.grad.numpy(), tt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_gelu_float32_double_backward_uses_the_exact_formula():
    x = ember.tensor([-2.0, -0.5, 0.0, 0.7, 3.0], requires_grad=True)
    (g,) = ember.autograd.grad(F.gelu(x).sum(), x, create_graph=True)
    (h,) = ember.autograd.grad(g.sum(), x)
    x64 = x.detach().numpy().astype(np.float64)
    want = np.exp(-x64 ** 2 / 2) / math.sqrt(2 * math.pi) * (2 - x64 ** 2)
    np.testing.assert_allclose(h.numpy(), want, rtol=1e-5, atol=1e-6)


def test_gelu_retain_graph_backward_twice():
    x = ember.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    y = F.gelu(x).sum()
    y.backward(retain_graph=True)
    first = x.grad.clone()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * first.numpy(), rtol=1e-6)


@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("ns", [(16,), (4, 8)])
def test_layer_norm_float32_matches_torch(affine, ns):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, 5) + ns) * 2 + 1).astype(np.float32)
    w = rng.standard_normal(ns).astype(np.float32) if affine in ("both", "weight") else None
    b = rng.standard_normal(ns).astype(np.float32) if affine in ("both", "bias") else None
    g = rng.standard_normal(x.shape).astype(np.float32)

    def run(m, F_):
        xt = m.tensor(x, requires_grad=True)
        wt = m.tensor(w, requires_grad=True) if w is not None else None
        bt = m.tensor(b, requires_grad=True) if b is not None else None
        y = F_.layer_norm(xt, ns, wt, bt)
        y.backward(m.tensor(g))
        return [y.detach().numpy()] + [t.grad.numpy() for t in (xt, wt, bt) if t is not None]

    for e, t in zip(run(ember, F), run(torch, torch.nn.functional)):
        np.testing.assert_allclose(e, t, rtol=1e-5, atol=2e-5)


def test_layer_norm_output_modified_in_place_does_not_change_gradients():
    x = ember.randn(4, 8, requires_grad=True)
    y = F.layer_norm(x, (8,))  # no affine: the output is the normalized input itself
    g = ember.randn(4, 8)
    (want,) = ember.autograd.grad(F.layer_norm(x, (8,)), x, g)
    y.add_(1.0)
    (got,) = ember.autograd.grad(y, x, g)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)


def test_sdpa_output_layout_follows_the_query_like_torch():
    B, T, H, E = 2, 6, 3, 4
    x = np.random.default_rng(2).standard_normal((B, T, 3 * H * E)).astype(np.float32)
    outs = []
    for m in (ember, torch):
        xt = m.tensor(x, requires_grad=True)
        q, k, v = (a.view(B, T, H, E).transpose(1, 2) for a in xt.split(H * E, 2))
        o = m.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        o.transpose(1, 2).reshape(B, T, H * E).pow(2).sum().backward()
        outs.append((tuple(o.stride()), o.detach().numpy(), xt.grad.numpy()))
    assert outs[0][0] == outs[1][0]
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs[0][2], outs[1][2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("L,gqa", [(64, False), (65, False), (128, False), (64, True)])
def test_sdpa_causal_forward_backward_match_torch(L, gqa):
    B, H, E = 2, 4, 8
    hk = 2 if gqa else H
    rng = np.random.default_rng(3)
    arrs = [rng.standard_normal(s).astype(np.float32)
            for s in ((B, H, L, E), (B, hk, L, E), (B, hk, L, E))]
    g = rng.standard_normal((B, H, L, E)).astype(np.float32)
    res = []
    for m in (ember, torch):
        ts = [m.tensor(a, requires_grad=True) for a in arrs]
        o = m.nn.functional.scaled_dot_product_attention(*ts, is_causal=True, enable_gqa=gqa)
        o.backward(m.tensor(g))
        res.append([o.detach().numpy()] + [t.grad.numpy() for t in ts])
    for e, t in zip(*res):
        np.testing.assert_allclose(e, t, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shapes", [((3, 2, 5, 4), (3, 1, 6, 4), (3, 1, 6, 3)),
                                    ((3, 1, 5, 4), (3, 1, 6, 4), (3, 2, 6, 3)),
                                    ((2, 5, 4), (2, 6, 4), (2, 6, 4))])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_batch_blocks_with_broadcast_heads_match_torch(shapes, causal):
    rng = np.random.default_rng(4)
    arrs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    res = []
    for m in (ember, torch):
        ts = [m.tensor(a, requires_grad=True) for a in arrs]
        o = m.nn.functional.scaled_dot_product_attention(*ts, is_causal=causal)
        o.pow(2).sum().backward()
        res.append([o.detach().numpy()] + [t.grad.numpy() for t in ts])
    for e, t in zip(*res):
        np.testing.assert_allclose(e, t, rtol=1e-4, atol=1e-5)


def _three_blocks(n, fn, min_rows=1):
    """parallel_rows as if three cores were free (run one after another: same arithmetic)."""
    bounds = [n * i // 3 for i in range(4)]
    for lo, hi in zip(bounds, bounds[1:]):
        fn(lo, hi)


def test_blocked_paths_give_the_serial_results(monkeypatch):
    import ember.ops.nn_activation as act
    import ember.ops.nn_attention as att
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(5 * act._GELU_CHUNK + 7) * 3).astype(np.float32)
    q, k, v = (rng.standard_normal((5, 2, 7, 4)).astype(np.float32) for _ in range(3))

    def run():
        xt = ember.tensor(x, requires_grad=True)
        F.gelu(xt).pow(2).sum().backward()
        ts = [ember.tensor(a, requires_grad=True) for a in (q, k, v)]
        o = F.scaled_dot_product_attention(*ts, is_causal=True)
        o.pow(2).sum().backward()
        return [xt.grad.numpy(), o.detach().numpy()] + [t.grad.numpy() for t in ts]

    serial = run()
    monkeypatch.setattr(act, "parallel_rows", _three_blocks)
    monkeypatch.setattr(att, "parallel_rows", _three_blocks)
    for a, b in zip(serial, run()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_layer_norm_row_blocks_give_the_serial_results(monkeypatch):
    import ember.ops.nn_norm as norm
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3 * norm._LN_BLOCK_ROWS + 5, 16)).astype(np.float32)
    w, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)

    def run():
        ts = [ember.tensor(a, requires_grad=True) for a in (x, w, b)]
        y = F.layer_norm(ts[0], (16,), ts[1], ts[2])
        y.pow(2).sum().backward()
        return [y.detach().numpy()] + [t.grad.numpy() for t in ts]

    serial = run()
    monkeypatch.setattr(norm, "parallel_rows", _three_blocks)
    for a, b_ in zip(serial, run()):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-5)


_LAYOUTS = [lambda m: m.randn(3, 4).t(), lambda m: m.randn(2, 3, 4).permute(2, 0, 1),
            lambda m: m.randn(4, 6)[:, ::2], lambda m: m.randn(2, 0, 3).transpose(0, 2)]


@pytest.mark.parametrize("make", _LAYOUTS)
def test_gelu_float32_keeps_the_input_layout_like_torch(make):
    got = F.gelu(make(ember)).stride()
    assert tuple(got) == tuple(torch.nn.functional.gelu(make(torch)).stride())


@pytest.mark.parametrize("scale", [0.05, 1.0, 40.0])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_fused_qkv_any_score_size_matches_torch(scale, causal):
    # small scores skip the softmax's row max (exp cannot overflow), large ones keep it; the
    # gradients of a fused qkv's views land side by side and the split joins them uncopied
    B, T, H, E = 3, 9, 2, 4
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((B, T, 3 * H * E)) * scale).astype(np.float32)
    g = rng.standard_normal((B, T, H * E)).astype(np.float32)
    res = []
    for m in (ember, torch):
        xt = m.tensor(x, requires_grad=True)
        q, k, v = (a.view(B, T, H, E).transpose(1, 2) for a in xt.split(H * E, 2))
        o = m.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        o.transpose(1, 2).reshape(B, T, H * E).backward(m.tensor(g))
        res.append((o.detach().numpy(), xt.grad.numpy()))
    np.testing.assert_allclose(res[0][0], res[1][0], rtol=1e-4, atol=1e-5 * max(scale, 1))
    np.testing.assert_allclose(res[0][1], res[1][1], rtol=1e-4,
                               atol=1e-5 * max(scale, 1) ** 2)


def test_sdpa_nonfinite_inputs_match_the_reference():
    # NaN/inf fail the score bound and take the max-shifted softmax; the result is the
    # decomposition's (torch's CPU kernel zeroes a row whose query is NaN)
    from ember.ops.nn_attention import sdpa_decomposition
    rng = np.random.default_rng(8)
    q, k, v = (rng.standard_normal((2, 2, 5, 4)).astype(np.float32) for _ in range(3))
    q[0, 1, 2, 0] = np.nan
    k[1, 0, 3, 1] = np.inf
    ts = [ember.tensor(a) for a in (q, k, v)]
    with np.errstate(invalid="ignore"):
        e = F.scaled_dot_product_attention(*ts, is_causal=True).numpy()
        ref = sdpa_decomposition(*ts, is_causal=True).numpy()
    np.testing.assert_array_equal(np.isnan(e), np.isnan(ref))
    np.testing.assert_allclose(e, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("order", ["same", "swapped", "sum"])
def test_split_backward_of_adjacent_and_other_gradients_matches_torch(order):
    # cat's backward hands out views of one gradient: in split order they are joined as one
    # view, swapped they must be copied back into place
    x = np.random.default_rng(9).standard_normal((3, 6)).astype(np.float32)
    w = np.arange(18, dtype=np.float32).reshape(3, 6)
    res = []
    for m in (ember, torch):
        xt = m.tensor(x, requires_grad=True)
        a, b = xt.split([2, 4], 1)
        if order == "same":
            y = m.cat([a, b], 1)
        elif order == "swapped":
            y = m.cat([b, a], 1)
        else:
            y = m.cat([a, b], 1) + m.cat([a * 2, b], 1)
        (y * m.tensor(w)).sum().backward()
        res.append(xt.grad.numpy())
    np.testing.assert_allclose(res[0], res[1], rtol=1e-6)
