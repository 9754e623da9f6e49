"""A fused qkv projection split into q, k and v for cuDNN attention: the backward writes the
three gradients side by side in one array, and split's backward hands that array on without
a copy. Values and gradients against torch (CPU, float64). Marked ``cuda``."""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.ops import movement

pytestmark = pytest.mark.cuda


@pytest.fixture
def joins(monkeypatch):
    """Whether each split backward joined its gradients without a copy (True) or not."""
    seen = []
    orig = movement._adjacent_views

    def spy(grads, dim):
        out = orig(grads, dim)
        seen.append(out is not None)
        return out
    monkeypatch.setattr(movement, "_adjacent_views", spy)
    from ember.ops.registry import OPS
    if OPS["scaled_dot_product_attention"].cuda_impl is None:
        pytest.skip("cuDNN attention not installed")
    return seen


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_fused_qkv_gradient_joins_without_copy(joins, causal, dtype):
    torch = pytest.importorskip("torch")
    B, T, H, D = 2, 64, 4, 32
    C = H * D
    rng = np.random.default_rng(0)
    qkv_np = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    go_np = rng.standard_normal((B, H, T, D)).astype(np.float32)
    dt = getattr(ember, dtype)
    qkv = ember.tensor(qkv_np, device="cuda").to(dt).requires_grad_()
    q, k, v = (z.view(B, T, H, D).transpose(1, 2) for z in qkv.split(C, dim=2))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    out.backward(ember.tensor(go_np, device="cuda").to(dt))
    assert joins == [True]

    # torch on the same (rounded) inputs, float64
    tq = torch.tensor(qkv.detach().float().cpu().numpy(), dtype=torch.float64,
                      requires_grad=True)
    tqs, tks, tvs = (z.view(B, T, H, D).transpose(1, 2) for z in tq.split(C, dim=2))
    tout = torch.nn.functional.scaled_dot_product_attention(tqs, tks, tvs, is_causal=causal)
    tgo = torch.tensor(ember.tensor(go_np).to(dt).float().numpy(), dtype=torch.float64)
    tout.backward(tgo)
    got = qkv.grad.float().cpu().numpy()  # a leaf's .grad needs no detach
    assert qkv.grad.shape == (B, T, 3 * C) and qkv.grad.dtype is dt
    np.testing.assert_allclose(out.detach().float().cpu().numpy(), tout.detach().numpy(),
                               rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(got, tq.grad.numpy(), rtol=3e-2, atol=3e-2)


def test_split_of_separate_gradients_still_concatenates():
    # q, k, v from three separate tensors: nothing to join in place, split's backward copies
    a = ember.randn(2, 8, 12, device="cuda", requires_grad=True)
    parts = a.split(4, dim=2)
    w = [ember.randn(2, 8, 4, device="cuda") for _ in range(3)]
    sum((p * x).sum() for p, x in zip(parts, w)).backward()
    np.testing.assert_allclose(a.grad.cpu().numpy(),
                               np.concatenate([x.cpu().numpy() for x in w], axis=2), rtol=1e-6)


def test_linear_qkv_under_autocast_joins_without_copy(joins, monkeypatch):
    # the GPT block's pattern: a Linear's (B, T, 3C) output (cuBLASLt writes it column-major
    # transposed, so its buffer is F-ordered) split into heads, under bf16 autocast
    torch = pytest.importorskip("torch")
    B, T, H, D = 2, 64, 4, 32
    C = H * D
    rng = np.random.default_rng(1)
    x_np = rng.standard_normal((B, T, C)).astype(np.float32)
    w_np = (rng.standard_normal((3 * C, C)) / np.sqrt(C)).astype(np.float32)
    b_np = rng.standard_normal(3 * C).astype(np.float32) * 0.1
    from ember.backend.cuda_ops import nvmath_linear
    monkeypatch.setattr(nvmath_linear, "MIN_MACS", 0)  # this small Linear on cuBLASLt too
    lin = ember.nn.Linear(C, 3 * C).to("cuda")
    with ember.no_grad():
        lin.weight.copy_(ember.tensor(w_np))
        lin.bias.copy_(ember.tensor(b_np))
    x = ember.tensor(x_np, device="cuda", requires_grad=True)
    with ember.autocast("cuda", dtype=ember.bfloat16):
        q, k, v = (z.view(B, T, H, D).transpose(1, 2) for z in lin(x).split(C, dim=2))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.float().sum().backward()
    assert joins == [True]
    tx = torch.tensor(x_np, dtype=torch.float64, requires_grad=True)
    ty = tx @ torch.tensor(w_np, dtype=torch.float64).T + torch.tensor(b_np, dtype=torch.float64)
    tq, tk, tv = (z.view(B, T, H, D).transpose(1, 2) for z in ty.split(C, dim=2))
    torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True).sum().backward()
    np.testing.assert_allclose(x.grad.cpu().numpy(), tx.grad.numpy(), rtol=5e-2, atol=5e-2)
