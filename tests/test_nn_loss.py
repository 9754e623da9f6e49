"""Loss functions and loss modules against torch: values and gradients for every reduction and
the main options, strict shape checks (and torch's warnings when strict mode is off), errors."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")
RNG = np.random.default_rng(0)
REDUCTIONS = ("mean", "sum", "none")


def _conv(m, a, grad):
    if isinstance(a, np.ndarray):
        t = m.tensor(a)
        if grad and t.is_floating_point():
            t.requires_grad_(True)
        return t
    return a


def check(fn, *arrays, grad_args=None, rtol=1e-7, atol=1e-10, **kwargs):
    """``fn(m, *tensors, **kwargs)`` on torch and ember in float64: values and the gradients
    of every float input (or those at ``grad_args``)."""
    res = {}
    for m in (torch, ember):
        ts = [_conv(m, a, grad_args is None or i in grad_args) for i, a in enumerate(arrays)]
        out = fn(m, *ts, **kwargs)
        w = np.linspace(0.5, 1.5, max(int(np.prod(tuple(out.shape))), 1)).reshape(tuple(out.shape))
        (out * m.tensor(w)).sum().backward()
        grads = [t.grad.numpy().copy() if hasattr(t, "grad") and t.grad is not None else None
                 for t in ts]
        res[m.__name__] = (out.detach().numpy().copy(), grads, str(out.dtype).split(".")[-1],
                           tuple(out.shape))
    (to, tg, tdt, tsh), (eo, eg, edt, esh) = res["torch"], res["ember"]
    assert esh == tsh and edt == tdt
    np.testing.assert_allclose(eo, to, rtol=rtol, atol=atol)
    for e, t in zip(eg, tg):
        if t is None:
            assert e is None or not np.any(e)
        else:
            np.testing.assert_allclose(e, t, rtol=rtol, atol=atol)


def F(m):
    return m.nn.functional


x45 = RNG.standard_normal((4, 5))
y45 = RNG.standard_normal((4, 5))
p45 = RNG.uniform(0.05, 0.95, (4, 5))
b45 = (RNG.uniform(0, 1, (4, 5)) > 0.5).astype(np.float64)
sign4 = np.array([1.0, -1.0, -1.0, 1.0])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_regression_losses(reduction):
    kw = {"reduction": reduction}
    check(lambda m, a, b, **k: F(m).l1_loss(a, b, **k), x45, y45, **kw)
    check(lambda m, a, b, **k: F(m).mse_loss(a, b, **k), x45, y45, **kw)
    check(lambda m, a, b, **k: F(m).smooth_l1_loss(a, b, beta=0.5, **k), x45, y45, **kw)
    check(lambda m, a, b, **k: F(m).smooth_l1_loss(a, b, beta=0.0, **k), x45, y45, **kw)
    check(lambda m, a, b, **k: F(m).huber_loss(a, b, delta=0.7, **k), x45, y45, **kw)
    check(lambda m, a, b, w, **k: F(m).mse_loss(a, b, weight=w, **k), x45, y45, p45,
          grad_args=(0, 1), **kw)
    check(lambda m, a, b, w, **k: F(m).l1_loss(a, b, weight=w, **k), x45, y45, p45,
          grad_args=(0, 1), **kw)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_classification_losses(reduction):
    kw = {"reduction": reduction}
    t4 = np.array([1, 0, 4, 2])
    w5 = RNG.uniform(0.5, 2, 5)
    check(lambda m, a, t, **k: F(m).cross_entropy(a, t, **k), x45, t4, **kw)
    check(lambda m, a, t, w, **k: F(m).cross_entropy(a, t, weight=w, label_smoothing=0.1, **k),
          x45, np.array([1, -100, 4, 2]), w5, grad_args=(0,), **kw)
    check(lambda m, a, t, **k: F(m).cross_entropy(a, t, **k), x45, p45 / p45.sum(1, keepdims=True),
          **kw)
    check(lambda m, a, t, **k: F(m).nll_loss(a.log_softmax(1), t, **k), x45, t4, **kw)
    check(lambda m, a, t, w, **k: F(m).nll_loss(a, t, weight=w, ignore_index=2, **k), x45, t4,
          w5, grad_args=(0,), **kw)
    x3 = RNG.standard_normal((2, 5, 3, 2))
    check(lambda m, a, t, **k: F(m).nll_loss(a, t, **k), x3, RNG.integers(0, 5, (2, 3, 2)), **kw)
    check(lambda m, a, t, **k: F(m).binary_cross_entropy(a, t, **k), p45, b45, **kw)
    check(lambda m, a, t, w, **k: F(m).binary_cross_entropy(a, t, weight=w, **k), p45, y45 ** 2 / 9,
          w5, grad_args=(0,), **kw)
    check(lambda m, a, t, **k: F(m).binary_cross_entropy_with_logits(a, t, **k), x45 * 10, b45,
          **kw)
    check(lambda m, a, t, w, pw, **k: F(m).binary_cross_entropy_with_logits(
        a, t, weight=w, pos_weight=pw, **k), x45, p45, p45[0], w5, grad_args=(0, 1), **kw)
    check(lambda m, a, t, **k: F(m).soft_margin_loss(a, t, **k), x45, np.sign(y45),
          grad_args=(0,), **kw)
    check(lambda m, a, t, **k: F(m).multilabel_soft_margin_loss(a, t, **k), x45, b45, **kw)
    check(lambda m, a, t, w, **k: F(m).multilabel_soft_margin_loss(a, t, weight=w, **k), x45, b45,
          w5, grad_args=(0,), **kw)
    check(lambda m, a, t, **k: F(m).multi_margin_loss(a, t, **k), x45, t4, **kw)
    check(lambda m, a, t, w, **k: F(m).multi_margin_loss(a, t, p=2, margin=0.5, weight=w, **k),
          x45, t4, w5, grad_args=(0,), **kw)
    mlt = np.array([[3, 0, -1, 1, 2], [1, 2, 3, -1, -1], [0, -1, 2, 2, 2], [4, 3, 2, 1, 0]])
    check(lambda m, a, t, **k: F(m).multilabel_margin_loss(a, t, **k), x45, mlt, **kw)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_divergence_and_likelihood_losses(reduction):
    kw = {"reduction": reduction}
    lp = np.log(p45 / p45.sum(1, keepdims=True))
    q = p45[::-1].copy()
    check(lambda m, a, t, **k: F(m).kl_div(a, t, **k), lp, q / q.sum(1, keepdims=True),
          **kw) if reduction != "mean" else None
    check(lambda m, a, t, **k: F(m).kl_div(a, t, log_target=True, **k), lp, lp[::-1].copy(), **kw)
    check(lambda m, a, t, **k: F(m).poisson_nll_loss(a, t, **k), x45, np.abs(y45) * 3, **kw)
    check(lambda m, a, t, **k: F(m).poisson_nll_loss(a, t, log_input=False, full=True, **k),
          p45 * 4, np.abs(y45) * 3, **kw)
    check(lambda m, a, t, v, **k: F(m).gaussian_nll_loss(a, t, v, **k), x45, y45, p45, **kw)
    check(lambda m, a, t, v, **k: F(m).gaussian_nll_loss(a, t, v, full=True, **k), x45, y45,
          p45[:, 0].copy(), **kw)
    check(lambda m, a, t, **k: F(m).gaussian_nll_loss(a, t, 0.5, **k), x45, y45, **kw)


def test_kl_div_batchmean_and_mean_warning():
    lp = np.log(p45 / p45.sum(1, keepdims=True))
    q = p45 / p45.sum(1, keepdims=True)
    check(lambda m, a, t: F(m).kl_div(a, t, reduction="batchmean"), lp, q)
    with pytest.warns(UserWarning, match="batchmean"):
        F(ember).kl_div(ember.tensor(lp), ember.tensor(q))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(lambda m, a, t: F(m).kl_div(a, t), lp, q)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_margin_and_embedding_losses(reduction):
    kw = {"reduction": reduction}
    a, b = RNG.standard_normal(4), RNG.standard_normal(4)
    check(lambda m, x, y, t, **k: F(m).margin_ranking_loss(x, y, t, margin=0.3, **k), a, b, sign4,
          **kw)
    check(lambda m, x, t, **k: F(m).hinge_embedding_loss(x, t, margin=0.5, **k), a, sign4, **kw)
    check(lambda m, x, y, t, **k: F(m).cosine_embedding_loss(x, y, t, margin=0.1, **k), x45, y45,
          sign4, **kw)
    check(lambda m, x, y, t, **k: F(m).cosine_embedding_loss(x, y, t, **k), x45[0], y45[0],
          np.array(-1.0), **kw)
    n3 = RNG.standard_normal((4, 5))
    check(lambda m, x, y, z, **k: F(m).triplet_margin_loss(x, y, z, **k), x45, y45, n3, **kw)
    check(lambda m, x, y, z, **k: F(m).triplet_margin_loss(x, y, z, p=1, swap=True, margin=2.0,
                                                           **k), x45, y45, n3, **kw)
    check(lambda m, x, y, z, **k: F(m).triplet_margin_with_distance_loss(
        x, y, z, distance_function=lambda u, v: 1 - F(m).cosine_similarity(u, v), swap=True, **k),
          x45, y45, n3, **kw)
    check(lambda m, x, y, z, **k: F(m).triplet_margin_with_distance_loss(x, y, z, **k),
          x45, y45, n3, **kw)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_ctc_loss_matches_torch(reduction, zero_infinity):
    T, N, C = 12, 3, 5
    logits = RNG.standard_normal((T, N, C))
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = np.array([[1, 2, 2, 3], [4, 1, 0, 0], [2, 0, 0, 0]])
    il = np.array([12, 10, 7])
    tl = np.array([4, 2, 1])
    check(lambda m, x, t, a, b, **k: F(m).ctc_loss(x, t, a, b, **k), lp, targets, il, tl,
          reduction=reduction, zero_infinity=zero_infinity, rtol=1e-6, atol=1e-9)
    # concatenated targets, blank at another index
    flat = np.array([1, 3, 3, 2, 0])
    check(lambda m, x, t, a, b, **k: F(m).ctc_loss(x, t, a, b, blank=4, **k), lp, flat, il,
          np.array([3, 1, 1]), reduction=reduction, rtol=1e-6, atol=1e-9)


def test_ctc_impossible_alignment():
    lp = np.log(np.full((2, 1, 3), 1 / 3))
    t = np.array([[1, 1, 1]])
    for zi in (False, True):
        outs = []
        for m in (torch, ember):
            outs.append(float(F(m).ctc_loss(m.tensor(lp), m.tensor(t), m.tensor([2]),
                                            m.tensor([3]), reduction="sum",
                                            zero_infinity=zi)))
        assert outs[0] == outs[1]


LOSS_MODULES = [
    ("L1Loss", (), {}), ("MSELoss", (), {"reduction": "sum"}), ("SmoothL1Loss", (), {"beta": 0.5}),
    ("HuberLoss", (), {"delta": 2.0}), ("CrossEntropyLoss", (), {"label_smoothing": 0.1}),
    ("NLLLoss", (), {"ignore_index": 1}), ("BCELoss", (), {}), ("BCEWithLogitsLoss", (), {}),
    ("KLDivLoss", (), {"reduction": "batchmean"}), ("PoissonNLLLoss", (), {"full": True}),
    ("GaussianNLLLoss", (), {}), ("CTCLoss", (), {}), ("MarginRankingLoss", (), {"margin": 0.2}),
    ("HingeEmbeddingLoss", (), {}), ("MultiLabelMarginLoss", (), {}),
    ("MultiLabelSoftMarginLoss", (), {}), ("MultiMarginLoss", (), {}), ("SoftMarginLoss", (), {}),
    ("CosineEmbeddingLoss", (), {}), ("TripletMarginLoss", (), {}),
    ("TripletMarginWithDistanceLoss", (), {}),
]


@pytest.mark.parametrize("name,args,kwargs", LOSS_MODULES, ids=[x[0] for x in LOSS_MODULES])
def test_loss_module_reprs_and_state(name, args, kwargs):
    tm = getattr(torch.nn, name)(*args, **kwargs)
    em = getattr(ember.nn, name)(*args, **kwargs)
    assert repr(em) == repr(tm)
    assert em.reduction == tm.reduction
    assert list(em.state_dict()) == list(tm.state_dict())


def test_weighted_loss_modules_forward_and_buffers():
    w5 = RNG.uniform(0.5, 2, 5)
    t4 = np.array([1, 0, 4, 2])
    for name, kw in (("CrossEntropyLoss", {"ignore_index": 4}), ("NLLLoss", {}),
                     ("MultiMarginLoss", {})):
        tm = getattr(torch.nn, name)(weight=torch.tensor(w5), **kw)
        em = getattr(ember.nn, name)(weight=ember.tensor(w5), **kw)
        assert list(em.state_dict()) == list(tm.state_dict()) == ["weight"]
        inp = x45 if name != "NLLLoss" else np.log(p45)
        np.testing.assert_allclose(float(em(ember.tensor(inp), ember.tensor(t4))),
                                   float(tm(torch.tensor(inp), torch.tensor(t4))), rtol=1e-10)
    tm = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(w5))
    em = ember.nn.BCEWithLogitsLoss(pos_weight=ember.tensor(w5))
    assert list(em.state_dict()) == list(tm.state_dict())
    np.testing.assert_allclose(float(em(ember.tensor(x45), ember.tensor(b45))),
                               float(tm(torch.tensor(x45), torch.tensor(b45))), rtol=1e-10)
    em.double()
    assert em.pos_weight.dtype is ember.float64


def test_legacy_size_average_reduce():
    for sa, rd in ((False, None), (None, False), (True, True)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tm = torch.nn.MSELoss(size_average=sa, reduce=rd)
            em = ember.nn.MSELoss(size_average=sa, reduce=rd)
        assert em.reduction == tm.reduction


# ---------------------------------------------------------------------- strictness and errors
def test_strict_shape_mismatch_raises_and_nonstrict_warns():
    inp, tgt = RNG.standard_normal((6, 1)), RNG.standard_normal(6)
    for name in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "soft_margin_loss",
                 "poisson_nll_loss"):
        with pytest.raises(ValueError, match=rf"\[{name}\] input \(6, 1\) and target \(6,\)"):
            getattr(F(ember), name)(ember.tensor(inp), ember.tensor(tgt))
    with pytest.raises(ValueError, match="broadcast to \\(6, 6\\)"):
        ember.nn.MSELoss()(ember.tensor(inp), ember.tensor(tgt))
    ember.set_strict(False)
    try:
        for name in ("mse_loss", "l1_loss", "huber_loss"):
            with pytest.warns(UserWarning, match="different to the input size"):
                e = getattr(F(ember), name)(ember.tensor(inp), ember.tensor(tgt))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = getattr(F(torch), name)(torch.tensor(inp), torch.tensor(tgt))
            np.testing.assert_allclose(float(e), float(t), rtol=1e-12)
    finally:
        ember.set_strict(True)


def test_broadcast_to_input_shape_only_warns():
    with pytest.warns(UserWarning, match="different to the input size"):
        F(ember).mse_loss(ember.ones(3, 4), ember.ones(4))


@pytest.mark.host_only
@pytest.mark.parametrize("case", [
    lambda m: F(m).cross_entropy(m.randn(3, 5), m.tensor([1, 2, 7])),
    lambda m: F(m).cross_entropy(m.randn(3, 5), m.tensor([1, 2])),
    lambda m: F(m).cross_entropy(m.randn(3, 5), m.tensor([1, 2, 3]), reduction="avg"),
    lambda m: F(m).cross_entropy(m.randn(3, 5), m.tensor([1, 2, 3], dtype=m.int32) * 0 + 1.5),
    lambda m: F(m).cross_entropy(m.randn(3, 5), m.tensor([0, 1, 2]), weight=m.ones(4)),
    lambda m: F(m).cross_entropy(m.randn(3, 5), m.randn(3, 5).long() * 0, label_smoothing=1.5),
    lambda m: F(m).nll_loss(m.randn(3, 5), m.tensor([1, 2])),
    lambda m: F(m).nll_loss(m.randn(3, 5), m.tensor([1.0, 2.0, 3.0])),
    lambda m: F(m).nll_loss(m.randn(3, 5, 2), m.zeros(3, 4, dtype=m.int64)),
    lambda m: F(m).binary_cross_entropy(m.rand(3, 1), m.rand(3)),
    lambda m: F(m).binary_cross_entropy(m.tensor([1.5]), m.tensor([1.0])),
    lambda m: F(m).binary_cross_entropy_with_logits(m.rand(3, 1), m.rand(3)),
    lambda m: F(m).smooth_l1_loss(m.ones(2), m.ones(2), beta=-1.0),
    lambda m: F(m).gaussian_nll_loss(m.ones(2, 3), m.ones(2, 3), m.ones(4)),
    lambda m: F(m).gaussian_nll_loss(m.ones(2, 3), m.ones(2, 3), -m.ones(2, 3)),
    lambda m: F(m).multi_margin_loss(m.ones(2, 3), m.tensor([0, 1]), p=3),
    lambda m: F(m).margin_ranking_loss(m.ones(2), m.ones(2), m.ones(2, 1)),
    lambda m: F(m).triplet_margin_loss(m.ones(2, 3), m.ones(2, 3), m.ones(3)),
    lambda m: m.nn.TripletMarginLoss(margin=-1.0),
    lambda m: F(m).l1_loss(m.ones(2), m.ones(2), reduction="bad"),
])
# (on CUDA an out-of-range target is reported asynchronously: tests/test_cuda_kernels.py)
def test_loss_errors_match_torch_types(case):
    types = []
    for m in (torch, ember):
        with pytest.raises(Exception) as info:
            case(m)
        types.append(type(info.value))
        if m is ember:
            assert "numpy" not in str(info.value).lower()
    assert issubclass(types[1], types[0]), types


@pytest.mark.host_only
def test_cross_entropy_error_messages():
    with pytest.raises(IndexError, match=r"\[cross_entropy\] Target 7 is out of bounds"):
        F(ember).cross_entropy(ember.randn(3, 5), ember.tensor([1, 2, 7]))
    with pytest.raises(ValueError, match=r"Expected input batch_size \(3\) to match target "
                                         r"batch_size \(2\)"):
        F(ember).cross_entropy(ember.randn(3, 5), ember.tensor([1, 2]))


def test_cross_entropy_half_and_fused_matches_reference():
    from ember.nn.functional.loss import _cross_entropy_reference
    x = ember.tensor(x45, requires_grad=True)
    t = ember.tensor(np.array([1, -100, 4, 2]))
    w = ember.tensor(RNG.uniform(0.5, 2, 5))
    for kw in ({}, {"weight": w, "label_smoothing": 0.2}, {"reduction": "none"}):
        a = F(ember).cross_entropy(x, t, **kw)
        b = _cross_entropy_reference(x, t, **kw)
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-12)
        ga, = ember.autograd.grad(a.sum(), x)
        gb, = ember.autograd.grad(b.sum(), x)
        np.testing.assert_allclose(ga.numpy(), gb.numpy(), rtol=1e-10, atol=1e-14)
    h = F(ember).cross_entropy(ember.tensor(x45).half(), ember.tensor([1, 0, 4, 2]))
    assert h.dtype is ember.float16
    th = F(torch).cross_entropy(torch.tensor(x45).half(), torch.tensor([1, 0, 4, 2]))
    assert abs(float(h) - float(th)) < 2e-3
    # all targets ignored: nan for 'mean', as torch
    nan_e = F(ember).cross_entropy(ember.randn(2, 3), ember.tensor([-100, -100]))
    nan_t = F(torch).cross_entropy(torch.randn(2, 3), torch.tensor([-100, -100]))
    assert np.isnan(float(nan_e)) and np.isnan(float(nan_t))


# ---------------------------------------------------------------------- adaptive / linear CE
def _copy(tm, em):
    em.load_state_dict({k: ember.tensor(v.detach().numpy()) for k, v in tm.state_dict().items()})


def test_adaptive_log_softmax_matches_torch():
    tm = torch.nn.AdaptiveLogSoftmaxWithLoss(16, 20, [5, 10], head_bias=True).double()
    em = ember.nn.AdaptiveLogSoftmaxWithLoss(16, 20, [5, 10], head_bias=True).double()
    assert repr(em) == repr(tm) and list(em.state_dict()) == list(tm.state_dict())
    _copy(tm, em)
    x = RNG.standard_normal((6, 16))
    tg = np.array([0, 7, 12, 19, 3, 9])
    tx, ex = torch.tensor(x, requires_grad=True), ember.tensor(x, requires_grad=True)
    (to, tl), (eo, el) = tm(tx, torch.tensor(tg)), em(ex, ember.tensor(tg))
    np.testing.assert_allclose(eo.detach().numpy(), to.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(float(el), float(tl.detach()), rtol=1e-12)
    tl.backward()
    el.backward()
    np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(em.log_prob(ex).detach().numpy(), tm.log_prob(tx).detach().numpy(),
                               rtol=1e-12)
    assert em.predict(ex).tolist() == tm.predict(tx).tolist()
    with pytest.raises(ValueError):
        ember.nn.AdaptiveLogSoftmaxWithLoss(16, 20, [10, 5])
    with pytest.raises(RuntimeError, match="Target values"):
        em(ex, ember.tensor([0, 1, 2, 3, 4, 25]))


# nn.LinearCrossEntropyLoss is new in torch 2.13 (the GPU machine has 2.11)
needs_linear_xent = pytest.mark.skipif(not hasattr(torch.nn, "LinearCrossEntropyLoss"),
                                       reason="this torch has no nn.LinearCrossEntropyLoss")


@needs_linear_xent
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("chunked", [False, True])
def test_linear_cross_entropy_matches_torch(reduction, chunked):
    def opts(m):
        return m.nn.LinearCrossEntropyOptions(batch_chunk_size=3) if chunked else None
    tm = torch.nn.LinearCrossEntropyLoss(6, 10, bias=True, reduction=reduction,
                                         options=opts(torch)).double()
    em = ember.nn.LinearCrossEntropyLoss(6, 10, bias=True, reduction=reduction,
                                         options=opts(ember)).double()
    assert repr(em) == repr(tm) and list(em.state_dict()) == list(tm.state_dict())
    _copy(tm, em)
    x = RNG.standard_normal((7, 6))
    tg = np.array([0, 7, -100, 9, 3, 9, 1])
    tx, ex = torch.tensor(x, requires_grad=True), ember.tensor(x, requires_grad=True)
    tl, el = tm(tx, torch.tensor(tg)), em(ex, ember.tensor(tg))
    np.testing.assert_allclose(el.detach().numpy(), tl.detach().numpy(), rtol=1e-12)
    tl.sum().backward()
    el.sum().backward()
    np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(em.linear.weight.grad.numpy(), tm.linear.weight.grad.numpy(),
                               rtol=1e-10, atol=1e-14)


@needs_linear_xent
def test_linear_cross_entropy_kdim_and_errors():
    tm = torch.nn.LinearCrossEntropyLoss(5, 4, out_features=(3,)).double()
    em = ember.nn.LinearCrossEntropyLoss(5, 4, out_features=(3,)).double()
    _copy(tm, em)
    x = RNG.standard_normal((2, 5))
    tg = RNG.integers(0, 4, (2, 3))
    np.testing.assert_allclose(float(em(ember.tensor(x), ember.tensor(tg))),
                               float(tm(torch.tensor(x), torch.tensor(tg))), rtol=1e-12)
    with pytest.raises(RuntimeError, match="in_features"):
        F(ember).linear_cross_entropy(ember.randn(2, 5), ember.randn(4, 6), ember.tensor([0, 1]))
    with pytest.raises(ValueError):
        ember.nn.LinearCrossEntropyOptions(acc_policy="fast")


@pytest.mark.parametrize("case", ["all_ignored", "all_ignored_smoothing", "zero_weights",
                                  "zero_weights_some_ignored"])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4)])
def test_cross_entropy_zero_total_weight_gradients_match_torch(case, shape):
    # mean over a total weight of 0: the loss is NaN; ignored positions get a gradient of
    # exactly 0, counted targets of weight 0 get NaN (torch's nll_loss backward)
    x = RNG.standard_normal(shape).astype(np.float32)
    tshape = (shape[0],) + shape[2:]
    if case.startswith("all_ignored"):
        y = np.full(tshape, -100)
    else:
        y = RNG.integers(0, 3, tshape)
        if case.endswith("some_ignored"):
            y.reshape(-1)[::2] = -100
    grads = []
    for lib in (torch, ember):
        kw = {"label_smoothing": 0.2} if case.endswith("smoothing") else {}
        if case.startswith("zero_weights"):
            kw["weight"] = lib.zeros(3)
        xi = lib.tensor(x, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lib.nn.functional.cross_entropy(xi, lib.tensor(y), **kw).backward()
        grads.append(np.asarray(xi.grad.detach().numpy()))
    np.testing.assert_array_equal(np.isnan(grads[1]), np.isnan(grads[0]))
    np.testing.assert_allclose(np.nan_to_num(grads[1]), np.nan_to_num(grads[0]), atol=1e-6)


def test_multilabel_margin_loss_counts_repeated_labels():
    # a label listed twice counts twice (torch loops over the listed labels)
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    t = [[0, 0, 2, -1, 1], [4, 4, 4, 4, 4], [1, 3, -1, 0, 0]]
    for reduction in ("none", "mean", "sum"):
        xe = ember.tensor(x, requires_grad=True)
        xt = torch.tensor(x, requires_grad=True)
        le = ember.nn.functional.multilabel_margin_loss(xe, ember.tensor(t), reduction=reduction)
        lt = torch.nn.functional.multilabel_margin_loss(xt, torch.tensor(t), reduction=reduction)
        np.testing.assert_allclose(le.detach().numpy(), lt.detach().numpy(), rtol=1e-5)
        le.sum().backward()
        lt.sum().backward()
        np.testing.assert_allclose(xe.grad.numpy(), xt.grad.numpy(), rtol=1e-5, atol=1e-6)
