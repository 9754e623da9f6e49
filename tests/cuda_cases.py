"""Helpers shared by the CUDA tests of the ResNet paths (batch norm, fused ReLU tails):
float64 host copies, values rounded to a storage dtype, CUDA tensors in either layout, and a
batch norm's inputs."""
from __future__ import annotations

import numpy as np

import ember

TOL = {"float32": 1e-4, "float16": 4e-3, "bfloat16": 3e-2}


def host(t) -> np.ndarray:
    """A tensor's values as a float64 NumPy array."""
    return t.detach().cpu().float().numpy().astype(np.float64)


def rounded(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` rounded to ``dtype`` (a name), as float64: what a tensor of that dtype holds."""
    return host(ember.tensor(a.astype(np.float32)).to(getattr(ember, dtype)))


def cuda(a: np.ndarray, dtype: str, cl: bool = False, grad: bool = True):
    """``a`` as a CUDA tensor of ``dtype`` (channels-last with ``cl``)."""
    t = ember.tensor(a, device="cuda").to(getattr(ember, dtype))
    if cl:
        t = t.to(memory_format=ember.channels_last)
    return t.requires_grad_(grad)


def is_cl(t) -> bool:
    """Whether ``t`` is channels-last and not also C-contiguous."""
    return t.is_contiguous(memory_format=ember.channels_last) and not t.is_contiguous()


def bn_inputs(rng: np.random.Generator, shape: tuple, dtype: str) -> tuple:
    """A batch norm's input and output gradient (rounded to ``dtype``; the input off zero
    mean and unit scale) and float32 weight and bias, as float64/float32 NumPy arrays."""
    c = shape[1]
    x = rounded(rng.standard_normal(shape) * 2 + 3, dtype)
    w = rng.standard_normal(c).astype(np.float32) + 1
    b = rng.standard_normal(c).astype(np.float32)
    g = rounded(rng.standard_normal(shape), dtype)
    return x, w, b, g
