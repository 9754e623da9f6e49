"""The fused CPU attention kernels' direct path (L and S multiples of 8, head sizes multiples
of the vector width: the tiles read q, k, v and the output gradient through their strides
and write the output and the gradients in place) against torch in float64, on strided views
of a fused qkv projection as in a GPT block, and against the padded-scratch path
(``EMBER_ATTN_DIRECT=0``)."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.ops.nn_attention import _FusedWeights

torch = pytest.importorskip("torch")


def _views(fw, qkv, B, L, H, E):
    q, k, v = qkv.split(H * E, dim=2)
    return [a.reshape(B, L, H, E).transpose(1, 2) for a in (q, k, v)]


def _attn(fw, x, g, B, L, H, E, causal):
    q, k, v = _views(fw, x, B, L, H, E)
    o = fw.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    y = o.transpose(1, 2).reshape(B, L, H * E)
    (y * g).sum().backward()
    return y, o


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,L,H,E", [(2, 64, 4, 32), (3, 24, 2, 16), (1, 40, 3, 48),
                                     (2, 8, 2, 64)])
def test_direct_strided_views_match_torch(monkeypatch, causal, B, L, H, E):
    pytest.importorskip("numba")
    rng = np.random.default_rng(B * 100 + L + E)
    x = rng.standard_normal((B, L, 3 * H * E)).astype(np.float32)
    g = rng.standard_normal((B, L, H * E)).astype(np.float32)
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    ty, _ = _attn(torch, tx, torch.tensor(g.astype(np.float64)), B, L, H, E, causal)
    results = []
    for direct in ("7", "0"):
        monkeypatch.setenv("EMBER_ATTN_DIRECT", direct)
        ex = ember.tensor(x, requires_grad=True)
        ey, eo = _attn(ember, ex, ember.tensor(g), B, L, H, E, causal)
        assert isinstance(getattr(eo.grad_fn, "p", None), _FusedWeights)
        ref = ty.detach().numpy()
        np.testing.assert_allclose(ey.detach().numpy(), ref, rtol=2e-5,
                                   atol=2e-5 * max(float(np.abs(ref).max()), 1.0))
        r = tx.grad.numpy()
        np.testing.assert_allclose(ex.grad.numpy(), r, rtol=2e-5,
                                   atol=2e-5 * max(float(np.abs(r).max()), 1.0))
        results.append((ey.detach().numpy(), ex.grad.numpy()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6, atol=1e-6)


def test_direct_cross_attention_l_ne_s(monkeypatch):
    # L != S (both multiples of 8), q and k/v from different strided views
    pytest.importorskip("numba")
    rng = np.random.default_rng(7)
    B, H, E, L, S = 2, 2, 32, 16, 40
    q = rng.standard_normal((B, L, H, E)).astype(np.float32)
    kv = rng.standard_normal((B, S, 2, H, E)).astype(np.float32)
    g = rng.standard_normal((B, H, L, E)).astype(np.float32)
    for causal in (True, False):
        tq = torch.tensor(q.astype(np.float64), requires_grad=True)
        tkv = torch.tensor(kv.astype(np.float64), requires_grad=True)
        to = torch.nn.functional.scaled_dot_product_attention(
            tq.transpose(1, 2), tkv[:, :, 0].transpose(1, 2), tkv[:, :, 1].transpose(1, 2),
            is_causal=causal)
        (to * torch.tensor(g.astype(np.float64))).sum().backward()
        eq = ember.tensor(q, requires_grad=True)
        ekv = ember.tensor(kv, requires_grad=True)
        eo = ember.nn.functional.scaled_dot_product_attention(
            eq.transpose(1, 2), ekv[:, :, 0].transpose(1, 2), ekv[:, :, 1].transpose(1, 2),
            is_causal=causal)
        assert isinstance(getattr(eo.grad_fn, "p", None), _FusedWeights)
        (eo * ember.tensor(g)).sum().backward()
        for e, t in ((eo, to), (eq.grad, tq.grad), (ekv.grad, tkv.grad)):
            r = t.detach().numpy()
            np.testing.assert_allclose(e.detach().numpy(), r, rtol=2e-5,
                                       atol=2e-5 * max(float(np.abs(r).max()), 1.0))
