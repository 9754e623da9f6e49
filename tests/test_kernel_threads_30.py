"""The numba kernels cut into pieces on ember's row threads (cpu_kernels._spread): with two
spare cores forced, GELU, layer norm (forward and backward over row blocks) and the
cross-entropy row softmax still match torch, and the work really was split."""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.backend import cpu, cpu_kernels

torch = pytest.importorskip("torch")
pytest.importorskip("numba")
pytestmark = pytest.mark.host_only


@pytest.fixture
def two_threads(monkeypatch):
    """Two spare cores, no spinning BLAS workers, and a record of each split's row count."""
    monkeypatch.setenv("EMBER_NUMBA", "1")
    assert cpu_kernels.kernels() is not None
    monkeypatch.setattr(cpu, "_spare_threads", lambda now: 2)
    monkeypatch.setitem(cpu._state, "default", 2)
    monkeypatch.setattr(cpu_kernels, "blas_spinning", lambda: False)
    splits: list = []
    real = cpu.parallel_rows

    def recording(n, fn, min_rows=1):
        splits.append(cpu.row_threads(n, min_rows))
        real(n, fn, min_rows)
    monkeypatch.setattr(cpu, "parallel_rows", recording)
    yield splits
    cpu._state["current"] = None  # the BLAS count may have changed


def _both(fn):
    return [fn(m) for m in (ember, torch)]


def test_gelu_split_matches_torch(two_threads):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((16, 64, 512)) * 3).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)

    def run(m, dt):
        t = m.tensor(x.astype(dt), requires_grad=True)
        y = m.nn.functional.gelu(t)
        y.backward(m.tensor(g.astype(dt)))
        return y.detach().numpy(), t.grad.numpy()
    # torch in float64 (its float32 AVX-512 GELU is ~1e-6 off near x = -3.9)
    (ye, ge), (yt, gt) = run(ember, np.float32), run(torch, np.float64)
    assert 2 in two_threads
    np.testing.assert_allclose(ye, yt, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ge, gt, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(4099, 67), (2048, 256)])
def test_layer_norm_row_blocks_split_match_torch(two_threads, shape):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    w = rng.standard_normal(shape[1]).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)

    def run(m):
        ts = [m.tensor(a, requires_grad=True) for a in (x, w, b)]
        y = m.nn.functional.layer_norm(ts[0], (shape[1],), ts[1], ts[2])
        y.backward(m.tensor(g))
        return [y.detach().numpy()] + [t.grad.numpy() for t in ts]
    got, want = _both(run)
    assert two_threads.count(2) >= 2  # forward rows and backward blocks both split
    for a, b_ in zip(got, want):
        np.testing.assert_allclose(a, b_, rtol=2e-4, atol=2e-4)


def test_cross_entropy_rows_split_match_torch(two_threads):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((1024, 512)) * 4).astype(np.float32)
    x[5, 3] = np.nan  # a skipped row, redone by the caller: counted across pieces
    y = rng.integers(0, 512, 1024)

    def run(m):
        t = m.tensor(x, requires_grad=True)
        loss = m.nn.functional.cross_entropy(t, m.tensor(y), reduction="none")
        loss.sum().backward()
        return loss.detach().numpy(), t.grad.numpy()
    (le, ge), (lt, gt) = _both(run)
    assert 2 in two_threads
    np.testing.assert_allclose(le, lt, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ge, gt, rtol=1e-5, atol=1e-6)


def test_layer_norm_block_sums_do_not_depend_on_threads(two_threads, monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4099, 67)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)

    def grads():
        w = ember.ones(67, requires_grad=True)
        b = ember.zeros(67, requires_grad=True)
        F.layer_norm(ember.tensor(x), (67,), w, b).backward(ember.tensor(g))
        return w.grad.numpy(), b.grad.numpy()
    split = grads()
    monkeypatch.setattr(cpu, "_spare_threads", lambda now: 1)
    serial = grads()
    for a, b in zip(split, serial):
        np.testing.assert_array_equal(a, b)  # the same block partial sums, bit for bit


def test_nested_split_inside_a_piece_runs_serially(two_threads):
    # a piece that splits again (a kernel called from a row block) must not wait on the
    # pool it runs in: with one worker that would never finish
    seen = np.zeros(64, np.int64)

    def inner(lo, hi):
        seen[lo:hi] += 1

    def outer(lo, hi):
        cpu.parallel_rows(64, lambda a, b: inner(a, b) if lo == 0 else None, 1)
    cpu.parallel_rows(2, outer, 1)
    assert (seen == 1).all()
