"""CPU fast paths of the tiny-GPT step (numba kernels and their NumPy fallbacks) against torch
and float64: GELU's two kernel loops (with and without the derivative) and the AdamW step
over all of a group's parameters. Each test runs with numba and with ``EMBER_NUMBA=0``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special as sp

import ember
import ember.nn.functional as F
from ember.backend import cpu_kernels

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.host_only


def _gelu64(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return 0.5 * x64 * sp.erfc(-x64 / math.sqrt(2))


# sizes around the 8-wide vector loop's remainder and the 4096-element prange chunk
@pytest.mark.parametrize("n", [1, 7, 8, 9, 4095, 4096, 4097, 3 * 4096 + 5])
@pytest.mark.parametrize("grad", [False, True])
def test_gelu_value_loop_with_and_without_derivative(kernel_path, n, grad):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    x[::97] = 0.0
    t = ember.tensor(x, requires_grad=grad)
    if grad:
        y = F.gelu(t)
        g = rng.standard_normal(n).astype(np.float32)
        y.backward(ember.tensor(g))
        tt = torch.tensor(x, requires_grad=True)
        torch.nn.functional.gelu(tt).backward(torch.tensor(g))
        np.testing.assert_allclose(t.grad.numpy(), tt.grad.numpy(), rtol=2e-6, atol=1e-6)
    else:
        with ember.no_grad():
            y = F.gelu(t)
    np.testing.assert_allclose(y.detach().numpy(), _gelu64(x), rtol=5e-6, atol=3e-7)


def test_gelu_no_grad_special_values_match_torch(kernel_path):
    vals = [math.inf, -math.inf, math.nan, 0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, -40.0, 40.0]
    with ember.no_grad():
        y = F.gelu(ember.tensor(vals)).numpy()
    # torch in float64 on the float32 inputs (its float32 AVX-512 GELU gives NaN at +inf)
    yt = torch.nn.functional.gelu(torch.tensor(np.array(vals, np.float32).astype(np.float64)))
    yt = yt.numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(yt))
    np.testing.assert_allclose(y, yt, rtol=1e-6, atol=0)
    # the kernel's value without a derivative equals the one computed beside it (NumPy's
    # no-grad form s x - |x| h may differ in the last bit)
    e = ember.tensor(vals, requires_grad=True)
    yg = F.gelu(e).detach().numpy()
    if kernel_path == "numba":
        np.testing.assert_array_equal(yg, y)
    else:
        np.testing.assert_allclose(yg, y, rtol=1e-6, atol=0)


def _adam_params(m, specs, rng_seed=3):
    rng = np.random.default_rng(rng_seed)
    out = []
    for shape, dt, transposed in specs:
        a = rng.standard_normal(shape).astype(dt)
        t = m.tensor(a.T.copy() if transposed else a)
        if transposed:
            t = t.t()  # a non-contiguous parameter: the general loop's kernel_path
        out.append(t.detach().requires_grad_(True))
    return out


_SPECS = [((5, 3), "float32", False), ((7,), "float32", False), ((4, 6), "float32", True),
          ((3, 2), "float64", False), ((9,), "float32", False)]


@pytest.mark.parametrize("name,kw", [
    ("AdamW", dict(lr=3e-3)),
    ("AdamW", dict(lr=0.02, betas=(0.3, 0.8), weight_decay=0.2, amsgrad=True, maximize=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(lr=0.01, betas=(0.6, 0.99), eps=1e-3)),
])
@pytest.mark.parametrize("foreach", [None, False, True])
def test_adam_group_path_matches_torch(kernel_path, name, kw, foreach):
    rng = np.random.default_rng(11)
    grads = [[rng.standard_normal(s).astype(d) for s, d, _ in _SPECS] for _ in range(4)]
    res = []
    for m in (ember, torch):
        ps = _adam_params(m, _SPECS)
        opt = getattr(m.optim, name)(ps, foreach=foreach, **kw)
        for k, gs in enumerate(grads):
            for i, (p, g) in enumerate(zip(ps, gs)):
                # parameter 1 has no gradient at step 2: it skips that step (and its counter)
                p.grad = None if (i == 1 and k == 2) else m.tensor(g.T.copy()).t() \
                    if _SPECS[i][2] else m.tensor(g)
            opt.step()
        st = [opt.state[p] for p in ps]
        res.append(([p.detach().numpy().copy() for p in ps],
                    [s["exp_avg"].numpy().copy() for s in st],
                    [s["exp_avg_sq"].numpy().copy() for s in st],
                    [float(s["step"]) for s in st]))
    (pe, me, ve, se), (pt, mt, vt, stt) = res
    assert se == stt
    for a, b in zip(pe + me + ve, pt + mt + vt):
        assert a.dtype == b.dtype
        tol = 1e-6 if a.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_adam_group_path_keeps_versions_and_lr_tensor(kernel_path):
    p = ember.nn.Parameter(ember.ones(4, 3))
    q = torch.nn.Parameter(torch.ones(4, 3))
    opts = [ember.optim.AdamW([p], lr=ember.tensor(0.05)),
            torch.optim.AdamW([q], lr=torch.tensor(0.05))]
    for _ in range(3):
        for t, m in ((p, ember), (q, torch)):
            t.grad = m.arange(12.0).reshape(4, 3) - 5
        v0 = p._version[0]
        for o in opts:
            o.step()
        assert p._version[0] == v0 + 1  # one in-place write recorded per step
    np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("spinning", [True, False])
def test_kernels_serial_beside_spinning_blas_match_torch(kernel_path, spinning, monkeypatch):
    """While OpenBLAS's workers spin the kernels and attention run their blocks on one thread
    (layer norm's backward keeps its per-block partial sums): both ways against torch."""
    import ember.ops.nn_attention as att
    monkeypatch.setattr(cpu_kernels, "blas_spinning", lambda: spinning)
    monkeypatch.setattr(att, "blas_spinning", lambda: spinning)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4096, 128)).astype(np.float32)  # several kernel row blocks
    w, b = (rng.standard_normal(128).astype(np.float32) for _ in range(2))
    g = rng.standard_normal((4096, 128)).astype(np.float32)
    tgt = rng.integers(0, 128, 2048)
    qkv_a = rng.standard_normal((16, 64, 384)).astype(np.float32)
    got, want = [], []
    for m, out in ((ember, got), (torch, want)):
        ts = [m.tensor(a, requires_grad=True) for a in (x, w, b)]
        m.nn.functional.layer_norm(ts[0], (128,), ts[1], ts[2]).backward(m.tensor(g))
        out += [t.grad.numpy() for t in ts]
        lg = m.tensor(x[:2048] * 3, requires_grad=True)  # cross_entropy's row blocks
        m.nn.functional.cross_entropy(lg, m.tensor(tgt)).backward()
        out.append(lg.grad.numpy())
        qkv = m.tensor(qkv_a, requires_grad=True)  # attention's batch blocks
        q, k, v = (a.view(16, 64, 4, 32).transpose(1, 2) for a in qkv.split(128, dim=2))
        o = m.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        o.backward(m.ones_like(o) * 0.1)
        out += [o.detach().numpy(), qkv.grad.numpy()]
    for a, b_ in zip(got, want):
        np.testing.assert_allclose(a, b_, rtol=2e-4, atol=2e-5)
    xg = (rng.standard_normal(600_000) * 3).astype(np.float32)
    with ember.no_grad():
        y = F.gelu(ember.tensor(xg)).numpy()
    np.testing.assert_allclose(y, _gelu64(xg), rtol=5e-6, atol=3e-7)
