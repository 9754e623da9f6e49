"""Max pooling's numba kernels (4-element windows, and the gradient's scatter) against
torch's max_pool, values, indices and gradients, on both CPU paths (``kernel_path``), with a
check of which path ran."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.backend import cpu_pool_kernels

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

# (functional name, input shape, kwargs, whether the 4-element kernel applies)
CASES = [
    ("max_pool2d", (64, 6, 28, 28), dict(kernel_size=2), True),           # LeNet pool1
    ("max_pool2d", (3, 4, 9, 7), dict(kernel_size=2, ceil_mode=True), True),
    ("max_pool2d", (3, 4, 9, 7), dict(kernel_size=2), True),  # odd sizes, windows inside
    ("max_pool2d", (2, 3, 8, 8), dict(kernel_size=2, stride=1, padding=1), True),  # overlap
    ("max_pool2d", (2, 3, 9, 9), dict(kernel_size=2, dilation=2, stride=2), True),
    ("max_pool1d", (2, 5, 17), dict(kernel_size=4, stride=3, padding=2), True),
    ("max_pool3d", (2, 2, 3, 6, 6), dict(kernel_size=(1, 2, 2)), True),
    ("max_pool2d", (2, 3, 9, 9), dict(kernel_size=3, stride=2), False),   # 9 elements
]


def _special(x: np.ndarray) -> np.ndarray:
    """Ties, NaN (one and several in a window), -inf and +inf at fixed places."""
    flat = x.reshape(-1)
    flat[:8] = 1.0
    flat[9] = np.nan
    flat[11] = np.nan
    flat[12] = np.nan
    flat[20:24] = -np.inf
    flat[30] = np.inf
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{sorted(c[2].items())}")
def test_max_pool_matches_torch(case, dtype, kernel_path, monkeypatch) -> None:
    name, shape, kw, fast = case
    used: list = []
    for fn_name in ("max_pool_planes", "pool_scatter", "planes_2x2"):
        fn = getattr(cpu_pool_kernels, fn_name)

        def spy(*a, _fn=fn, _name=fn_name):
            out = _fn(*a)
            if out is not None:
                used.append(_name)
            return out
        monkeypatch.setattr(cpu_pool_kernels, fn_name, spy)
    rng = np.random.default_rng(0)
    x = _special(rng.standard_normal(shape).astype(dtype))
    ex = ember.tensor(x, requires_grad=True)
    tx = torch.tensor(x, requires_grad=True)
    ey, ei = getattr(ember.nn.functional, name)(ex, return_indices=True, **kw)
    ty, ti = getattr(torch.nn.functional, name)(tx, return_indices=True, **kw)
    np.testing.assert_array_equal(ey.detach().numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(ei.numpy(), ti.numpy())
    g = rng.standard_normal(tuple(ty.shape)).astype(dtype)
    ey.backward(ember.tensor(g))
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy(), rtol=1e-6, atol=1e-6)
    on = kernel_path == "numba"
    assert ("max_pool_planes" in used) == (on and fast)
    assert ("pool_scatter" in used) == on
    inside = name == "max_pool2d" and kw.get("stride", 2) == 2 and kw["kernel_size"] == 2 \
        and not kw.get("padding") and not kw.get("ceil_mode") and "dilation" not in kw
    assert ("planes_2x2" in used) == (on and inside)


def test_max_pool_double_backward_matches_torch(kernel_path) -> None:
    """With create_graph the gradient goes through the scatter op (not the kernel), whose
    own gradient is a gather."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 6))
    ex = ember.tensor(x, requires_grad=True)
    tx = torch.tensor(x, requires_grad=True)
    (eg,) = ember.autograd.grad((ember.nn.functional.max_pool2d(ex, 2) ** 2).sum(), ex,
                                create_graph=True)
    (tg,) = torch.autograd.grad((torch.nn.functional.max_pool2d(tx, 2) ** 2).sum(), tx,
                                create_graph=True)
    (egg,) = ember.autograd.grad(eg.sum(), ex)
    (tgg,) = torch.autograd.grad(tg.sum(), tx)
    np.testing.assert_allclose(eg.detach().numpy(), tg.detach().numpy())
    np.testing.assert_allclose(egg.numpy(), tgg.numpy())
