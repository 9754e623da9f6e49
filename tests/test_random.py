"""Random factories and generators: dtypes, shapes and errors against torch; reproducibility,
state round trips and distribution moments (ember's streams differ from torch's)."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from parity import check

torch = pytest.importorskip("torch")

META = {
    "rand": lambda m: m.rand(2, 3),
    "rand f64": lambda m: m.rand(2, dtype=m.float64),
    "rand int": lambda m: m.rand(2, dtype=m.int64),
    "randn tuple": lambda m: m.randn((4,)),
    "randint": lambda m: m.randint(0, 5, (3, 2)),
    "randint high only": lambda m: m.randint(5, (3,)),
    "randint bad": lambda m: m.randint(5, 5, (3,)),
    "randint dtype": lambda m: m.randint(0, 5, (3,), dtype=m.int32),
    "randperm": lambda m: m.randperm(6),
    "normal scalar": lambda m: m.normal(0.0, 1.0, size=(2, 2)),
    "normal tensor": lambda m: m.normal(m.zeros(3), m.ones(3)),
    "normal neg std": lambda m: m.normal(0.0, -1.0, size=(2,)),
    "bernoulli": lambda m: m.bernoulli(m.full((4,), 0.5)),
    "bernoulli bad p": lambda m: m.bernoulli(m.full((4,), 1.5)),
    "multinomial": lambda m: m.multinomial(m.tensor([0.2, 0.8]), 4, replacement=True),
    "multinomial too many": lambda m: m.multinomial(m.tensor([0.2, 0.8]), 3),
    "rand_like": lambda m: m.rand_like(m.zeros(2, dtype=m.float64)),
    "randn_like int": lambda m: m.randn_like(m.zeros(2, dtype=m.int64)),
    "uniform_": lambda m: m.zeros(3).uniform_(2, 3),
    "normal_ leaf": lambda m: m.zeros(3, requires_grad=True).normal_(),
}


@pytest.mark.parametrize("name", sorted(META))
def test_dtype_shape_and_errors_match_torch(name):
    def meta(m):
        out = META[name](m)
        return str(out.dtype).split(".")[-1], tuple(out.shape)
    check(meta, torch, ember)


def test_manual_seed_and_generators_reproduce():
    ember.manual_seed(123)
    a = ember.randn(5)
    ember.manual_seed(123)
    assert ember.equal(a, ember.randn(5)) if hasattr(ember, "equal") else \
        np.array_equal(a.numpy(), ember.randn(5).numpy())
    g1 = ember.Generator().manual_seed(7)
    g2 = ember.Generator().manual_seed(7)
    np.testing.assert_array_equal(ember.rand(4, generator=g1).numpy(),
                                  ember.rand(4, generator=g2).numpy())
    state = ember.get_rng_state()
    assert state.dtype is ember.uint8
    x = ember.rand(3)
    ember.set_rng_state(state)
    np.testing.assert_array_equal(x.numpy(), ember.rand(3).numpy())
    s = g1.get_state()
    y = ember.randint(0, 100, (5,), generator=g1)
    g1.set_state(s)
    np.testing.assert_array_equal(y.numpy(), ember.randint(0, 100, (5,), generator=g1).numpy())
    assert g1.initial_seed() == 7 and isinstance(ember.seed(), int)


def test_rng_state_rejects_code():
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    bad = ember.tensor(list(pickle.dumps((1, Evil()))), dtype=ember.uint8)
    with pytest.raises(pickle.UnpicklingError):
        ember.set_rng_state(bad)


def test_distribution_moments():
    ember.manual_seed(0)
    n = 200_000
    u = ember.rand(n, dtype=ember.float64).numpy()
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002 and u.min() >= 0
    z = ember.randn(n, dtype=ember.float64).numpy()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    r = ember.randint(3, 7, (n,)).numpy()
    assert set(np.unique(r)) == {3, 4, 5, 6}
    p = ember.randperm(1000).numpy()
    assert sorted(p.tolist()) == list(range(1000))
    b = ember.bernoulli(ember.full((n,), 0.3, dtype=ember.float64)).numpy()
    assert abs(b.mean() - 0.3) < 0.005
    counts = np.bincount(ember.multinomial(ember.tensor([0.1, 0.3, 0.6]), n,
                                           replacement=True).numpy(), minlength=3) / n
    np.testing.assert_allclose(counts, [0.1, 0.3, 0.6], atol=0.01)
    no_rep = ember.multinomial(ember.tensor([0.0, 1.0, 1.0, 1.0]), 3).numpy()
    assert sorted(no_rep.tolist()) == [1, 2, 3]
    nm = ember.normal(ember.tensor([10.0] * n), ember.tensor([2.0] * n)).numpy()
    assert abs(nm.mean() - 10) < 0.05 and abs(nm.std() - 2) < 0.05
