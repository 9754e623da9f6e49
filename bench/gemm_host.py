"""Host cost of one small CUDA GEMM through each route ember can take (MLP-sized operands).

    python -m bench.gemm_host

Each route runs 2,000 times back to back (the GPU keeps up at these sizes, so the time per
call is the host's) for ``(64, 784) @ (512, 784).T`` in float32: ``cupy.matmul`` with the
weight as a transposed view (ember's linear), with a contiguous right operand, cuBLAS
through ``cupy.cublas.gemm``, the raw ``cublasGemmEx`` binding (with and without allocating
the result), and ember's ``F.linear`` itself.
"""
from __future__ import annotations

import time


def main() -> None:
    import cupy as cp
    from cupy import cublas

    import ember
    ember.cuda.is_available()
    a = cp.random.rand(64, 784, dtype=cp.float32)
    w = cp.random.rand(512, 784, dtype=cp.float32)
    wt = cp.ascontiguousarray(w.T)
    out = cp.empty((64, 512), cp.float32)
    ea = ember.randn(64, 784, device="cuda")
    ew = ember.randn(512, 784, device="cuda")
    eb = ember.randn(512, device="cuda")
    import numpy as np
    from cupy_backends.cuda.libs import cublas as cb
    h = cp.cuda.device.get_cublas_handle()
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)

    def raw_gemm_ex() -> None:
        # row-major out (64, 512) = a (64, 784) @ w.T: column-major out.T = w @ a.T
        cb.setStream(h, cp.cuda.get_current_stream().ptr)
        cb.gemmEx(h, cb.CUBLAS_OP_T, cb.CUBLAS_OP_N, 512, 64, 784, one.ctypes.data,
                  w.data.ptr, 0, 784, a.data.ptr, 0, 784, zero.ctypes.data, out.data.ptr, 0,
                  512, 68, -1)   # CUDA_R_32F = 0, CUBLAS_COMPUTE_32F = 68, default algo

    def raw_gemm_ex_alloc() -> None:
        o = cp.empty((64, 512), cp.float32)
        cb.setStream(h, cp.cuda.get_current_stream().ptr)
        cb.gemmEx(h, cb.CUBLAS_OP_T, cb.CUBLAS_OP_N, 512, 64, 784, one.ctypes.data,
                  w.data.ptr, 0, 784, a.data.ptr, 0, 784, zero.ctypes.data, o.data.ptr, 0,
                  512, 68, -1)
    ref = cp.matmul(a, w.T)
    raw_gemm_ex()
    assert cp.allclose(out, ref, rtol=1e-3, atol=1e-3), "raw gemmEx disagrees with matmul"
    routes = {
        "raw cublas gemmEx out=": raw_gemm_ex,
        "raw cublas gemmEx + cp.empty": raw_gemm_ex_alloc,
        "cp.empty((64, 512))": lambda: cp.empty((64, 512), cp.float32),
        "cupy.matmul(a, w.T)": lambda: cp.matmul(a, w.T),
        "cupy.matmul(a, wt)": lambda: cp.matmul(a, wt),
        "cupy.cublas.gemm N,T out=": lambda: cublas.gemm("N", "T", a, w, out=out),
        "a + a (elementwise)": lambda: a + a,
        "ember F.linear (no grad)": lambda: ember.nn.functional.linear(ea, ew, eb),
    }
    for name, fn in routes.items():
        for _ in range(20):
            fn()
        cp.cuda.Device().synchronize()
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        cp.cuda.Device().synchronize()
        print(f"{name:<32}{(time.perf_counter() - t0) / n * 1e6:8.1f} us/call")


if __name__ == "__main__":
    main()
