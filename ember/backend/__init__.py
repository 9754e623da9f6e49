"""The backend layer: the only place that picks numpy or cupy for computing.

``get_xp(device)`` returns the array module for a device; op forwards receive it as ``xp``
(Chainer's ``get_array_module`` pattern), so array code is written once for both.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ember.backend.device import device, cpu_device, to_device

__all__ = ["device", "get_xp", "device_of_array", "to_device", "cpu_device", "cuda_available"]


def get_xp(dev: device) -> Any:
    """The array module (numpy or cupy) that computes on ``dev``."""
    if dev.type == "cpu":
        return np
    return _cuda_xp()


def _cuda_xp() -> Any:
    from ember.backend import cuda
    return cuda.xp()


def device_of_array(arr: Any) -> device:
    """The ember device an array lives on."""
    if type(arr) is np.ndarray or isinstance(arr, np.ndarray):
        return cpu_device
    # A CuPy array's memory pointer carries the device index as a plain int; its
    # ``ndarray.device`` builds a new cupy Device object on every call (~1 us, and an autocast
    # Linear asks six times).
    i = getattr(getattr(arr, "data", None), "device_id", None)
    if i is None:
        if np.isscalar(arr):
            return cpu_device
        dev = getattr(arr, "device", None)
        if dev is None or not hasattr(dev, "id"):
            return cpu_device
        i = dev.id
    d = _CUDA_DEVICES.get(i)
    if d is None:
        d = _CUDA_DEVICES[i] = device("cuda", i)
    return d


# CUDA device index -> the interned ember device (its constructor parses; ~3 us a call, and
# every dtype cast under autocast asks twice)
_CUDA_DEVICES: dict = {}


def cuda_available() -> bool:
    from ember.backend import cuda
    return cuda.is_available()


def special(xp: Any) -> Any:
    """scipy.special or cupyx.scipy.special, imported on first use."""
    if xp is np:
        import scipy.special as sp
        return sp
    import cupyx.scipy.special as csp
    return csp
