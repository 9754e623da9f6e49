"""ember.backends: the switches real scripts set (vs torch's behaviour)."""
from __future__ import annotations

import subprocess
import sys

import pytest

import ember

torch = pytest.importorskip("torch")


def test_switches_exist_and_round_trip_like_torch():
    for m in (torch, ember):
        m.backends.cudnn.benchmark = True
        m.backends.cudnn.deterministic = True
        assert m.backends.cudnn.benchmark and m.backends.cudnn.deterministic
        m.backends.cudnn.benchmark = False
        m.backends.cudnn.deterministic = False
        assert m.backends.mps.is_available() is False
        m.set_float32_matmul_precision("high")
        assert m.get_float32_matmul_precision() == "high"
        assert m.backends.cuda.matmul.allow_tf32 is True
        m.set_float32_matmul_precision("highest")
        assert m.backends.cuda.matmul.allow_tf32 is False
        with pytest.warns(UserWarning):
            m.set_float32_matmul_precision("fast")
        assert m.get_float32_matmul_precision() == "highest"


def test_tf32_request_reaches_cupy_before_import():
    code = ("import os, ember; ember.backends.cuda.matmul.allow_tf32 = True; "
            "print(os.environ.get('CUPY_TF32'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_stream_capturing_asks_only_a_non_null_stream(monkeypatch):
    """The one capture query the CUDA paths share (a stand-in CuPy: no GPU needed): the
    legacy null stream is never asked (the query can fail while another stream captures)."""
    from types import SimpleNamespace
    from ember.backend import cuda as backend_cuda

    class Stream:
        def __init__(self, ptr, capturing):
            self.ptr, self.capturing, self.asked = ptr, capturing, 0

        def is_capturing(self):
            self.asked += 1
            return self.capturing

    current = []
    fake = SimpleNamespace(cuda=SimpleNamespace(get_current_stream=lambda: current[0]))
    monkeypatch.setattr(backend_cuda, "_cupy", fake)
    monkeypatch.setattr(backend_cuda, "_available", [True])
    for ptr, capturing, want in ((0, True, False), (0x10, True, True), (0x10, False, False)):
        current[:] = [Stream(ptr, capturing)]
        assert backend_cuda.stream_capturing() is want
        assert current[0].asked == (1 if ptr else 0)


def test_layout_inverse_permutation_and_permuted_allocation():
    """``_layout.inverse`` against NumPy's argsort, and an allocation in a dense permuted
    layout (NumPy stands in for CuPy) against the strides of the array it copies."""
    import numpy as np
    from ember.backend.cuda_ops import _layout as L
    rng = np.random.default_rng(0)
    for n in range(1, 7):
        order = [int(i) for i in rng.permutation(n)]
        assert L.inverse(order) == tuple(int(i) for i in np.argsort(order))
    for phys, perm in (((2, 4, 5, 3), (0, 3, 1, 2)), ((3, 2, 4), (2, 0, 1))):
        a = np.zeros(phys, np.float32).transpose(perm)
        out = L.empty_like(np, a, np.float64, L.dense_order(a))
        assert out.shape == a.shape and out.strides == tuple(2 * s for s in a.strides)
