"""GELU's explicit-vector CPU loop (ember/backend/cpu_kernels.py ``_gelu_vec``: 16 lanes on
AVX-512 hosts, else 8, the remainder through the scalar loop) against float64 and torch, at
sizes around the vector width and with special values both inside the vectors and in the
scalar remainder. Runs with numba and with ``EMBER_NUMBA=0`` (the NumPy code)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special as sp

import ember
import ember.nn.functional as F

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.host_only

_SPECIAL = [math.inf, -math.inf, math.nan, 0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, -40.0,
            40.0, 20.0, -20.0, 87.0, -87.0, 13.3]


def _want(x: np.ndarray) -> tuple:
    """float64 gelu(x) and gelu'(x) at finite x."""
    x64 = x.astype(np.float64)
    cdf = 0.5 * sp.erfc(-x64 / math.sqrt(2))
    return x64 * cdf, cdf + x64 * np.exp(-x64 * x64 / 2) / math.sqrt(2 * math.pi)


@pytest.mark.parametrize("n", [15, 16, 17, 31, 32, 33, 47, 1000])
@pytest.mark.parametrize("where", ["head", "tail"])
def test_gelu_vector_lanes_and_remainder(kernel_path, n, where):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 5).astype(np.float32)
    k = min(n, len(_SPECIAL))
    if where == "head":
        x[:k] = _SPECIAL[:k]
    else:
        x[n - k:] = _SPECIAL[:k]
    t = ember.tensor(x, requires_grad=True)
    y = F.gelu(t)
    y.backward(ember.ones_like(y))
    with ember.no_grad():
        y_ng = F.gelu(ember.tensor(x)).numpy()
    yv, gv = y.detach().numpy(), t.grad.numpy()
    fin = np.isfinite(x)
    want, dwant = _want(x[fin])
    for got in (yv, y_ng):
        np.testing.assert_allclose(got[fin], want, rtol=5e-6, atol=3e-7)
    np.testing.assert_allclose(gv[fin], dwant, rtol=5e-6, atol=3e-7)
    # torch's values where they are finite (its AVX-512 kernel gives NaN at +inf)
    yt = torch.nn.functional.gelu(torch.tensor(x)).numpy()
    np.testing.assert_allclose(yv[fin], yt[fin], rtol=1e-5, atol=2e-6)
    # +inf: gelu = inf, gelu' = 1; -inf and NaN: NaN (x * Phi(x) = -inf * 0)
    for v, yw, gw in ((math.inf, math.inf, 1.0), (-math.inf, math.nan, math.nan),
                      (math.nan, math.nan, math.nan)):
        at = (x == v) if not math.isnan(v) else np.isnan(x)
        if at.any():
            np.testing.assert_array_equal(yv[at], yw)
            np.testing.assert_array_equal(y_ng[at], yw)
            np.testing.assert_array_equal(gv[at], gw)
