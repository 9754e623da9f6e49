"""Host cost of the CUDA calls an eager ember op is made of, per call (GPU never limits):
a kernel launch through CuPy's RawKernel, the same launch through the driver's
``cuLaunchKernel`` by ctypes, ``cupy.empty`` from the pool, and a device-to-device copy.

    python -m bench.gpu_launch_cost
"""
from __future__ import annotations

import ctypes
import time
from typing import Any, Callable

import numpy as np

_SRC = r'''
extern "C" __global__ void k(const float* a, const float* b, float* c, float* d,
                             long long n, int m, float s, int flag) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] * s + b[i] + (flag ? d[i] : 0.f) + m;
}'''


def per_call(fn: Callable[[], Any], sync: Callable[[], Any], n: int = 2000) -> float:
    for _ in range(50):
        fn()
    sync()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> None:
    import cupy as cp
    sync = cp.cuda.Device().synchronize
    mod = cp.RawModule(code=_SRC)
    fn = mod.get_function("k")
    a, b, c, d = (cp.ones(1024, cp.float32) for _ in range(4))
    args = (a, b, c, d, np.int64(1024), np.int32(3), np.float32(2.0), np.int32(1))
    libcuda = ctypes.CDLL("libcuda.so.1")
    launch = libcuda.cuLaunchKernel
    launch.restype = ctypes.c_int
    launch.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 6 + [ctypes.c_uint, ctypes.c_void_p,
                                                                  ctypes.c_void_p, ctypes.c_void_p]
    fptr = fn.kernel.ptr   # the CUfunction behind CuPy's RawKernel
    u64, i64, i32, f32 = ctypes.c_uint64, ctypes.c_int64, ctypes.c_int32, ctypes.c_float
    P8 = ctypes.c_void_p * 8
    addr = ctypes.addressof

    def via_ctypes() -> None:
        vals = (u64(a.data.ptr), u64(b.data.ptr), u64(c.data.ptr), u64(d.data.ptr), i64(1024),
                i32(3), f32(2.0), i32(1))
        ptrs = P8(*[addr(v) for v in vals])
        launch(fptr, 4, 1, 1, 256, 1, 1, 0, cp.cuda.get_current_stream().ptr, ptrs, None)

    cases = {
        "RawKernel launch, 8 args (4 arrays)": lambda: fn((4, 1, 1), (256, 1, 1), args),
        "RawKernel launch, args built per call": lambda: fn(
            (4, 1, 1), (256, 1, 1), (a, b, c, d, np.int64(1024), np.int32(3), np.float32(2.0),
                                      np.int32(1))),
        "cuLaunchKernel via ctypes, args built per call": via_ctypes,
        "cupy.empty(1024, float32)": lambda: cp.empty(1024, cp.float32),
        "cupy.empty((64, 512), float32)": lambda: cp.empty((64, 512), cp.float32),
        "cupy copy (1024 floats)": lambda: a.copy(),
        "cupy a * 2 (ufunc)": lambda: a * 2,
        "get_current_stream()": cp.cuda.get_current_stream,
        "runtime.getDevice()": cp.cuda.runtime.getDevice,
    }
    for name, f in cases.items():
        print(f"{per_call(f, sync):8.2f} us  {name}", flush=True)
    import ember
    x = ember.ones(1024, device="cuda")
    ember_cases = {"ember x * 2": lambda: x * 2, "ember.empty(1024, cuda)":
                   lambda: ember.empty(1024, device="cuda"), "ember x.relu()": x.relu}
    for name, f in ember_cases.items():
        print(f"{per_call(f, sync):8.2f} us  {name}", flush=True)
    try:
        import torch
        t = torch.ones(1024, device="cuda")
        for name, f in {"torch x * 2": lambda: t * 2, "torch.empty(1024, cuda)":
                        lambda: torch.empty(1024, device="cuda"), "torch x.relu()": t.relu}.items():
            print(f"{per_call(f, torch.cuda.synchronize):8.2f} us  {name}", flush=True)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
