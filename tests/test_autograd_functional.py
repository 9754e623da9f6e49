"""ember.autograd.functional against torch.autograd.functional: values and structure of
jacobian/hessian/vjp/jvp/hvp/vhp, create_graph, strict mode and error types."""
from __future__ import annotations

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")
EF = ember.autograd.functional
TF = torch.autograd.functional


def _np(x):
    return x.detach().numpy()


def _cmp(e, t, tol=1e-10):
    if isinstance(t, (tuple, list)):
        assert isinstance(e, tuple) and len(e) == len(t)
        for a, b in zip(e, t):
            _cmp(a, b, tol)
        return
    assert tuple(e.shape) == tuple(t.shape)
    np.testing.assert_allclose(_np(e), _np(t), rtol=tol, atol=tol)


def f_single(m):
    return lambda x: (x.exp() * x.sin()).sum(-1)


def f_multi_in(m):
    return lambda x, y: (x * y.tanh()).sum(0) + x.pow(2).sum(0)


def f_multi_out(m):
    return lambda x: (x.sin(), (x * x).sum())


def f_scalar(m):
    return lambda x: (x ** 3).sum() + (x[0] * x[1]).sum()


def f_scalar2(m):
    return lambda x, y: (x.exp() * y).sum() + (y ** 3).sum()


RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 2))
Y = RNG.standard_normal((3, 2))
V2 = RNG.standard_normal((3, 2))


def _inputs(m, *arrs):
    return tuple(m.tensor(a) for a in arrs)


@pytest.mark.parametrize("fn,arrs", [(f_single, (X,)), (f_multi_in, (X, Y)),
                                     (f_multi_out, (X,))])
@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_jacobian_matches_torch(fn, arrs, mode):
    kw = {} if mode == "reverse" else {"vectorize": True, "strategy": "forward-mode"}
    ins_e = _inputs(ember, *arrs)
    ins_t = _inputs(torch, *arrs)
    if len(arrs) == 1:
        ins_e, ins_t = ins_e[0], ins_t[0]
    _cmp(EF.jacobian(fn(ember), ins_e, **kw), TF.jacobian(fn(torch), ins_t, **kw))


def test_jacobian_create_graph_allows_second_derivative():
    res = []
    for m, F in ((ember, EF), (torch, TF)):
        x = m.tensor(X, requires_grad=True)
        J = F.jacobian(f_single(m), x, create_graph=True)
        assert J.requires_grad
        (g,) = m.autograd.grad(J.sum(), x)
        res.append(g)
    _cmp(res[0], res[1])


@pytest.mark.parametrize("fn,arrs", [(f_scalar, (X,)), (f_scalar2, (X, Y))])
@pytest.mark.parametrize("strategy", ["reverse-mode", "forward-mode"])
def test_hessian_matches_torch(fn, arrs, strategy):
    ins_e = _inputs(ember, *arrs)
    ins_t = _inputs(torch, *arrs)
    if len(arrs) == 1:
        ins_e, ins_t = ins_e[0], ins_t[0]
    kw = {"outer_jacobian_strategy": strategy}
    if strategy == "forward-mode":
        kw["vectorize"] = True
    _cmp(EF.hessian(fn(ember), ins_e, **kw), TF.hessian(fn(torch), ins_t, **kw))


@pytest.mark.parametrize("name", ["vjp", "jvp"])
def test_vjp_jvp_match_torch(name):
    fn = lambda m: (lambda x: x.exp() * x.sum())  # noqa: E731
    out_e = getattr(EF, name)(fn(ember), ember.tensor(X), ember.tensor(V2))
    out_t = getattr(TF, name)(fn(torch), torch.tensor(X), torch.tensor(V2))
    _cmp(out_e, out_t)


@pytest.mark.parametrize("name", ["hvp", "vhp"])
def test_hvp_vhp_match_torch(name):
    out_e = getattr(EF, name)(f_scalar2(ember), _inputs(ember, X, Y), _inputs(ember, V2, V2))
    out_t = getattr(TF, name)(f_scalar2(torch), _inputs(torch, X, Y), _inputs(torch, V2, V2))
    _cmp(out_e, out_t)


def test_hvp_of_nonsymmetric_second_derivative_uses_double_backward():
    # a function whose Hessian is symmetric: hvp and vhp agree with each other and torch
    f = lambda m: (lambda x: (x[0] ** 2 * x[1] + x[1].exp()).sum())  # noqa: E731
    a = RNG.standard_normal(2)
    v = RNG.standard_normal(2)
    _cmp(EF.hvp(f(ember), ember.tensor(a), ember.tensor(v))[1],
         TF.hvp(f(torch), torch.tensor(a), torch.tensor(v))[1])


def test_vjp_scalar_output_without_v():
    out_e = EF.vjp(lambda x: (x * x).sum(), ember.tensor(X))
    out_t = TF.vjp(lambda x: (x * x).sum(), torch.tensor(X))
    _cmp(out_e, out_t)


def test_outputs_are_detached_without_create_graph():
    x = ember.tensor(X, requires_grad=True)
    out, v = EF.vjp(lambda a: a * 2, x, ember.ones(3, 2, dtype=ember.float64))
    assert not out.requires_grad and not v.requires_grad


def test_independent_input_gives_zeros_or_strict_error():
    f_e = lambda x, y: x * 2  # noqa: E731
    f_t = lambda x, y: x * 2  # noqa: E731
    _cmp(EF.jacobian(f_e, _inputs(ember, X, Y)), TF.jacobian(f_t, _inputs(torch, X, Y)))
    with pytest.raises(RuntimeError, match="independent of input 1"):
        TF.jacobian(f_t, _inputs(torch, X, Y), strict=True)
    with pytest.raises(RuntimeError, match="independent of input 1"):
        EF.jacobian(f_e, _inputs(ember, X, Y), strict=True)


@pytest.mark.parametrize("call,exc", [
    (lambda m, F: F.jacobian(lambda x: x, 3.0), TypeError),
    (lambda m, F: F.jacobian(lambda x: 3.0, m.ones(2)), TypeError),
    (lambda m, F: F.vjp(lambda x: x * 2, m.ones(2)), RuntimeError),
    (lambda m, F: F.vjp(lambda x: x * 2, m.ones(2), m.ones(3)), RuntimeError),
    (lambda m, F: F.hessian(lambda x: x * 2, m.ones(2)), RuntimeError),
    (lambda m, F: F.jacobian(lambda x: x, m.ones(2), strategy="forward-mode"),
     NotImplementedError),
    (lambda m, F: F.jacobian(lambda x: x, m.ones(2), strategy="sideways"), AssertionError),
    (lambda m, F: F.hvp(lambda x: (x * x).sum(), m.ones(2), m.ones(3)), RuntimeError),
])
def test_errors_match_torch(call, exc):
    with pytest.raises(exc):
        call(torch, TF)
    with pytest.raises(exc):
        call(ember, EF)


# ---------------------------------------------------------------- forward_ad (dual tensors)
def test_forward_ad_tangents_match_torch():
    efw, tfw = ember.autograd.forward_ad, torch.autograd.forward_ad
    a = RNG.standard_normal((3, 3)) + 3 * np.eye(3)
    t = RNG.standard_normal((3, 3))
    res = []
    for m, fw in ((ember, efw), (torch, tfw)):
        with fw.dual_level():
            d = fw.make_dual(m.tensor(a), m.tensor(t))
            y = (d.sin() * 2 + d @ d).exp().sum(0)
            z = m.linalg.inv(d)
            plain = m.tensor(a)
            res.append((fw.unpack_dual(y).tangent, fw.unpack_dual(z).tangent,
                        fw.unpack_dual(plain).tangent, fw.unpack_dual(d).tangent))
    _cmp(res[0][0], res[1][0])
    _cmp(res[0][1], res[1][1])
    assert res[0][2] is None and res[1][2] is None
    _cmp(res[0][3], res[1][3])


def test_forward_ad_errors():
    efw = ember.autograd.forward_ad
    with pytest.raises(RuntimeError):
        efw.make_dual(ember.ones(2), ember.ones(2))          # no level
    with efw.dual_level():
        with pytest.raises(RuntimeError, match="different size"):
            efw.make_dual(ember.ones(2), ember.ones(3))
