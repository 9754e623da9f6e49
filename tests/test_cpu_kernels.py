"""The optional numba CPU kernels (ember/backend/cpu_kernels.py): GELU's fused pass against
float64 and torch, run both with numba (when installed) and with ``EMBER_NUMBA=0`` (the NumPy
code), so both paths stay tested; and ``import ember`` never importing numba."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.special as sp

import ember
import ember.nn.functional as F
from ember.backend import cpu_kernels, cpu_vec_ir
from parity import cross_entropy_rows_match

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.host_only


def test_import_ember_does_not_import_numba():
    code = "import sys, ember; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gelu_accuracy_over_the_whole_range(kernel_path):
    x = np.linspace(-16, 16, 320001).astype(np.float32)
    t = ember.tensor(x, requires_grad=True)
    y = F.gelu(t)
    y.sum().backward()
    x64 = x.astype(np.float64)
    want = 0.5 * x64 * sp.erfc(-x64 / math.sqrt(2))
    dwant = 0.5 * sp.erfc(-x64 / math.sqrt(2)) + x64 * np.exp(-x64 * x64 / 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=5e-6, atol=3e-7)
    np.testing.assert_allclose(t.grad.numpy(), dwant, rtol=5e-6, atol=3e-7)


def test_gelu_special_values(kernel_path):
    vals = [math.inf, -math.inf, math.nan, 0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, -40.0]
    e = ember.tensor(vals, requires_grad=True)
    y = F.gelu(e)
    y.sum().backward()
    # torch in float64 on the float32 inputs (torch's float32 AVX-512 GELU gives NaN at +inf)
    t = torch.tensor(np.array(vals, np.float32).astype(np.float64), requires_grad=True)
    yt = torch.nn.functional.gelu(t)
    yt.sum().backward()
    np.testing.assert_array_equal(np.isnan(y.detach().numpy()), np.isnan(yt.detach().numpy()))
    np.testing.assert_allclose(y.detach().numpy(), yt.detach().numpy(), rtol=1e-6, atol=0)
    # finite inputs: gradients as torch's (at +-inf torch gives NaN; ember 1 at +inf, NaN at
    # -inf, on both paths)
    fin = np.isfinite(np.array(vals))
    g, gt = e.grad.numpy()[fin], t.grad.numpy()[fin]
    np.testing.assert_array_equal(e.grad.numpy()[:2], [1.0, math.nan])
    np.testing.assert_array_equal(np.isnan(g), np.isnan(gt))
    np.testing.assert_allclose(g, gt, rtol=1e-6, atol=1e-30)   # float32 against float64


def test_vectorized_exp_against_float64():
    numba = pytest.importorskip("numba")
    exp_neg = cpu_vec_ir._exp_neg(numba, np)

    @numba.njit
    def run(z, out):
        for i in range(z.size):
            out[i] = exp_neg(z[i])

    z = np.concatenate([np.linspace(-87.0, 0.0, 200001), [-0.0, -1e-30, -86.99]]).astype(np.float32)
    out = np.empty_like(z)
    run(z, out)
    want = np.exp(z.astype(np.float64))
    np.testing.assert_allclose(out, want, rtol=2e-7, atol=0)
    # below -87 (and at -inf) exactly 0, as GELU's tail needs; NaN stays NaN
    z = np.array([-87.5, -100.0, -1e30, -math.inf, math.nan], np.float32)
    out = np.empty_like(z)
    run(z, out)
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.0, 0.0, math.nan])


@pytest.mark.parametrize("shape", [(0,), (1,), (4097,), (16, 64, 512), (1024, 128), (3, 1, 5)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_gelu_shapes_and_layouts(kernel_path, shape, layout):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32) * 3
    e = ember.tensor(x, requires_grad=True)
    # torch in float64 (its float32 AVX-512 GELU is ~1e-6 off near x = -3.9): ember's float32
    # within the kernel's accuracy bound of the exact values
    tt = torch.tensor(x.astype(np.float64), requires_grad=True)
    if layout == "transposed":
        ei, ti = e.transpose(0, -1), tt.transpose(0, -1)
    elif layout == "strided":
        ei, ti = e[::2], tt[::2]
    else:
        ei, ti = e, tt
    y, yt = F.gelu(ei), torch.nn.functional.gelu(ti)
    g = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    y.backward(ember.tensor(g))
    yt.backward(torch.tensor(g.astype(np.float64)))
    np.testing.assert_allclose(y.detach().numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e.grad.numpy(), tt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_gelu_float64_and_half_keep_their_paths(kernel_path):
    for dt, tdt in [(ember.float64, torch.float64), (ember.bfloat16, torch.bfloat16)]:
        x = np.linspace(-5, 5, 101)
        y = F.gelu(ember.tensor(x, dtype=dt)).float().numpy()
        yt = torch.nn.functional.gelu(torch.tensor(x, dtype=tdt)).float().numpy()
        half = dt is ember.bfloat16
        np.testing.assert_allclose(y, yt, rtol=1e-2 if half else 1e-12, atol=1e-5 if half else 1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(1024, 128), (3, 5, 33), (1, 3), (4099, 67)])
def test_layer_norm_matches_torch(kernel_path, dtype, affine, shape):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    n = shape[-1]
    w = rng.standard_normal(n).astype(dtype) if affine else None
    b = rng.standard_normal(n).astype(dtype) if affine else None
    g = rng.standard_normal(shape).astype(dtype)
    ex = ember.tensor(x, requires_grad=True)
    ew = ember.tensor(w, requires_grad=True) if affine else None
    eb = ember.tensor(b, requires_grad=True) if affine else None
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True) if affine else None
    tb = torch.tensor(b, requires_grad=True) if affine else None
    y = F.layer_norm(ex, (n,), ew, eb)
    yt = torch.nn.functional.layer_norm(tx, (n,), tw, tb)
    y.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y.detach().numpy(), yt.detach().numpy(), **tol)
    np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy(), **tol)
    if affine:
        np.testing.assert_allclose(ew.grad.numpy(), tw.grad.numpy(), **tol)
        np.testing.assert_allclose(eb.grad.numpy(), tb.grad.numpy(), **tol)


@pytest.mark.parametrize("case", ["bias_only", "weight_only", "input_without_grad"])
def test_layer_norm_partial_affine_and_grads(kernel_path, case):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((70, 48)).astype(np.float32)
    p = rng.standard_normal(48).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    xg = case != "input_without_grad"
    ex, tx = ember.tensor(x, requires_grad=xg), torch.tensor(x, requires_grad=xg)
    ep, tp = ember.tensor(p, requires_grad=True), torch.tensor(p, requires_grad=True)
    if case == "bias_only":
        y = F.layer_norm(ex, (48,), None, ep)
        yt = torch.nn.functional.layer_norm(tx, (48,), None, tp)
    else:
        y = F.layer_norm(ex, (48,), ep, ep if case == "input_without_grad" else None)
        yt = torch.nn.functional.layer_norm(tx, (48,), tp, tp if case == "input_without_grad" else None)
    y.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(y.detach().numpy(), yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ep.grad.numpy(), tp.grad.numpy(), rtol=1e-4, atol=1e-4)
    if xg:
        np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    else:
        assert ex.grad is None


def test_layer_norm_nonfinite_rows_and_noncontiguous(kernel_path):
    x = np.random.default_rng(2).standard_normal((6, 40)).astype(np.float32)
    x[1, 3] = math.nan
    x[2, 0] = math.inf
    y = F.layer_norm(ember.tensor(x).t(), (6,)).numpy()
    yt = torch.nn.functional.layer_norm(torch.tensor(x).t(), (6,)).numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(yt))
    fin = ~np.isnan(yt)
    np.testing.assert_allclose(y[fin], yt[fin], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_sdpa_fused_qkv_matches_torch(kernel_path, causal, scale):
    # the batch kernel_path (NumPy or numba softmax), q/k/v as views of one qkv projection; scale 40
    # gives scores far beyond exp's range without the row max
    B, T, H, E = 3, 9, 2, 4
    rng = np.random.default_rng(5)
    qkv = (rng.standard_normal((B, T, 3 * H * E)) * scale).astype(np.float32)
    g = rng.standard_normal((B, H, T, E)).astype(np.float32)
    res = []
    for m in (ember, torch):
        t = m.tensor(qkv, requires_grad=True)
        q, k, v = (a.reshape(B, T, H, E).transpose(1, 2) for a in t.split(H * E, dim=2))
        o = m.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        o.backward(m.tensor(g))
        res.append((o.detach().numpy(), t.grad.numpy()))
    for e, t in zip(*res):
        np.testing.assert_allclose(e, t, rtol=1e-4, atol=1e-4 * scale)


def test_sdpa_nonfinite_rows_match_torch(kernel_path):
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal((2, 3, 5, 4)).astype(np.float32) for _ in range(3))
    q[0, 1, 2, 0] = math.inf
    k[1, 2, 4, 1] = math.nan
    res = []
    for m in (ember, torch):
        o = m.nn.functional.scaled_dot_product_attention(m.tensor(q), m.tensor(k), m.tensor(v))
        res.append(o.numpy())
    np.testing.assert_array_equal(np.isnan(res[0]), np.isnan(res[1]))
    fin = ~np.isnan(res[1])
    np.testing.assert_allclose(res[0][fin], res[1][fin], rtol=1e-5, atol=1e-6)


def test_softmax_kernel_against_float64():
    if cpu_kernels.kernels() is None:
        pytest.skip("numba not installed")
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((12, 70)) * 30).astype(np.float32)
    x[3] = -math.inf  # a fully masked row: zeros (torch's safe softmax)
    bias = np.where(rng.random((4, 70)) < 0.3, -math.inf, 0.0).astype(np.float32)
    bias[1] = -math.inf
    want = x.astype(np.float64) + np.tile(bias, (3, 1))
    m = want.max(axis=1, keepdims=True)
    e = np.exp(want - np.where(np.isfinite(m), m, 0))
    want = np.nan_to_num(e / e.sum(axis=1, keepdims=True), nan=0.0)
    cpu_kernels.kernels().softmax(x, bias)
    np.testing.assert_allclose(x, want, rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_rows_match_torch(kernel_path, reduction):
    # (128, 10): the small one-pass kernel; (700, 100) and (300, 1000): the fused softmax
    # kernel_path (one block and several blocks)
    for shape in ((128, 10), (700, 100), (300, 1000)):
        rng = np.random.default_rng(8)
        x = (rng.standard_normal(shape) * 4).astype(np.float32)
        y = rng.integers(0, shape[1], shape[0])
        y[5] = -100  # ignored
        res = []
        for m in (ember, torch):
            t = m.tensor(x, requires_grad=True)
            loss = m.nn.functional.cross_entropy(t, m.tensor(y), reduction=reduction)
            loss.sum().backward()
            res.append((loss.detach().numpy(), t.grad.numpy()))
        for e, t in zip(*res):
            np.testing.assert_allclose(e, t, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(300, 1000), (30, 10)])
def test_cross_entropy_nonfinite_rows_match_torch(kernel_path, shape):
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape).astype(np.float32)
    x[1, 7] = math.nan
    x[2, 9] = math.inf
    x[3] = -math.inf
    y = rng.integers(0, shape[1], shape[0])
    cross_entropy_rows_match(ember, torch, x, y)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,kw", [
    ("AdamW", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.4, 0.9), weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.02, amsgrad=True, weight_decay=0.3, maximize=True)),
])
def test_adam_steps_match_torch(kernel_path, dtype, name, kw):
    rng = np.random.default_rng(10)
    w0 = rng.standard_normal((33, 7)).astype(dtype)
    grads = [rng.standard_normal((33, 7)).astype(dtype) for _ in range(5)]
    res = []
    for m in (ember, torch):
        w = m.tensor(w0.copy(), requires_grad=True)
        opt = getattr(m.optim, name)([w], **kw)
        for g in grads:
            w.grad = m.tensor(g)
            opt.step()
        res.append(w.detach().numpy())
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res[0], res[1], **tol)


def test_sigmoid_tanh_kernels_against_float64():
    ks = cpu_kernels.kernels()
    if ks is None:
        pytest.skip("numba not installed or switched off")
    # through lstm_step with zero input projection and c = 0: act holds sigmoid and tanh of
    # the gates, tanh_c = tanh(sigmoid(i) tanh(g))
    x = np.concatenate([np.linspace(-30, 30, 40001), [0.0, -0.0, 1e-30, -1e-30, 0.6249,
                                                      0.6251, -0.6251, 1e4, -1e4]])
    x = x.astype(np.float32)
    n = x.size
    gates = np.tile(x[:, None], (1, 4)).astype(np.float32)
    act = np.empty_like(gates)
    c = np.zeros((n, 1), np.float32)
    tc = np.empty((n, 1), np.float32)
    h = np.empty((n, 1), np.float32)
    ks.lstm_step(gates, np.zeros_like(gates), c, act, tc, h)
    x64 = x.astype(np.float64)
    sig = 1 / (1 + np.exp(-x64))
    np.testing.assert_allclose(act[:, 0], sig, rtol=3e-7, atol=1e-37)
    np.testing.assert_allclose(act[:, 2], np.tanh(x64), rtol=3e-7, atol=1e-37)
    np.testing.assert_allclose(tc[:, 0], np.tanh(sig * np.tanh(x64)), rtol=5e-7, atol=1e-37)
    special = np.array([[math.inf] * 4, [-math.inf] * 4, [math.nan] * 4], np.float32)
    act = np.empty_like(special)
    ks.lstm_step(special, np.zeros_like(special), np.zeros((3, 1), np.float32), act,
                 np.empty((3, 1), np.float32), np.empty((3, 1), np.float32))
    np.testing.assert_array_equal(act, [[1, 1, 1, 1], [0, 0, -1, 0], [math.nan] * 4])


@pytest.mark.parametrize("proj_size", [0, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_packed_matches_torch(kernel_path, proj_size, bidirectional):
    rng = np.random.default_rng(11)
    lengths = [7, 5, 5, 2]
    x = rng.standard_normal((7, 4, 6)).astype(np.float32)
    res = []
    for m in (ember, torch):
        m.manual_seed(0)
        lstm = m.nn.LSTM(6, 5, num_layers=2, proj_size=proj_size, bidirectional=bidirectional)
        if m is torch:  # ember's weights into torch
            with torch.no_grad():
                for (name, p), q in zip(lstm.named_parameters(), ember_params):
                    p.copy_(torch.tensor(q))
        else:
            ember_params = [p.detach().numpy().copy() for p in lstm.parameters()]
        xt = m.tensor(x, requires_grad=True)
        packed = m.nn.utils.rnn.pack_padded_sequence(xt, lengths)
        out, (h, c) = lstm(packed)
        data = out.data
        (data.pow(2).sum() + h.sum() + c.pow(2).sum()).backward()
        res.append([data.detach().numpy(), h.detach().numpy(), c.detach().numpy(),
                    xt.grad.numpy()] + [p.grad.numpy() for p in lstm.parameters()])
    for e, t in zip(*res):
        np.testing.assert_allclose(e, t, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kw", [
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
    dict(lr=0.05, momentum=0.8, dampening=0.3, maximize=True),
    dict(lr=0.05, momentum=0.8, dampening=1.0),
])
def test_sgd_momentum_steps_match_torch(kernel_path, dtype, kw):
    rng = np.random.default_rng(12)
    w0 = rng.standard_normal((21, 5)).astype(dtype)
    grads = [rng.standard_normal((21, 5)).astype(dtype) for _ in range(4)]
    res = []
    for m in (ember, torch):
        w = m.tensor(w0.copy(), requires_grad=True)
        opt = m.optim.SGD([w], **kw)
        for g in grads:
            w.grad = m.tensor(g)
            opt.step()
        res.append((w.detach().numpy(), opt.state[w]["momentum_buffer"].numpy()))
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    for e, t in zip(*res):
        np.testing.assert_allclose(e, t, **tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_embedding_backward_matches_torch(kernel_path, dtype):
    rng = np.random.default_rng(13)
    w = rng.standard_normal((50, 6)).astype(dtype)
    idx = rng.integers(0, 50, (7, 30))
    idx[0, :5] = 3  # repeats
    g = rng.standard_normal((30, 7, 6)).astype(dtype).transpose(1, 0, 2)  # strided rows
    res = []
    for m in (ember, torch):
        wt = m.tensor(w, requires_grad=True)
        out = m.nn.functional.embedding(m.tensor(idx), wt, padding_idx=7)
        out.backward(m.tensor(np.ascontiguousarray(g)) if m is torch else m.tensor(g))
        res.append(wt.grad.numpy())
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res[0], res[1], **tol)


def test_cross_entropy_small_single_row_and_bad_target(kernel_path):
    x = np.random.default_rng(14).standard_normal(10).astype(np.float32)
    res = []
    for m in (ember, torch):
        t = m.tensor(x, requires_grad=True)
        loss = m.nn.functional.cross_entropy(t, m.tensor(3))
        loss.backward()
        res.append((loss.detach().numpy(), t.grad.numpy()))
    for e, t in zip(*res):
        np.testing.assert_allclose(e, t, rtol=2e-6, atol=1e-7)
    with pytest.raises(IndexError):
        F.cross_entropy(ember.tensor(np.zeros((4, 10), np.float32)), ember.tensor([1, 2, 10, 0]))
