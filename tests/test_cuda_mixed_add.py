"""``add`` of a float32 and a bfloat16/float16 tensor on CUDA: one kernel, no cast first.

The dispatcher asks ``AddImpl.takes_mixed`` before promoting; operands of one shape and
dense layout then add as they are into float32 (torch's values: the widening is exact, one
float32 add) and the low-precision operand's gradient is cast back by the engine. Everything
else (broadcasting, alpha, in place) still promotes first. Compared with CPU torch exactly.
Marked ``cuda``.
"""
from __future__ import annotations

import numpy as np
import pytest

import ember

pytestmark = pytest.mark.cuda
torch = pytest.importorskip("torch")


def _pair(shape, low: str, seed: int = 0, channels_last: bool = False):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    ea = ember.tensor(a, device="cuda")
    eb = ember.tensor(b, device="cuda").to(getattr(ember, low))
    ta, tb = torch.tensor(a), torch.tensor(b).to(getattr(torch, low))
    if channels_last:
        ea, eb = (t.to(memory_format=ember.channels_last) for t in (ea, eb))
    return ea.requires_grad_(), eb.requires_grad_(), ta.requires_grad_(), tb.requires_grad_()


def _np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().float().numpy()
    return t.detach().cpu().float().numpy()


@pytest.mark.parametrize("low", ["bfloat16", "float16"])
@pytest.mark.parametrize("low_first", [False, True])
@pytest.mark.parametrize("shape,cl", [((64, 96), False), ((8, 16, 5, 5), True)])
def test_mixed_add_one_kernel_matches_torch(low, low_first, shape, cl):
    ea, eb, ta, tb = _pair(shape, low, channels_last=cl)
    ez = eb + ea if low_first else ea + eb
    tz = tb + ta if low_first else ta + tb
    assert ez.dtype == ember.float32
    # both operands feed the add directly: no cast node between
    assert [f.name() for f, _ in ez.grad_fn.next_functions] == ["AccumulateGrad"] * 2
    if cl:
        assert ez.is_contiguous(memory_format=ember.channels_last)
    np.testing.assert_array_equal(_np(ez), _np(tz))
    g = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ez.backward(ember.tensor(g, device="cuda"))
    tz.backward(torch.tensor(g))
    assert ea.grad.dtype == ember.float32 and eb.grad.dtype == getattr(ember, low)
    np.testing.assert_array_equal(_np(ea.grad), _np(ta.grad))
    np.testing.assert_array_equal(_np(eb.grad), _np(tb.grad))


def test_other_mixed_adds_still_promote():
    ea, eb, ta, tb = _pair((32, 48), "bfloat16", seed=2)
    rng = np.random.default_rng(3)
    row = rng.standard_normal(48).astype(np.float32)
    er = ember.tensor(row, device="cuda").bfloat16().requires_grad_()
    tr = torch.tensor(row).bfloat16().requires_grad_()
    cases = [(lambda a, b, r: a + r, lambda a, b, r: a + r),                  # broadcast
             (lambda a, b, r: ember.add(a, b, alpha=2), lambda a, b, r: torch.add(a, b, alpha=2)),
             (lambda a, b, r: b + b, lambda a, b, r: b + b)]                  # one dtype
    for ef, tf in cases:
        ez, tz = ef(ea, eb, er), tf(ta, tb, tr)
        assert str(ez.dtype).split(".")[-1] == str(tz.dtype).split(".")[-1]
        np.testing.assert_array_equal(_np(ez), _np(tz))
    # in place: float32 += bfloat16
    ex, tx = ea.detach().clone(), ta.detach().clone()
    ex += eb.detach()
    tx += tb.detach()
    np.testing.assert_array_equal(_np(ex), _np(tx))
