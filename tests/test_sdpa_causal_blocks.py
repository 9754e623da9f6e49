"""scaled_dot_product_attention's causal query blocks on the CPU batch kernel_path (each block of
queries only touches keys up to its last query) against torch: outputs and the gradients
of query, key and value, float32 (numba kernels and ``EMBER_NUMBA=0``) and float64, with
and without ``scale``, sequence lengths that leave a short last block, a fused-qkv layout,
3-d inputs and grouped heads."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.ops import nn_attention

torch = pytest.importorskip("torch")
EF = ember.nn.functional
TF = torch.nn.functional


def _check(shapes, dtype, tol, layout="plain", **kw):
    rng = np.random.default_rng(1)
    if layout == "qkv":  # views of one fused projection, (B, T, H, E) -> (B, H, T, E)
        b, h, t, e = shapes[0]
        base = rng.standard_normal((b, t, 3 * h * e)).astype(dtype)
        ex = ember.tensor(base, requires_grad=True)
        tx = torch.tensor(base, requires_grad=True)

        def split(x):
            return [y.view(b, t, h, e).transpose(1, 2) for y in x.split(h * e, dim=2)]
        e_in, t_in, leaves = split(ex), split(tx), ((ex, tx),)
    else:
        arrs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        e_in = [ember.tensor(a, requires_grad=True) for a in arrs]
        t_in = [torch.tensor(a, requires_grad=True) for a in arrs]
        leaves = tuple(zip(e_in, t_in))
    eo = EF.scaled_dot_product_attention(*e_in, is_causal=True, **kw)
    to = TF.scaled_dot_product_attention(*t_in, is_causal=True, **kw)
    np.testing.assert_allclose(eo.detach().numpy(), to.detach().numpy(), rtol=tol, atol=tol)
    g = rng.standard_normal(tuple(to.shape)).astype(dtype)
    eo.backward(ember.tensor(g))
    to.backward(torch.tensor(g))
    for e, t in leaves:
        np.testing.assert_allclose(e.grad.numpy(), t.grad.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("T", [64, 77, 200])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_causal_blocks_float32(kernel_path, T, scale):
    assert nn_attention._causal_blocks(True, T, T) is not None  # the kernel_path under test
    _check(((3, 2, T, 8), (3, 2, T, 8), (3, 2, T, 6)), np.float32, 2e-5, scale=scale)


@pytest.mark.parametrize("T", [65, 130])
def test_causal_blocks_float64(T):
    _check(((2, 3, T, 5), (2, 3, T, 5), (2, 3, T, 7)), np.float64, 1e-10, scale=0.7)


def test_causal_blocks_fused_qkv(kernel_path):
    _check(((4, 2, 96, 8),), np.float32, 2e-5, layout="qkv")


def test_causal_blocks_fused_qkv_without_attention_kernels(kernel_path, monkeypatch):
    # head size 8 takes the fused attention kernels (cpu_attention_kernels) under numba:
    # switched off, the blocked path with numba's softmax kernels keeps its qkv coverage
    monkeypatch.setenv("EMBER_ATTN_KERNELS", "0")
    _check(((4, 2, 96, 8),), np.float32, 2e-5, layout="qkv")


def test_causal_blocks_3d_and_gqa(kernel_path):
    _check(((3, 70, 5), (3, 70, 5), (3, 70, 4)), np.float32, 2e-5)
    _check(((2, 4, 70, 5), (2, 2, 70, 5), (2, 2, 70, 4)), np.float32, 2e-5, enable_gqa=True)


def test_causal_blocks_large_scores(kernel_path):
    # scores far beyond exp's range: the per-block softmax still subtracts the row max
    rng = np.random.default_rng(2)
    arrs = [(rng.standard_normal((2, 2, 64, 4)) * 30).astype(np.float32) for _ in range(3)]
    e = [ember.tensor(a) for a in arrs]
    t = [torch.tensor(a) for a in arrs]
    eo = EF.scaled_dot_product_attention(*e, is_causal=True)
    to = TF.scaled_dot_product_attention(*t, is_causal=True)
    np.testing.assert_allclose(eo.numpy(), to.numpy(), rtol=1e-4, atol=1e-4)


def test_causal_blocks_cross_attention_not_blocked():
    # L != S keeps the full (L, S) weights: keys beyond L are visible to no query but still
    # get (zero) gradients
    assert nn_attention._causal_blocks(True, 64, 96) is None
    _check(((2, 2, 64, 4), (2, 2, 96, 4), (2, 2, 96, 3)), np.float64, 1e-10)
