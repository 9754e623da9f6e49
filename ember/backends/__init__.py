"""``ember.backends``: torch.backends' switches (``cudnn.benchmark``, ``cuda.matmul.allow_tf32``,
``mps.is_available()`` ...), so scripts that set them run unchanged.

TF32: CuPy reads ``CUPY_TF32`` once, when it is imported. ember imports CuPy lazily, so
turning TF32 on (``allow_tf32 = True`` or ``set_float32_matmul_precision("high")``) before the
first CUDA op takes effect; after that the change is recorded and a warning says it needs a
restart.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any

_PRECISION = ["highest"]


def _apply_tf32(on: bool) -> None:
    if "cupy" in sys.modules:
        if (os.environ.get("CUPY_TF32") == "1") != on:
            warnings.warn("TF32 for float32 matmul is fixed once CuPy is loaded; set it before "
                          "the first CUDA op (it takes effect in a new process).", UserWarning,
                          stacklevel=3)
        return
    os.environ["CUPY_TF32"] = "1" if on else "0"


class _Matmul:
    @property
    def allow_tf32(self) -> bool:
        return _PRECISION[0] != "highest"

    @allow_tf32.setter
    def allow_tf32(self, value: bool) -> None:
        _PRECISION[0] = "high" if value else "highest"
        _apply_tf32(bool(value))

    allow_fp16_reduced_precision_reduction = True
    allow_bf16_reduced_precision_reduction = True


class _CudaBackend:
    matmul = _Matmul()

    @staticmethod
    def is_built() -> bool:
        from ember.backend import cuda
        return cuda._load() is not None

    @staticmethod
    def preferred_linalg_library(backend: Any = None) -> str:
        return "cusolver"

    flash_sdp_enabled = staticmethod(lambda: True)
    mem_efficient_sdp_enabled = staticmethod(lambda: True)
    math_sdp_enabled = staticmethod(lambda: True)

    @staticmethod
    def enable_flash_sdp(enabled: bool) -> None:
        pass

    @staticmethod
    def enable_mem_efficient_sdp(enabled: bool) -> None:
        pass

    @staticmethod
    def enable_math_sdp(enabled: bool) -> None:
        pass


class _Cudnn:
    """cuDNN switches; ember records them (its convolutions pick algorithms per shape)."""

    enabled = True
    benchmark = False
    deterministic = False
    allow_tf32 = True

    @staticmethod
    def is_available() -> bool:
        from ember import cuda
        return cuda.is_available()

    @staticmethod
    def version() -> int | None:
        return None


class _Mps:
    @staticmethod
    def is_available() -> bool:
        return False

    @staticmethod
    def is_built() -> bool:
        return False


class _Flag:
    def __init__(self, name: str) -> None:
        self.name = name

    @staticmethod
    def is_available() -> bool:
        return False


cuda = _CudaBackend()
cudnn = _Cudnn()
mps = _Mps()
mkldnn = _Flag("mkldnn")
openmp = _Flag("openmp")


def set_float32_matmul_precision(precision: str) -> None:
    """'highest' (full float32), 'high' or 'medium' (TF32 on CUDA); as torch."""
    if precision not in ("highest", "high", "medium"):
        # torch warns and leaves the setting unchanged
        warnings.warn(f"{precision} is not one of 'highest', 'high', or 'medium'; the "
                      "set_float32_matmul_precision call has no effect.", UserWarning,
                      stacklevel=2)
        return
    _PRECISION[0] = precision
    _apply_tf32(precision != "highest")


def get_float32_matmul_precision() -> str:
    return _PRECISION[0]
