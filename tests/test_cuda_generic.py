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


def test_whole_training_step_captured_in_one_graph_matches_eager():
    # torch's whole-network capture recipe: warm up on a side stream, capture forward, loss,
    # backward and a capturable Adam step, replay; the replays must train like eager steps
    nn, F = ember.nn, ember.nn.functional

    def build():
        ember.manual_seed(0)
        return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5)).to("cuda")

    rng = np.random.default_rng(0)
    x = ember.tensor(rng.standard_normal((16, 20)).astype(np.float32), device="cuda")
    y = ember.tensor(rng.integers(0, 5, 16), device="cuda")
    eager, graphed = build(), build()
    opt_e = ember.optim.Adam(eager.parameters(), lr=1e-2)
    opt_g = ember.optim.Adam(graphed.parameters(), lr=1e-2, capturable=True)
    losses = []
    for _ in range(8):
        opt_e.zero_grad()
        loss = F.cross_entropy(eager(x), y)
        loss.backward()
        opt_e.step()
        losses.append(float(loss))
    side = ember.cuda.Stream()
    side.wait_stream(ember.cuda.current_stream())
    with ember.cuda.stream(side):
        for _ in range(3):   # warmup steps train too
            opt_g.zero_grad(set_to_none=True)
            F.cross_entropy(graphed(x), y).backward()
            opt_g.step()
    ember.cuda.current_stream().wait_stream(side)
    g = ember.cuda.CUDAGraph()
    opt_g.zero_grad(set_to_none=True)
    with ember.cuda.graph(g):
        static_loss = F.cross_entropy(graphed(x), y)
        static_loss.backward()
        opt_g.step()   # the capture itself does not run the kernels: 3 steps so far
    got = []
    for _ in range(5):
        g.replay()
        got.append(float(static_loss))
    np.testing.assert_allclose(got, losses[3:], rtol=2e-3, atol=1e-4)
    for pe, pg in zip(eager.parameters(), graphed.parameters()):
        np.testing.assert_allclose(pg.detach().cpu().numpy(), pe.detach().cpu().numpy(),
                                   rtol=2e-3, atol=1e-4)
