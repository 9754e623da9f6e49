"""The CPU fast paths behind the LeNet benchmark step (relu's SIMD forward and one-op
backward, convolution's array backward with the bias gradient fused into the weight pass,
max pooling) against torch: values and gradients, float32 and float64, odd shapes, and the
values those rewrites could get wrong (NaN, infinities, ties, non-contiguous inputs)."""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn.functional as F

torch = pytest.importorskip("torch")
# CPU kernels (NumPy fast paths); under EMBER_TEST_DEVICE=cuda the GPU ones are tested in
# tests/test_cuda_*.py instead
pytestmark = pytest.mark.host_only
TF = torch.nn.functional

# float32 sums over a whole batch (a conv weight gradient adds ~50k products) differ from
# torch's in the last bits relative to the largest entry, so atol scales with it
TOL = {"float32": 2e-5, "float64": 1e-10}


def _pair(a: np.ndarray, grad: bool = True) -> tuple:
    return (ember.tensor(a, requires_grad=grad), torch.tensor(a, requires_grad=grad))


def _close(e, t, dtype: str) -> None:
    e = e.detach().numpy() if isinstance(e, ember.Tensor) else e
    t = t.detach().numpy() if isinstance(t, torch.Tensor) else t
    scale = max(1.0, float(np.abs(t).max())) if t.size else 1.0
    np.testing.assert_allclose(e, t, rtol=TOL[dtype], atol=TOL[dtype] * scale)


# ---------------------------------------------------------------------- relu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(7,), (64, 6, 28, 28), (3, 70001), (5000, 3)])
@pytest.mark.parametrize("layout", ["c", "f", "strided"])
def test_relu_values_and_gradient(dtype, shape, layout):
    rng = np.random.default_rng(1)
    a = rng.standard_normal(shape).astype(dtype)
    a.reshape(-1)[::7] = 0.0  # exact zeros: relu's gradient there is 0
    e, t = _pair(a)
    if layout == "f":
        ei, ti = e.permute(*reversed(range(e.ndim))), t.permute(*reversed(range(t.ndim)))
    elif layout == "strided":
        ei, ti = e[..., ::2], t[..., ::2]
    else:
        ei, ti = e, t
    y, yt = ember.relu(ei), torch.relu(ti)
    np.testing.assert_array_equal(y.detach().numpy(), yt.detach().numpy())
    assert y.dtype == getattr(ember, dtype)
    g = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    y.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_array_equal(e.grad.numpy(), t.grad.numpy())


def test_relu_special_values_match_torch():
    vals = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 3.0, -3.0],
                    dtype=np.float32)
    a = np.tile(vals, 1000)  # above the fast path's size threshold
    e, t = _pair(a)
    y, yt = ember.relu(e), torch.relu(t)
    np.testing.assert_array_equal(y.detach().numpy(), yt.detach().numpy())
    g = np.ones_like(a)
    y.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_array_equal(e.grad.numpy(), t.grad.numpy())


def test_relu_inplace_and_module():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((64, 6, 28, 28)).astype(np.float32)
    e = ember.tensor(a)
    out = F.relu(e, inplace=True)
    assert out is e
    np.testing.assert_array_equal(e.numpy(), np.maximum(a, 0))
    np.testing.assert_array_equal(ember.nn.ReLU()(ember.tensor(a)).numpy(), np.maximum(a, 0))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_relu_double_backward_matches_torch(dtype):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 130)).astype(dtype)
    g = rng.standard_normal((40, 130)).astype(dtype)
    e, t = _pair(a)
    ge, gt = _pair(g)
    (dxe,) = ember.autograd.grad(ember.relu(e) ** 2, e, ge, create_graph=True)
    (dxt,) = torch.autograd.grad(torch.relu(t) ** 2, t, gt, create_graph=True)
    _close(dxe, dxt, dtype)
    dxe.sum().backward()
    dxt.sum().backward()
    _close(e.grad, t.grad, dtype)
    _close(ge.grad, gt.grad, dtype)


# ---------------------------------------------------------------------- convolution
CONV_CASES = [
    # (input shape, weight shape, stride, padding, dilation, groups)
    ((64, 1, 28, 28), (6, 1, 5, 5), 1, 2, 1, 1),      # LeNet conv1
    ((64, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1, 1),     # LeNet conv2
    ((3, 4, 9, 11), (5, 4, 3, 2), 1, (1, 0), 1, 1),   # odd sizes, asymmetric kernel
    ((2, 4, 13, 10), (6, 2, 3, 3), 2, 1, 1, 2),       # stride 2, groups
    ((5, 3, 12, 12), (4, 3, 3, 3), 1, 2, 2, 1),       # dilation
    ((70, 2, 7, 7), (3, 2, 3, 3), 1, 1, 1, 1),        # several batch chunks plus a remainder
    ((3, 2, 17), (4, 2, 4), 1, 1, 1, 1),              # conv1d
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[0])))
@pytest.mark.parametrize("bias", [True, False])
def test_conv_values_and_gradients_match_torch(dtype, case, bias):
    xs, ws, s, p, d, groups = case
    rng = np.random.default_rng(4)
    xa = rng.standard_normal(xs).astype(dtype)
    wa = (rng.standard_normal(ws) * 0.3).astype(dtype)
    ba = rng.standard_normal(ws[0]).astype(dtype) if bias else None
    fe = F.conv1d if len(xs) == 3 else F.conv2d
    ft = TF.conv1d if len(xs) == 3 else TF.conv2d
    xe, xt = _pair(xa)
    we, wt = _pair(wa)
    be, bt = _pair(ba) if bias else (None, None)
    y = fe(xe, we, be, stride=s, padding=p, dilation=d, groups=groups)
    yt = ft(xt, wt, bt, stride=s, padding=p, dilation=d, groups=groups)
    _close(y, yt, dtype)
    g = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    y.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    _close(xe.grad, xt.grad, dtype)
    _close(we.grad, wt.grad, dtype)
    if bias:
        _close(be.grad, bt.grad, dtype)


@pytest.mark.parametrize("need", ["weight", "bias", "input", "weight+bias"])
def test_conv_gradients_of_a_subset(need):
    rng = np.random.default_rng(5)
    xa = rng.standard_normal((9, 3, 12, 12)).astype(np.float32)
    wa = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    ba = rng.standard_normal(4).astype(np.float32)
    xe, xt = _pair(xa, "input" in need)
    we, wt = _pair(wa, "weight" in need)
    be, bt = _pair(ba, "bias" in need)
    y = F.conv2d(xe, we, be, padding=1)
    yt = TF.conv2d(xt, wt, bt, padding=1)
    g = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    y.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    for e, t in ((xe, xt), (we, wt), (be, bt)):
        assert (e.grad is None) == (t.grad is None)
        if t.grad is not None:
            _close(e.grad, t.grad, "float32")


def test_conv_bias_gradient_ignores_inf_free_garbage_and_keeps_infs():
    # An inf in the input reaches the weight gradient (inf or nan, as torch) but must not
    # leak into the bias gradient, which only sums the output gradient.
    rng = np.random.default_rng(6)
    xa = rng.standard_normal((4, 2, 10, 10)).astype(np.float32)
    xa[1, 0, 3, 4] = np.inf
    wa = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    ba = rng.standard_normal(3).astype(np.float32)
    xe, xt = _pair(xa, False)
    we, wt = _pair(wa)
    be, bt = _pair(ba)
    y, yt = F.conv2d(xe, we, be), TF.conv2d(xt, wt, bt)
    g = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    y.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(be.grad.numpy(), bt.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.isfinite(we.grad.numpy()), np.isfinite(wt.grad.numpy()))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv_double_backward_with_bias_matches_torch(dtype):
    rng = np.random.default_rng(7)
    xa = rng.standard_normal((3, 2, 8, 8)).astype(dtype)
    wa = rng.standard_normal((4, 2, 3, 3)).astype(dtype)
    ba = rng.standard_normal(4).astype(dtype)
    xe, xt = _pair(xa)
    we, wt = _pair(wa)
    be, bt = _pair(ba)
    ye = F.conv2d(xe, we, be, padding=1)
    yt = TF.conv2d(xt, wt, bt, padding=1)
    ge = ember.autograd.grad((ye ** 2).sum(), (xe, we, be), create_graph=True)
    gt = torch.autograd.grad((yt ** 2).sum(), (xt, wt, bt), create_graph=True)
    for a, b in zip(ge, gt):
        _close(a, b, dtype)
    sum(v.sum() for v in ge).backward()
    sum(v.sum() for v in gt).backward()
    for e, t in ((xe, xt), (we, wt), (be, bt)):
        _close(e.grad, t.grad, dtype)


# ---------------------------------------------------------------------- max pooling
POOL_CASES = [
    # (input shape, kernel, stride, padding, dilation, ceil_mode)
    ((64, 6, 28, 28), 2, None, 0, 1, False),   # LeNet pool1 (parallel over the batch)
    ((64, 16, 10, 10), 2, None, 0, 1, False),  # LeNet pool2
    ((33, 5, 11, 9), 3, 2, 1, 1, True),        # overlapping, padded, ceil mode, odd sizes
    ((40, 3, 17, 13), (3, 2), (2, 1), 0, 2, False),
]


@pytest.fixture(params=["serial", "two cores"])
def cores(request, monkeypatch):
    """Run with the machine's real spare cores, or as if two were free (the parallel parts)."""
    if request.param == "two cores":
        from ember.backend import cpu
        monkeypatch.setattr(cpu, "_spare_threads", lambda now: 2)
        monkeypatch.setitem(cpu._state, "default", 2)
    return request.param


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_max_pool_values_indices_and_gradient(dtype, case, cores):
    xs, k, s, p, d, ceil = case
    rng = np.random.default_rng(8)
    a = rng.standard_normal(xs).astype(dtype)
    a[0, 0, :2, :2] = 1.5  # ties inside a window: the first one wins
    a[1, 1].flat[::5] = np.nan  # NaN windows: the last NaN wins
    e, t = _pair(a)
    ye, ie = F.max_pool2d(e, k, s, p, d, ceil_mode=ceil, return_indices=True)
    yt, it = TF.max_pool2d(t, k, s, p, d, ceil_mode=ceil, return_indices=True)
    np.testing.assert_array_equal(ye.detach().numpy(), yt.detach().numpy())
    np.testing.assert_array_equal(ie.numpy(), it.numpy())
    g = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    ye.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    _close(e.grad, t.grad, dtype)  # overlapping windows sum in another order than torch


def test_conv_relu_pool_chain_in_parallel_matches_torch(cores):
    # LeNet's front end with every fast path on: conv (chunks), relu, pool, backward
    rng = np.random.default_rng(9)
    xa = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    wa = (rng.standard_normal((6, 1, 5, 5)) * 0.3).astype(np.float32)
    ba = rng.standard_normal(6).astype(np.float32)
    (xe, xt), (we, wt), (be, bt) = _pair(xa), _pair(wa), _pair(ba)
    ye = F.max_pool2d(ember.relu(F.conv2d(xe, we, be, padding=2)), 2)
    yt = TF.max_pool2d(torch.relu(TF.conv2d(xt, wt, bt, padding=2)), 2)
    _close(ye, yt, "float32")
    g = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    ye.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    for e, t in ((xe, xt), (we, wt), (be, bt)):
        _close(e.grad, t.grad, "float32")


def test_relu_gradient_is_a_select_for_inf_and_nan_gradients():
    # torch's threshold_backward selects: an inf/NaN gradient of a clipped element gives 0
    a = np.tile(np.array([-1.0, 0.0, 2.0, np.nan], np.float32), 2000)
    g = np.tile(np.array([np.inf, np.nan, -np.inf, 1.0], np.float32), 2000)
    e, t = _pair(a)
    ember.relu(e).backward(ember.tensor(g))
    torch.relu(t).backward(torch.tensor(g))
    np.testing.assert_array_equal(e.grad.numpy(), t.grad.numpy())


@pytest.mark.parametrize("shape", [((16, 32, 20, 20), (64, 32, 3, 3)), ((64, 6, 14, 14), (16, 6, 5, 5))])
def test_conv_backward_split_over_two_cores_matches_torch(shape, cores):
    # input and weight gradients as two tasks (and chunks split) when two cores are free;
    # the first shape's chunk GEMMs are big enough to ask for BLAS threads
    xs, ws = shape
    rng = np.random.default_rng(10)
    xa = rng.standard_normal(xs).astype(np.float32)
    wa = (rng.standard_normal(ws) * 0.1).astype(np.float32)
    ba = rng.standard_normal(ws[0]).astype(np.float32)
    (xe, xt), (we, wt), (be, bt) = _pair(xa), _pair(wa), _pair(ba)
    ye, yt = F.conv2d(xe, we, be, padding=1), TF.conv2d(xt, wt, bt, padding=1)
    _close(ye, yt, "float32")
    g = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    ye.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    for e, t in ((xe, xt), (we, wt), (be, bt)):
        _close(e.grad, t.grad, "float32")
