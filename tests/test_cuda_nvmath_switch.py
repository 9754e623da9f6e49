"""Which GEMM library a small CUDA linear takes: CuPy's cuBLAS on its shape's first call (no
cuBLASLt planning for a one-off shape), cuBLASLt from the second call on, and CuPy always
with ``RECURRING`` off. Values and gradients against torch (CPU, float64). Marked ``cuda``."""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn.functional as F

pytestmark = pytest.mark.cuda


def _planned(nl, m: int, k: int, n: int) -> bool:
    """Whether a cuBLASLt plan exists for this forward (bias epilogue: w (n, k) @ x.T)."""
    return any(key[0] == "fwd_bias" and key[1] == (n, k) and key[3] == (k, m)
               for key in nl._PLANS)


def _check(y, x, w, b, xn, wn, bn, gn) -> None:
    torch = pytest.importorskip("torch")
    tx = torch.tensor(xn, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(wn, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(bn, dtype=torch.float64, requires_grad=True)
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(torch.tensor(gn, dtype=torch.float64))
    for e, t in ((y, ty), (x.grad, tx.grad), (w.grad, tw.grad), (b.grad, tb.grad)):
        np.testing.assert_allclose(e.detach().cpu().numpy(), t.detach().numpy(), rtol=1e-4,
                                   atol=1e-4)


@pytest.mark.parametrize("recurring", [True, False])
def test_small_linear_plans_from_the_second_call(monkeypatch, recurring):
    nl = pytest.importorskip("ember.backend.cuda_ops.nvmath_linear")
    if nl.nvmath is None:
        pytest.skip("nvmath-python not installed")
    monkeypatch.setattr(nl, "RECURRING", [recurring])
    monkeypatch.setattr(nl, "_SEEN", {})
    m, k, n = 7 + recurring, 37, 29   # shapes no other test uses
    rng = np.random.default_rng(0)
    for call in range(2):
        xn, wn = rng.standard_normal((m, k)), rng.standard_normal((n, k))
        bn, gn = rng.standard_normal(n), rng.standard_normal((m, n))
        x, w, b = (ember.tensor(a.astype(np.float32), device="cuda", requires_grad=True)
                   for a in (xn, wn, bn))
        y = F.linear(x, w, b)
        y.backward(ember.tensor(gn.astype(np.float32), device="cuda"))
        _check(y, x, w, b, xn, wn, bn, gn)
        assert _planned(nl, m, k, n) == (recurring and call == 1)
