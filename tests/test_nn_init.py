"""nn.init against torch: deterministic initialisers value for value, random ones by their
distribution (moments and bounds on large tensors), gains, fans and errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")
einit = ember.nn.init
tinit = torch.nn.init


@pytest.mark.parametrize("args", [("linear",), ("conv2d",), ("sigmoid",), ("tanh",), ("relu",),
                                  ("leaky_relu",), ("leaky_relu", 0.2), ("selu",)])
def test_calculate_gain_matches_torch(args):
    assert einit.calculate_gain(*args) == tinit.calculate_gain(*args)


def test_calculate_gain_errors():
    for m in (einit, tinit):
        with pytest.raises(ValueError):
            m.calculate_gain("swish")
        with pytest.raises(ValueError):
            m.calculate_gain("leaky_relu", "x")


def test_deterministic_initialisers_match_torch():
    cases = [
        (lambda i, t: i.constant_(t, 0.25), (3, 4)),
        (lambda i, t: i.ones_(t), (2, 5)),
        (lambda i, t: i.zeros_(t), (2, 5)),
        (lambda i, t: i.eye_(t), (3, 5)),
        (lambda i, t: i.dirac_(t), (4, 3, 3)),
        (lambda i, t: i.dirac_(t), (6, 4, 3, 3)),
        (lambda i, t: i.dirac_(t, groups=2), (6, 2, 3, 3)),
        (lambda i, t: i.dirac_(t), (2, 2, 3, 3, 3)),
    ]
    for fn, shape in cases:
        e = fn(einit, ember.empty(shape))
        t = fn(tinit, torch.empty(shape))
        np.testing.assert_array_equal(e.numpy(), t.numpy())


def _moments(t):
    a = t.detach().numpy().astype(np.float64)
    return a.mean(), a.std(), a.min(), a.max()


@pytest.mark.parametrize("name,kw,shape", [
    ("uniform_", {"a": -0.5, "b": 2.0}, (200, 300)),
    ("normal_", {"mean": 1.0, "std": 0.3}, (200, 300)),
    ("trunc_normal_", {"mean": 0.2, "std": 1.0, "a": -1.0, "b": 1.5}, (200, 300)),
    ("xavier_uniform_", {"gain": 2.0}, (200, 300)),
    ("xavier_normal_", {}, (200, 300)),
    ("kaiming_uniform_", {"a": math.sqrt(5)}, (200, 300)),
    ("kaiming_uniform_", {"mode": "fan_out", "nonlinearity": "relu"}, (64, 32, 3, 3)),
    ("kaiming_normal_", {}, (200, 300)),
    ("kaiming_normal_", {"mode": "fan_out", "nonlinearity": "relu"}, (64, 32, 3, 3)),
])
def test_random_initialisers_have_torch_distribution(name, kw, shape):
    ember.manual_seed(0)
    torch.manual_seed(0)
    e = getattr(einit, name)(ember.empty(shape), **kw)
    t = getattr(tinit, name)(torch.empty(shape), **kw)
    em, es, emin, emax = _moments(e)
    tm, ts, tmin, tmax = _moments(t)
    assert abs(em - tm) < 0.02 * max(ts, 1e-3) + 0.01 * abs(tm) + 5 * ts / math.sqrt(e.numel())
    assert abs(es - ts) < 0.03 * ts
    if name in ("uniform_", "xavier_uniform_", "kaiming_uniform_", "trunc_normal_"):
        # same support: bounds agree to within the sampling gap at this size
        assert emin >= tmin - 0.01 * ts and emax <= tmax + 0.01 * ts
        assert abs(emin - tmin) < 0.02 * ts and abs(emax - tmax) < 0.02 * ts


def test_initialisers_work_on_parameters_and_return_tensor():
    p = ember.nn.Parameter(ember.empty(4, 4))
    out = einit.normal_(p)
    assert out is p and p.requires_grad and p.grad_fn is None
    einit.xavier_uniform_(p)
    einit.orthogonal_(p)
    einit.kaiming_normal_(p)


@pytest.mark.parametrize("shape", [(5, 5), (3, 7), (7, 3), (4, 2, 3)])
def test_orthogonal_is_orthogonal(shape):
    t = einit.orthogonal_(ember.empty(shape), gain=2.0)
    a = t.numpy().reshape(shape[0], -1).astype(np.float64)
    if a.shape[0] <= a.shape[1]:
        np.testing.assert_allclose(a @ a.T, 4 * np.eye(a.shape[0]), atol=1e-5)
    else:
        np.testing.assert_allclose(a.T @ a, 4 * np.eye(a.shape[1]), atol=1e-5)


def test_sparse_zeroes_fraction_per_column():
    t = einit.sparse_(ember.empty(20, 6), sparsity=0.3, std=0.5)
    zeros = (t.numpy() == 0).sum(0)
    assert (zeros == math.ceil(0.3 * 20)).all()


def test_fans_and_errors_match_torch():
    for shape in ((3, 4), (8, 4, 3, 3), (2, 5, 7)):
        assert einit._calculate_fan_in_and_fan_out(ember.empty(shape)) == \
            tinit._calculate_fan_in_and_fan_out(torch.empty(shape))
    for fn in (lambda i, m: i.xavier_uniform_(m.empty(3)),
               lambda i, m: i.eye_(m.empty(2, 2, 2)),
               lambda i, m: i.dirac_(m.empty(2, 2)),
               lambda i, m: i.orthogonal_(m.empty(3)),
               lambda i, m: i.sparse_(m.empty(3), 0.1),
               lambda i, m: i.kaiming_uniform_(m.empty(3, 3), mode="fan_avg")):
        with pytest.raises(ValueError):
            fn(tinit, torch)
        with pytest.raises(ValueError):
            fn(einit, ember)


def test_deprecated_aliases_warn():
    with pytest.warns(FutureWarning):
        einit.normal(ember.empty(2))


@pytest.mark.parametrize("name,args", [("Linear", (300, 200)), ("Bilinear", (30, 20, 40)),
                                       ("PReLU", (3,))])
def test_layer_default_init_matches_torch_distribution(name, args):
    ember.manual_seed(0)
    torch.manual_seed(0)
    em = getattr(ember.nn, name)(*args)
    tm = getattr(torch.nn, name)(*args)
    for (n, ep), (_, tp) in zip(em.named_parameters(), tm.named_parameters()):
        _, es, emin, emax = _moments(ep)
        _, ts, tmin, tmax = _moments(tp)
        assert abs(es - ts) <= 0.1 * ts + 1e-12, n
        assert emin >= tmin - 0.1 * (ts + 1e-12) and emax <= tmax + 0.1 * (ts + 1e-12), n
