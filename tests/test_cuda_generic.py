"""Generic CuPy paths that CuPy itself does not cover for every dtype (marked cuda)."""
from __future__ import annotations

import numpy as np
import pytest

import ember

pytestmark = pytest.mark.cuda


def _sum_to(g: np.ndarray, shape: tuple) -> np.ndarray:
    g = g.sum(axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    return g.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1),
                 keepdims=True).reshape(shape)


def _host(t: ember.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy().astype(np.float64)


@pytest.mark.parametrize("shapes", [((3, 4, 5), (3, 5, 6)), ((2, 1, 4, 8), (3, 8, 2)),
                                    ((4, 5), (2, 5, 3))])
def test_batched_bfloat16_matmul_matches_float64_reference(shapes):
    # CuPy's batched matmul rejects ml_dtypes' bfloat16; ember computes it in float32
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    la = ember.tensor(a, device="cuda", requires_grad=True)
    lb = ember.tensor(b, device="cuda", requires_grad=True)
    ta, tb = la.to(ember.bfloat16), lb.to(ember.bfloat16)
    y = ta @ tb
    assert y.dtype == ember.bfloat16 and y.device.type == "cuda"
    a16, b16 = _host(ta), _host(tb)
    np.testing.assert_allclose(_host(y), a16 @ b16, rtol=1e-2, atol=3e-2)
    y.float().sum().backward()
    ones = np.ones(y.shape)
    np.testing.assert_allclose(_host(la.grad), _sum_to(ones @ np.swapaxes(b16, -1, -2), a.shape),
                               rtol=1e-2, atol=5e-2)
    np.testing.assert_allclose(_host(lb.grad), _sum_to(np.swapaxes(a16, -1, -2) @ ones, b.shape),
                               rtol=1e-2, atol=5e-2)


def test_peak_memory_follows_allocations_and_frees():
    mib = 2 ** 20
    ember.cuda.reset_peak_memory_stats()
    base = ember.cuda.memory_allocated()
    x = ember.empty(32, mib, device="cuda")           # 128 MiB
    y = ember.empty(16, mib, device="cuda")           # 64 MiB
    del x
    z = ember.empty(8, mib, device="cuda")            # 32 MiB, after x was freed
    peak = ember.cuda.max_memory_allocated() - base
    assert 192 * mib <= peak < 200 * mib
    assert ember.cuda.memory_allocated() - base >= 96 * mib
    del y, z
    assert ember.cuda.max_memory_allocated() - base == peak   # a peak stays until reset
    ember.cuda.reset_peak_memory_stats()
    assert ember.cuda.max_memory_allocated() == ember.cuda.memory_allocated()
    assert ember.cuda.max_memory_reserved() >= ember.cuda.memory_reserved()
