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


@pytest.mark.parametrize("src,dst", [("float32", "bfloat16"), ("bfloat16", "float32"),
                                     ("float32", "float16"), ("float16", "float32"),
                                     ("bfloat16", "float16"), ("float16", "bfloat16")])
def test_cast_kernel_matches_astype_bitwise(src, dst):
    import cupy as cp
    from ember.backend.cuda_ops.kernels_pointwise import cast
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(5000) * 10.0 ** rng.integers(-6, 6, 5000),
                        [np.nan, np.inf, -np.inf, 0.0, -0.0, 65504.0, 70000.0, 1e-8,
                         1.00390625, 1.01171875, 3.0e38]]).astype(np.float32)
    a = cp.asarray(x).astype(cp.dtype(ember.dtypes.to_dtype(src).np))
    got, want = cast(cp, a, want_dt := cp.dtype(ember.dtypes.to_dtype(dst).np)), a.astype(want_dt)
    assert got.dtype == want.dtype and got.shape == want.shape
    g, w = cp.asnumpy(got).astype(np.float64), cp.asnumpy(want).astype(np.float64)
    np.testing.assert_array_equal(g, w)   # NaN positions equal too
    y = ember.tensor(x, device="cuda", requires_grad=True).to(ember.dtypes.to_dtype(src))
    assert y.to(ember.dtypes.to_dtype(dst)).dtype == ember.dtypes.to_dtype(dst)
