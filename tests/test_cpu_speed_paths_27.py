"""CPU fast paths of the MLP / LeNet training steps against torch: the small cross_entropy
(numba rows kernel, flat-index backward scatter, scalar row scale, the meta rule's classifier
shortcut), with the cases each shortcut must leave to the general code (ignored targets,
weights, smoothing, non-contiguous or float64 logits, 1-D input, retained graphs), with and
without the numba kernels."""
from __future__ import annotations

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")
RNG = np.random.default_rng(27)


@pytest.fixture(params=["numba", "numpy"])
def kernels(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setenv("EMBER_NUMBA", "0")
    return request.param


def _ce_pair(x, t, *, transpose=False, grad_w=None, backward=2, **kw):
    """cross_entropy on torch and ember: loss values and input gradients (``backward``
    passes through a retained graph, each with its own upstream weight)."""
    out = {}
    for m in (torch, ember):
        xt = m.tensor(x.T.copy() if transpose else x)
        xt = xt.t() if transpose else xt
        leaf = xt
        leaf.requires_grad_(True) if not transpose else None
        if transpose:
            base = m.tensor(x.T.copy(), requires_grad=True)
            xt = base.t()
            leaf = base
        tt = m.tensor(t)
        kws = dict(kw)
        if "weight" in kws:
            kws["weight"] = m.tensor(kws["weight"])
        loss = m.nn.functional.cross_entropy(xt, tt, **kws)
        grads = []
        for k in range(backward):
            up = (m.tensor(np.linspace(0.5, 1.5, max(loss.numel(), 1)).reshape(tuple(loss.shape))
                           .astype(x.dtype)) if grad_w is None else m.tensor(grad_w))
            leaf.grad = None
            (loss * (up + k)).sum().backward(retain_graph=k + 1 < backward)
            grads.append(leaf.grad.numpy().copy())
        out[m.__name__] = (loss.detach().numpy().copy(), grads, str(loss.dtype).split(".")[-1])
    return out["torch"], out["ember"]


def _close(te, ee, tol):
    (tl, tg, tdt), (el, eg, edt) = te, ee
    assert tdt == edt
    np.testing.assert_allclose(el, tl, rtol=tol, atol=tol, equal_nan=True)
    for a, b in zip(eg, tg):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignored", ["none", "some", "all"])
def test_small_ce_reductions_and_ignore_index(kernels, reduction, ignored):
    x = RNG.standard_normal((128, 10)).astype(np.float32) * 3
    t = RNG.integers(0, 10, 128)
    if ignored == "some":
        t[::7] = -100
    elif ignored == "all":
        t[:] = -100
    te, ee = _ce_pair(x, t, reduction=reduction)
    _close(te, ee, 2e-6)


@pytest.mark.parametrize("ignore_index", [3, -1])
def test_small_ce_custom_ignore_index(kernels, ignore_index):
    x = RNG.standard_normal((64, 10)).astype(np.float32)
    t = RNG.integers(0, 10, 64)
    t[::5] = ignore_index if ignore_index >= 0 else -1
    te, ee = _ce_pair(x, t, ignore_index=ignore_index)
    _close(te, ee, 2e-6)


@pytest.mark.parametrize("case", ["weight", "smoothing", "weight+smoothing"])
def test_small_ce_weighted_and_smoothed(kernels, case):
    x = RNG.standard_normal((50, 7)).astype(np.float32)
    t = RNG.integers(0, 7, 50)
    t[::9] = -100
    kw = {}
    if "weight" in case:
        kw["weight"] = RNG.uniform(0.2, 2.0, 7).astype(np.float32)
    if "smoothing" in case:
        kw["label_smoothing"] = 0.1
    for reduction in ("mean", "sum", "none"):
        te, ee = _ce_pair(x, t, reduction=reduction, **kw)
        _close(te, ee, 3e-6)


def test_small_ce_transposed_logits(kernels):
    # a non-contiguous (N, C) view: the probabilities follow its layout, so the backward's
    # flat-index scatter must not be used on them
    x = RNG.standard_normal((32, 10)).astype(np.float32)
    t = RNG.integers(0, 10, 32)
    t[3] = -100
    for reduction in ("mean", "none"):
        te, ee = _ce_pair(x, t, transpose=True, reduction=reduction)
        _close(te, ee, 2e-6)


def test_small_ce_float64_and_1d(kernels):
    x = RNG.standard_normal((40, 6))
    t = RNG.integers(0, 6, 40)
    te, ee = _ce_pair(x, t)
    _close(te, ee, 1e-12)
    x1 = RNG.standard_normal(6).astype(np.float32)
    for tgt in (np.int64(2), np.int64(-100)):
        te, ee = _ce_pair(x1, np.array(tgt))
        _close(te, ee, 2e-6)


def test_small_ce_extreme_logits(kernels):
    # rows with inf / -inf / nan take the NumPy code: torch's values and gradients
    x = RNG.standard_normal((8, 5)).astype(np.float32)
    x[1, 2] = np.inf
    x[2, :] = -np.inf
    x[3, 0] = np.nan
    x[4] *= 1e30
    t = np.array([0, 2, 1, 0, 4, 3, 2, 1])
    te, ee = _ce_pair(x, t, reduction="none", backward=1)
    _close(te, ee, 2e-6)


def test_small_ce_double_backward_and_errors(kernels):
    x = RNG.standard_normal((6, 4))
    t = RNG.integers(0, 4, 6)
    res = {}
    for m in (torch, ember):
        xt = m.tensor(x, requires_grad=True)
        loss = m.nn.functional.cross_entropy(xt, m.tensor(t))
        (g,) = m.autograd.grad(loss, xt, create_graph=True)
        (gg,) = m.autograd.grad((g * g).sum(), xt)
        res[m.__name__] = (g.detach().numpy(), gg.numpy())
    for a, b in zip(res["ember"], res["torch"]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    x32 = ember.randn(5, 3)
    with pytest.raises(IndexError):
        ember.nn.functional.cross_entropy(x32, ember.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError):
        ember.nn.functional.cross_entropy(x32, ember.tensor([0, 1, 2, 0, 1]), reduction="avg")
    with pytest.raises(RuntimeError):
        ember.nn.functional.cross_entropy(x32, ember.tensor([0, 1, 2, 0, 1]),
                                          label_smoothing=1.5)
    with pytest.raises(ValueError):
        ember.nn.functional.cross_entropy(x32, ember.tensor([0, 1, 2, 0]))
    with pytest.raises(RuntimeError):
        ember.nn.functional.cross_entropy(ember.randn(5, 3, dtype=ember.float64).int(),
                                          ember.tensor([0, 1, 2, 0, 1]))


# ---------------------------------------------------------------------- conv input gradient
@pytest.mark.parametrize("case", [
    dict(x=(37, 6, 14, 14), w=(16, 6, 5, 5)),                       # LeNet conv2, a remainder chunk
    dict(x=(64, 1, 28, 28), w=(6, 1, 5, 5), padding=2),             # LeNet conv1
    dict(x=(9, 3, 11, 9), w=(4, 3, 3, 2), padding=(1, 2), dilation=(2, 1)),
    dict(x=(5, 2, 7, 8, 6), w=(3, 2, 2, 3, 2), padding=1),          # 3-d
    dict(x=(200, 2, 6, 6), w=(3, 2, 3, 3), padding=1),              # many samples per chunk
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv_input_grad_flat_layout(case, dtype):
    # stride-1 convs take the flat layout, whose product runs per sample over the valid
    # columns only (the rest of each pitch stays zero): gradients against torch
    case = dict(case)
    xs, ws = case.pop("x"), case.pop("w")
    x = RNG.standard_normal(xs).astype(dtype)
    w = RNG.standard_normal(ws).astype(dtype) * 0.3
    b = RNG.standard_normal(ws[0]).astype(dtype)
    res = {}
    for m in (torch, ember):
        conv = getattr(m.nn.functional, f"conv{len(xs) - 2}d")
        xt, wt, bt = (m.tensor(a, requires_grad=True) for a in (x, w, b))
        y = conv(xt, wt, bt, **case)
        up = m.tensor(np.cos(np.arange(y.numel())).reshape(tuple(y.shape)).astype(dtype))
        (y * up).sum().backward()
        res[m.__name__] = [t.numpy() for t in (y.detach(), xt.grad, wt.grad, bt.grad)]
    tol = 2e-4 if dtype == "float32" else 1e-10
    for a, t in zip(res["ember"], res["torch"]):
        np.testing.assert_allclose(a, t, rtol=tol, atol=tol)


def test_conv_input_grad_repeated_calls_keep_zero_columns():
    # the zero columns of the flat product's work array are set once per plan: another pass
    # using other work arrays in between (forward, weight gradient of another shape) must
    # not leave garbage there
    x1 = RNG.standard_normal((20, 6, 14, 14)).astype(np.float32)
    w1 = RNG.standard_normal((16, 6, 5, 5)).astype(np.float32)
    x2 = RNG.standard_normal((20, 3, 9, 9)).astype(np.float32)
    w2 = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    for _ in range(3):
        for x, w, pad in ((x1, w1, 0), (x2, w2, 1), (x1, w1, 2)):
            res = {}
            for m in (torch, ember):
                xt = m.tensor(x, requires_grad=True)
                m.nn.functional.conv2d(xt, m.tensor(w), padding=pad).square().sum().backward()
                res[m.__name__] = xt.grad.numpy()
            np.testing.assert_allclose(res["ember"], res["torch"], rtol=2e-4, atol=2e-3)


# ---------------------------------------------------------------------- max pool backward
@pytest.mark.parametrize("case", [
    dict(kernel_size=2),                                         # LeNet: disjoint windows
    dict(kernel_size=3, stride=1, padding=1),                    # overlapping: scatter-add
    dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=2, stride=1, dilation=2),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_max_pool_backward_array_path(case, dtype):
    x = RNG.standard_normal((3, 4, 11, 10)).astype(dtype)
    x[0, 0, :4, :4] = 1.0            # ties: the first maximum takes the gradient
    x[1, 2, 3, 3] = np.nan
    res = {}
    for m in (torch, ember):
        xt = m.tensor(x, requires_grad=True)
        y = m.nn.functional.max_pool2d(xt, **case)
        up = m.tensor(np.sin(np.arange(y.numel())).reshape(tuple(y.shape)).astype(dtype))
        (y * up).sum().backward()
        res[m.__name__] = (y.detach().numpy(), xt.grad.numpy())
    for a, t in zip(res["ember"], res["torch"]):
        np.testing.assert_allclose(a, t, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_max_pool_double_backward_and_saved_index_check():
    x = RNG.standard_normal((2, 3, 6, 6))
    res = {}
    for m in (torch, ember):
        xt = m.tensor(x, requires_grad=True)
        y = m.nn.functional.max_pool2d(xt, 2, stride=1)
        (g,) = m.autograd.grad(y.square().sum(), xt, create_graph=True)
        (gg,) = m.autograd.grad(g.sum(), xt)
        res[m.__name__] = (g.detach().numpy(), gg.numpy())
    for a, t in zip(res["ember"], res["torch"]):
        np.testing.assert_allclose(a, t, rtol=1e-12, atol=1e-12)
    # the indices are a saved output: changing them in place must fail the backward
    xt = ember.tensor(x, requires_grad=True)
    y, idx = ember.nn.functional.max_pool2d(xt, 2, return_indices=True)
    idx.zero_()
    with pytest.raises(RuntimeError, match="inplace"):
        y.sum().backward()


def test_conv_wrapper_checks_still_raise():
    # the functional wrapper formats its messages only on failure: errors and the unbatched
    # path unchanged (torch's types)
    F = ember.nn.functional
    w = ember.randn(4, 3, 3, 3)
    with pytest.raises(TypeError, match="must be Tensor"):
        F.conv2d(np.zeros((1, 3, 5, 5)), w)
    with pytest.raises(TypeError, match="must be Tensor"):
        F.conv2d(ember.randn(1, 3, 5, 5), np.zeros((4, 3, 3, 3)))
    with pytest.raises(RuntimeError, match="weight expects 4 dims"):
        F.conv2d(ember.randn(1, 3, 5, 5), ember.randn(4, 3, 3))
    with pytest.raises(RuntimeError, match="Expected 3D"):
        F.conv2d(ember.randn(5, 5), w)
    x = RNG.standard_normal((3, 6, 7)).astype(np.float32)
    wa = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    out = F.conv2d(ember.tensor(x), ember.tensor(wa), padding=1).numpy()
    ref = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(wa), padding=1).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
