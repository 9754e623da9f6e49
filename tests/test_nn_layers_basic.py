"""Linear-family, flatten, activation and dropout layers (and their F.* forms) against torch:
forward values, input and parameter gradients, reprs, default initialisation, errors."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")
enn = ember.nn
EF = ember.nn.functional
TF = torch.nn.functional
RNG = np.random.default_rng(0)


def to_ember(t):
    return ember.tensor(t.detach().numpy())


def copy_weights(tm, em):
    em.load_state_dict({k: to_ember(v) for k, v in tm.state_dict().items()})


def compare(tm, em, *arrays, atol=1e-10, rtol=1e-8, train=True, out_grad=True):
    """Forward both modules (float64) on the same inputs; compare outputs, input grads and
    parameter grads."""
    tm.double().train(train)
    em.double().train(train)
    copy_weights(tm, em)
    tx = [torch.tensor(a, requires_grad=True) for a in arrays]
    ex = [ember.tensor(a, requires_grad=True) for a in arrays]
    to, eo = tm(*tx), em(*ex)
    np.testing.assert_allclose(eo.detach().numpy(), to.detach().numpy(), atol=atol, rtol=rtol)
    if not out_grad:
        return
    w = RNG.standard_normal(tuple(to.shape))
    (to * torch.tensor(w)).sum().backward()
    (eo * ember.tensor(w)).sum().backward()
    for a, b in zip(ex, tx):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=atol, rtol=rtol)
    tg = {n: p.grad for n, p in tm.named_parameters()}
    for n, p in em.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), tg[n].numpy(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4), (4,)])
def test_linear_matches_torch(bias, shape):
    compare(torch.nn.Linear(4, 3, bias=bias), enn.Linear(4, 3, bias=bias),
            RNG.standard_normal(shape))


def test_bilinear_identity_flatten_unflatten():
    compare(torch.nn.Bilinear(3, 4, 2), enn.Bilinear(3, 4, 2), RNG.standard_normal((5, 3)),
            RNG.standard_normal((5, 4)))
    compare(torch.nn.Identity(3, k=1), enn.Identity(3, k=1), RNG.standard_normal((2, 2)))
    compare(torch.nn.Flatten(), enn.Flatten(), RNG.standard_normal((2, 3, 4)))
    compare(torch.nn.Flatten(0, 1), enn.Flatten(0, 1), RNG.standard_normal((2, 3, 4)))
    compare(torch.nn.Unflatten(1, (2, 3)), enn.Unflatten(1, (2, 3)),
            RNG.standard_normal((4, 6)))


@pytest.mark.parametrize("pair", [
    ("Linear", (3, 4)), ("Linear", (3, 4, False)), ("Bilinear", (2, 3, 4)), ("Identity", ()),
    ("Flatten", ()), ("Flatten", (0, 2)), ("Unflatten", (1, (2, 5))), ("LazyLinear", (3,)),
])
def test_layer_reprs_match_torch(pair):
    name, args = pair
    assert repr(getattr(enn, name)(*args)) == repr(getattr(torch.nn, name)(*args))


def test_linear_default_init_distribution():
    ember.manual_seed(0)
    lin = enn.Linear(400, 300)
    bound = 1 / math.sqrt(400)
    w = lin.weight.detach().numpy()
    b = lin.bias.detach().numpy()
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    # U(-a, a) has std a / sqrt(3)
    assert abs(w.std() - bound / math.sqrt(3)) < 0.01 * bound
    assert abs(w.mean()) < 0.01 * bound
    bil = enn.Bilinear(10, 20, 30)
    assert np.abs(bil.weight.detach().numpy()).max() <= 1 / math.sqrt(10)


def test_linear_errors():
    with pytest.raises(RuntimeError, match=r"\[Linear\] expected input \(\*, 4\), got \(2, 5\)"):
        enn.Linear(4, 3)(ember.randn(2, 5))
    with pytest.raises(RuntimeError):
        torch.nn.Linear(4, 3)(torch.randn(2, 5))
    with pytest.raises(RuntimeError, match=r"\[linear\].*\(2, 5\)"):
        EF.linear(ember.randn(2, 5), ember.randn(3, 4))
    with pytest.raises(RuntimeError, match="Bilinear"):
        enn.Bilinear(2, 3, 4)(ember.randn(5, 2), ember.randn(5, 4))


def test_linear_dtypes_and_devices_args():
    lin = enn.Linear(3, 2, dtype=ember.float64)
    assert lin.weight.dtype is ember.float64
    assert lin(ember.randn(2, 3, dtype=ember.float64)).dtype is ember.float64
    half = enn.Linear(3, 2).half()
    assert half(ember.randn(2, 3).half()).dtype is ember.float16


# ---------------------------------------------------------------------- activations
ACTS = [
    ("ReLU", (), {}), ("ReLU6", (), {}), ("LeakyReLU", (0.2,), {}), ("ELU", (0.7,), {}),
    ("SELU", (), {}), ("CELU", (1.3,), {}), ("GELU", (), {}), ("GELU", (), {"approximate": "tanh"}),
    ("SiLU", (), {}), ("Mish", (), {}), ("Sigmoid", (), {}), ("Tanh", (), {}),
    ("Hardtanh", (-0.5, 0.8), {}), ("Hardsigmoid", (), {}), ("Hardswish", (), {}),
    ("Softplus", (2.0, 5.0), {}), ("Softsign", (), {}), ("Softshrink", (0.3,), {}),
    ("Hardshrink", (0.3,), {}), ("Tanhshrink", (), {}), ("Threshold", (0.1, -2.0), {}),
    ("LogSigmoid", (), {}), ("Softmax", (1,), {}), ("LogSoftmax", (1,), {}),
    ("Softmin", (0,), {}), ("GLU", (1,), {}), ("PReLU", (), {}), ("PReLU", (4,), {}),
    ("RReLU", (0.1, 0.3), {}),
]


@pytest.mark.parametrize("name,args,kwargs", ACTS, ids=[f"{a[0]}{a[1]}{a[2]}" for a in ACTS])
def test_activation_modules_match_torch(name, args, kwargs):
    x = RNG.uniform(-4, 4, (3, 4, 2))
    x[0, 0, 0] = 0.3  # near thresholds but not on them (subgradients differ)
    tm = getattr(torch.nn, name)(*args, **kwargs)
    em = getattr(enn, name)(*args, **kwargs)
    assert repr(em) == repr(tm)
    # torch rounds some activation constants (CELU 1/alpha) through float32 even in float64
    compare(tm, em, x, train=name != "RReLU", atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name,args", [("ReLU", ()), ("LeakyReLU", (0.1,)), ("ELU", ()),
                                       ("Hardtanh", ()), ("ReLU6", ()), ("SiLU", ()),
                                       ("Hardswish", ()), ("Mish", ()), ("Threshold", (0.2, 1.0)),
                                       ("SELU", ()), ("CELU", ()), ("Hardsigmoid", ())])
def test_inplace_activations_match_torch(name, args):
    x = RNG.uniform(-3, 3, (4, 5))
    outs = []
    for m, nn in ((torch, torch.nn), (ember, enn)):
        layer = getattr(nn, name)(*args, inplace=True)
        assert "inplace=True" in repr(layer) or name in ("Hardswish", "Hardsigmoid")
        leaf = m.tensor(x, requires_grad=True)
        h = leaf * 1.0
        out = layer(h)
        assert out is h
        (out * out).sum().backward()
        outs.append((out.detach().numpy().copy(), leaf.grad.numpy().copy()))
    np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(outs[1][1], outs[0][1], rtol=1e-5, atol=1e-6)


def test_rrelu_training_is_random_in_range():
    x = -ember.ones(1000)
    y = enn.RReLU(0.1, 0.3).train()(x).numpy()
    assert (-y >= 0.1).all() and (-y <= 0.3).all() and y.std() > 0.03
    assert np.allclose(enn.RReLU(0.1, 0.3).eval()(x).numpy(), -0.2)


@pytest.mark.parametrize("fn,kw", [
    ("relu", {}), ("relu6", {}), ("elu", {"alpha": 0.5}), ("selu", {}), ("celu", {"alpha": 2.0}),
    ("leaky_relu", {"negative_slope": 0.3}), ("gelu", {}), ("gelu", {"approximate": "tanh"}),
    ("logsigmoid", {}), ("hardshrink", {"lambd": 0.2}), ("tanhshrink", {}), ("softsign", {}),
    ("softplus", {"beta": 0.5, "threshold": 3}), ("softshrink", {}), ("tanh", {}),
    ("sigmoid", {}), ("hardsigmoid", {}), ("silu", {}), ("mish", {}), ("hardswish", {}),
    ("hardtanh", {"min_val": -2.0, "max_val": 0.5}), ("softmax", {"dim": 0}),
    ("softmin", {"dim": 1}), ("log_softmax", {"dim": -1}), ("glu", {"dim": 0}),
    ("softmax", {"dim": 1, "dtype": "float64"}), ("threshold", {"threshold": 0.5, "value": 9.0}),
    ("normalize", {}), ("normalize", {"p": 1.0, "dim": 0}),
])
def test_functional_activations_match_torch(fn, kw):
    x = RNG.uniform(-5, 5, (4, 6)).astype(np.float32)
    tkw = {k: getattr(torch, v) if k == "dtype" else v for k, v in kw.items()}
    ekw = {k: getattr(ember, v) if k == "dtype" else v for k, v in kw.items()}
    tx = torch.tensor(x, requires_grad=True)
    ex = ember.tensor(x, requires_grad=True)
    to = getattr(TF, fn)(tx, **tkw)
    eo = getattr(EF, fn)(ex, **ekw)
    assert str(eo.dtype).split(".")[-1] == str(to.dtype).split(".")[-1]
    np.testing.assert_allclose(eo.detach().numpy(), to.detach().numpy(), rtol=2e-6, atol=2e-6)
    to.sum().backward() if fn not in ("softmax", "log_softmax", "softmin") else \
        (to * torch.tensor(np.arange(to.numel()).reshape(to.shape), dtype=to.dtype)).sum().backward()
    if fn in ("softmax", "log_softmax", "softmin"):
        (eo * ember.tensor(np.arange(eo.numel()).reshape(tuple(eo.shape)),
                           dtype=eo.dtype)).sum().backward()
    else:
        eo.sum().backward()
    np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy(), rtol=2e-5, atol=2e-5)


def test_half_activations_keep_dtype():
    for fn in ("gelu", "silu", "relu", "elu", "softplus"):
        x = ember.randn(8).half()
        assert getattr(EF, fn)(x).dtype is ember.float16


def test_softmax_implicit_dim_warns_like_torch():
    x = np.ones((2, 3), np.float32)
    with pytest.warns(UserWarning, match="Implicit dimension"):
        e = EF.softmax(ember.tensor(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = TF.softmax(torch.tensor(x))
    np.testing.assert_allclose(e.numpy(), t.numpy())


def test_distance_functions_match_torch():
    a = RNG.standard_normal((5, 4))
    b = RNG.standard_normal((5, 4))
    c = RNG.standard_normal((4,))
    cases = [
        (lambda m, x, y: m.nn.functional.cosine_similarity(x, y), (a, b)),
        (lambda m, x, y: m.nn.functional.cosine_similarity(x, y, dim=0), (a, b)),
        (lambda m, x, y: m.nn.functional.cosine_similarity(x, y, dim=-1), (a, c)),
        (lambda m, x, y: m.nn.functional.pairwise_distance(x, y), (a, b)),
        (lambda m, x, y: m.nn.functional.pairwise_distance(x, y, p=1.0, keepdim=True), (a, b)),
        (lambda m, x, y: m.nn.functional.pairwise_distance(x, y, p=3.0), (a, c)),
        (lambda m, x: m.nn.functional.pdist(x), (a,)),
        (lambda m, x: m.nn.functional.pdist(x, p=1), (a,)),
        (lambda m, x, y: m.nn.functional.bilinear(x, y, m.ones(2, 4, 4, dtype=m.float64)),
         (a, b)),
    ]
    for fn, arrs in cases:
        tx = [torch.tensor(v, requires_grad=True) for v in arrs]
        ex = [ember.tensor(v, requires_grad=True) for v in arrs]
        to, eo = fn(torch, *tx), fn(ember, *ex)
        assert tuple(eo.shape) == tuple(to.shape)
        np.testing.assert_allclose(eo.detach().numpy(), to.detach().numpy(), rtol=1e-10)
        to.sum().backward()
        eo.sum().backward()
        for e, t in zip(ex, tx):
            np.testing.assert_allclose(e.grad.numpy(), t.grad.numpy(), rtol=1e-8, atol=1e-12)


def test_one_hot_matches_torch():
    t = np.array([[0, 2], [1, 3]])
    for n in (-1, 5):
        assert EF.one_hot(ember.tensor(t), n).tolist() == TF.one_hot(torch.tensor(t), n).tolist()
    assert EF.one_hot(ember.tensor(t)).dtype is ember.int64
    for bad in (np.array([0, 5]), np.array([-1, 0])):
        with pytest.raises(RuntimeError):
            TF.one_hot(torch.tensor(bad), 5)
        with pytest.raises(RuntimeError, match=r"\[one_hot\]"):
            EF.one_hot(ember.tensor(bad), 5)


def test_gumbel_softmax():
    ember.manual_seed(1)
    logits = ember.randn(64, 5, requires_grad=True)
    soft = EF.gumbel_softmax(logits, tau=0.5)
    np.testing.assert_allclose(soft.sum(-1).detach().numpy(), 1.0, rtol=1e-5)
    hard = EF.gumbel_softmax(logits, hard=True)
    h = hard.detach().numpy()
    assert set(np.unique(h)) <= {0.0, 1.0} and (h.sum(-1) == 1).all()
    (hard * ember.arange(5.0)).sum().backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0


def test_activation_errors():
    with pytest.raises(RuntimeError, match="gelu"):
        EF.gelu(ember.randn(3), approximate="fast")
    with pytest.raises(RuntimeError, match="glu"):
        EF.glu(ember.randn(3))
    with pytest.raises(RuntimeError):
        TF.glu(torch.randn(3))
    with pytest.raises(RuntimeError, match="PReLU"):
        enn.PReLU(3)(ember.randn(2, 4))
    with pytest.raises(ValueError):
        enn.Hardtanh(1.0, -1.0)


# ---------------------------------------------------------------------- dropout
@pytest.mark.parametrize("name,shape", [("Dropout", (2000,)), ("Dropout1d", (40, 50, 3)),
                                        ("Dropout2d", (40, 50, 2, 2)),
                                        ("Dropout3d", (40, 50, 1, 2, 2)),
                                        ("AlphaDropout", (4000,)),
                                        ("FeatureAlphaDropout", (40, 50, 3))])
def test_dropout_train_eval(name, shape):
    p = 0.3
    layer = getattr(enn, name)(p)
    assert repr(layer) == repr(getattr(torch.nn, name)(p))
    x = ember.ones(shape)
    layer.eval()
    assert layer(x) is x
    layer.train()
    y = layer(x).numpy()
    if "Alpha" in name:
        # mean and variance of a unit-variance input are preserved
        z = layer(ember.randn(shape)).numpy()
        assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1
        return
    vals = np.unique(y)
    assert np.all(np.isclose(vals, 0.0) | np.isclose(vals, 1 / (1 - p)))
    assert abs((y == 0).mean() - p) < 0.05
    if len(shape) > 1:
        # whole channels share one draw
        per_channel = y.reshape(shape[0], shape[1], -1)
        assert (per_channel.min(-1) == per_channel.max(-1)).all()


def test_dropout_seed_reproducible_and_grad():
    ember.manual_seed(3)
    a = EF.dropout(ember.ones(100), 0.5).numpy().copy()
    ember.manual_seed(3)
    b = EF.dropout(ember.ones(100), 0.5).numpy()
    assert (a == b).all()
    x = ember.ones(100, requires_grad=True)
    y = EF.dropout(x, 0.5)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), y.detach().numpy())
    assert EF.dropout(ember.ones(5), 1.0).tolist() == [0.0] * 5
    assert EF.dropout(ember.ones(5), 0.5, training=False).tolist() == [1.0] * 5
    h = ember.ones(10)
    assert EF.dropout(h, 0.5, inplace=True) is h


def test_dropout_errors_match_torch():
    for m in (torch, ember):
        with pytest.raises(ValueError):
            m.nn.Dropout(1.5)
        with pytest.raises(ValueError):
            m.nn.functional.dropout(m.ones(2), -0.1)
    with pytest.raises(ValueError, match=r"\[dropout\] dropout probability"):
        EF.dropout(ember.ones(2), 2.0)
    with pytest.warns(UserWarning, match="3D input to dropout2d"):
        EF.dropout2d(ember.ones(2, 3, 4))
