"""The fused float32 CPU attention kernels (ember.backend.cpu_attention_kernels) against
torch in float64: outputs and q/k/v gradients, causal and not, sequence lengths that are no
multiple of the 8x8 tiles, L != S (torch's top-left causal mask), value head size unlike the
query's, strided q/k/v views of a fused qkv projection, GQA, a broadcast upstream gradient;
and the cases the kernels must leave to the batched path."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.backend import cpu_attention_kernels
from ember.ops.nn_attention import _FusedWeights

torch = pytest.importorskip("torch")
pytest.importorskip("numba")
EF = ember.nn.functional
TF = torch.nn.functional


def _fused(y: ember.Tensor) -> bool:
    return isinstance(getattr(y.grad_fn, "p", None), _FusedWeights)


def _check(q, k, v, causal, g, gqa=False, tol=2e-5):
    e = [ember.tensor(a, requires_grad=True) for a in (q, k, v)]
    t = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in (q, k, v)]
    eo = EF.scaled_dot_product_attention(*e, is_causal=causal, enable_gqa=gqa)
    to = TF.scaled_dot_product_attention(*t, is_causal=causal, enable_gqa=gqa)
    assert _fused(eo)
    assert eo.dtype == ember.float32
    scale = float(np.abs(to.detach().numpy()).max())
    np.testing.assert_allclose(eo.detach().numpy(), to.detach().numpy(), rtol=tol,
                               atol=tol * scale)
    (eo * ember.tensor(g)).sum().backward()
    (to * torch.tensor(g.astype(np.float64))).sum().backward()
    for a, b in zip(e, t):
        ref = b.grad.numpy()
        np.testing.assert_allclose(a.grad.numpy(), ref, rtol=tol,
                                   atol=tol * max(float(np.abs(ref).max()), 1.0))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("L,S,E,Ev", [(64, 64, 32, 32), (13, 13, 8, 16), (5, 11, 16, 8),
                                      (11, 5, 8, 24), (1, 1, 8, 8), (17, 40, 24, 8)])
def test_fused_attention_matches_torch(causal, L, S, E, Ev):
    rng = np.random.default_rng(L * 100 + S + E)
    q = rng.standard_normal((2, 3, L, E)).astype(np.float32)
    k = rng.standard_normal((2, 3, S, E)).astype(np.float32)
    v = rng.standard_normal((2, 3, S, Ev)).astype(np.float32)
    g = rng.standard_normal((2, 3, L, Ev)).astype(np.float32)
    _check(q, k, v, causal, g)


def test_fused_attention_large_scores():
    # scores far from 0 (rows dominated by one key): the row max must be subtracted
    rng = np.random.default_rng(3)
    q = (rng.standard_normal((1, 2, 19, 16)) * 6).astype(np.float32)
    k = (rng.standard_normal((1, 2, 19, 16)) * 6).astype(np.float32)
    v = rng.standard_normal((1, 2, 19, 16)).astype(np.float32)
    g = rng.standard_normal((1, 2, 19, 16)).astype(np.float32)
    _check(q, k, v, True, g, tol=1e-4)


def test_fused_attention_qkv_views_and_grad_layout():
    # the GPT block's layout: q, k, v strided views of one (B, T, 3D) projection; the
    # gradients land in one (B, T, 3D) array (the split's backward copies nothing)
    B, T, H, E = 3, 21, 2, 16
    D = H * E
    rng = np.random.default_rng(5)
    arr = rng.standard_normal((B, T, 3 * D)).astype(np.float32)
    g = rng.standard_normal((B, T, D)).astype(np.float32)
    outs = []
    for fw in (ember, torch):
        x = fw.tensor(arr.astype(np.float64) if fw is torch else arr, requires_grad=True)
        q, k, v = x.split(D, dim=2)
        q, k, v = (a.view(B, T, H, E).transpose(1, 2) for a in (q, k, v))
        o = fw.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        if fw is ember:
            assert _fused(o)
        y = o.transpose(1, 2).reshape(B, T, D)
        (y * fw.tensor(g.astype(np.float64) if fw is torch else g)).sum().backward()
        outs.append((y.detach().numpy(), x.grad.numpy()))
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(np.abs(b).max()))


def test_fused_attention_gqa_and_broadcast_grad():
    rng = np.random.default_rng(7)
    q = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    k = rng.standard_normal((2, 2, 9, 8)).astype(np.float32)
    v = rng.standard_normal((2, 2, 9, 8)).astype(np.float32)
    e = [ember.tensor(a, requires_grad=True) for a in (q, k, v)]
    t = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in (q, k, v)]
    eo = EF.scaled_dot_product_attention(*e, is_causal=True, enable_gqa=True)
    to = TF.scaled_dot_product_attention(*t, is_causal=True, enable_gqa=True)
    assert _fused(eo)
    eo.sum().backward()   # upstream gradient: a stride-0 broadcast of one value
    to.sum().backward()
    for a, b in zip(e, t):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("case", ["float64", "E=12", "3d", "mask", "dropout"])
def test_other_cases_keep_the_batched_path(case):
    rng = np.random.default_rng(9)
    E = 12 if case == "E=12" else 8
    shape = (3, 6, E) if case == "3d" else (2, 2, 6, E)
    dt = np.float64 if case == "float64" else np.float32
    q, k, v = (ember.tensor(rng.standard_normal(shape).astype(dt), requires_grad=True)
               for _ in range(3))
    kw = {"attn_mask": ember.tensor(rng.random((6, 6)) > 0.3)} if case == "mask" else \
        ({"dropout_p": 0.5} if case == "dropout" else {"is_causal": True})
    o = EF.scaled_dot_product_attention(q, k, v, **kw)
    assert not _fused(o)
    assert not cpu_attention_kernels.usable(q._data, k._data, v._data) or case in (
        "mask", "dropout")


def test_kernels_off_with_env(monkeypatch):
    monkeypatch.setenv("EMBER_ATTN_KERNELS", "0")
    q = ember.randn(1, 2, 8, 8, requires_grad=True)
    assert not _fused(EF.scaled_dot_product_attention(q, q, q, is_causal=True))


def test_double_backward_takes_the_decomposition():
    # create_graph: the backward differentiates the decomposition, not the kernels
    rng = np.random.default_rng(11)
    arrs = [rng.standard_normal((1, 2, 9, 8)).astype(np.float32) for _ in range(3)]
    e = [ember.tensor(a, requires_grad=True) for a in arrs]
    t = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in arrs]
    eo = EF.scaled_dot_product_attention(*e, is_causal=True)
    # torch's CPU flash kernel has no double backward: its math formulation instead
    sc = t[0] @ t[1].transpose(-1, -2) / np.sqrt(8.0)
    sc = sc.masked_fill(~torch.ones(9, 9, dtype=torch.bool).tril(), float("-inf"))
    to = sc.softmax(-1) @ t[2]
    assert _fused(eo)
    eg = ember.autograd.grad(eo.sum(), e[0], create_graph=True)[0]
    tg = torch.autograd.grad(to.sum(), t[0], create_graph=True)[0]
    (eg * eg).sum().backward()
    (tg * tg).sum().backward()
    np.testing.assert_allclose(e[1].grad.numpy(), t[1].grad.numpy(), rtol=1e-4, atol=1e-5)
