"""CPU fast paths of the tiny-GPT step (numba kernels and their NumPy fallbacks) against torch
and float64: GELU's two kernel loops (with and without the derivative) and the AdamW step
over all of a group's parameters. Each test runs with numba and with ``EMBER_NUMBA=0``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special as sp

import ember
import ember.nn.functional as F
from ember.backend import cpu_kernels

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.host_only


@pytest.fixture(params=["numba", "numpy"])
def path(request, monkeypatch):
    if request.param == "numba":
        pytest.importorskip("numba")
        monkeypatch.setenv("EMBER_NUMBA", "1")
        assert cpu_kernels.kernels() is not None
    else:
        monkeypatch.setenv("EMBER_NUMBA", "0")
        assert cpu_kernels.kernels() is None
    return request.param


def _gelu64(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return 0.5 * x64 * sp.erfc(-x64 / math.sqrt(2))


# sizes around the 8-wide vector loop's remainder and the 4096-element prange chunk
@pytest.mark.parametrize("n", [1, 7, 8, 9, 4095, 4096, 4097, 3 * 4096 + 5])
@pytest.mark.parametrize("grad", [False, True])
def test_gelu_value_loop_with_and_without_derivative(path, n, grad):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    x[::97] = 0.0
    t = ember.tensor(x, requires_grad=grad)
    if grad:
        y = F.gelu(t)
        g = rng.standard_normal(n).astype(np.float32)
        y.backward(ember.tensor(g))
        tt = torch.tensor(x, requires_grad=True)
        torch.nn.functional.gelu(tt).backward(torch.tensor(g))
        np.testing.assert_allclose(t.grad.numpy(), tt.grad.numpy(), rtol=2e-6, atol=1e-6)
    else:
        with ember.no_grad():
            y = F.gelu(t)
    np.testing.assert_allclose(y.detach().numpy(), _gelu64(x), rtol=5e-6, atol=3e-7)


def test_gelu_no_grad_special_values_match_torch(path):
    vals = [math.inf, -math.inf, math.nan, 0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, -40.0, 40.0]
    with ember.no_grad():
        y = F.gelu(ember.tensor(vals)).numpy()
    yt = torch.nn.functional.gelu(torch.tensor(vals)).numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(yt))
    np.testing.assert_allclose(y, yt, rtol=1e-6, atol=0)
    # the kernel's value without a derivative equals the one computed beside it (NumPy's
    # no-grad form s x - |x| h may differ in the last bit)
    e = ember.tensor(vals, requires_grad=True)
    yg = F.gelu(e).detach().numpy()
    if path == "numba":
        np.testing.assert_array_equal(yg, y)
    else:
        np.testing.assert_allclose(yg, y, rtol=1e-6, atol=0)
