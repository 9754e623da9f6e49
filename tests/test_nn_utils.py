"""nn.utils against torch: gradient clipping, parameter vectors, weight/spectral norm (hook
and parametrization forms), parametrize, orthogonal, and conv/linear-batchnorm fusion."""
from __future__ import annotations

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")
enn = ember.nn
tnn = torch.nn
RNG = np.random.default_rng(0)


def to_ember(t):
    return ember.tensor(t.detach().numpy())


def copy_weights(tm, em):
    em.load_state_dict({k: to_ember(v) for k, v in tm.state_dict().items()})


def _with_grads(m, grads):
    params = []
    for g in grads:
        p = m.nn.Parameter(m.zeros(g.shape, dtype=m.float64))
        p.grad = m.tensor(g)
        params.append(p)
    return params


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf"), 3])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    grads = [RNG.standard_normal((3, 4)), RNG.standard_normal(5)]
    tp, ep = _with_grads(torch, grads), _with_grads(ember, grads)
    tn = tnn.utils.clip_grad_norm_(tp, max_norm, norm_type)
    en = enn.utils.clip_grad_norm_(ep, max_norm, norm_type)
    np.testing.assert_allclose(float(en), float(tn), rtol=1e-12)
    for a, b in zip(ep, tp):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-12)


def test_clip_grad_norm_edge_cases():
    assert float(enn.utils.clip_grad_norm_([], 1.0)) == 0.0
    p = _with_grads(ember, [np.array([np.nan, 1.0])])
    with pytest.raises(RuntimeError, match="non-finite"):
        enn.utils.clip_grad_norm_(p, 1.0, error_if_nonfinite=True)
    single = _with_grads(ember, [np.array([3.0, 4.0])])[0]
    assert float(enn.utils.clip_grad_norm_(single, 1.0)) == 5.0
    np.testing.assert_allclose(single.grad.numpy(), [0.6, 0.8], rtol=1e-5)


def test_clip_grad_value_matches_torch():
    grads = [RNG.standard_normal((3, 4)) * 3]
    tp, ep = _with_grads(torch, grads), _with_grads(ember, grads)
    tnn.utils.clip_grad_value_(tp, 0.7)
    enn.utils.clip_grad_value_(ep, 0.7)
    np.testing.assert_array_equal(ep[0].grad.numpy(), tp[0].grad.numpy())


def test_parameters_vector_roundtrip():
    tm = tnn.Sequential(tnn.Linear(3, 4), tnn.Linear(4, 2)).double()
    em = enn.Sequential(enn.Linear(3, 4), enn.Linear(4, 2)).double()
    copy_weights(tm, em)
    tv = tnn.utils.parameters_to_vector(tm.parameters())
    ev = enn.utils.parameters_to_vector(em.parameters())
    np.testing.assert_array_equal(ev.detach().numpy(), tv.detach().numpy())
    assert ev.requires_grad
    new = np.arange(ev.numel(), dtype=np.float64)
    enn.utils.vector_to_parameters(ember.tensor(new), em.parameters())
    tnn.utils.vector_to_parameters(torch.tensor(new), tm.parameters())
    for a, b in zip(em.parameters(), tm.parameters()):
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
        assert isinstance(a, enn.Parameter)
    with pytest.raises(TypeError, match="expected torch.Tensor"):
        enn.utils.vector_to_parameters([1.0], em.parameters())


def _run(tm, em, x, train=True):
    tm.train(train)
    em.train(train)
    tx = torch.tensor(x, requires_grad=True)
    ex = ember.tensor(x, requires_grad=True)
    to, eo = tm(tx), em(ex)
    np.testing.assert_allclose(eo.detach().numpy(), to.detach().numpy(), rtol=1e-9, atol=1e-12)
    (to ** 2).sum().backward()
    (eo ** 2).sum().backward()
    np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    tg = dict(tm.named_parameters())
    for n, p in em.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), tg[n].grad.numpy(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("dim", [0, 1, None])
def test_weight_norm_hook_form_matches_torch(dim):
    tm = tnn.utils.weight_norm(tnn.Linear(4, 3).double(), dim=dim)
    em = enn.utils.weight_norm(enn.Linear(4, 3).double(), dim=dim)
    assert list(em.state_dict()) == list(tm.state_dict())
    copy_weights(tm, em)
    _run(tm, em, RNG.standard_normal((5, 4)))
    tnn.utils.remove_weight_norm(tm)
    enn.utils.remove_weight_norm(em)
    assert list(em.state_dict()) == list(tm.state_dict())
    np.testing.assert_allclose(em.weight.detach().numpy(), tm.weight.detach().numpy(), rtol=1e-12)


def test_spectral_norm_hook_form_matches_torch():
    tm = tnn.utils.spectral_norm(tnn.Linear(4, 3).double(), n_power_iterations=2)
    em = enn.utils.spectral_norm(enn.Linear(4, 3).double(), n_power_iterations=2)
    assert sorted(em.state_dict()) == sorted(tm.state_dict())
    copy_weights(tm, em)  # copies u and v: the power iteration then matches exactly
    x = RNG.standard_normal((5, 4))
    _run(tm, em, x, train=True)
    np.testing.assert_allclose(em.weight_u.numpy(), tm.weight_u.numpy(), rtol=1e-10)
    _run(tm, em, x, train=False)
    tnn.utils.remove_spectral_norm(tm)
    enn.utils.remove_spectral_norm(em)
    assert sorted(em.state_dict()) == sorted(tm.state_dict())


@pytest.mark.parametrize("dim", [0, 1])
def test_weight_norm_parametrization_matches_torch(dim):
    P = tnn.utils.parametrizations
    tm = P.weight_norm(tnn.Linear(4, 3).double(), dim=dim)
    em = enn.utils.parametrizations.weight_norm(enn.Linear(4, 3).double(), dim=dim)
    assert list(em.state_dict()) == list(tm.state_dict())
    assert repr(em) == repr(tm)
    copy_weights(tm, em)
    _run(tm, em, RNG.standard_normal((5, 4)))
    # old checkpoints with weight_g / weight_v load through the compat hook
    old = enn.utils.weight_norm(enn.Linear(4, 3).double())
    em2 = enn.utils.parametrizations.weight_norm(enn.Linear(4, 3).double())
    em2.load_state_dict(old.state_dict())
    np.testing.assert_allclose(em2.weight.detach().numpy(), old.weight.detach().numpy(),
                               rtol=1e-12)


def test_spectral_norm_parametrization_matches_torch():
    P = tnn.utils.parametrizations
    tm = P.spectral_norm(tnn.Linear(5, 3).double())
    em = enn.utils.parametrizations.spectral_norm(enn.Linear(5, 3).double())
    assert list(em.state_dict()) == list(tm.state_dict())
    copy_weights(tm, em)
    x = RNG.standard_normal((4, 5))
    _run(tm, em, x, train=True)
    _run(tm, em, x, train=False)
    sigma = np.linalg.svd(em.parametrizations.weight.original.detach().numpy(),
                          compute_uv=False)[0]
    assert abs(np.linalg.svd(em.weight.detach().numpy(), compute_uv=False)[0] - 1.0) < 0.05
    assert sigma > 0


class _Symmetric(enn.Module):
    def forward(self, X):
        return X.triu() + X.triu(1).transpose(0, 1)

    def right_inverse(self, A):
        return A.triu()


class _TSymmetric(tnn.Module):
    def forward(self, X):
        return X.triu() + X.triu(1).transpose(0, 1)

    def right_inverse(self, A):
        return A.triu()


def test_parametrize_register_cache_remove_match_torch():
    P_e, P_t = enn.utils.parametrize, tnn.utils.parametrize
    tm = tnn.Linear(3, 3).double()
    em = enn.Linear(3, 3).double()
    copy_weights(tm, em)
    P_t.register_parametrization(tm, "weight", _TSymmetric())
    P_e.register_parametrization(em, "weight", _Symmetric())
    assert type(em).__name__ == type(tm).__name__ == "ParametrizedLinear"
    assert list(em.state_dict()) == list(tm.state_dict())
    assert repr(em).replace("_Symmetric", "S") == repr(tm).replace("_TSymmetric", "S")
    assert P_e.is_parametrized(em) and P_e.is_parametrized(em, "weight")
    assert not P_e.is_parametrized(em, "bias")
    w = em.weight.detach().numpy()
    np.testing.assert_array_equal(w, w.T)
    _run(tm, em, RNG.standard_normal((2, 3)))
    with P_e.cached():
        assert em.weight is em.weight
    assert em.weight is not em.weight
    # assignment goes through right_inverse
    new = np.arange(9.0).reshape(3, 3)
    em.weight = ember.tensor(new)
    tm.weight = torch.tensor(new)
    np.testing.assert_array_equal(em.weight.detach().numpy(), tm.weight.detach().numpy())
    assert P_e.type_before_parametrizations(em) is enn.Linear
    P_e.remove_parametrizations(em, "weight")
    P_t.remove_parametrizations(tm, "weight")
    assert type(em) is enn.Linear and isinstance(em.weight, enn.Parameter)
    assert list(em.state_dict()) == list(tm.state_dict())
    np.testing.assert_array_equal(em.weight.detach().numpy(), tm.weight.detach().numpy())
    other = enn.Linear(3, 3)
    assert type(other) is enn.Linear and not hasattr(type(other), "weight")


def test_parametrize_errors():
    P = enn.utils.parametrize

    class Shrink(enn.Module):
        def forward(self, X):
            return X[:1]

    with pytest.raises(ValueError, match="shape"):
        P.register_parametrization(enn.Linear(3, 3), "weight", Shrink())
    with pytest.raises(ValueError, match="does not have a parameter"):
        P.register_parametrization(enn.Linear(3, 3), "nope", _Symmetric())
    with pytest.raises(ValueError, match="does not have a parametrization"):
        P.remove_parametrizations(enn.Linear(3, 3), "weight")


@pytest.mark.parametrize("shape,orth_map", [((4, 4), None), ((6, 3), None), ((3, 6), None),
                                            ((4, 4), "cayley"), ((5, 3), "matrix_exp")])
def test_orthogonal_parametrization(shape, orth_map):
    if orth_map == "cayley" and not hasattr(ember, "linalg"):
        pytest.skip("cayley map needs ember.linalg.solve")
    lin = enn.Linear(shape[1], shape[0]).double()
    original = lin.weight.detach().numpy().copy()
    enn.utils.parametrizations.orthogonal(lin, orthogonal_map=orth_map)
    t = tnn.utils.parametrizations.orthogonal(tnn.Linear(shape[1], shape[0]).double(),
                                              orthogonal_map=orth_map)
    assert list(lin.state_dict()) == list(t.state_dict())
    Q = lin.weight.detach().numpy()
    k = min(shape)
    gram = Q.T @ Q if shape[0] >= shape[1] else Q @ Q.T
    np.testing.assert_allclose(gram, np.eye(k), atol=1e-10)
    # the initial weight is the orthogonalised original (same column space)
    if shape[0] == shape[1]:
        q, r = np.linalg.qr(original)
        np.testing.assert_allclose(np.abs(Q), np.abs(q * np.sign(np.diag(r))), atol=1e-8)
    # training keeps it orthogonal
    opt_param = lin.parametrizations.weight.original
    for _ in range(3):
        loss = (lin(ember.randn(4, shape[1], dtype=ember.float64)) ** 2).sum()
        loss.backward()
        with ember.no_grad():
            opt_param -= 0.1 * opt_param.grad
        opt_param.grad = None
    Q = lin.weight.detach().numpy()
    gram = Q.T @ Q if shape[0] >= shape[1] else Q @ Q.T
    np.testing.assert_allclose(gram, np.eye(k), atol=1e-8)


def test_orthogonal_householder_without_trivialization():
    lin = enn.Linear(3, 5).double()
    enn.utils.parametrizations.orthogonal(lin, orthogonal_map="householder",
                                          use_trivialization=False)
    Q = lin.weight.detach().numpy()
    np.testing.assert_allclose(Q.T @ Q, np.eye(3), atol=1e-10)
    target = np.linalg.qr(RNG.standard_normal((5, 3)))[0]
    lin.weight = ember.tensor(target)
    np.testing.assert_allclose(lin.weight.detach().numpy(), target, atol=1e-10)


def test_fuse_linear_bn_eval():
    if not hasattr(enn, "BatchNorm1d"):
        pytest.skip("BatchNorm1d (part B) not available")
    lin, bn = enn.Linear(4, 3).double().eval(), enn.BatchNorm1d(3).double().eval()
    with ember.no_grad():
        bn.running_mean.copy_(ember.tensor([0.1, -0.2, 0.3], dtype=ember.float64))
        bn.running_var.copy_(ember.tensor([1.5, 0.5, 2.0], dtype=ember.float64))
        bn.weight.copy_(ember.tensor([1.0, 2.0, 0.5], dtype=ember.float64))
    fused = enn.utils.fuse_linear_bn_eval(lin, bn)
    x = ember.randn(6, 4, dtype=ember.float64)
    np.testing.assert_allclose(fused(x).detach().numpy(), bn(lin(x)).detach().numpy(), rtol=1e-10)


def test_fuse_conv_bn_eval():
    if not (hasattr(enn, "Conv2d") and hasattr(enn, "BatchNorm2d")):
        pytest.skip("Conv2d/BatchNorm2d (part B) not available")
    conv, bn = enn.Conv2d(3, 4, 3).double().eval(), enn.BatchNorm2d(4).double().eval()
    with ember.no_grad():
        bn.running_mean.copy_(ember.tensor([0.1, -0.2, 0.3, 0.0], dtype=ember.float64))
        bn.running_var.copy_(ember.tensor([1.5, 0.5, 2.0, 1.0], dtype=ember.float64))
    fused = enn.utils.fuse_conv_bn_eval(conv, bn)
    x = ember.randn(2, 3, 6, 6, dtype=ember.float64)
    np.testing.assert_allclose(fused(x).detach().numpy(), bn(conv(x)).detach().numpy(),
                               rtol=1e-9, atol=1e-12)
    with pytest.raises(AssertionError):
        enn.utils.fuse_conv_bn_eval(conv.train(), bn)


def test_fuse_weights_match_torch():
    w = RNG.standard_normal((4, 3, 3, 3))
    b = RNG.standard_normal(4)
    rm, rv = RNG.standard_normal(4), RNG.uniform(0.5, 2, 4)
    g, beta = RNG.standard_normal(4), RNG.standard_normal(4)
    t = tnn.utils.fuse_conv_bn_weights(*[torch.tensor(a) for a in (w, b, rm, rv)], 1e-5,
                                       torch.tensor(g), torch.tensor(beta))
    e = enn.utils.fuse_conv_bn_weights(*[ember.tensor(a) for a in (w, b, rm, rv)], 1e-5,
                                       ember.tensor(g), ember.tensor(beta))
    for a, c in zip(e, t):
        assert isinstance(a, enn.Parameter)
        np.testing.assert_allclose(a.detach().numpy(), c.detach().numpy(), rtol=1e-12)
    lw = RNG.standard_normal((4, 5))
    t = tnn.utils.fuse_linear_bn_weights(*[torch.tensor(a) for a in (lw, b, rm, rv)], 1e-5,
                                         torch.tensor(g), torch.tensor(beta))
    e = enn.utils.fuse_linear_bn_weights(*[ember.tensor(a) for a in (lw, b, rm, rv)], 1e-5,
                                         ember.tensor(g), ember.tensor(beta))
    for a, c in zip(e, t):
        np.testing.assert_allclose(a.detach().numpy(), c.detach().numpy(), rtol=1e-12)
