"""cross_entropy under CUDA autocast reads bf16/fp16 logits as they are.

cross_entropy is on autocast's float32 list: torch casts low-precision logits to a float32
copy, computes, and casts the float32 gradient back. ember's fused kernels compute in float32
from the logits' own dtype, so autocast hands them the logits uncast
(``kernels_loss.CrossEntropyImpl.fp32_from_low``). These tests check against torch's
cast-then-compute (CPU torch on the same rounded values): the loss is float32 and equal, the
gradient has the logits' dtype and torch's values, double backward matches, and no float32
copy of the logits is made. Marked ``cuda``; the torch comparisons skip without torch.
"""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn.functional as F

pytestmark = pytest.mark.cuda
torch = pytest.importorskip("torch")

LOW = ["bfloat16", "float16"]


def _case(n: int, c: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c)) * 2.0).astype(np.float32)
    t = rng.integers(0, c, n).astype(np.int64)
    t[1] = 7
    return x, t


def _ember_low(x: np.ndarray, dtype: str):
    return ember.tensor(x, device="cuda").to(getattr(ember, dtype)).requires_grad_()


def _torch_low(x: np.ndarray, dtype: str):
    # the same rounded values: NumPy -> float32 -> low precision on both sides
    return torch.tensor(x).to(getattr(torch, dtype)).requires_grad_()


def _np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().float().numpy().astype(np.float64)
    return t.detach().cpu().float().numpy().astype(np.float64)


def _close_low(got: np.ndarray, ref: np.ndarray, dtype: str) -> None:
    # float32 results rounded once to the low dtype: the two float32 values may straddle a
    # rounding boundary, so allow one unit in the last place of that dtype
    # (float16's subnormals are spaced 2**-24 apart: one step there is also one rounding)
    ulp, tiny = (2.0 ** -7, 0.0) if dtype == "bfloat16" else (2.0 ** -10, 2.0 ** -24)
    np.testing.assert_allclose(got, ref, rtol=ulp,
                               atol=max(ulp * 1e-3 * np.abs(ref).max(), tiny))


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("extra", [{}, {"ignore_index": 7, "label_smoothing": 0.1},
                                   {"weight": True}])
def test_low_logits_uncast_match_torch(dtype, reduction, extra):
    n, c = 64, 1000
    x, t = _case(n, c)
    kw = dict(extra, reduction=reduction)
    w = np.linspace(0.5, 2.0, c).astype(np.float32)
    xe, xt = _ember_low(x, dtype), _torch_low(x, dtype)
    kwe, kwt = dict(kw), dict(kw)
    if kw.get("weight"):
        kwe["weight"], kwt["weight"] = ember.tensor(w, device="cuda"), torch.tensor(w)
    with ember.autocast("cuda", dtype=getattr(ember, dtype)):
        le = F.cross_entropy(xe, ember.tensor(t, device="cuda"), **kwe)
    lt = torch.nn.functional.cross_entropy(xt.float(), torch.tensor(t), **kwt)
    assert le.dtype == ember.float32
    # the fused node takes the low-precision logits directly: no cast node between
    assert getattr(le.grad_fn, "_impl", None) is not None
    assert le.grad_fn.next_functions[0][0].name() == "AccumulateGrad"
    g = np.random.default_rng(5).uniform(0.5, 1.5, lt.shape).astype(np.float32)
    le.backward(ember.tensor(g, device="cuda"))
    lt.backward(torch.tensor(g))
    np.testing.assert_allclose(_np(le), _np(lt), rtol=2e-5, atol=1e-6)
    assert xe.grad.dtype == getattr(ember, dtype)
    _close_low(_np(xe.grad), _np(xt.grad), dtype)


def test_float32_logits_and_no_autocast_unchanged():
    x, t = _case(16, 300, seed=2)
    # float32 logits under autocast: nothing to cast, float32 as before
    xe = ember.tensor(x, device="cuda", requires_grad=True)
    with ember.autocast("cuda", dtype=ember.bfloat16):
        le = F.cross_entropy(xe, ember.tensor(t, device="cuda"))
    assert le.dtype == ember.float32
    # bf16 logits outside autocast: a bf16 loss and gradient, as torch. torch's CPU bf16
    # kernels round log_softmax to bf16 before the gradient (a few per cent off), so the
    # reference is torch in float64 on the same values, rounded once to bf16
    xb, xt = _ember_low(x, "bfloat16"), _torch_low(x, "bfloat16")
    lb = F.cross_entropy(xb, ember.tensor(t, device="cuda"))
    x64 = xt.detach().double().requires_grad_()
    lt = torch.nn.functional.cross_entropy(x64, torch.tensor(t))
    assert lb.dtype == ember.bfloat16
    lb.backward()
    lt.backward()
    np.testing.assert_allclose(_np(lb), _np(lt.to(torch.bfloat16)), rtol=2 ** -7)
    assert xb.grad.dtype == ember.bfloat16
    _close_low(_np(xb.grad), _np(x64.grad.to(torch.bfloat16)), "bfloat16")


def test_double_backward_under_autocast():
    x, t = _case(6, 11, seed=3)
    t[2] = -100
    w = np.linspace(0.5, 2.0, 11).astype(np.float32)
    xe, xt = _ember_low(x, "bfloat16"), _torch_low(x, "bfloat16")
    with ember.autocast("cuda", dtype=ember.bfloat16):
        le = F.cross_entropy(xe, ember.tensor(t, device="cuda"),
                             ember.tensor(w, device="cuda"), label_smoothing=0.2)
    lt = torch.nn.functional.cross_entropy(xt.float(), torch.tensor(t), torch.tensor(w),
                                           label_smoothing=0.2)
    (ge,) = ember.autograd.grad(le, xe, create_graph=True)
    (gt,) = torch.autograd.grad(lt, xt, create_graph=True)
    assert ge.dtype == ember.bfloat16
    _close_low(_np(ge), _np(gt), "bfloat16")
    (gge,) = ember.autograd.grad((ge.float() ** 2).sum(), xe)
    (ggt,) = torch.autograd.grad((gt.float() ** 2).sum(), xt)
    assert gge.dtype == ember.bfloat16
    # second derivatives pass through a bf16 first gradient on both sides
    np.testing.assert_allclose(_np(gge), _np(ggt), rtol=3e-2, atol=3e-2 * np.abs(_np(ggt)).max())


def test_no_float32_copy_of_the_logits():
    n, c = 2048, 32768                     # bf16 logits: 128 MiB; a float32 copy: 256 MiB
    x = ember.randn(n, c, device="cuda").to(ember.bfloat16).requires_grad_()
    t = ember.randint(0, c, (n,), device="cuda")
    logits_bytes = n * c * 2
    ember.cuda.synchronize()
    base = ember.cuda.memory_allocated()
    ember.cuda.reset_peak_memory_stats()
    with ember.autocast("cuda", dtype=ember.bfloat16):
        loss = F.cross_entropy(x, t)
    fwd_peak = ember.cuda.max_memory_allocated() - base
    loss.backward()
    ember.cuda.synchronize()
    peak = ember.cuda.max_memory_allocated() - base
    assert fwd_peak < logits_bytes // 8, fwd_peak      # per-row statistics only
    assert peak < logits_bytes * 5 // 4, peak           # the bf16 gradient, nothing else big
    assert x.grad.dtype == ember.bfloat16
