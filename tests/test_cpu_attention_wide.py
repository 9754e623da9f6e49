"""scaled_dot_product_attention on the CPU against torch in float64, for the fused kernels'
wide-vector tiles (16 floats on AVX-512 hosts: key and head-size counts that are no multiple
of 16 or 32, the masked lanes of a row's last vector, the 8-row softmax blocks with rows
past L, L != S both ways), scores whose row maximum is not finite (the scalar fallback
rows), and the other CPU paths (boolean and float masks, dropout_p=0, float64)."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.ops.nn_attention import _FusedWeights

torch = pytest.importorskip("torch")
EF = ember.nn.functional
TF = torch.nn.functional


def _run(q, k, v, g, tol, **kw):
    e = [ember.tensor(a, requires_grad=True) for a in (q, k, v)]
    t = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in (q, k, v)]
    tkw = dict(kw)
    if "attn_mask" in kw:
        m = kw["attn_mask"]
        kw = dict(kw, attn_mask=ember.tensor(m))
        tkw["attn_mask"] = torch.tensor(m.astype(np.float64) if m.dtype != bool else m)
    eo = EF.scaled_dot_product_attention(*e, **kw)
    to = TF.scaled_dot_product_attention(*t, **tkw)
    assert eo.dtype == e[0].dtype
    ref = to.detach().numpy()
    np.testing.assert_allclose(eo.detach().numpy(), ref, rtol=tol,
                               atol=tol * max(float(np.nanmax(np.abs(ref))), 1.0))
    (eo * ember.tensor(g)).sum().backward()
    (to * torch.tensor(g.astype(np.float64))).sum().backward()
    for a, b in zip(e, t):
        r = b.grad.numpy()
        np.testing.assert_allclose(a.grad.numpy(), r, rtol=tol,
                                   atol=tol * max(float(np.abs(r).max()), 1.0))
    return eo


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("L,S,E,Ev", [(64, 64, 32, 32), (33, 33, 40, 24), (47, 47, 48, 8),
                                      (65, 65, 16, 16), (31, 17, 8, 56), (17, 31, 24, 40),
                                      (16, 16, 32, 32), (9, 70, 64, 16)])
def test_fused_wide_tiles_match_torch(causal, L, S, E, Ev):
    pytest.importorskip("numba")
    rng = np.random.default_rng(L * 1000 + S * 10 + E)
    q = rng.standard_normal((2, 2, L, E)).astype(np.float32)
    k = rng.standard_normal((2, 2, S, E)).astype(np.float32)
    v = rng.standard_normal((2, 2, S, Ev)).astype(np.float32)
    g = rng.standard_normal((2, 2, L, Ev)).astype(np.float32)
    eo = _run(q, k, v, g, 2e-5, is_causal=causal)
    assert isinstance(getattr(eo.grad_fn, "p", None), _FusedWeights)


def test_fused_rows_with_nonfinite_scores_match_torch():
    # an inf in one query row and a NaN in another: those rows' maximum is not finite, so
    # their block takes the scalar rows; the other rows must be unaffected
    pytest.importorskip("numba")
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 2, 20, 16)).astype(np.float32)
    k = rng.standard_normal((1, 2, 20, 16)).astype(np.float32)
    v = rng.standard_normal((1, 2, 20, 16)).astype(np.float32)
    q[0, 0, 3, 2] = np.inf
    q[0, 1, 12, 5] = np.nan
    outs = []
    for fw in (ember, torch):
        a = [fw.tensor(x.astype(np.float64) if fw is torch else x) for x in (q, k, v)]
        outs.append(fw.nn.functional.scaled_dot_product_attention(*a, is_causal=True)
                    .numpy())
    e, t = outs
    np.testing.assert_array_equal(np.isnan(e), np.isnan(t))
    ok = ~np.isnan(t)
    np.testing.assert_allclose(e[ok], t[ok], rtol=2e-5, atol=2e-5)


def test_fused_large_scores_take_the_row_max():
    pytest.importorskip("numba")
    rng = np.random.default_rng(2)
    q = (rng.standard_normal((1, 3, 37, 24)) * 8).astype(np.float32)
    k = (rng.standard_normal((1, 3, 37, 24)) * 8).astype(np.float32)
    v = rng.standard_normal((1, 3, 37, 24)).astype(np.float32)
    g = rng.standard_normal((1, 3, 37, 24)).astype(np.float32)
    _run(q, k, v, g, 2e-4, is_causal=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mask", ["none", "bool", "float", "causal"])
def test_other_paths_match_torch(dtype, mask):
    rng = np.random.default_rng(4)
    L, S, E = 19, 23, 12
    q = rng.standard_normal((2, 3, L, E)).astype(dtype)
    k = rng.standard_normal((2, 3, S, E)).astype(dtype)
    v = rng.standard_normal((2, 3, S, E)).astype(dtype)
    g = rng.standard_normal((2, 3, L, E)).astype(dtype)
    kw: dict = {"dropout_p": 0.0}
    if mask == "bool":
        m = rng.random((L, S)) > 0.3
        m[:, 0] = True
        kw["attn_mask"] = m
    elif mask == "float":
        kw["attn_mask"] = rng.standard_normal((L, S)).astype(dtype)
    elif mask == "causal":
        kw["is_causal"] = True
    _run(q, k, v, g, 2e-5 if dtype == np.float32 else 1e-10, **kw)
