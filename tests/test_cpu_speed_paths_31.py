"""CPU speed paths of issue #4 (tiny GPT and MLP steps), each against torch or NumPy float64:
the layer norm kernels that accumulate in the input's dtype and recompute xhat in backward."""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn.functional as F

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.host_only


def _ln_ref64(x: np.ndarray, w: np.ndarray | None, b: np.ndarray | None,
              g: np.ndarray) -> tuple:
    """Layer norm over the last dim and its gradients, in float64."""
    xd = x.astype(np.float64)
    n = x.shape[-1]
    m = xd.mean(-1, keepdims=True)
    r = 1 / np.sqrt(((xd - m) ** 2).mean(-1, keepdims=True) + 1e-5)
    h = (xd - m) * r
    wd = np.ones(n) if w is None else w.astype(np.float64)
    y = h * wd + (0 if b is None else b.astype(np.float64))
    gh = g * wd
    gx = r * (gh - gh.mean(-1, keepdims=True) - h * (gh * h).mean(-1, keepdims=True))
    lead = tuple(range(x.ndim - 1))
    return y, gx, (g * h).sum(lead), g.sum(lead)


@pytest.mark.parametrize("shape", [(16, 64, 128), (700, 48), (4099, 67)])
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_layer_norm_against_float64_and_torch(kernel_path, shape, affine):
    rng = np.random.default_rng(4)
    n = shape[-1]
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(n)).astype(np.float32) if affine in ("both", "weight") \
        else None
    b = rng.standard_normal(n).astype(np.float32) if affine in ("both", "bias") else None
    y64, gx64, gw64, gb64 = _ln_ref64(x, w, b, g)
    ex = ember.tensor(x, requires_grad=True)
    ew = None if w is None else ember.tensor(w, requires_grad=True)
    eb = None if b is None else ember.tensor(b, requires_grad=True)
    y = F.layer_norm(ex, (n,), ew, eb)
    y.backward(ember.tensor(g))
    np.testing.assert_allclose(y.detach().numpy(), y64, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(ex.grad.numpy(), gx64, rtol=1e-4, atol=2e-5)
    rows = x.size // n
    if ew is not None:   # column sums over many rows: float32 error grows with sqrt(rows)
        np.testing.assert_allclose(ew.grad.numpy(), gw64, rtol=1e-5, atol=2e-6 * rows ** 0.5)
    if eb is not None:
        np.testing.assert_allclose(eb.grad.numpy(), gb64, rtol=1e-5, atol=2e-6 * rows ** 0.5)
    ty = torch.nn.functional.layer_norm(torch.tensor(x), (n,), None if w is None else
                                        torch.tensor(w), None if b is None else torch.tensor(b))
    np.testing.assert_allclose(y.detach().numpy(), ty.numpy(), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("offset, scale", [(1000.0, 0.01), (1e4, 1.0), (100.0, 1.0)])
def test_layer_norm_offset_rows_no_worse_than_torch(kernel_path, offset, scale):
    # float32 statistics lose digits on rows far from zero; ember's error against float64
    # stays within torch's own (which accumulates in float32 as well)
    x = (offset + scale * np.random.default_rng(5).standard_normal((64, 128))).astype(np.float32)
    ref = _ln_ref64(x, None, None, np.zeros_like(x))[0]
    err = np.abs(F.layer_norm(ember.tensor(x), (128,)).numpy() - ref).max()
    err_t = np.abs(torch.nn.functional.layer_norm(torch.tensor(x), (128,)).numpy() - ref).max()
    assert err <= 1.5 * err_t + 1e-6


def test_layer_norm_bfloat16_input_gradients(kernel_path):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((33, 40)).astype(np.float32)
    g = rng.standard_normal((33, 40)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(40)).astype(np.float32)
    ex = ember.tensor(x, dtype=ember.bfloat16, requires_grad=True)
    ew = ember.tensor(w, dtype=ember.bfloat16, requires_grad=True)
    tx = torch.tensor(x, dtype=torch.bfloat16, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.bfloat16, requires_grad=True)
    F.layer_norm(ex, (40,), ew).backward(ember.tensor(g, dtype=ember.bfloat16))
    torch.nn.functional.layer_norm(tx, (40,), tw).backward(torch.tensor(g, dtype=torch.bfloat16))
    np.testing.assert_allclose(ex.grad.float().numpy(), tx.grad.float().numpy(), rtol=2e-2,
                               atol=2e-2)
    np.testing.assert_allclose(ew.grad.float().numpy(), tw.grad.float().numpy(), rtol=2e-2,
                               atol=5e-2)


@pytest.mark.parametrize("shape", [(1024, 256), (3000, 150), (37, 11)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_row_kernel_sizes_against_float64(kernel_path, shape, reduction):
    # logits up to 512K elements take the one-pass row kernel (vectorized row sums)
    rng = np.random.default_rng(7)
    rows, c = shape
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    t = rng.integers(0, c, rows)
    t[::7] = -100   # ignored rows
    ex = ember.tensor(x, requires_grad=True)
    loss = F.cross_entropy(ex, ember.tensor(t), reduction=reduction)
    g = rng.standard_normal(rows).astype(np.float32) if reduction == "none" else None
    loss.backward(ember.tensor(g) if g is not None else None)
    xd = x.astype(np.float64)
    lse = np.log(np.exp(xd - xd.max(1, keepdims=True)).sum(1)) + xd.max(1)
    valid = t != -100
    safe = np.where(valid, t, 0)
    el = np.where(valid, lse - xd[np.arange(rows), safe], 0.0)
    p = np.exp(xd - lse[:, None])
    onehot = np.zeros_like(p)
    onehot[np.arange(rows), safe] = 1
    gel = np.where(valid, 1.0, 0.0)
    if reduction == "mean":
        want, scale = el.sum() / valid.sum(), gel / valid.sum()
    elif reduction == "sum":
        want, scale = el.sum(), gel
    else:
        want, scale = el, gel * g
    np.testing.assert_allclose(loss.detach().numpy(), want, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(ex.grad.numpy(), (p - onehot) * scale[:, None], rtol=1e-5,
                               atol=1e-7)
    tl = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(t), reduction=reduction)
    np.testing.assert_allclose(loss.detach().numpy(), tl.numpy(), rtol=2e-6, atol=2e-6)


def test_view_op_backward_against_torch():
    # transpose / view / reshape backward, plain and with create_graph (double backward)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 6, 10)).astype(np.float32)
    g = rng.standard_normal((6, 40)).astype(np.float32)

    def run(m, leaf, create_graph=False):
        y = leaf.transpose(0, 1).reshape(6, 40) * 2
        z = leaf.permute(2, 0, 1).contiguous().view(10, 24).t().reshape(6, 40)
        out = (y * z).sum() if create_graph else None
        if create_graph:
            (gx,) = m.autograd.grad(out, leaf, create_graph=True)
            return gx
        (y + z).backward(m.tensor(g))
        return leaf.grad

    ex = ember.tensor(x, requires_grad=True)
    tx = torch.tensor(x, requires_grad=True)
    eg, tg = run(ember, ex), run(torch, tx)
    np.testing.assert_allclose(eg.numpy(), tg.numpy(), rtol=1e-6, atol=1e-6)
    assert eg.is_contiguous() and not np.shares_memory(eg.numpy(), g)
    ex2 = ember.tensor(x, requires_grad=True)
    tx2 = torch.tensor(x, requires_grad=True)
    eg2, tg2 = run(ember, ex2, True), run(torch, tx2, True)
    assert eg2.requires_grad and tg2.requires_grad
    np.testing.assert_allclose(eg2.detach().numpy(), tg2.detach().numpy(), rtol=1e-5, atol=1e-5)
    (eg2 * eg2).sum().backward()
    (tg2 * tg2).sum().backward()
    np.testing.assert_allclose(ex2.grad.numpy(), tx2.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_gelu_backward_in_place_then_retained_second_backward(kernel_path):
    # the first backward writes its product into the saved derivative; a second backward
    # through the retained graph recomputes from x; both against torch
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((64, 96)) * 3).astype(np.float32)
    g = rng.standard_normal((64, 96)).astype(np.float32)
    ex, tx = ember.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ey, ty = F.gelu(ex), torch.nn.functional.gelu(tx)
    eg, tg = ember.tensor(g), torch.tensor(g)
    (e1,) = ember.autograd.grad(ey, ex, eg, retain_graph=True)
    (t1,) = torch.autograd.grad(ty, tx, tg, retain_graph=True)
    (e2,) = ember.autograd.grad(ey, ex, eg)
    (t2,) = torch.autograd.grad(ty, tx, tg)
    np.testing.assert_allclose(e1.numpy(), t1.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e2.numpy(), t2.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(eg.numpy(), g)   # the incoming gradient is not written
