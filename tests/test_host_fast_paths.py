"""The host-cost fast paths (meta rules that check before formatting, lean module calls,
relu's backward) keep torch's results, exception types and ember's messages."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ember
import ember.nn.functional as F




def test_linear_meta_errors_match_torch_types():
    x = np.random.randn(3, 4).astype(np.float32)
    w = np.random.randn(5, 4).astype(np.float32)
    b = np.random.randn(5).astype(np.float32)
    cases = [
        (lambda m: m.nn.functional.linear(m.tensor(x), m.tensor(w[:, :3]))),      # K mismatch
        (lambda m: m.nn.functional.linear(m.tensor(1.0), m.tensor(w))),           # 0-d input
        (lambda m: m.nn.functional.linear(m.tensor(x, dtype=m.float64), m.tensor(w))),
        (lambda m: m.nn.functional.linear(m.tensor(x), m.tensor(w),
                                          m.tensor(b, dtype=m.float64))),
        (lambda m: m.nn.functional.linear(m.tensor(x), m.tensor(w).reshape(5, 4, 1))),
    ]
    for case in cases:
        with pytest.raises(RuntimeError):
            case(torch)
        with pytest.raises(RuntimeError) as ei:
            case(ember)
        assert "[linear]" in str(ei.value)
    with pytest.raises(TypeError, match=r"\[linear\] argument 'input' must be Tensor"):
        F.linear(x, ember.tensor(w))


def test_linear_meta_messages():
    x = ember.randn(3, 4)
    w = ember.randn(5, 3)
    with pytest.raises(RuntimeError, match=r"mat1 and mat2 shapes cannot be multiplied: input "
                                           r"\(3, 4\) @ weight.T \(3, 5\)"):
        F.linear(x, w)
    with pytest.raises(RuntimeError, match=r"same dtype, but got: input ember.float32 \(3, 4\) "
                                           r"and other ember.float64 \(5, 4\)"):
        F.linear(x, ember.randn(5, 4, dtype=ember.float64))
    with pytest.raises(RuntimeError, match=r"weight must be 1-D or 2-D, got shape \(1, 5, 4\)"):
        F.linear(x, ember.randn(1, 5, 4))


@pytest.mark.parametrize("wshape,bias", [((5, 4), True), ((5, 4), False), ((4,), False)])
@pytest.mark.parametrize("xshape", [(3, 4), (2, 3, 4), (4,)])
def test_linear_values_and_grads_vs_torch(xshape, wshape, bias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xshape)
    w = rng.standard_normal(wshape)
    b = rng.standard_normal(wshape[0]) if bias else None
    xe, we = ember.tensor(x, requires_grad=True), ember.tensor(w, requires_grad=True)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    be = ember.tensor(b, requires_grad=True) if bias else None
    bt = torch.tensor(b, requires_grad=True) if bias else None
    ye = F.linear(xe, we, be)
    yt = torch.nn.functional.linear(xt, wt, bt)
    assert tuple(ye.shape) == tuple(yt.shape)
    np.testing.assert_allclose(ye.detach().numpy(), yt.detach().numpy(), rtol=1e-12)
    (ye * ye).sum().backward()
    (yt * yt).sum().backward()
    np.testing.assert_allclose(xe.grad.numpy(), xt.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(we.grad.numpy(), wt.grad.numpy(), rtol=1e-12)
    if bias:
        np.testing.assert_allclose(be.grad.numpy(), bt.grad.numpy(), rtol=1e-12)


def test_matmul_meta_errors():
    with pytest.raises(TypeError, match=r"\[matmul\] argument 'other' must be Tensor"):
        ember.matmul(ember.randn(2, 2), 3)
    with pytest.raises(RuntimeError, match=r"need to be at least 1D, but they are 0D and 2D"):
        ember.matmul(ember.tensor(1.0), ember.randn(2, 2))
    with pytest.raises(RuntimeError):
        torch.matmul(torch.tensor(1.0), torch.randn(2, 2))
    with pytest.raises(RuntimeError, match=r"same dtype"):
        ember.randn(2, 2) @ ember.randn(2, 2, dtype=ember.float64)


def test_linear_module_input_check():
    lin = ember.nn.Linear(4, 3)
    with pytest.raises(RuntimeError, match=r"expected input \(\*, 4\), got \(2, 5\)"):
        lin(ember.randn(2, 5))
    with pytest.raises(RuntimeError, match=r"got \(\)"):
        lin(ember.tensor(1.0))
    assert tuple(lin(ember.randn(4)).shape) == (3,)


@pytest.mark.parametrize("n", [1, 7, 4095, 4096, 9000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_backward_select_semantics_vs_torch(n, dtype):
    """Both threshold_backward paths (small: where; large: multiply + NaN check) give torch's
    select: a NaN input passes the gradient, an inf/NaN gradient of a clipped element gives 0."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    x[: n // 3] = np.nan if n > 2 else x[: n // 3]
    if n > 4:
        x[-1], x[-2] = -1.0, 0.0       # clipped (0 counts as clipped, as torch)
        g[-1], g[-2] = np.inf, np.nan  # their inf/NaN gradients must give 0
    xe, xt = ember.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    F.relu(xe).backward(ember.tensor(g))
    torch.nn.functional.relu(xt).backward(torch.tensor(g))
    np.testing.assert_array_equal(xe.grad.numpy(), xt.grad.numpy())


def test_relu_double_backward_vs_torch():
    x = np.array([-1.0, 0.5, 2.0, 0.0])
    xe, xt = ember.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ge, gt = ember.ones(4, dtype=ember.float64, requires_grad=True), \
        torch.ones(4, dtype=torch.float64, requires_grad=True)
    (de,) = ember.autograd.grad(F.relu(xe), xe, ge, create_graph=True)
    (dt,) = torch.autograd.grad(torch.nn.functional.relu(xt), xt, gt, create_graph=True)
    (de * de).sum().backward()
    (dt * dt).sum().backward()
    np.testing.assert_array_equal(ge.grad.numpy(), gt.grad.numpy())


def test_conv_meta_cache_keeps_torch_results_and_errors():
    # conv_meta caches the signatures it accepted: repeated calls, then calls that differ in
    # one checked part (channels, bias shape and dtype, groups, kernel larger than the input)
    # must still give torch's shapes and exception types
    from ember.ops import nn_conv
    nn_conv._META_OK.clear()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    for _ in range(2):
        got = F.conv2d(ember.tensor(x), ember.tensor(w), ember.tensor(b), padding=1)
        want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b),
                                          padding=1)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    assert len(nn_conv._META_OK) == 1
    bad = [
        lambda m: m.nn.functional.conv2d(m.tensor(x[:, :3]), m.tensor(w), m.tensor(b)),
        lambda m: m.nn.functional.conv2d(m.tensor(x), m.tensor(w), m.tensor(b[:5])),
        lambda m: m.nn.functional.conv2d(m.tensor(x), m.tensor(w),
                                         m.tensor(b, dtype=m.float64)),
        lambda m: m.nn.functional.conv2d(m.tensor(x), m.tensor(w), m.tensor(b), groups=3),
        lambda m: m.nn.functional.conv2d(m.tensor(x[:, :, :2, :2]), m.tensor(w)),
    ]
    for case in bad:
        with pytest.raises(RuntimeError):
            case(torch)
        with pytest.raises(RuntimeError):
            case(ember)
    assert len(nn_conv._META_OK) == 1    # nothing failing was cached
