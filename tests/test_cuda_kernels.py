"""ember's own fused CUDA kernels (ember/backend/cuda_ops/kernels_*.py) against the CPU.

Each fused op runs forward and backward on the GPU and is compared with ember's NumPy path on
the CPU (float32 reference computed from the same rounded inputs), for float32, bfloat16 and
float16; cases the kernels do not cover must fall back to the generic code and still agree;
and the fused results must match the generic CuPy code (``cuda_ops.uninstall()``). Marked
``cuda``: skipped without a GPU.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from cuda_cases import host as _host

pytestmark = pytest.mark.cuda

DTYPES = ["float32", "bfloat16", "float16"]
TOL = {"float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}


# ---------------------------------------------------------------------- helpers
@contextlib.contextmanager
def generic_only():
    """Run the block with every CUDA implementation detached (EMBER_CUDA_IMPLS=0 style)."""
    from ember.backend import cuda_ops
    cuda_ops.uninstall()
    try:
        yield
    finally:
        cuda_ops.install()


def _dt(name: str):
    return getattr(ember, name)


def _rounded(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` rounded to ``dtype`` and back to float32 (the values both devices see)."""
    return ember.tensor(a.astype(np.float32)).to(_dt(dtype)).float().numpy()


def _fused(t) -> bool:
    """Whether the node that made ``t`` ran a CUDA implementation."""
    fn = t.grad_fn
    return fn is not None and getattr(fn, "_impl", None) is not None


def _close(got: np.ndarray, ref: np.ndarray, dtype: str, scale: float = 1.0,
           what: str = "") -> None:
    tol = TOL[dtype] * scale
    ref = np.asarray(ref, np.float64)
    big = float(np.nanmax(np.abs(ref))) if ref.size and np.isfinite(ref).any() else 1.0
    # absolute slack scaled to the data (inputs are O(1)): a gradient that is exactly zero in
    # one summation order is rounding noise in another
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * max(big, 1.0), err_msg=what)


def compare(fn, arrays, dtype, *, diff=None, gout_seed=987, expect_fused=True, scale=1.0,
            extra=()):
    """Run ``fn(*tensors, *extra)`` on the GPU (in ``dtype``) and on the CPU (float32 from the
    same rounded values); compare outputs and the gradients of ``diff`` (indices of arrays)."""
    diff = range(len(arrays)) if diff is None else diff
    vals = [_rounded(a, dtype) if a.dtype.kind == "f" else a for a in arrays]
    res = {}
    for dev, dt in (("cuda", _dt(dtype)), ("cpu", ember.float32)):
        ts = []
        for i, a in enumerate(vals):
            if a.dtype.kind == "f":
                t = ember.tensor(a, device=dev).to(dt).requires_grad_(i in diff)
            else:
                t = ember.tensor(a, device=dev)
            ts.append(t)
        out = fn(*ts, *extra)
        if dev == "cuda" and expect_fused is not None:
            assert _fused(out) == expect_fused, f"fused={_fused(out)}, expected {expect_fused}"
        rng = np.random.default_rng(gout_seed)
        g = _rounded(np.asarray(rng.standard_normal(tuple(out.shape))), dtype)
        out.backward(ember.tensor(g, device=dev).to(out.dtype))
        res[dev] = [_host(out)] + [_host(ts[i].grad) for i in diff]
    for k, (a, b) in enumerate(zip(res["cuda"], res["cpu"])):
        _close(a, b, dtype, scale, what=f"{'output' if k == 0 else f'grad {k - 1}'}")
    return res


def _randn(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------------- softmax
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 33), (4, 5, 1000), (3, 3000), (2, 20000), (1, 1)])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_last_dim(dtype, shape, log):
    fn = (lambda x: x.log_softmax(-1)) if log else (lambda x: x.softmax(-1))
    compare(fn, [_randn(*shape, scale=3.0)], dtype, scale=2.0)


@pytest.mark.parametrize("log", [False, True])
def test_softmax_fallbacks_agree(log):
    x = _randn(6, 5, 40)
    name = "log_softmax" if log else "softmax"
    # not the last dim, a dtype argument, a non-contiguous input, float64
    compare(lambda t: getattr(t, name)(1), [x], "float32", expect_fused=False)
    compare(lambda t: getattr(t, name)(-1, dtype=ember.float32), [x], "float32")
    compare(lambda t: getattr(t.transpose(0, 2), name)(-1), [x], "float32", expect_fused=False)
    t = ember.tensor(x.astype(np.float64), device="cuda", requires_grad=True)
    assert not _fused(getattr(t, name)(-1))


def test_softmax_masked_rows():
    x = _randn(4, 50)
    x[0, :] = -np.inf        # a fully masked row: NaN, as the generic code and torch
    x[1, ::2] = -np.inf      # partly masked
    for log in (False, True):
        g = ember.tensor(x, device="cuda")
        c = ember.tensor(x)
        got = _host(g.log_softmax(-1) if log else g.softmax(-1))
        ref = _host(c.log_softmax(-1) if log else c.softmax(-1))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_softmax_double_backward():
    x = _randn(5, 70)
    res = {}
    for dev in ("cuda", "cpu"):
        t = ember.tensor(x, device=dev, requires_grad=True)
        y = t.softmax(-1)
        (gx,) = ember.autograd.grad((y * y).sum(), t, create_graph=True)
        (ggx,) = ember.autograd.grad((gx * gx).sum(), t)
        res[dev] = (_host(gx), _host(ggx))
    np.testing.assert_allclose(res["cuda"][0], res["cpu"][0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res["cuda"][1], res["cpu"][1], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------- layer / rms norm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 64), (5, 3, 768), (4, 5000), (3, 1), (2500, 96),
                                   (7, 2048)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(dtype, shape, affine):
    # rows of whole 16-byte vectors up to 8 per lane take the register kernels (_norm_rows);
    # (2500, 96) gives warps several rows in backward; 2048 float32 is too wide for them
    d = shape[-1]
    arrays = [_randn(*shape, scale=2.0) + 0.5]
    if affine:
        arrays += [_randn(d, seed=1) + 1.0, _randn(d, seed=2)]
        fn = lambda x, w, b: F.layer_norm(x, (d,), w, b, 1e-5)  # noqa: E731
    else:
        fn = lambda x: F.layer_norm(x, (d,), None, None, 1e-5)  # noqa: E731
    compare(fn, arrays, dtype, scale=4.0)


def test_layer_norm_two_normalized_dims_and_double_backward():
    x, w, b = _randn(4, 6, 10), _randn(6, 10, seed=1), _randn(6, 10, seed=2)
    compare(lambda x, w, b: F.layer_norm(x, (6, 10), w, b), [x, w, b], "float32", scale=4.0)
    res = {}
    for dev in ("cuda", "cpu"):
        t = ember.tensor(x, device=dev, requires_grad=True)
        wt = ember.tensor(w, device=dev, requires_grad=True)
        y = F.layer_norm(t, (6, 10), wt)
        (gx,) = ember.autograd.grad((y * y * y).sum(), t, create_graph=True)
        # a weighted sum: sum(gx) alone is identically zero (rounding noise only)
        (gx * ember.tensor(_randn(4, 6, 10, seed=7), device=dev)).sum().backward()
        res[dev] = (_host(gx), _host(t.grad), _host(wt.grad))
    for a, b_ in zip(res["cuda"], res["cpu"]):
        np.testing.assert_allclose(a, b_, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 64), (5, 3, 768), (4, 5000)])
@pytest.mark.parametrize("eps", [None, 1e-6])
def test_rms_norm(dtype, shape, eps):
    d = shape[-1]

    def e(x):  # eps=None means the input dtype's epsilon: the CPU reference runs in float32
        return eps if eps is not None or x.is_cuda else float(ember.finfo(_dt(dtype)).eps)
    compare(lambda x, w: F.rms_norm(x, (d,), w, e(x)), [_randn(*shape), _randn(d, seed=1)],
            dtype, scale=4.0)
    compare(lambda x: F.rms_norm(x, (d,), None, e(x)), [_randn(*shape)], dtype, scale=4.0)


def test_norm_fallbacks():
    x = _randn(4, 32)
    t = ember.tensor(x.astype(np.float64), device="cuda")
    assert not _fused(F.layer_norm(t.requires_grad_(), (32,)))
    # a non-contiguous input: generic code
    compare(lambda x: F.layer_norm(x.t(), (4,)), [_randn(4, 32)], "float32",
            expect_fused=False)
    compare(lambda x, w: F.rms_norm(x.t(), (4,), w), [_randn(4, 32), _randn(4, seed=1)],
            "float32", expect_fused=False)


# ---------------------------------------------------------------------- cross entropy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c", [(16, 10), (64, 1000), (200, 1000), (8, 50257)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(dtype, n, c, reduction):
    rng = np.random.default_rng(3)
    target = rng.integers(0, c, n).astype(np.int64)
    target[1] = -100
    compare(lambda x, t: F.cross_entropy(x, t, reduction=reduction),
            [_randn(n, c, scale=2.0), target], dtype, diff=[0], scale=4.0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_weight_ignore_smoothing(smoothing, weighted, reduction):
    n, c = 32, 300
    rng = np.random.default_rng(4)
    target = rng.integers(0, c, n).astype(np.int64)
    target[::5] = 7
    arrays = [_randn(n, c, scale=2.0), target]
    if weighted:
        arrays.append(rng.uniform(0.2, 2.0, c).astype(np.float32))
        fn = lambda x, t, w: F.cross_entropy(x, t, w, ignore_index=7,  # noqa: E731
                                             reduction=reduction, label_smoothing=smoothing)
    else:
        fn = lambda x, t: F.cross_entropy(x, t, ignore_index=7,  # noqa: E731
                                          reduction=reduction, label_smoothing=smoothing)
    for dtype in DTYPES:
        compare(fn, arrays, dtype, diff=[0], scale=4.0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cross_entropy_non_finite_logits_match_torch(dtype):
    # rows of 5000 classes (vector loads, a block per row) holding -inf (whole 16-byte
    # vectors of it, also leading ones, and a fully masked row), +inf (at the target and
    # elsewhere: torch gives NaN for the row) and NaN; loss and gradient against torch on the
    # same rounded values
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    n, c = 8, 5000
    x = rng.standard_normal((n, c)).astype(np.float32) * 2
    t = rng.integers(0, c, n)
    x[0, :] = -np.inf
    x[1, ::3] = -np.inf
    x[1, :40] = -np.inf
    t[1] = 41
    x[2, 1234] = np.inf
    x[3, 77] = np.inf
    t[3] = 77
    x[4, 2500] = np.nan
    x[5, -3:] = 30.0
    xr = _rounded(x, dtype)
    xt = torch.tensor(xr, requires_grad=True)
    want = torch.nn.functional.cross_entropy(xt, torch.tensor(t), reduction="none")
    g = rng.uniform(0.5, 1.5, n).astype(np.float32)
    want.backward(torch.tensor(g))
    xe = ember.tensor(x, device="cuda").to(_dt(dtype)).requires_grad_()
    got = F.cross_entropy(xe, ember.tensor(t, device="cuda"), reduction="none")
    assert _fused(got)
    got.backward(ember.tensor(g, device="cuda"))
    # a bfloat16 loss is the float32 one rounded to bfloat16: within half a step, 2**-8 relative
    tol = 1e-5 if dtype == "float32" else 2.0 ** -8
    np.testing.assert_allclose(_host(got), want.detach().numpy(), rtol=tol, atol=1e-6)
    tol = 1e-5 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(_host(xe.grad), xt.grad.numpy(), rtol=tol, atol=tol * 1e-2)


def test_cross_entropy_seed_gradient_is_a_shared_one_and_stays_one():
    # loss.backward() of the fused cross_entropy seeds it with a cached device 1 (its
    # backward only reads the gradient); repeated backwards, with a hook on the logits that
    # scales their gradient in place, must keep giving the float64 reference each time
    from ember.autograd import engine
    rng = np.random.default_rng(5)
    x0 = rng.standard_normal((6, 9)).astype(np.float32)
    t0 = rng.integers(0, 9, 6)
    e = np.exp(x0.astype(np.float64) - x0.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    want = p.copy()
    want[np.arange(6), t0] -= 1
    want /= 6
    for k in range(3):
        x = ember.tensor(x0, device="cuda", requires_grad=True)
        x.register_hook(lambda g: g.mul_(2.0))
        F.cross_entropy(x, ember.tensor(t0, device="cuda")).backward()
        np.testing.assert_allclose(x.grad.cpu().numpy(), 2 * want, rtol=1e-5, atol=1e-6)
    assert any(len(key) == 4 and key[3] == "const" for key in engine._ONE)
    # retain_grad on the loss: the seed is a fresh array (the loss's .grad must be its own)
    x = ember.tensor(x0, device="cuda", requires_grad=True)
    loss = F.cross_entropy(x, ember.tensor(t0, device="cuda"))
    loss.retain_grad()
    loss.backward()
    loss.grad.mul_(5.0)
    x2 = ember.tensor(x0, device="cuda", requires_grad=True)
    F.cross_entropy(x2, ember.tensor(t0, device="cuda")).backward()
    np.testing.assert_allclose(x2.grad.cpu().numpy(), want, rtol=1e-5, atol=1e-6)


def test_cross_entropy_errors_and_fallbacks():
    x = ember.randn(4, 5, device="cuda")
    # no host sync in the forward: the loss is NaN at once, and the next cross_entropy call
    # after the GPU finished raises the IndexError
    bad = F.cross_entropy(x, ember.tensor([0, 9, 1, 2], device="cuda"))
    assert np.isnan(float(bad))
    with pytest.raises(IndexError, match="Target 9 is out of bounds"):
        F.cross_entropy(x, ember.tensor([0, 1, 1, 2], device="cuda"))
    F.cross_entropy(x, ember.tensor([0, 1, 1, 2], device="cuda"))   # reported once
    # all targets ignored: mean is NaN (as torch)
    out = F.cross_entropy(x, ember.full((4,), -100, dtype=ember.int64, device="cuda"))
    assert np.isnan(float(out))
    # (N, C, d) input and probability targets take the generic path
    x3 = _randn(2, 5, 3)
    t3 = np.random.default_rng(0).integers(0, 5, (2, 3)).astype(np.int64)
    compare(lambda x, t: F.cross_entropy(x, t), [x3, t3], "float32", diff=[0],
            expect_fused=False)
    probs = np.random.default_rng(1).dirichlet(np.ones(5), 4).astype(np.float32)
    compare(lambda x, p: F.cross_entropy(x, p), [_randn(4, 5), probs], "float32", diff=[0],
            expect_fused=False)


def test_cross_entropy_bad_target_record_is_host_mapped(monkeypatch):
    """The loss kernels store a bad target in a host-mapped word (no copy or event per call);
    the copy path serves where the driver maps none. Both report the same error."""
    import cupy
    from ember.backend.cuda_ops import kernels_loss
    from ember.backend.cuda_ops._device_flag import DeviceFlag
    x = ember.randn(4, 5, device="cuda")
    ok = ember.tensor([0, 1, 1, 2], device="cuda")
    F.cross_entropy(x, ok)
    dev = cupy.cuda.runtime.getDevice()
    assert kernels_loss._FLAGS[dev].mirror is not None
    for big in (False, True):   # the one-block kernel and the two-kernel path
        xs = ember.randn(4, 5000, device="cuda") if big else x
        for mirror in (True, False):
            monkeypatch.setitem(kernels_loss._FLAGS, dev, DeviceFlag(cupy, mirror=mirror))
            assert np.isnan(float(F.cross_entropy(xs, ember.tensor([0, 7000, 1, 2],
                                                                   device="cuda"))))
            cupy.cuda.Device().synchronize()
            with pytest.raises(IndexError, match="Target 7000 is out of bounds"):
                # the copy path reads a copy started by the failing call's successor
                for _ in range(2):
                    F.cross_entropy(xs, ok)
                    cupy.cuda.Device().synchronize()
            F.cross_entropy(xs, ok)   # reported once


def test_cross_entropy_double_backward():
    x = _randn(6, 11)
    t = np.array([0, 3, -100, 10, 5, 5], np.int64)
    w = np.linspace(0.5, 2.0, 11).astype(np.float32)
    res = {}
    for dev in ("cuda", "cpu"):
        xt = ember.tensor(x, device=dev, requires_grad=True)
        loss = F.cross_entropy(xt, ember.tensor(t, device=dev), ember.tensor(w, device=dev),
                               label_smoothing=0.2)
        (gx,) = ember.autograd.grad(loss, xt, create_graph=True)
        (ggx,) = ember.autograd.grad((gx * gx).sum(), xt)
        res[dev] = (_host(loss), _host(gx), _host(ggx))
    for a, b in zip(res["cuda"], res["cpu"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------- embedding
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding_idx", [None, 3])
@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
def test_embedding_backward(dtype, padding_idx, index_dtype):
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 20, (6, 9)).astype(index_dtype)
    idx[0, :4] = 3           # repeats, and the padding row
    res = compare(lambda w, i: F.embedding(i, w, padding_idx=padding_idx),
                  [_randn(20, 48), idx], dtype, diff=[0], expect_fused=None, scale=2.0)
    if padding_idx is not None:
        assert not res["cuda"][1][padding_idx].any()


def test_embedding_backward_is_fused_and_double_backward():
    w = ember.randn(10, 4, device="cuda", requires_grad=True)
    idx = ember.tensor([[1, 2, 2], [0, 9, 1]], device="cuda")
    y = F.embedding(idx, w, padding_idx=2)
    g = ember.randn(2, 3, 4, device="cuda", requires_grad=True)
    (gw,) = ember.autograd.grad(y, w, g, create_graph=True)
    assert _fused(gw)
    (gg,) = ember.autograd.grad((gw * gw).sum(), g)
    # d/dg sum(gw^2) = 2 * gw[idx] with the padding row's entries zeroed
    ref = 2 * gw.detach()[idx] * (idx != 2).unsqueeze(-1)
    np.testing.assert_allclose(_host(gg), _host(ref), rtol=1e-6, atol=1e-6)
    # scale_grad_by_freq takes the generic path
    y2 = F.embedding(idx, w, scale_grad_by_freq=True)
    (gw2,) = ember.autograd.grad(y2.sum(), w, create_graph=True)
    assert not _fused(gw2)


# ---------------------------------------------------------------------- dropout
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_mask_seeded_and_backward(dtype):
    p = 0.3
    x = ember.randn(64, 257, device="cuda").to(_dt(dtype)).requires_grad_()
    ember.cuda.manual_seed(1234)
    y = F.dropout(x, p)
    assert type(y.grad_fn).__name__ == "FusedDropoutBackward"
    ember.cuda.manual_seed(1234)
    y2 = F.dropout(x, p)
    y3 = F.dropout(x, p)
    np.testing.assert_array_equal(_host(y), _host(y2))
    assert (_host(y) != _host(y3)).any()            # the stream advances
    keep = _host(y) != 0
    frac = keep.mean()
    assert abs(frac - (1 - p)) < 0.02, frac
    xs = _host(x)
    np.testing.assert_allclose(_host(y)[keep], xs[keep] / (1 - p), rtol=TOL[dtype] * 2)
    y.backward(ember.ones_like(y))
    np.testing.assert_allclose(_host(x.grad), keep / (1 - p), rtol=TOL[dtype] * 2)


def test_dropout_rng_state_replays_and_inplace():
    x = ember.randn(1000, device="cuda")
    state = ember.cuda.get_rng_state()
    a = F.dropout(x, 0.5)
    ember.cuda.set_rng_state(state)
    b = F.dropout(x, 0.5)
    np.testing.assert_array_equal(_host(a), _host(b))
    ember.cuda.set_rng_state(state)
    c = x.clone()
    F.dropout(c, 0.5, inplace=True)
    np.testing.assert_array_equal(_host(a), _host(c))


def test_dropout_double_backward_and_generic():
    x = ember.randn(300, device="cuda", requires_grad=True)
    y = F.dropout(x, 0.4)
    (gx,) = ember.autograd.grad((y * y).sum(), x, create_graph=True)
    (ggx,) = ember.autograd.grad(gx.sum(), x)
    m = _host(y) != 0
    np.testing.assert_allclose(_host(ggx), 2 * m / 0.36, rtol=1e-5)
    with generic_only():
        y = F.dropout(x, 0.4)
        assert type(y.grad_fn).__name__ != "FusedDropoutBackward"
    # channel dropout keeps the generic code
    z = F.dropout2d(ember.randn(2, 3, 4, 4, device="cuda", requires_grad=True), 0.5)
    assert type(z.grad_fn).__name__ != "FusedDropoutBackward"


# ---------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 16, 5, 7), (4, 3, 100), (16, 64), (2, 5, 3, 3, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_train(dtype, shape, affine):
    c = shape[1]
    arrays = [_randn(*shape, scale=2.0) + 3.0]
    if affine:
        arrays += [_randn(c, seed=1) + 1, _randn(c, seed=2)]
    running = {}

    def fn(x, *wb):
        dev = x.device.type
        rm = ember.zeros(c, device=dev, dtype=x.dtype)
        rv = ember.ones(c, device=dev, dtype=x.dtype)
        running[dev] = (rm, rv)
        w, b = wb if wb else (None, None)
        return F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
    compare(fn, arrays, dtype, scale=6.0)
    for k in range(2):
        _close(_host(running["cuda"][k]), _host(running["cpu"][k]), dtype, 2.0)


def test_batch_norm_eval_and_double_backward():
    x = _randn(4, 3, 6, 6)
    rm, rv = ember.zeros(3, device="cuda"), ember.ones(3, device="cuda")
    t = ember.tensor(x, device="cuda", requires_grad=True)
    assert not _fused(F.batch_norm(t, rm, rv, training=False))
    res = {}
    for dev in ("cuda", "cpu"):
        t = ember.tensor(x, device=dev, requires_grad=True)
        w = ember.tensor(np.linspace(0.5, 1.5, 3).astype(np.float32), device=dev,
                         requires_grad=True)
        y = F.batch_norm(t, None, None, w, None, training=True)
        (gx,) = ember.autograd.grad((y * y * y).sum(), t, create_graph=True)
        (gx * ember.tensor(_randn(4, 3, 6, 6, seed=7), device=dev)).sum().backward()
        res[dev] = (_host(gx), _host(t.grad), _host(w.grad))
    for a, b in zip(res["cuda"], res["cpu"]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------- activations
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["none", "tanh", "silu"])
def test_activations(dtype, kind):
    fn = (lambda x: F.silu(x)) if kind == "silu" else (lambda x: F.gelu(x, approximate=kind))
    compare(fn, [_randn(33, 65, scale=3.0)], dtype, scale=2.0)
    # a non-contiguous input is copied, then fused
    compare(lambda x: fn(x.transpose(0, 1)), [_randn(33, 65, scale=3.0)], dtype, scale=2.0)


def test_activation_double_backward():
    x = _randn(50, scale=3.0)
    res = {}
    for dev in ("cuda", "cpu"):
        t = ember.tensor(x, device=dev, requires_grad=True)
        (g,) = ember.autograd.grad(F.gelu(t).sum(), t, create_graph=True)
        (gg,) = ember.autograd.grad(g.sum(), t)
        res[dev] = (_host(g), _host(gg))
    for a, b in zip(res["cuda"], res["cpu"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- fused vs generic CuPy
def _run_all(seed=0):
    """Forward and backward of every fused op on the GPU, as float64 host arrays."""
    rng = np.random.default_rng(seed)
    out = []
    x = ember.tensor(rng.standard_normal((32, 300)).astype(np.float32), device="cuda",
                     requires_grad=True)
    w = ember.tensor(rng.standard_normal(300).astype(np.float32), device="cuda",
                     requires_grad=True)
    t = ember.tensor(rng.integers(0, 300, 32), device="cuda")
    rows = ember.tensor(rng.integers(0, 32, 40), device="cuda")
    xb = ember.tensor(rng.standard_normal((4, 6, 5, 5)).astype(np.float32), device="cuda",
                      requires_grad=True)
    loss = (x.softmax(-1) * w).sum() + x.log_softmax(-1).mean() \
        + F.layer_norm(x, (300,), w).pow(2).mean() + F.rms_norm(x, (300,), w).pow(2).mean() \
        + F.cross_entropy(x, t, label_smoothing=0.1) + F.gelu(x).mean() + F.silu(x).mean() \
        + F.embedding(rows, x).pow(2).mean() + F.batch_norm(xb, None, None, training=True).pow(3).mean()
    loss.backward()
    out += [_host(loss), _host(x.grad), _host(w.grad), _host(xb.grad)]
    return out


def test_fused_matches_generic_cupy():
    fused = _run_all()
    with generic_only():
        from ember.ops.registry import OPS
        assert OPS["softmax"].cuda_impl is None
        generic = _run_all()
    from ember.ops.registry import OPS
    assert OPS["softmax"].cuda_impl is not None
    for a, b in zip(fused, generic):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


_ECHO_SRC = r"""
template <typename T>
__global__ void echo(T* out, int a, long long b, float c, double d, unsigned long long p,
                     signed char e, short f, bool g, const float* src, float h) {
    out[0] = a; out[1] = (T)b; out[2] = c; out[3] = d; out[4] = (T)(p & 0xffff);
    out[5] = e; out[6] = f; out[7] = g ? 1 : 0; out[8] = src[1]; out[9] = h;
}
"""


def test_nvrtc_launcher_packed_parameters_match_cupys_call(monkeypatch):
    """After its first launch (CuPy's call) a kernel launches from a kept parameter block
    (one struct.pack_into, cuLaunchKernel): every argument type lands at its offset as
    CuPy's conversion put it; other argument types get a block of their own after their
    first (CuPy's) call, and another thread takes CuPy's call."""
    import threading
    import cupy
    from ember.backend.cuda_ops import _nvrtc as K
    monkeypatch.setitem(K._SOURCES, "test_echo", (_ECHO_SRC, ("echo",)))
    fn = K.function("test_echo", "echo", "double")
    src = cupy.arange(4, dtype=cupy.float32)

    def run(i, types=(np.int32, np.int64)):
        out = cupy.zeros(10, cupy.float64)
        fn((1, 1, 1), (1, 1, 1), (out, types[0](3 + i), types[1](-(1 << 40) - i),
                                  np.float32(0.5 + i), np.float64(1e300), np.uint64(7 + i),
                                  np.int8(-5 - i), np.int16(300 + i), np.bool_(i % 2),
                                  src[1:] if i % 2 else src, np.float32(-2.25)))
        return cupy.asnumpy(out)

    def want(i):
        return [3 + i, float(-(1 << 40) - i), 0.5 + i, 1e300, 7 + i, -5 - i, 300 + i, i % 2,
                2.0 if i % 2 else 1.0, -2.25]

    np.testing.assert_array_equal(run(0), want(0))     # CuPy's call, then the block is made
    assert [type(p) for p in fn.packs.values()] == [K._Packed]
    for i in range(1, 4):
        np.testing.assert_array_equal(run(i), want(i))
    # other argument types (a pointer given as a number): CuPy's call, then their own block;
    # calls alternating between the two type tuples each use their own block
    for k in range(3):
        out = cupy.zeros(10, cupy.float64)
        fn((1, 1, 1), (1, 1, 1), (out, np.int32(1 + k), np.int64(2), np.float32(3),
                                  np.float64(4), np.uint64(5), np.int8(6), np.int16(7),
                                  np.bool_(True), np.uint64(src.data.ptr + 4 * (1 + k % 2)),
                                  np.float32(8)))
        np.testing.assert_array_equal(cupy.asnumpy(out),
                                      [1 + k, 2, 3, 4, 5, 6, 7, 1, 2 + k % 2, 8])
        np.testing.assert_array_equal(run(6 + k), want(6 + k))
    assert len(fn.packs) == 2 and all(isinstance(p, K._Packed) for p in fn.packs.values())
    res = []
    t = threading.Thread(target=lambda: res.append(run(5)))
    t.start()
    t.join()
    np.testing.assert_array_equal(res[0], want(5))
