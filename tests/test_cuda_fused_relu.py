"""The fused ReLU tails of a ResNet block on CUDA (``_batch_norm_relu``: the ReLU inside the
batch-norm kernels; ``_add_relu``: the residual add and ReLU in one kernel), against NumPy
float64 and torch, in both layouts and half precision; and ember.vision's ResNet blocks,
which use them only where no hook could see the intermediate. Marked ``cuda``."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.nn.functional.normalization import _batch_norm
from ember.nn.modules import fused
from cuda_cases import TOL, bn_inputs, cuda, host, is_cl, rounded

pytestmark = pytest.mark.cuda


def _bn_relu_ref(x, w, b, g, mask, eps=1e-5):
    """relu(batch_norm(x)) and its gradients in float64; ``mask`` is where the output is
    positive (the gradient passes there)."""
    axes = (0,) + tuple(range(2, x.ndim))
    sh = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = x.mean(axes), x.var(axes)
    rstd = 1 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(sh)) * rstd.reshape(sh)
    pre = xhat * w.reshape(sh) + b.reshape(sh)
    gm = g * mask
    dx = (w * rstd).reshape(sh) * (gm - gm.mean(axes).reshape(sh)
                                   - xhat * (gm * xhat).mean(axes).reshape(sh))
    return pre, np.maximum(pre, 0), dx, (gm * xhat).sum(axes), gm.sum(axes), mean, var


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("shape", [(8, 48, 7, 5), (3, 70, 11, 13), (16, 24, 33, 31)])
def test_batch_norm_relu_matches_numpy(dtype, cl, shape):
    # (3, 70, ...): channels not a multiple of the vector width (the scalar kernels)
    rng = np.random.default_rng(0)
    c = shape[1]
    x, w, b, g = bn_inputs(rng, shape, dtype)
    xt = cuda(x, dtype, cl)
    wt, bt = cuda(w, "float32"), cuda(b, "float32")     # autocast: float32 parameters
    rm, rv = ember.zeros(c, device="cuda"), ember.ones(c, device="cuda")
    y = _batch_norm(xt, rm, rv, wt, bt, True, 0.1, 1e-5, None, relu=True)
    assert type(y.grad_fn).__name__ == "BatchNormReluBackward0"
    assert y.grad_fn._impl is not None, "the CUDA kernels did not run"
    assert y.dtype is xt.dtype and is_cl(y) == cl
    y.backward(ember.tensor(g, device="cuda").to(y.dtype))
    got = host(y)
    pre, ry, rdx, rdw, rdb, rmean, rvar = _bn_relu_ref(x, w, b, g, got > 0)
    tol = TOL[dtype]
    # the mask came from ember's rounded output: it must agree with the float64 sign
    # wherever rounding cannot flip it
    clear = np.abs(pre) > 20 * tol
    assert np.array_equal((got > 0)[clear], (pre > 0)[clear])
    assert (got == 0).mean() > 0.2                    # the ReLU clipped a good share
    n = x.size // c
    np.testing.assert_allclose(got, ry, rtol=tol, atol=tol * 4)
    assert is_cl(xt.grad) == cl
    np.testing.assert_allclose(host(xt.grad), rdx, rtol=tol, atol=tol * 4)
    np.testing.assert_allclose(host(wt.grad), rdw, rtol=tol, atol=tol * np.sqrt(n) * 2)
    np.testing.assert_allclose(host(bt.grad), rdb, rtol=tol, atol=tol * np.sqrt(n) * 2)
    np.testing.assert_allclose(host(rm), 0.1 * rmean, rtol=tol, atol=1e-3)
    np.testing.assert_allclose(host(rv), 0.9 + 0.1 * rvar * n / (n - 1), rtol=tol, atol=1e-3)


def test_batch_norm_relu_nan_and_double_backward():
    x = np.random.default_rng(1).standard_normal((4, 8, 3, 3))
    x[0, 0, 0, 0] = np.nan                                # channel 0 becomes all NaN
    xt = cuda(x, "float32", True)
    y = _batch_norm(xt, None, None, None, None, True, 0.1, 1e-5, None, relu=True)
    assert np.isnan(host(y)[:, 0]).all()                 # NaN stays NaN, as torch's relu
    y.backward(ember.ones_like(y))
    assert np.all(host(xt.grad)[:, 1:] == host(xt.grad)[:, 1:])   # other channels finite
    # create_graph: the generic backward on the fused node's saved tensors, against torch
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).standard_normal((4, 6, 5, 5))
    xe = cuda(x, "float32", True)
    (ge,) = ember.autograd.grad((_batch_norm(xe, None, None, None, None, True, 0.1, 1e-5,
                                             None, relu=True) ** 3).sum(), xe,
                                create_graph=True)
    (ge * ge).sum().backward()
    xt = torch.tensor(x, requires_grad=True)
    (gt,) = torch.autograd.grad((torch.relu(torch.nn.functional.batch_norm(
        xt, None, None, training=True)) ** 3).sum(), xt, create_graph=True)
    (gt * gt).sum().backward()
    np.testing.assert_allclose(host(ge), gt.detach().numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(host(xe.grad), xt.grad.numpy(), rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cl", [False, True])
def test_add_relu_matches_numpy(dtype, cl):
    rng = np.random.default_rng(3)
    a = rounded(rng.standard_normal((4, 16, 9, 7)), dtype)
    b = rounded(rng.standard_normal((4, 16, 9, 7)), dtype)
    g = rounded(rng.standard_normal(a.shape), dtype)
    at, bt = cuda(a, dtype, cl), cuda(b, dtype, cl)
    y = ember._add_relu(at, bt)
    assert y.grad_fn._impl is not None and is_cl(y) == cl and y.dtype is at.dtype
    y.backward(ember.tensor(g, device="cuda").to(y.dtype))
    s = a + b
    want = rounded(np.maximum(s, 0), dtype)     # torch: the bf16 sum, then the ReLU
    np.testing.assert_array_equal(host(y), want)
    gm = np.where(want > 0, g, 0)
    np.testing.assert_array_equal(host(at.grad), gm)
    np.testing.assert_array_equal(host(bt.grad), gm)
    # operands of two layouts: the generic code, same values
    y2 = ember._add_relu(at.detach(), bt.detach().contiguous() if cl else
                         bt.detach().to(memory_format=ember.channels_last))
    assert y2.grad_fn is None
    np.testing.assert_array_equal(host(y2), want)


# ---------------------------------------------------------------------- ResNet blocks
def _torch_block(torch, blk, x, kind):
    """The block's forward in torch (float64, training-mode batch norm), same weights."""
    F = torch.nn.functional
    p = {k: torch.tensor(v.detach().cpu().numpy().astype(np.float64), requires_grad=True)
         for k, v in blk.named_parameters()}

    def bn(h, name):
        return F.batch_norm(h, None, None, p[name + ".weight"], p[name + ".bias"],
                            training=True)

    def conv(h, name, m):
        return F.conv2d(h, p[name + ".weight"], stride=m.stride, padding=m.padding)

    if kind == "bottleneck":
        out = F.relu(bn(conv(x, "conv1", blk.conv1), "bn1"))
        out = F.relu(bn(conv(out, "conv2", blk.conv2), "bn2"))
        out = bn(conv(out, "conv3", blk.conv3), "bn3")
    else:
        out = F.relu(bn(conv(x, "conv1", blk.conv1), "bn1"))
        out = bn(conv(out, "conv2", blk.conv2), "bn2")
    return F.relu(out + x), p


@pytest.mark.parametrize("kind", ["bottleneck", "basic"])
def test_resnet_blocks_fuse_and_match_torch(kind):
    torch = pytest.importorskip("torch")
    from ember.vision.models.resnet import BasicBlock, Bottleneck
    ember.manual_seed(0)
    blk = Bottleneck(16, 4) if kind == "bottleneck" else BasicBlock(16, 16)
    blk = blk.cuda().to(memory_format=ember.channels_last)
    x = np.random.default_rng(4).standard_normal((4, 16, 8, 8))
    flags = ember.backends.cudnn
    tf32, flags.allow_tf32 = flags.allow_tf32, False
    try:
        xe = cuda(x, "float32", True)
        ye = blk(xe)
        g = np.random.default_rng(5).standard_normal(ye.shape)
        ye.backward(ember.tensor(g, device="cuda", dtype=ember.float32))
    finally:
        flags.allow_tf32 = tf32
    assert type(ye.grad_fn).__name__ == "AddReluBackward0"
    xt = torch.tensor(x, requires_grad=True)
    yt, p = _torch_block(torch, blk, xt, kind)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(host(ye), yt.detach().numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(host(xe.grad), xt.grad.numpy(), rtol=1e-3, atol=1e-3)
    for name, prm in blk.named_parameters():
        np.testing.assert_allclose(host(prm.grad), p[name].grad.numpy(), rtol=2e-3,
                                   atol=2e-3, err_msg=name)
    assert float(blk.bn1.num_batches_tracked.item()) == 1.0


def test_resnet_block_hooks_see_every_relu_call():
    from ember.vision.models.resnet import Bottleneck
    blk = Bottleneck(16, 4).cuda()
    seen = []
    handle = blk.relu.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    y = blk(ember.randn(2, 16, 4, 4, device="cuda"))
    assert len(seen) == 3 and type(y.grad_fn).__name__ != "AddReluBackward0"
    handle.remove()
    fused.FUSE_RELU[0] = False       # the switch for A/B runs
    try:
        y = blk(ember.randn(2, 16, 4, 4, device="cuda"))
        assert type(y.grad_fn).__name__ != "AddReluBackward0"
    finally:
        fused.FUSE_RELU[0] = True
    y = blk(ember.randn(2, 16, 4, 4, device="cuda"))
    assert type(y.grad_fn).__name__ == "AddReluBackward0"
