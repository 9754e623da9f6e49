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
