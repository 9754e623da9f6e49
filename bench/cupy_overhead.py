"""Host cost of CuPy's building blocks against ember's and torch's eager calls (tiny arrays,
so the GPU never limits): where an eager CUDA op's microseconds go.

    python -m bench.cupy_overhead
"""
from __future__ import annotations

import ctypes
import time
from typing import Any, Callable


def _us(fn: Callable, n: int = 3000) -> float:
    for _ in range(200):
        fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def main() -> None:
    import cupy as cp
    import numpy as np

    import ember
    from ember.backend.cuda_ops import _nvrtc as K
    n = 4096
    a = cp.random.standard_normal(n, dtype=cp.float32)
    b = cp.random.standard_normal(n, dtype=cp.float32)
    c = cp.empty_like(a)
    src = r"""extern "C" __global__ void mul(const float* a, const float* b, float* c, long long n)
    { long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; if (i < n) c[i] = a[i] * b[i]; }"""
    raw = cp.RawKernel(src, "mul")
    ek = cp.ElementwiseKernel("float32 x, float32 y", "float32 z", "z = x * y", "ek_mul")
    nn = np.int64(n)
    pa, pb, pc = (np.uint64(x.data.ptr) for x in (a, b, c))
    stream = cp.cuda.get_current_stream()
    pool = cp.get_default_memory_pool()
    cnt = cp.zeros((), cp.int64)
    flat = cp.empty(2 * n, cp.float32)
    i32, f32 = np.int32(3), np.float32(1e-5)
    args13 = (a, b, c, nn, i32, i32, f32, a, b, i32, i32, nn, c)
    x4 = cp.random.standard_normal((8, 4, 4, 64), dtype=cp.float32).transpose(0, 3, 1, 2)
    y4 = cp.empty_like(x4)
    ea = ember.randn(n, device="cuda")
    eb = ember.randn(n, device="cuda")
    ga = ember.randn(n, device="cuda", requires_grad=True)
    # the same launch through the driver by ctypes, arguments built per call as an op would
    # (13.7 us against RawKernel's 9.4 on an H100 host: no cheaper way round CuPy's launch)
    launch = ctypes.CDLL("libcuda.so.1").cuLaunchKernel
    launch.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
    fptr = raw.kernel.ptr
    ptrs4 = ctypes.c_void_p * 4

    def via_ctypes() -> None:
        vals = (ctypes.c_uint64(a.data.ptr), ctypes.c_uint64(b.data.ptr),
                ctypes.c_uint64(c.data.ptr), ctypes.c_int64(n))
        launch(fptr, n // 256, 1, 1, 256, 1, 1, 0, stream.ptr,
               ptrs4(*[ctypes.addressof(v) for v in vals]), None)
    cases: dict[str, Callable[[], Any]] = {
        "cupy.multiply(a, b)": lambda: cp.multiply(a, b),
        "a * b (cupy)": lambda: a * b,
        "cupy.multiply(a, b, out=c)": lambda: cp.multiply(a, b, out=c),
        "ElementwiseKernel(a, b)": lambda: ek(a, b),
        "ElementwiseKernel(a, b, c)": lambda: ek(a, b, c),
        "cupy.empty(n)": lambda: cp.empty(n, cp.float32),
        "pool.malloc(16 KiB)": lambda: pool.malloc(4 * n),
        "RawKernel(arrays)": lambda: raw((n // 256,), (256,), (a, b, c, nn)),
        "RawKernel(uint64 pointers)": lambda: raw((n // 256,), (256,), (pa, pb, pc, nn)),
        "RawKernel 13 args (6 arrays)": lambda: raw((n // 256,), (256,), args13),
        "cuLaunchKernel by ctypes (args built per call)": via_ctypes,
        "0-d int64 += 1": lambda: cnt.__iadd__(1),
        # a view of part of a flat buffer (bulk_cast's results): slicing and reshaping
        # against constructing the array over the memory pointer
        "flat[off:off+n].reshape(64, 64)": lambda: flat[128:128 + 4096].reshape(64, 64),
        "cupy.ndarray((64, 64), memptr=flat.data + off)":
            lambda: cp.ndarray((64, 64), cp.float32, flat.data + 512),
        "permuted copy y[...] = x (4-d)": lambda: y4.__setitem__(Ellipsis, x4),
        "get_current_stream()": lambda: cp.cuda.get_current_stream(),
        "stream.is_capturing()": lambda: stream.is_capturing(),
        "runtime.getDevice()": lambda: cp.cuda.runtime.getDevice(),
        "a.data.device_id": lambda: a.data.device_id,
        "ember a * b (no grad)": lambda: ea * eb,
        "ember a * b (grad)": lambda: ga * eb,
        "ember a.float() cast": lambda: ea.to(ember.bfloat16),
    }
    _ = K
    for name, fn in cases.items():
        print(f"{_us(fn):8.2f} us  {name}", flush=True)
    cp.cuda.Device().synchronize()
    try:
        import torch
    except ImportError:
        return
    ta = torch.randn(n, device="cuda")
    tb = torch.randn(n, device="cuda")
    tg = torch.randn(n, device="cuda", requires_grad=True)
    for name, fn in {"torch a * b (no grad)": lambda: ta * tb,
                     "torch a * b (grad)": lambda: tg * tb,
                     "torch cast bf16": lambda: ta.to(torch.bfloat16),
                     "torch.empty(n)": lambda: torch.empty(n, device="cuda")}.items():
        print(f"{_us(fn):8.2f} us  {name}", flush=True)


if __name__ == "__main__":
    main()
