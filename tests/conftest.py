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
    cuda = None
    for item in items:
        if "cuda" in item.keywords:
            if cuda is None:
                cuda = _cuda_ok()
            if not cuda:
                item.add_marker(skip_cuda)


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
