"""Embedding's index check on CUDA runs on the device: with the GPU idle the call waits for
its record and raises at once; with the GPU busy there is no host stall, the bad rows become
NaN and the IndexError comes from the next embedding call or ``ember.cuda.synchronize()``. Marked
``cuda``; NumPy is the reference for the good rows."""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn.functional as F

pytestmark = pytest.mark.cuda


def _busy() -> None:
    """Queue a few milliseconds of GPU work (a 4096^3 float32 GEMM, several times over)."""
    a = ember.randn(4096, 4096, device="cuda")
    for _ in range(4):
        a = a @ a * 1e-3


def _setup():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((10, 4)).astype(np.float32)
    return w, ember.tensor(w, device="cuda")


def test_busy_gpu_defers_the_error_to_synchronize():
    w, wt = _setup()
    ember.cuda.synchronize()
    F.embedding(ember.tensor([1], device="cuda"), wt)   # creates the device's record
    _busy()
    out = F.embedding(ember.tensor([2, 12, 5], device="cuda"), wt)   # no stall, no raise
    with pytest.raises(IndexError, match="index 12"):
        ember.cuda.synchronize()
    got = out.cpu().numpy()
    np.testing.assert_array_equal(got[[0, 2]], w[[2, 5]])
    assert np.isnan(got[1]).all()
    # reported once: the device keeps working, later calls and synchronize are clean
    again = F.embedding(ember.tensor([3, 9], device="cuda"), wt)
    ember.cuda.synchronize()
    np.testing.assert_array_equal(again.cpu().numpy(), w[[3, 9]])


def test_busy_gpu_defers_the_error_to_the_next_call():
    w, wt = _setup()
    ember.cuda.synchronize()
    F.embedding(ember.tensor([1], device="cuda"), wt)
    _busy()
    F.embedding(ember.tensor([-1, 0], device="cuda"), wt)
    import cupy
    cupy.cuda.Device().synchronize()   # the record's copy has landed
    with pytest.raises(IndexError, match="index -1"):
        F.embedding(ember.tensor([0], device="cuda"), wt)


def test_idle_gpu_raises_at_the_call():
    _, wt = _setup()
    idx = ember.tensor([0, 10], device="cuda")
    ember.cuda.synchronize()
    with pytest.raises(IndexError, match="index 10"):
        F.embedding(idx, wt)
    ember.cuda.synchronize()   # nothing left pending


def test_idle_gpu_first_call_and_empty_indices():
    # the first check on a device creates its record; an empty index tensor checks nothing
    from ember.backend.cuda_ops import kernels_embedding as ke
    w, wt = _setup()
    ke._FLAGS.clear()
    ember.cuda.synchronize()
    with pytest.raises(IndexError, match="index -3"):
        F.embedding(ember.tensor([1, -3], device="cuda"), wt)
    ke._FLAGS.clear()
    ember.cuda.synchronize()
    assert F.embedding(ember.tensor([], dtype=ember.int64, device="cuda"), wt).shape == (0, 4)
    got = F.embedding(ember.tensor([4, 0], device="cuda"), wt)
    np.testing.assert_array_equal(got.cpu().numpy(), w[[4, 0]])


def test_embedding_backward_after_a_busy_good_call_matches_numpy():
    w, wt = _setup()
    wt.requires_grad_()
    _busy()
    idx = np.array([[1, 3], [3, 7]])
    out = F.embedding(ember.tensor(idx, device="cuda"), wt)
    g = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    out.backward(ember.tensor(g, device="cuda"))
    ember.cuda.synchronize()
    ref = np.zeros_like(w)
    np.add.at(ref, idx.reshape(-1), g.reshape(-1, 4))
    np.testing.assert_allclose(wt.grad.cpu().numpy(), ref, rtol=1e-6)
    np.testing.assert_array_equal(out.detach().cpu().numpy(), w[idx])
