"""``ember.cuda``: CUDA device management, streams and events, RNG, memory statistics and
CUDA graphs, on CuPy. Nothing here initialises CUDA until it is called, so ``import ember``
stays GPU-free.
"""
from __future__ import annotations

import sys

from typing import Any

from ember.backend import cuda as _backend
from ember.cuda.memory import (  # noqa: F401
    OutOfMemoryError, empty_cache, max_memory_allocated, max_memory_reserved, mem_get_info,
    memory_allocated, memory_reserved, memory_stats, memory_summary, reset_peak_memory_stats,
    reset_max_memory_allocated)
from ember.cuda.streams import (  # noqa: F401
    Event, Stream, StreamContext, current_stream, default_stream, set_stream, stream)
from ember.cuda.graphs import (  # noqa: F401
    CUDAGraph, graph, graph_pool_handle, make_graphed_callables)

__all__ = ["is_available", "device_count", "current_device", "set_device", "device",
           "device_of", "get_device_name", "get_device_properties", "get_device_capability",
           "synchronize", "manual_seed", "manual_seed_all", "seed", "seed_all", "initial_seed",
           "get_rng_state", "set_rng_state", "is_initialized", "init", "Stream", "Event",
           "current_stream", "default_stream", "stream", "set_stream", "StreamContext",
           "memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved",
           "reset_peak_memory_stats", "empty_cache", "mem_get_info", "memory_summary",
           "memory_stats", "OutOfMemoryError", "CUDAGraph", "graph", "graph_pool_handle",
           "make_graphed_callables",
           "is_bf16_supported"]

_initialized = [False]


def _cp() -> Any:
    return _backend.xp()


def is_available() -> bool:
    """Whether a CUDA GPU and CuPy are usable (imports CuPy on first call)."""
    return _backend.is_available()


def is_initialized() -> bool:
    return _initialized[0]


def init() -> None:
    """Initialise CUDA explicitly (it happens lazily otherwise)."""
    _cp().cuda.runtime.getDeviceCount()
    _initialized[0] = True


def device_count() -> int:
    """The number of visible GPUs (0 without CUDA)."""
    if not is_available():
        return 0
    return int(_cp().cuda.runtime.getDeviceCount())


def _index(dev: Any) -> int:
    if dev is None:
        return current_device()
    if isinstance(dev, int):
        return dev
    from ember.backend.device import device as _device
    d = _device(dev) if not isinstance(dev, _device) else dev
    if d.type != "cuda":
        raise ValueError(f"Expected a cuda device, but got: {d}")
    return d.index if d.index is not None else current_device()


def current_device() -> int:
    """Index of the current CUDA device."""
    return int(_cp().cuda.runtime.getDevice())


def set_device(dev: Any) -> None:
    """Make ``dev`` the current CUDA device."""
    idx = _index(dev)
    if idx >= 0:
        _cp().cuda.runtime.setDevice(idx)


class device:
    """Context manager that changes the current device (``with ember.cuda.device(1): ...``)."""

    def __init__(self, dev: Any) -> None:
        self.idx = _index(dev) if dev is not None else -1
        self.prev = -1

    def __enter__(self) -> None:
        if self.idx >= 0:
            self.prev = current_device()
            set_device(self.idx)

    def __exit__(self, *exc: Any) -> None:
        if self.prev >= 0:
            set_device(self.prev)


class device_of(device):
    """Context manager that makes the device of tensor ``obj`` current."""

    def __init__(self, obj: Any) -> None:
        super().__init__(obj.get_device() if obj.is_cuda else -1)


class _DeviceProperties:
    def __init__(self, props: dict, idx: int) -> None:
        name = props.get("name", b"")
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self.total_memory = int(props.get("totalGlobalMem", 0))
        self.major = int(props.get("major", 0))
        self.minor = int(props.get("minor", 0))
        self.multi_processor_count = int(props.get("multiProcessorCount", 0))
        self.L2_cache_size = int(props.get("l2CacheSize", 0))
        self.is_integrated = bool(props.get("integrated", 0))
        self.index = idx

    def __repr__(self) -> str:
        return (f"_CudaDeviceProperties(name='{self.name}', major={self.major}, "
                f"minor={self.minor}, total_memory={self.total_memory // 2 ** 20}MB, "
                f"multi_processor_count={self.multi_processor_count}, "
                f"L2_cache_size={self.L2_cache_size // 2 ** 20}MB)")


def get_device_properties(dev: Any = None) -> _DeviceProperties:
    idx = _index(dev)
    return _DeviceProperties(_cp().cuda.runtime.getDeviceProperties(idx), idx)


def get_device_name(dev: Any = None) -> str:
    return get_device_properties(dev).name


def get_device_capability(dev: Any = None) -> tuple[int, int]:
    p = get_device_properties(dev)
    return p.major, p.minor


def is_bf16_supported(including_emulation: bool = True) -> bool:
    return is_available() and get_device_capability()[0] >= 8


def synchronize(dev: Any = None) -> None:
    """Wait for all work on the device to finish. Raises the IndexError of an embedding
    index that a device-side check found bad meanwhile (torch raises its device-side assert
    at a synchronisation too)."""
    with device(dev if dev is not None else current_device()):
        _cp().cuda.Device().synchronize()
        emb = sys.modules.get("ember.backend.cuda_ops.kernels_embedding")
        if emb is not None:
            emb.raise_pending()


# ---------------------------------------------------------------------- random
def manual_seed(seed: int) -> None:
    """Seed the current device's generator."""
    from ember import random as _r
    idx = current_device() if is_available() else 0
    _gen(idx).manual_seed(seed)
    del _r


def manual_seed_all(seed: int) -> None:
    """Seed every device's generator."""
    for i in range(max(device_count(), 1)):
        _gen(i).manual_seed(seed)


def seed() -> None:
    _gen(current_device()).seed()


def seed_all() -> None:
    for i in range(device_count()):
        _gen(i).seed()


def initial_seed() -> int:
    return _gen(current_device()).initial_seed()


def get_rng_state(dev: Any = "cuda") -> Any:
    return _gen(_index(dev)).get_state()


def set_rng_state(new_state: Any, dev: Any = "cuda") -> None:
    _gen(_index(dev)).set_state(new_state)


def _gen(idx: int) -> Any:
    from ember import random as _r
    from ember.backend.device import device as _device
    g = _r._cuda_generators.get(idx)
    if g is None:
        g = _r._cuda_generators[idx] = _r.Generator(_device("cuda", idx))
        g.manual_seed(_r.default_generator.initial_seed())
    return g
