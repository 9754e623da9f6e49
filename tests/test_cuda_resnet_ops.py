"""The CUDA paths a channels-last ResNet step takes: batch_norm (NCHW and channels-last,
half input with float32 parameters), relu, same-layout add, in-place writes and max pooling,
against NumPy float64 (and torch for max pooling's indices). Marked ``cuda``."""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from cuda_cases import TOL, bn_inputs, cuda, host, is_cl, rounded

pytestmark = pytest.mark.cuda


def _fused(t) -> bool:
    return getattr(t.grad_fn, "_impl", None) is not None


# ---------------------------------------------------------------------- batch norm
def _bn_ref(x, w, b, g, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    sh = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = x.mean(axes), x.var(axes)
    rstd = 1 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(sh)) * rstd.reshape(sh)
    wv = w if w is not None else np.ones_like(mean)
    y = xhat * wv.reshape(sh) + (b.reshape(sh) if b is not None else 0)
    gm = g.mean(axes).reshape(sh)
    gxm = (g * xhat).mean(axes).reshape(sh)
    dx = (wv * rstd).reshape(sh) * (g - gm - xhat * gxm)
    return y, dx, (g * xhat).sum(axes), g.sum(axes), mean, var


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("pdt", ["same", "float32"])
@pytest.mark.parametrize("shape", [(8, 48, 7, 5), (3, 70, 11, 13), (64, 5, 2, 2),
                                   (16, 24, 33, 31)])  # the last: several vectors a thread
def test_batch_norm_layouts_and_param_dtypes(dtype, cl, pdt, shape):
    rng = np.random.default_rng(0)
    c = shape[1]
    x = rounded(rng.standard_normal(shape) * 2 + 3, dtype)
    pd = dtype if pdt == "same" else "float32"
    w = rounded(rng.standard_normal(c) + 1, pd)
    b = rounded(rng.standard_normal(c), pd)
    g = rounded(rng.standard_normal(shape), dtype)
    xt = cuda(x, dtype, cl)
    wt, bt = cuda(w, pd, False), cuda(b, pd, False)
    rm = ember.zeros(c, device="cuda", dtype=getattr(ember, pd))
    rv = ember.ones(c, device="cuda", dtype=getattr(ember, pd))
    y = F.batch_norm(xt, rm, rv, wt, bt, training=True, momentum=0.1)
    assert _fused(y) and y.dtype is xt.dtype and is_cl(y) == cl
    gt = ember.tensor(g, device="cuda").to(y.dtype)      # a C-ordered gradient
    y.backward(gt)
    ry, rdx, rdw, rdb, rmean, rvar = _bn_ref(x, w, b, g)
    tol = TOL[dtype]
    n = x.size // c
    np.testing.assert_allclose(host(y), ry, rtol=tol, atol=tol * 4)
    assert is_cl(xt.grad) == cl
    np.testing.assert_allclose(host(xt.grad), rdx, rtol=tol, atol=tol * 4)
    np.testing.assert_allclose(host(wt.grad), rdw, rtol=tol, atol=tol * np.sqrt(n) * 2)
    np.testing.assert_allclose(host(bt.grad), rdb, rtol=tol, atol=tol * np.sqrt(n) * 2)
    assert rm.dtype is getattr(ember, pd)
    np.testing.assert_allclose(host(rm), 0.1 * rmean, rtol=max(tol, TOL[pd]), atol=1e-3)
    np.testing.assert_allclose(host(rv), 0.9 + 0.1 * rvar * n / (n - 1),
                               rtol=max(tol, TOL[pd]), atol=1e-3)


def test_batch_norm_channels_last_no_affine_and_double_backward():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6, 5, 5))
    xt = cuda(x, "float32", True)
    y = F.batch_norm(xt, None, None, training=True)
    assert _fused(y) and is_cl(y)
    (y * y * y).sum().backward()
    ry, rdx, *_ = _bn_ref(x, None, None, 3 * host(y) ** 2)
    np.testing.assert_allclose(host(y), ry, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(host(xt.grad), rdx, rtol=1e-3, atol=1e-3)
    # create_graph: the generic backward runs on the fused node's saved tensors
    xt = cuda(x, "float32", True)
    y = F.batch_norm(xt, None, None, training=True)
    (gx,) = ember.autograd.grad((y * y * y).sum(), xt, create_graph=True)
    gx.sum().backward()
    xc = ember.tensor(x.astype(np.float32), requires_grad=True)
    yc = F.batch_norm(xc, None, None, training=True)
    (gxc,) = ember.autograd.grad((yc * yc * yc).sum(), xc, create_graph=True)
    gxc.sum().backward()
    np.testing.assert_allclose(host(gx), host(gxc), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(host(xt.grad), host(xc.grad), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_module_running_stats_and_counter_match_torch(momentum, relu):
    # BatchNorm2d training calls on CUDA (channels-last bf16 input, float32 buffers, as a
    # ResNet step; with relu, through the fused ReLU tail): the running statistics and
    # num_batches_tracked (updated by the forward's finalize kernel when momentum is set)
    # against torch on the CPU
    torch = pytest.importorskip("torch")
    from ember.nn.modules.fused import batch_norm_relu
    rng = np.random.default_rng(11)
    bn = ember.nn.BatchNorm2d(6, momentum=momentum).to("cuda")
    ref = torch.nn.BatchNorm2d(6, momentum=momentum)
    version = bn.num_batches_tracked._version[0]
    for _ in range(3):
        a = rng.standard_normal((4, 6, 5, 5)).astype(np.float32)
        x = cuda(a, "bfloat16", cl=True, grad=False)
        y = batch_norm_relu(bn, ember.nn.ReLU(), x) if relu else bn(x)
        want = ref(torch.from_numpy(rounded(a, "bfloat16")).float())
        want = torch.relu(want) if relu else want
        np.testing.assert_allclose(host(y), want.detach().double().numpy(), rtol=3e-2,
                                   atol=3e-2)
    assert bn.num_batches_tracked.device.type == "cuda"
    assert int(bn.num_batches_tracked.item()) == int(ref.num_batches_tracked) == 3
    assert bn.num_batches_tracked._version[0] >= version + 3
    np.testing.assert_allclose(host(bn.running_mean), ref.running_mean.double().numpy(),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(host(bn.running_var), ref.running_var.double().numpy(),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(8, 48, 7, 5), (16, 24, 33, 31), (32, 256, 14, 14),
                                   (4, 2048, 7, 7)])
def test_batch_norm_cooperative_launch_matches_three_launches(dtype, relu, shape, monkeypatch):
    # the channels-last vectorised batch norm runs as one cooperative launch a direction;
    # it must give what the three-launch kernels give, bit for bit (the same partial sums,
    # added in the same order), and against float64; also with no dx wanted (do_dx 0)
    from ember.backend.cuda_ops import _nvrtc, kernels_batchnorm as KB
    from ember.nn.functional.normalization import _batch_norm
    calls = []
    real = _nvrtc._CoopLauncher.__call__

    def spy(self, grid, block, args, shared_mem=0):
        calls.append(self.fn)
        return real(self, grid, block, args, shared_mem)
    monkeypatch.setattr(_nvrtc._CoopLauncher, "__call__", spy)
    rng = np.random.default_rng(5)
    c = shape[1]
    x, w, b, g = bn_inputs(rng, shape, dtype)
    runs = {}
    for coop in (True, False):
        monkeypatch.setattr(KB, "_COOP_ON", coop)
        KB._FWD_PLANS.clear()
        KB._BWD_PLANS.clear()
        del calls[:]
        out = []
        for want_dx in (True, False):
            xt = cuda(x, dtype, True, grad=want_dx)
            wt, bt = cuda(w, "float32", False), cuda(b, "float32", False)
            rm = ember.zeros(c, device="cuda")
            rv = ember.ones(c, device="cuda")
            nbt = ember.zeros((), dtype=ember.int64, device="cuda")
            y = _batch_norm(xt, rm, rv, wt, bt, True, 0.1, 1e-5, nbt, relu)
            assert _fused(y) and is_cl(y)
            y.backward(ember.tensor(g, device="cuda").to(y.dtype))
            assert (xt.grad is not None) == want_dx
            out += [host(t) for t in (y, wt.grad, bt.grad, rm, rv, nbt)]
            if want_dx:
                out.append(host(xt.grad))
        assert len(calls) == (4 if coop else 0)
        runs[coop] = out
    for a, b_ in zip(runs[True], runs[False]):
        np.testing.assert_array_equal(a, b_)
    ry, rdx, rdw, rdb, rmean, rvar = _bn_ref(x, w, b,
                                             np.where(runs[True][0] > 0, g, 0) if relu else g)
    tol = TOL[dtype]
    np.testing.assert_allclose(runs[True][0], np.maximum(ry, 0) if relu else ry, rtol=tol,
                               atol=tol * 4)
    np.testing.assert_allclose(runs[True][6], rdx, rtol=tol, atol=tol * 4)
    n = x.size // c
    np.testing.assert_allclose(runs[True][1], rdw, rtol=tol, atol=tol * np.sqrt(n) * 2)
    np.testing.assert_allclose(runs[True][2], rdb, rtol=tol, atol=tol * np.sqrt(n) * 2)
    # the running update inside the cooperative finalize, both calls
    for k in (3, 10):
        np.testing.assert_allclose(runs[True][k], 0.1 * rmean, rtol=tol, atol=1e-3)
        np.testing.assert_allclose(runs[True][k + 1], 0.9 + 0.1 * rvar * n / (n - 1),
                                   rtol=tol, atol=1e-3)
    assert runs[True][5] == 1 and runs[True][12] == 1


def test_batch_norm_captured_in_a_graph_takes_the_three_launches(monkeypatch):
    # under stream capture the cooperative kernel is not used (a captured step replays the
    # three kernels faster); the replayed output matches an eager call
    from ember.backend.cuda_ops import _nvrtc
    calls = []
    real = _nvrtc._CoopLauncher.__call__
    monkeypatch.setattr(_nvrtc._CoopLauncher, "__call__",
                        lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    bn = ember.nn.BatchNorm2d(32).to("cuda")
    a = rounded(np.random.default_rng(6).standard_normal((8, 32, 9, 9)), "bfloat16")
    x = cuda(a, "bfloat16", True, grad=False)
    eager = host(bn(x))
    assert calls
    ry = _bn_ref(a, None, None, np.zeros_like(a))[0]
    np.testing.assert_allclose(eager, ry, rtol=TOL["bfloat16"], atol=TOL["bfloat16"] * 4)
    g = ember.cuda.CUDAGraph()
    s = ember.cuda.Stream()
    with ember.cuda.stream(s):
        bn(x)   # warm up on the side stream (not captured: cooperative)
    ember.cuda.synchronize()
    del calls[:]
    with ember.cuda.graph(g):
        y = bn(x)
    g.replay()
    ember.cuda.synchronize()
    assert not calls
    np.testing.assert_array_equal(host(y), eager)


# ---------------------------------------------------------------------- relu / add / in-place
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cl", [False, True])
def test_relu_keeps_layout_nan_and_inplace(dtype, cl):
    rng = np.random.default_rng(2)
    x = rounded(rng.standard_normal((3, 8, 5, 6)), dtype)
    x[0, 0, 0, :3] = [np.nan, -0.0, np.inf]
    g = rounded(rng.standard_normal(x.shape), dtype)
    g[0, 1, 0, 0] = np.inf                      # where relu clips, the gradient is 0 (not NaN)
    x[0, 1, 0, 0] = -1.0
    xt = cuda(x, dtype, cl)
    y = F.relu(xt)
    assert _fused(y) and is_cl(y) == cl
    y.backward(ember.tensor(g, device="cuda").to(y.dtype))
    np.testing.assert_array_equal(host(y), np.where(np.isnan(x), x, np.maximum(x, 0)))
    # torch's threshold_backward: 0 where the output is <= 0; a NaN output passes the gradient
    np.testing.assert_array_equal(host(xt.grad), np.where(x <= 0, 0, g))
    # in place, after a differentiable op (the saved output is aliased by the write)
    xt = cuda(x, dtype, cl)
    h = xt + xt                                   # keeps the layout (same-layout add)
    out = F.relu(h, inplace=True)
    assert out is h and is_cl(h) == cl
    (out * out).sum().backward()                  # NaN in the loss: the root gradient is 1
    ref = np.where(np.isnan(x), x, np.maximum(2 * x, 0))
    np.testing.assert_allclose(host(xt.grad), np.where(x <= 0, 0, 4 * ref), rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_add_same_channels_last_layout_and_inplace(dtype):
    rng = np.random.default_rng(3)
    a, b = (rounded(rng.standard_normal((2, 16, 7, 9)), dtype) for _ in range(2))
    at, bt = cuda(a, dtype, True), cuda(b, dtype, True)
    s = at + bt
    assert _fused(s) and is_cl(s)
    np.testing.assert_allclose(host(s), rounded(a + b, dtype), rtol=TOL[dtype])
    (s * ember.tensor(np.arange(s.numel(), dtype=np.float32).reshape(s.shape),
                      device="cuda").to(s.dtype)).sum().backward()
    w = rounded(np.arange(s.numel(), dtype=np.float64).reshape(s.shape), dtype)
    np.testing.assert_allclose(host(at.grad), w, rtol=TOL[dtype])
    np.testing.assert_allclose(host(bt.grad), w, rtol=TOL[dtype])
    # in place: out += identity (ResNet's residual), layout and values kept
    at, bt = cuda(a, dtype, True), cuda(b, dtype, True)
    h = at + at
    h += bt
    assert is_cl(h)
    np.testing.assert_allclose(host(h), rounded(rounded(2 * a, dtype) + b, dtype),
                               rtol=TOL[dtype])
    h.sum().backward()
    np.testing.assert_array_equal(host(bt.grad), np.ones(b.shape))
    np.testing.assert_array_equal(host(at.grad), 2 * np.ones(b.shape))
    # C-contiguous operands of a kernel dtype take the flat kernel too (odd size: the tail)
    c1, c2 = cuda(a[:, :, :, :7], dtype, False), cuda(b[:, :, :, :7], dtype, False)
    cs = c1.contiguous() + c2.contiguous()
    np.testing.assert_allclose(host(cs), rounded(a[:, :, :, :7] + b[:, :, :, :7], dtype),
                               rtol=TOL[dtype])
    # mixed layouts and broadcasting still work (the generic path)
    m = at + cuda(b, dtype, False)
    np.testing.assert_allclose(host(m), rounded(a + b, dtype), rtol=TOL[dtype])
    np.testing.assert_allclose(host(at + bt[:, :, :1, :1]), rounded(a + b[:, :, :1, :1],
                                                                     dtype), rtol=TOL[dtype])


# ---------------------------------------------------------------------- max pooling
CASES = [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2),
         dict(kernel_size=3, stride=2, ceil_mode=True), dict(kernel_size=3, stride=1,
                                                              padding=1, dilation=2),
         dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0))]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("c", [5, 16])  # 16: the 16-byte vector kernels when channels-last
def test_max_pool2d_against_torch(dtype, cl, case, c):
    torch = pytest.importorskip("torch")
    kw = CASES[case]
    rng = np.random.default_rng(4)
    x = rounded(rng.integers(-8, 8, (2, c, 9, 11)).astype(np.float64), dtype)  # ties
    x[0, 0, 0, 0] = np.nan
    x[1, 2, 3, 3:5] = np.nan
    xt = cuda(x, dtype, cl)
    y, idx = F.max_pool2d(xt, return_indices=True, **kw)
    assert _fused(y) and is_cl(y) == cl
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ty, tidx = torch.nn.functional.max_pool2d(tx, return_indices=True, **kw)
    np.testing.assert_array_equal(host(y), ty.detach().numpy())
    np.testing.assert_array_equal(idx.cpu().numpy(), tidx.numpy())
    g = rounded(rng.standard_normal(tuple(ty.shape)), dtype)
    y.backward(ember.tensor(g, device="cuda").to(y.dtype))
    ty.backward(torch.tensor(g))
    assert is_cl(xt.grad) == cl
    np.testing.assert_allclose(host(xt.grad), tx.grad.numpy(), rtol=TOL[dtype],
                               atol=TOL[dtype] * 4)


def test_max_pool2d_double_backward_uses_generic_formula():
    x = np.random.default_rng(5).standard_normal((2, 3, 6, 6))
    res = []
    for dev in ("cuda", "cpu"):
        t = ember.tensor(x.astype(np.float32), device=dev, requires_grad=True)
        y = F.max_pool2d(t, 3, 2, 1)
        (gx,) = ember.autograd.grad((y * y).sum(), t, create_graph=True)
        (gx * gx).sum().backward()
        res.append((host(gx), host(t.grad)))
    for a, b in zip(*res):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------- a ResNet block step
def _block_grads(dev: str, x: np.ndarray, amp: bool) -> list:
    ember.manual_seed(0)
    nn = ember.nn
    net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                        nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
                        nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
    net = net.to(dev).to(memory_format=ember.channels_last)
    xt = ember.tensor(x, device=dev).to(memory_format=ember.channels_last)
    w = ember.tensor(np.random.default_rng(7).standard_normal((4, 16, 6, 6)).astype(np.float32),
                     device=dev)
    with ember.autocast(dev, dtype=ember.bfloat16, enabled=amp):
        h = net(xt)
        h += h.detach()                                   # the residual add, in place
        out = (F.relu(h, inplace=True).float() * w).mean()
    out.backward()
    if dev == "cuda":
        wt = net[0].weight
        assert tuple(wt.grad.stride()) == tuple(wt.stride())   # the layout contract
    return [host(p.grad) for p in net.parameters()] + [host(m.running_var) for m in
                                                         (net[1], net[5])]


def test_channels_last_block_matches_cpu():
    x = np.random.default_rng(6).standard_normal((4, 8, 12, 12)).astype(np.float32)
    ref = _block_grads("cpu", x, False)
    flags = ember.backends.cudnn
    tf32, flags.allow_tf32 = flags.allow_tf32, False   # exact float32 convolutions
    try:
        got = _block_grads("cuda", x, False)
    finally:
        flags.allow_tf32 = tf32
    for a, b in zip(got, ref):                                # float32: tight
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4 * max(np.abs(b).max(), 1e-3))
    for a, b in zip(_block_grads("cuda", x, True), ref):      # bf16 autocast: relative L2
        assert np.linalg.norm(a - b) <= 0.2 * np.linalg.norm(b) + 1e-6   # bf16 noise ~0.1


def test_cast_on_device_backward_casts_back_keeping_layout():
    rng = np.random.default_rng(8)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    g = rng.standard_normal(w.shape)
    wt = cuda(w, "float32", True)
    h = wt.to(ember.bfloat16)
    assert _fused(h) and is_cl(h) and h.dtype is ember.bfloat16
    h.backward(ember.tensor(g, device="cuda").to(ember.bfloat16))
    assert wt.grad.dtype is ember.float32 and tuple(wt.grad.stride()) == tuple(wt.stride())
    np.testing.assert_allclose(host(wt.grad), rounded(g, "bfloat16"), rtol=0)
    np.testing.assert_allclose(host(h), rounded(w, "bfloat16"), rtol=0)
    # double backward: the generic cast backward on the same node
    x = ember.tensor(w, device="cuda", requires_grad=True)
    y = (x.to(ember.float16) ** 2).sum()
    (gx,) = ember.autograd.grad(y, x, create_graph=True)
    assert gx.dtype is ember.float32
    gx.sum().backward()
    np.testing.assert_allclose(host(x.grad), np.full(w.shape, 2.0), rtol=0)
    # device moves keep the generic op
    assert not _fused(ember.randn(3, device="cuda", requires_grad=True).to("cpu"))


def test_multi_tensor_sgd_takes_channels_last_weights():
    # ResNet's conv weights are channels-last: the multi-tensor kernel must update them in
    # their own memory order (before, they fell back to one launch per parameter)
    rng = np.random.default_rng(9)
    w0 = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    b0 = rng.standard_normal(8).astype(np.float32)
    grads = [(rng.standard_normal(w0.shape).astype(np.float32),
              rng.standard_normal(b0.shape).astype(np.float32)) for _ in range(3)]
    w = cuda(w0, "float32", True)
    b = ember.tensor(b0, device="cuda", requires_grad=True)
    opt = ember.optim.SGD([w, b], lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)
    ref = [w0.astype(np.float64), b0.astype(np.float64)]
    bufs: list = [None, None]
    for gw, gb in grads:
        w.grad = ember.tensor(gw, device="cuda").to(memory_format=ember.channels_last)
        b.grad = ember.tensor(gb, device="cuda")
        opt.step()
        for i, g in enumerate((gw, gb)):
            d = g + 1e-2 * ref[i]
            bufs[i] = d if bufs[i] is None else 0.9 * bufs[i] + d
            ref[i] = ref[i] - 0.1 * (d + 0.9 * bufs[i])
    assert opt.__dict__.get("_multi_tensor_plans")          # the kernel path ran
    assert is_cl(w) and is_cl(opt.state[w]["momentum_buffer"])
    np.testing.assert_allclose(host(w), ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(host(b), ref[1], rtol=1e-5, atol=1e-5)


def test_inplace_relu_and_add_write_into_self():
    # relu_ and add_ write straight into self's memory (no out-of-place result copied back);
    # autograd, version counters, views and overlapping operands keep torch's semantics
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 8, 5, 6)).astype(np.float32)
    xt = cuda(x, "float32", True)
    h = xt + xt                                  # channels-last (the same-layout add)
    ptr = h.data_ptr()
    assert F.relu(h, inplace=True) is h and h.data_ptr() == ptr and is_cl(h)
    np.testing.assert_array_equal(host(h), np.maximum(2 * x, 0))
    (h * h).sum().backward()
    np.testing.assert_allclose(host(xt.grad), np.where(x > 0, 8 * x, 0), rtol=1e-6)
    k = h.detach().clone(memory_format=ember.channels_last)
    ptr = k.data_ptr()
    k.add_(k)                                    # the same array on both sides
    assert k.data_ptr() == ptr
    np.testing.assert_array_equal(host(k), 2 * np.maximum(2 * x, 0))
    # relu_ saved its output (self): a later in-place change is caught at backward
    xt = cuda(x, "float32", False)
    y = (xt * 1).relu_()
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    # a dense view: the base's history scatters the view's gradient (CopySlices)
    xt = cuda(x, "float32", False)
    b = xt * 1
    b[1].relu_()
    (b * ember.tensor(x, device="cuda")).sum().backward()
    ref = x.copy()
    ref[1] = np.where(x[1] > 0, x[1], 0)
    np.testing.assert_allclose(host(xt.grad), ref, rtol=1e-6)
    # partially overlapping operands read the old values (NumPy's and torch's result)
    v = np.arange(10, dtype=np.float32)
    t = ember.tensor(v, device="cuda")
    t[1:] += t[:-1]
    w = v.copy()
    w[1:] += w[:-1].copy()
    np.testing.assert_array_equal(t.cpu().numpy(), w)


def test_channels_last_leaf_gradients_are_stolen_only_when_unshared():
    # a permuted view of a fresh block becomes the leaf's gradient without a copy; a view
    # of an array that another gradient holds is copied
    rng = np.random.default_rng(11)
    w0 = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    x = ember.tensor(rng.standard_normal((2, 4, 6, 6)).astype(np.float32), device="cuda")
    w = cuda(w0, "float32", True)
    for k in (1, 2):                           # the second backward accumulates
        with ember.autocast("cuda", dtype=ember.bfloat16):
            y = F.conv2d(x.to(memory_format=ember.channels_last), w, padding=1)
        y.float().sum().backward()
        assert is_cl(w.grad)
        if k == 1:
            first = host(w.grad)
    np.testing.assert_allclose(host(w.grad), 2 * first, rtol=1e-6)
    a = ember.tensor(rng.standard_normal((4, 5)).astype(np.float32), device="cuda").t()
    a = a.detach().requires_grad_()            # a transposed (column-major) leaf
    c = ember.zeros(4, 5, device="cuda", requires_grad=True)
    (a.t() + c).sum().backward()               # both gradients come from one array
    c.grad.add_(1)
    np.testing.assert_array_equal(host(a.grad), np.ones((5, 4)))
    np.testing.assert_array_equal(host(c.grad), np.full((4, 5), 2.0))


@pytest.mark.parametrize("shape, perm", [((4, 6, 5, 3), (0, 2, 3, 1)), ((2, 1, 7, 1), (0, 2, 3, 1)),
                                         ((3, 4, 5), (0, 1, 2)), ((2, 3, 4, 5, 6), (0, 2, 3, 4, 1))])
@pytest.mark.parametrize("dtype", [None, "float32"])
def test_layout_empty_like_repeats_its_first_geometry(shape, perm, dtype):
    """``empty_like`` keeps a geometry's strides after its first call and then allocates
    one block with them: the kept path must give what the layout analysis gave."""
    import cupy
    from ember.backend.cuda_ops import _layout as L
    from ember.backend.cuda_ops import cudnn_conv
    phys = tuple(shape[i] for i in perm)
    a = cupy.arange(int(np.prod(shape)), dtype=cupy.float16).reshape(phys).transpose(
        tuple(perm.index(i) for i in range(len(shape))))
    L._LIKE.clear()
    first, again = L.empty_like(cupy, a, dtype), L.empty_like(cupy, a, dtype)
    for out in (first, again):
        assert out.shape == a.shape and out.dtype == (a.dtype if dtype is None else dtype)
        assert out.base is None or out.data.ptr == out.base.data.ptr
        assert L.dense_order(out) == L.dense_order(a)
    assert again.strides == first.strides and again.data.ptr != first.data.ptr
    again[...] = a   # writable and dense: every element lands and reads back
    np.testing.assert_array_equal(cupy.asnumpy(again), cupy.asnumpy(a).astype(again.dtype))
    if len(shape) >= 4:   # the convolution's channels-last outputs
        c1 = cudnn_conv._empty(cupy, shape, "cl", cupy.dtype(cupy.float16))
        c2 = cudnn_conv._empty(cupy, shape, "cl", cupy.dtype(cupy.float16))
        assert c1.strides == c2.strides and L.is_channels_last(c2) == L.is_channels_last(c1)
