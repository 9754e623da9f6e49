"""cross_entropy's small-logit CPU kernel (ember/backend/cpu_kernels.py ``ce_rows`` on
``_row_vec``'s explicit vectors: 16 lanes on AVX-512 hosts, else 8, each row's last
``C % lanes`` classes in scalar code) against NumPy float64 and torch, at class counts
around the vector width, with -inf logits (masked classes), NaN and +inf both inside the
vectors and in the scalar remainder, and ignored targets. Runs with numba and with
``EMBER_NUMBA=0`` (the NumPy code)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from parity import cross_entropy_rows_match

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.host_only


def _want(x: np.ndarray, y: np.ndarray, ignore: int = -100) -> tuple:
    """float64 per-row losses and the gradient of their sum (rows with a finite max)."""
    x64 = x.astype(np.float64)
    m = x64.max(axis=1, keepdims=True)
    e = np.exp(x64 - m)
    p = e / e.sum(axis=1, keepdims=True)
    valid = y != ignore
    safe = np.where(valid, y, 0)
    rows = np.arange(len(y))
    loss = -np.log(p[rows, safe]) * valid
    g = p * valid[:, None]
    g[rows, safe] -= valid
    return loss, g


@pytest.mark.parametrize("n", [3, 15, 16, 17, 31, 32, 33, 256, 259])
def test_ce_rows_lanes_and_remainder(kernel_path, n):
    rng = np.random.default_rng(n)
    rows = 40
    x = (rng.standard_normal((rows, n)) * 6).astype(np.float32)
    x[0, :] = 0.0                      # all equal
    x[1, n // 2] = -math.inf           # a masked class in the vector part (or the tail)
    x[2, n - 1] = -math.inf            # ... at the row's end
    x[3, :n - 1] = -math.inf           # one class left
    x[4, 0] = 80.0                     # others underflow to 0 in float32
    x[5] *= 20
    y = rng.integers(0, n, rows)
    y[6] = -100
    y[1] = y[2] = 0                    # targets at unmasked classes
    y[3] = n - 1
    want_loss, want_g = _want(x, y)
    res = {}
    for m in (ember, torch):
        t = m.tensor(x, requires_grad=True)
        loss = m.nn.functional.cross_entropy(t, m.tensor(y), reduction="none")
        loss.sum().backward()
        res[m] = (loss.detach().numpy(), t.grad.numpy())
    for m in (ember, torch):
        np.testing.assert_allclose(res[m][0], want_loss, rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(res[m][1], want_g, rtol=2e-5, atol=3e-7)  # p - 1 in float32
    # masked classes get exactly zero probability, as torch
    assert res[ember][1][1, n // 2] == 0 and res[ember][1][2, n - 1] == 0
    t = ember.tensor(x, requires_grad=True)
    mean = F.cross_entropy(t, ember.tensor(y))
    tt = torch.tensor(x, requires_grad=True)
    tmean = torch.nn.functional.cross_entropy(tt, torch.tensor(y))
    mean.backward()
    tmean.backward()
    np.testing.assert_allclose(mean.item(), tmean.item(), rtol=2e-6)
    np.testing.assert_allclose(t.grad.numpy(), tt.grad.numpy(), rtol=2e-5, atol=1e-8)


@pytest.mark.parametrize("n", [16, 17, 256, 259])
@pytest.mark.parametrize("col", ["head", "tail"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_ce_rows_nonfinite_in_vectors_and_tail(kernel_path, n, col, value):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, n)).astype(np.float32)
    x[3, 1 if col == "head" else n - 1] = value
    x[5] = -math.inf                   # a fully masked row: NaN loss, as torch
    y = rng.integers(0, n, 8)
    cross_entropy_rows_match(ember, torch, x, y)
