"""Shared fixtures: torch as an optional oracle, and CUDA skipping."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

try:  # torch is a test-only oracle; tests that need it skip cleanly without it
    import torch  # noqa: F401
    HAVE_TORCH = True
except Exception:  # pragma: no cover - depends on the environment
    HAVE_TORCH = False


def _cuda_ok() -> bool:
    try:
        import ember
        return ember.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs an NVIDIA GPU with CuPy")
    skip_host = pytest.mark.skip(reason="compares CPU reprs; the default device is not the CPU")
    cuda = None
    for item in items:
        if "host_only" in item.keywords and os.environ.get("EMBER_TEST_DEVICE", "cpu") != "cpu":
            item.add_marker(skip_host)
        if "cuda" in item.keywords:
            if cuda is None:
                cuda = _cuda_ok()
            if not cuda:
                item.add_marker(skip_cuda)


# EMBER_TEST_DEVICE=cuda re-runs CPU test files with ember's default device set to CUDA, so
# the nn parity tests (ember against torch on the CPU) check every layer's GPU forward and
# backward. Only for the device machine: `EMBER_TEST_DEVICE=cuda pytest tests/test_nn_*.py`.
# Tests read results with .numpy(); in this mode a CUDA tensor is copied to the host for them.
_TEST_DEVICE = os.environ.get("EMBER_TEST_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def _test_device(monkeypatch, request):
    # cuda-marked tests place their tensors themselves (often CPU against GPU)
    if _TEST_DEVICE == "cpu" or request.node.get_closest_marker("cuda") is not None:
        if _TEST_DEVICE != "cpu":  # never inherit a default device from another test
            import ember
            ember.set_default_device("cpu")
        yield
        _clear_pending_cuda_errors()
        return
    import ember
    orig = ember.Tensor.numpy

    def numpy(self, *, force=False):
        return orig(self, force=True) if self.device.type != "cpu" and not (
            self.requires_grad and ember.is_grad_enabled()) else orig(self, force=force)
    monkeypatch.setattr(ember.Tensor, "numpy", numpy)
    ember.set_default_device(_TEST_DEVICE)
    try:
        yield
    finally:
        ember.set_default_device("cpu")
        _clear_pending_cuda_errors()


def _clear_pending_cuda_errors() -> None:
    """A bad cross_entropy target or embedding index on CUDA is reported by a later call
    (asynchronously, as torch's device-side assert); a test that provokes one must not fail
    the next test."""
    loss = sys.modules.get("ember.backend.cuda_ops.kernels_loss")
    emb = sys.modules.get("ember.backend.cuda_ops.kernels_embedding")
    # the modules import without CuPy (the kernel-source tests load them): only flags that
    # a GPU call made need clearing
    if not any(mod is not None and mod._FLAGS for mod in (loss, emb)):
        return
    import cupy
    cupy.cuda.Device().synchronize()
    for mod in (loss, emb):
        for flag in (mod._FLAGS.values() if mod is not None else ()):
            flag.reset()


@pytest.fixture
def torch_mod():
    return pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _seed():
    import ember
    ember.manual_seed(0)
    np.random.seed(0)
    yield
    ember.set_default_dtype(ember.float32)


@pytest.fixture(params=["numba", "numpy"])
def kernel_path(request, monkeypatch):
    """Run a test on both CPU paths: ember's numba kernels and the NumPy code
    (``EMBER_NUMBA=0``, read on every call); checks that the switch took."""
    from ember.backend import cpu_kernels
    if request.param == "numba":
        pytest.importorskip("numba")
        monkeypatch.setenv("EMBER_NUMBA", "1")
        assert cpu_kernels.kernels() is not None
    else:
        monkeypatch.setenv("EMBER_NUMBA", "0")
        assert cpu_kernels.kernels() is None
    return request.param
