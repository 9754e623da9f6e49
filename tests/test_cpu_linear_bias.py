"""Linear with a bias on the CPU (one GEMM, the bias added in place; the array backward)
against torch and NumPy float64: float32 and float64, 2-D and 3-D inputs, C- and
Fortran-contiguous weights (a transposed view), non-finite bias values, empty shapes
(zero output features: the backward's reshape(-1, 0) raised), and the gradients."""
from __future__ import annotations

import math

import numpy as np
import pytest

import ember
import ember.nn.functional as F

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.host_only


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,n_out", [((128, 784), 256), ((16, 64, 128), 384),
                                         ((70, 33), 65), ((3, 0, 5), 70), ((64, 5), 0)])
@pytest.mark.parametrize("w_layout", ["C", "F"])
def test_linear_bias_gemm_matches_torch(dtype, shape, n_out, w_layout):
    rng = np.random.default_rng(len(shape) * 100 + n_out)
    x = rng.standard_normal(shape).astype(dtype)
    w = (rng.standard_normal((n_out, shape[-1])) * shape[-1] ** -0.5).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    if n_out > 3:
        b[1], b[2] = math.inf, math.nan
    we = ember.tensor(w, requires_grad=True) if w_layout == "C" else \
        ember.tensor(np.ascontiguousarray(w.T)).t().detach().requires_grad_()
    assert tuple(we.shape) == w.shape
    xe, be = ember.tensor(x, requires_grad=True), ember.tensor(b, requires_grad=True)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ye, yt = F.linear(xe, we, be), torch.nn.functional.linear(xt, wt, bt)
    want = x.astype(np.float64) @ w.T.astype(np.float64) + b
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ye.detach().numpy(), want, **tol)
    np.testing.assert_allclose(ye.detach().numpy(), yt.detach().numpy(), **tol)
    assert ye.dtype == getattr(ember, dtype) and ye.is_contiguous()
    g = rng.standard_normal(yt.shape).astype(dtype)
    ye.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    # (sums over up to 1024 rows: float32 rounding of different summation orders)
    gtol = dict(rtol=1e-4, atol=2e-4) if dtype == "float32" else tol
    for e, t in ((xe, xt), (we, wt), (be, bt)):
        np.testing.assert_allclose(e.grad.numpy(), t.grad.numpy(), **gtol)


def test_linear_bias_noncontiguous_input_matches_torch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 200)).astype(np.float32)[:, ::2]
    w = rng.standard_normal((300, 100)).astype(np.float32)
    b = rng.standard_normal(300).astype(np.float32)
    ye = F.linear(ember.tensor(x), ember.tensor(w), ember.tensor(b))
    yt = torch.nn.functional.linear(torch.tensor(x), torch.tensor(w), torch.tensor(b))
    np.testing.assert_allclose(ye.numpy(), yt.numpy(), rtol=1e-5, atol=1e-5)
