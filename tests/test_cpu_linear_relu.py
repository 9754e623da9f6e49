"""``nn.Sequential``'s Linear + ReLU on the CPU as one op (``_linear_activation``: the
bias add and the ReLU in one numba pass over the product, the ReLU mask and the bias
gradient's column sums in one pass backward; ``backend/cpu_linear_kernels``) and the numba
bias add of a plain Linear: values and gradients against torch, on both CPU paths (numba
kernels and NumPy, ``EMBER_NUMBA=0``); fusion only where nothing can observe the
intermediate, and never for GELU on the CPU."""
from __future__ import annotations

import math

import numpy as np
import pytest

import ember
import ember.nn.functional as F

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.host_only


def _chain(fn) -> set:
    names, stack = set(), [fn]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        names.add(type(node).__name__)
        stack.extend(e[0] for e in node.next_functions if e is not None)
    return names


def _models(dtype: str, bias_last: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = [(48, 37), (64, 48), (10, 64)]
    e = ember.nn.Sequential(ember.nn.Linear(37, 48), ember.nn.ReLU(), ember.nn.Linear(48, 64),
                            ember.nn.ReLU(inplace=True), ember.nn.Linear(64, 10, bias=bias_last))
    t = torch.nn.Sequential(torch.nn.Linear(37, 48), torch.nn.ReLU(), torch.nn.Linear(48, 64),
                            torch.nn.ReLU(inplace=True), torch.nn.Linear(64, 10, bias=bias_last))
    e = e.to(getattr(ember, dtype))
    t = t.to(getattr(torch, dtype))
    for le, lt, s in zip(e[::2], t[::2], sizes):
        w = (rng.standard_normal(s) / math.sqrt(s[1])).astype(dtype)
        le.weight.data = ember.tensor(w)
        lt.weight.data = torch.tensor(w)
        if le.bias is not None:
            b = (0.3 * rng.standard_normal(s[0])).astype(dtype)
            le.bias.data = ember.tensor(b)
            lt.bias.data = torch.tensor(b)
    return e, t


def _tol(dtype: str) -> dict:
    return dict(rtol=2e-5, atol=2e-5) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(33, 37), (4, 9, 37)])
@pytest.mark.parametrize("x_grad", [True, False])
def test_fused_sequential_matches_torch(kernel_path, dtype, shape, x_grad):
    e, t = _models(dtype)
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    xe = ember.tensor(x, requires_grad=x_grad)
    xt = torch.tensor(x, requires_grad=x_grad)
    for _ in range(2):   # two backwards on each side: accumulated grads
        ye = e(xe)
        assert "LinearActivationBackward0" in _chain(ye.grad_fn), "no fused Linear+ReLU"
        (ye * ye).sum().backward()
        yt = t(xt)
        (yt * yt).sum().backward()
    tol = _tol(dtype)
    np.testing.assert_allclose(ye.detach().numpy(), yt.detach().numpy(), **tol)
    if x_grad:
        np.testing.assert_allclose(xe.grad.numpy(), xt.grad.numpy(), **tol)
    for pe, pt in zip(e.parameters(), t.parameters()):
        np.testing.assert_allclose(pe.grad.numpy(), pt.grad.numpy(), **tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_non_finite_values_match_torch(kernel_path, dtype):
    # NaN and inf through the bias add and the ReLU; NaN outputs pass their gradient and
    # clipped elements with inf/NaN gradients give 0 (torch's threshold_backward)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 5)).astype(dtype)
    w = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal(7).astype(dtype)
    x[0, 0], x[1, 1] = math.nan, math.inf
    b[3], b[4] = -math.inf, math.inf
    g = rng.standard_normal((6, 7)).astype(dtype)
    g[2, 3], g[4, 5] = math.inf, math.nan
    outs = []
    for m in (ember, torch):
        seq = m.nn.Sequential(m.nn.Linear(5, 7), m.nn.ReLU()).to(getattr(m, dtype))
        seq[0].weight.data = m.tensor(w)
        seq[0].bias.data = m.tensor(b)
        xt = m.tensor(x, requires_grad=True)
        y = seq(xt)
        y.backward(m.tensor(g))
        outs.append([y.detach().numpy(), xt.grad.numpy(), seq[0].weight.grad.numpy(),
                     seq[0].bias.grad.numpy()])
    for a, c in zip(*outs):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(c))
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_fused_double_backward_matches_torch(kernel_path):
    e, t = _models("float64")
    x = np.random.default_rng(3).standard_normal((8, 37))
    res = []
    for m, seq in ((ember, e), (torch, t)):
        xt = m.tensor(x, requires_grad=True)
        y = seq(xt)
        (gx,) = m.autograd.grad((y * y).sum(), xt, create_graph=True)
        (gx * gx).sum().backward()
        res.append([gx.detach().numpy(), xt.grad.numpy()] +
                   [p.grad.numpy() for p in seq.parameters()])
    for a, c in zip(*res):
        np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-12)


def test_fused_noncontiguous_gradient_and_no_grad(kernel_path):
    e, t = _models("float32")
    x = np.random.default_rng(4).standard_normal((12, 37)).astype(np.float32)
    ye = e[:2](ember.tensor(x))
    yt = t[:2](torch.tensor(x))
    # the ReLU's gradient arrives transposed (not C-contiguous): the generic path
    ze = ye.t().matmul(ember.tensor(np.ones((12, 5), np.float32)))
    zt = yt.t().matmul(torch.ones(12, 5))
    ze.sum().backward()
    zt.sum().backward()
    for pe, pt in zip(e[0].parameters(), t[0].parameters()):
        np.testing.assert_allclose(pe.grad.numpy(), pt.grad.numpy(), rtol=2e-5, atol=2e-5)
    with ember.no_grad():
        ye = e(ember.tensor(x))
    assert ye.grad_fn is None
    np.testing.assert_allclose(ye.numpy(), t(torch.tensor(x)).detach().numpy(), rtol=2e-5,
                               atol=2e-5)


def test_cpu_fusion_only_where_unobservable():
    e, _ = _models("float32", bias_last=False)
    x = ember.randn(3, 37)
    assert "LinearActivationBackward0" in _chain(e(x).grad_fn)
    seen = []
    h = e[1].register_forward_hook(lambda mod, inp, out: seen.append(out))
    names = _chain(e(x).grad_fn)   # the hooked pair runs as two modules, the other fused
    assert "ReluBackward0" in names and "LinearActivationBackward0" in names
    assert len(seen) == 1
    h.remove()
    gelu = ember.nn.Sequential(ember.nn.Linear(37, 8), ember.nn.GELU(approximate="tanh"))
    assert "LinearActivationBackward0" not in _chain(gelu(x).grad_fn)   # CUDA only
    no_bias = ember.nn.Sequential(ember.nn.Linear(37, 8, bias=False), ember.nn.ReLU())
    assert "LinearActivationBackward0" not in _chain(no_bias(x).grad_fn)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_activation_op_relu_matches_torch(kernel_path, dtype, bias):
    # the op called directly: 3-D input, with and without bias, against torch's two ops
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 17, 24)).astype(dtype)
    w = rng.standard_normal((40, 24)).astype(dtype)
    b = rng.standard_normal(40).astype(dtype) if bias else None
    g = rng.standard_normal((3, 17, 40)).astype(dtype)
    res = []
    for m in (ember, torch):
        ts = [m.tensor(a, requires_grad=True) if a is not None else None for a in (x, w, b)]
        if m is ember:
            y = ember._linear_activation(*ts, "relu")
        else:
            y = torch.relu(torch.nn.functional.linear(*ts))
        y.backward(m.tensor(g))
        res.append([y.detach().numpy()] + [a.grad.numpy() for a in ts if a is not None])
    for a, c in zip(*res):
        np.testing.assert_allclose(a, c, **_tol(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linear_bias_kernel_matches_numpy_float64(kernel_path, dtype):
    # the numba bias add of a plain Linear (and its NumPy fallback), 2-D and 3-D
    rng = np.random.default_rng(7)
    for shape in ((128, 96), (2, 5, 96), (1, 96)):
        x = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal((70, 96)).astype(dtype)
        b = rng.standard_normal(70).astype(dtype)
        y = F.linear(ember.tensor(x), ember.tensor(w), ember.tensor(b)).numpy()
        want = x.astype(np.float64) @ w.T.astype(np.float64) + b
        np.testing.assert_allclose(y, want, **(dict(rtol=1e-5, atol=1e-5)
                                               if dtype == "float32" else _tol(dtype)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stride_zero_operands_match_torch(dtype):
    # sum()'s gradient reaches Linear's backward as a stride-0 array, which BLAS cannot read
    # (it is copied first); an expanded matmul operand likewise
    rng = np.random.default_rng(8)
    x = rng.standard_normal((64, 300)).astype(dtype)
    w = rng.standard_normal((200, 300)).astype(dtype)
    b = rng.standard_normal(200).astype(dtype)
    res = []
    for m in (ember, torch):
        xt, wt, bt = (m.tensor(a, requires_grad=True) for a in (x, w, b))
        m.nn.functional.linear(xt, wt, bt).sum().backward()
        res.append([xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()])
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == "float32" else _tol(dtype)
    for a, c in zip(*res):
        np.testing.assert_allclose(a, c, **tol)
    row = rng.standard_normal((1, 300)).astype(dtype)
    a = ember.tensor(row).expand(64, 300)
    got = ember.matmul(a, ember.tensor(w.T)).numpy()
    want = np.broadcast_to(row, (64, 300)).astype(np.float64) @ w.T.astype(np.float64)
    np.testing.assert_allclose(got, want, **tol)
