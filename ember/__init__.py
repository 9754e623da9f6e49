"""ember: a PyTorch-compatible deep-learning framework on NumPy (CPU) and CuPy (NVIDIA GPUs).

``import ember as torch`` and the torch API works: tensors, autograd, nn, optim, data.
Submodules (``nn``, ``optim``, ``cuda``, ``linalg`` ...) load on first use, so
``import ember`` stays fast.
"""
from __future__ import annotations

import importlib as _importlib
from typing import Any as _Any

__version__ = "0.1.0"

from ember import dtypes as _dtypes
from ember.dtypes import (  # noqa: F401
    dtype, float16, bfloat16, float32, float64, complex64, complex128, int8, int16, int32, int64,
    uint8, bool, half, float, double, long, int, short, cfloat, cdouble, get_default_dtype,
    set_default_dtype, promote_types, result_type, can_cast, finfo, iinfo)
from ember.backend.device import device  # noqa: F401
from ember.tensor import Tensor, Size  # noqa: F401
from ember import ops as _ops  # registers every op and binds Tensor methods
from ember.autograd.grad_mode import (  # noqa: F401
    no_grad, enable_grad, set_grad_enabled, inference_mode, is_grad_enabled,
    is_inference_mode_enabled)
from ember._factory import (  # noqa: F401
    tensor, as_tensor, asarray, from_numpy, from_dlpack, zeros, ones, full, empty, zeros_like,
    ones_like, full_like, empty_like, arange, linspace, logspace, eye, scalar_tensor,
    empty_strided, set_default_device, get_default_device)
from ember.random import (  # noqa: F401
    Generator, default_generator, manual_seed, seed, initial_seed, get_rng_state, set_rng_state,
    rand, randn, randint, randperm, normal, bernoulli, multinomial, rand_like, randn_like,
    randint_like, poisson)
from ember._tensor_str import set_printoptions, get_printoptions  # noqa: F401
from ember import autograd  # noqa: F401
from ember.serialization import save, load  # noqa: F401

globals().update(_ops.PUBLIC_FUNCTIONS)


class memory_format:
    """A memory layout tag (``ember.contiguous_format``, ``ember.channels_last``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"ember.{self.name}"


contiguous_format = memory_format("contiguous_format")
channels_last = memory_format("channels_last")
channels_last_3d = memory_format("channels_last_3d")
preserve_format = memory_format("preserve_format")
strided = "torch.strided"

_STRICT = [True]


def set_strict(mode: bool) -> None:
    """Strict checks (default on) raise where torch silently broadcasts or only warns, e.g. a
    loss whose input and target shapes differ. ``set_strict(False)`` restores torch's behaviour."""
    _STRICT[0] = builtins_bool(mode)


def get_strict() -> builtins_bool:
    return _STRICT[0]


import builtins as _builtins  # noqa: E402

builtins_bool = _builtins.bool


def is_storage(obj: _Any) -> builtins_bool:
    return False


def set_float32_matmul_precision(precision: str) -> None:
    """Float32 matmul precision on CUDA ('highest', or TF32 with 'high'/'medium')."""
    from ember.backends import set_float32_matmul_precision as _set
    _set(precision)


def get_float32_matmul_precision() -> str:
    from ember.backends import get_float32_matmul_precision as _get
    return _get()


def typename(obj: _Any) -> str:
    if isinstance(obj, Tensor):
        return obj.type()
    return type(obj).__qualname__


def use_deterministic_algorithms(mode: builtins_bool, *, warn_only: builtins_bool = False) -> None:
    """ember's CPU kernels are deterministic already; the flag is recorded for queries."""
    _DETERMINISTIC[0] = builtins_bool(mode)


_DETERMINISTIC = [False]


def are_deterministic_algorithms_enabled() -> builtins_bool:
    return _DETERMINISTIC[0]


def set_num_threads(n: _builtins.int) -> None:
    """Threads for large GEMMs (small ones always run on one; see ember.backend.cpu)."""
    from ember.backend.cpu import set_default_threads
    _THREADS[0] = n
    set_default_threads(n)


def get_num_threads() -> _builtins.int:
    return _THREADS[0]


import os as _os  # noqa: E402

_THREADS = [_os.cpu_count() or 1]

def autocast(device_type: str = "cuda", dtype: _Any = None, enabled: builtins_bool = True,
             cache_enabled: _Any = None) -> _Any:
    """Mixed-precision region; see :class:`ember.amp.autocast`."""
    from ember.amp import autocast as _ac
    return _ac(device_type, dtype, enabled, cache_enabled)


_LAZY = {"nn", "optim", "utils", "cuda", "amp", "linalg", "fft", "special", "distributed",
         "onnx", "jit", "vision", "multiprocessing", "backends", "testing", "serialization",
         "examples", "compiler", "distributions"}


def __getattr__(name: str) -> _Any:
    if name == "OutOfMemoryError":
        from ember.cuda.memory import OutOfMemoryError as _oom
        return _oom
    if name in _LAZY:
        mod = _importlib.import_module(f"ember.{name}")
        globals()[name] = mod
        return mod
    raise AttributeError(f"module 'ember' has no attribute '{name}'")
