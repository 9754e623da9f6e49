"""scaled_dot_product_attention, multi_head_attention_forward and nn.MultiheadAttention
against torch: outputs, attention weights and gradients (inputs and parameters) for masks
(bool / float, attn / key padding), batch_first, kdim/vdim, add_bias_kv, add_zero_attn,
need_weights, average_attn_weights, unbatched input; dropout behaviour; error types."""
from __future__ import annotations

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")
EF = ember.nn.functional
TF = torch.nn.functional


def _close(e, t, tol=1e-10):
    np.testing.assert_allclose(e.detach().numpy(), t.detach().numpy(), rtol=tol, atol=tol)


# ---------------------------------------------------------------------- sdpa
@pytest.mark.parametrize("case", ["plain", "bool", "float", "causal", "gqa", "3d", "scale"])
def test_sdpa_matches_torch(case):
    rng = np.random.default_rng(0)
    shapes = {"gqa": ((2, 4, 3, 5), (2, 2, 6, 5), (2, 2, 6, 7)),
              "3d": ((3, 4, 5), (3, 6, 5), (3, 6, 2))}.get(case, ((2, 3, 4, 5), (2, 3, 6, 5),
                                                                  (2, 3, 6, 7)))
    arrs = [rng.standard_normal(s) for s in shapes]
    e = [ember.tensor(a, requires_grad=True) for a in arrs]
    t = [torch.tensor(a, requires_grad=True) for a in arrs]
    kw = {"causal": {"is_causal": True}, "gqa": {"enable_gqa": True},
          "scale": {"scale": 0.7}}.get(case, {})
    em = tm = None
    if case == "bool":
        mk = rng.random((4, 6)) > 0.4
        em, tm = ember.tensor(mk), torch.tensor(mk)
    elif case == "float":
        mk = rng.standard_normal((2, 1, 4, 6))
        em, tm = ember.tensor(mk, requires_grad=True), torch.tensor(mk, requires_grad=True)
    eo = EF.scaled_dot_product_attention(*e, attn_mask=em, **kw)
    to = TF.scaled_dot_product_attention(*t, attn_mask=tm, **kw)
    _close(eo, to)
    g = rng.standard_normal(tuple(to.shape))
    (eo * ember.tensor(g)).sum().backward()
    (to * torch.tensor(g)).sum().backward()
    for a, b in zip(e, t):
        _close(a.grad, b.grad)
    if case == "float":
        _close(em.grad, tm.grad)


def test_sdpa_float32_and_fully_masked_rows():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)).astype(np.float32) for _ in range(3))
    mask = np.ones((3, 3), bool)
    mask[1] = False
    eo = EF.scaled_dot_product_attention(ember.tensor(q), ember.tensor(k), ember.tensor(v),
                                         ember.tensor(mask))
    to = TF.scaled_dot_product_attention(torch.tensor(q), torch.tensor(k), torch.tensor(v),
                                         torch.tensor(mask))
    assert eo.dtype == ember.float32
    np.testing.assert_allclose(eo.numpy(), to.numpy(), atol=1e-6)
    assert not eo.numpy()[:, :, 1].any()


def test_sdpa_dropout_is_seeded_and_unbiased():
    rng = np.random.default_rng(2)
    q = ember.tensor(rng.standard_normal((2, 2, 8, 4)), requires_grad=True)
    k = ember.tensor(rng.standard_normal((2, 2, 8, 4)))
    v = ember.ones(2, 2, 8, 4, dtype=ember.float64)
    ember.manual_seed(3)
    a = EF.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    ember.manual_seed(3)
    b = EF.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    # with v = 1 the output is the sum of the kept, rescaled weights: 1 on average
    assert abs(a.detach().numpy().mean() - 1.0) < 0.15
    a.sum().backward()
    assert q.grad is not None and np.isfinite(q.grad.numpy()).all()
    assert not EF.scaled_dot_product_attention(q, k, v, dropout_p=1.0).detach().numpy().any()


def test_sdpa_double_backward():
    rng = np.random.default_rng(4)
    q, k, v = (ember.tensor(rng.standard_normal((1, 3, 2)), requires_grad=True)
               for _ in range(3))
    mask = ember.tensor(rng.standard_normal((3, 3)), requires_grad=True)
    fn = lambda q, k, v, m: EF.scaled_dot_product_attention(q, k, v, m)  # noqa: E731
    assert ember.autograd.gradgradcheck(fn, (q, k, v, mask))


@pytest.mark.parametrize("call", [
    lambda m: m.nn.functional.scaled_dot_product_attention(m.ones(1, 2, 3, 4), m.ones(1, 2, 5, 3),
                                                           m.ones(1, 2, 5, 6)),
    lambda m: m.nn.functional.scaled_dot_product_attention(
        m.ones(1, 2, 3, 4), m.ones(1, 2, 5, 4), m.ones(1, 2, 5, 6),
        attn_mask=m.ones(3, 5, dtype=m.bool), is_causal=True),
    lambda m: m.nn.functional.scaled_dot_product_attention(
        m.ones(1, 4, 3, 4), m.ones(1, 3, 5, 4), m.ones(1, 3, 5, 6), enable_gqa=True),
    lambda m: m.nn.functional.scaled_dot_product_attention(
        m.ones(1, 2, 3, 4), m.ones(1, 2, 5, 4), m.ones(1, 2, 5, 6, dtype=m.float64)),
])
def test_sdpa_errors_are_runtime_errors(call):
    with pytest.raises(RuntimeError):
        call(torch)
    with pytest.raises(RuntimeError) as info:
        call(ember)
    assert "numpy" not in str(info.value).lower()
    assert "scaled_dot_product_attention" in str(info.value)


# ---------------------------------------------------------------------- MultiheadAttention
def _pair(**kw):
    tm = torch.nn.MultiheadAttention(**kw).double()
    em = ember.nn.MultiheadAttention(**kw).double()
    assert list(em.state_dict()) == list(tm.state_dict())
    em.load_state_dict({k: ember.tensor(v.detach().numpy()) for k, v in tm.state_dict().items()})
    return em, tm


MHA_CASES = {
    "plain": dict(),
    "batch_first": dict(batch_first=True),
    "kdim_vdim": dict(kdim=5, vdim=3),
    "bias_kv_zero_attn": dict(add_bias_kv=True, add_zero_attn=True),
    "no_bias": dict(bias=False),
}


@pytest.mark.parametrize("name", list(MHA_CASES))
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("masks", ["none", "bool", "float"])
def test_multihead_attention_matches_torch(name, need_weights, masks):
    rng = np.random.default_rng(5)
    kw = MHA_CASES[name]
    E, H, L, S, N = 8, 2, 4, 5, 3
    em, tm = _pair(embed_dim=E, num_heads=H, **kw)
    bf = kw.get("batch_first", False)
    q = rng.standard_normal((N, L, E) if bf else (L, N, E))
    kd, vd = kw.get("kdim", E), kw.get("vdim", E)
    k = rng.standard_normal((N, S, kd) if bf else (S, N, kd))
    v = rng.standard_normal((N, S, vd) if bf else (S, N, vd))
    e_in = [ember.tensor(a, requires_grad=True) for a in (q, k, v)]
    t_in = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    e_kw, t_kw = {}, {}
    if masks == "bool":
        kpm = rng.random((N, S)) > 0.7
        kpm[:, 0] = False
        am = rng.random((L, S)) > 0.8
        e_kw = dict(key_padding_mask=ember.tensor(kpm), attn_mask=ember.tensor(am))
        t_kw = dict(key_padding_mask=torch.tensor(kpm), attn_mask=torch.tensor(am))
    elif masks == "float":
        am = rng.standard_normal((N * H, L, S))
        kpm = rng.standard_normal((N, S))
        e_kw = dict(key_padding_mask=ember.tensor(kpm), attn_mask=ember.tensor(am))
        t_kw = dict(key_padding_mask=torch.tensor(kpm), attn_mask=torch.tensor(am))
    eo, ew = em(*e_in, need_weights=need_weights, **e_kw)
    to, tw = tm(*t_in, need_weights=need_weights, **t_kw)
    _close(eo, to)
    assert (ew is None) == (tw is None)
    if tw is not None:
        _close(ew, tw)
    g = rng.standard_normal(tuple(to.shape))
    (eo * ember.tensor(g)).sum().backward()
    (to * torch.tensor(g)).sum().backward()
    for a, b in zip(e_in, t_in):
        _close(a.grad, b.grad)
    eparams = dict(em.named_parameters())
    for n, p in tm.named_parameters():
        _close(eparams[n].grad, p.grad)


def test_multihead_self_attention_unbatched_and_per_head_weights():
    rng = np.random.default_rng(6)
    em, tm = _pair(embed_dim=6, num_heads=3)
    x = rng.standard_normal((4, 6))
    eo, ew = em(ember.tensor(x), ember.tensor(x), ember.tensor(x), average_attn_weights=False)
    to, tw = tm(torch.tensor(x), torch.tensor(x), torch.tensor(x), average_attn_weights=False)
    assert tuple(ew.shape) == tuple(tw.shape) == (3, 4, 4)
    _close(eo, to)
    _close(ew, tw)
    xb = rng.standard_normal((4, 2, 6))
    ex, tx = ember.tensor(xb), torch.tensor(xb)
    causal = np.triu(np.ones((4, 4), bool), 1)
    eo, _ = em(ex, ex, ex, attn_mask=ember.tensor(causal), need_weights=False, is_causal=True)
    to, _ = tm(tx, tx, tx, attn_mask=torch.tensor(causal), need_weights=False, is_causal=True)
    _close(eo, to)


def test_multihead_attention_train_dropout_and_eval():
    rng = np.random.default_rng(7)
    em, tm = _pair(embed_dim=8, num_heads=2, dropout=0.5)
    x = ember.tensor(rng.standard_normal((5, 2, 8)))
    em.eval()
    tm.eval()
    t = torch.tensor(x.numpy())
    _close(em(x, x, x)[0], tm(t, t, t)[0])
    em.train()
    out1 = em(x, x, x, need_weights=False)[0]
    out2 = em(x, x, x, need_weights=False)[0]
    assert not np.allclose(out1.detach().numpy(), out2.detach().numpy())


def test_multihead_attention_names_init_repr_and_errors():
    e = ember.nn.MultiheadAttention(8, 2, kdim=4, vdim=3, add_bias_kv=True)
    t = torch.nn.MultiheadAttention(8, 2, kdim=4, vdim=3, add_bias_kv=True)
    assert [(k, tuple(v.shape)) for k, v in e.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in t.state_dict().items()]
    assert e.in_proj_weight is None and e.q_proj_weight is not None
    assert repr(e) == repr(t)
    assert not ember.nn.MultiheadAttention(8, 2).in_proj_bias.detach().numpy().any()
    with pytest.raises(AssertionError):
        torch.nn.MultiheadAttention(10, 3)
    with pytest.raises(AssertionError, match="divisible"):
        ember.nn.MultiheadAttention(10, 3)
    with pytest.raises(ValueError):
        ember.nn.MultiheadAttention(0, 2)
    m = ember.nn.MultiheadAttention(8, 2)
    x = ember.randn(4, 2, 8)
    for call, exc in ((lambda: m(x, x, x, attn_mask=ember.zeros(3, 4)), RuntimeError),
                      (lambda: m(x, x, x, key_padding_mask=ember.zeros(2, 3, dtype=ember.bool)),
                       AssertionError),
                      (lambda: m(x, x, x, attn_mask=ember.zeros(4, 4, dtype=ember.int64)),
                       AssertionError),
                      (lambda: m(x[0], x, x), AssertionError),
                      (lambda: m(x, x, x, is_causal=True), RuntimeError)):
        with pytest.raises(exc):
            call()


def test_functional_multi_head_attention_forward_static_kv():
    rng = np.random.default_rng(8)
    E, H, L, N, S = 4, 2, 3, 2, 5
    q = rng.standard_normal((L, N, E))
    w, b = rng.standard_normal((3 * E, E)), rng.standard_normal(3 * E)
    wo, bo = rng.standard_normal((E, E)), rng.standard_normal(E)
    sk = rng.standard_normal((N * H, S, E // H))
    sv = rng.standard_normal((N * H, S, E // H))
    outs = []
    for m in (ember, torch):
        T = m.tensor
        outs.append(m.nn.functional.multi_head_attention_forward(
            T(q), T(q), T(q), E, H, T(w), T(b), None, None, False, 0.0, T(wo), T(bo),
            static_k=T(sk), static_v=T(sv)))
    _close(outs[0][0], outs[1][0])
    _close(outs[0][1], outs[1][1])


def test_sdpa_half_dropout_double_backward():
    """The decomposition replays the saved float32 keep mask on float16 inputs."""
    rng = np.random.default_rng(6)
    a = [ember.tensor(rng.standard_normal((1, 2, 4, 8)), dtype=ember.float16,
                      requires_grad=True) for _ in range(3)]
    out = EF.scaled_dot_product_attention(*a, dropout_p=0.3, is_causal=True)
    g = ember.ones_like(out)
    fused = ember.autograd.grad(out, a, g, retain_graph=True)
    twice = ember.autograd.grad(out, a, g, create_graph=True)
    for x, y in zip(fused, twice):  # float32 work against a float16 decomposition
        x, y = x.float().numpy(), y.detach().float().numpy()
        assert np.abs(x - y).max() <= 1e-2 * np.abs(x).max()
    (gv,) = ember.autograd.grad(twice[0].float().pow(2).sum(), [a[2]])
    assert gv.dtype == ember.float16 and np.isfinite(gv.float().numpy()).all()
