"""numba callers of MKL's cblas functions for ``backend/cpu_mkl`` (the cheap way in).

A ctypes call of ``cblas_sgemm`` from Python costs ~7 us around the product: three
``ndarray.ctypes`` objects for the pointers (~0.8 us each), the 14 arguments' conversions,
the stride checks in Python. On the small and mid-sized GEMMs of a training step (an MLP's
128x256x256 product takes ~55 us) that was a tenth of the product. These jitted functions
take the arrays themselves, read shapes, strides and pointers in compiled code, and call
the cblas function through its address (an argument, so the compiled code stays valid for
the on-disk cache: numba does not cache functions that hold ctypes function objects). The
call costs ~1 us from Python.

The address is called with the LP64 cblas signature
``void f(int layout, int transa, int transb, int m, int n, int k, T alpha, const T *a,
int lda, const T *b, int ldb, T beta, T *c, int ldc)`` (``T`` float or double, from the
arrays' dtype), and ``void f(int n, T a, const T *x, int incx, T b, T *y, int incy)`` for
``?axpby``. numba and llvmlite are imported on first use; without numba
:data:`kernels` returns None and ``cpu_mkl`` keeps its ctypes calls.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ember.backend.cpu_kernels import LazyKernels

# the intrinsics the jitted functions call: module globals, since numba's on-disk cache does
# not take closure variables
_GEMM_CALL: Any = None
_AXPBY_CALL: Any = None


def lower_args(builder: Any, kinds: str, args: list) -> list:
    """numba's values of a cblas call as its C arguments, by ``kinds``: 'i' a C int
    (truncated from numba's 64-bit integers), 'p' a pointer given as an integer, 'r' a real
    passed as it is (compile time, inside an intrinsic's code generator)."""
    from llvmlite import ir
    i32 = ir.IntType(32)
    i8p = ir.IntType(8).as_pointer()
    out = []
    for kind, v in zip(kinds, args):
        if kind == "i":
            out.append(builder.trunc(v, i32) if v.type.width > 32 else v)
        elif kind == "p":
            out.append(builder.inttoptr(v, i8p))
        else:
            out.append(v)
    return out


def _intrinsics() -> tuple:
    """``gemm_call(fptr, layout, ta, tb, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc)``
    and ``axpby_call(fptr, n, a, px, incx, b, py, incy)``: indirect calls of a cblas function
    at address ``fptr`` (integers passed as C ints, pointers as integers)."""
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    i32 = ir.IntType(32)
    i8p = ir.IntType(8).as_pointer()

    def real(ty: Any) -> Any:
        return ir.DoubleType() if ty == types.float64 else ir.FloatType()

    @intrinsic
    def gemm_call(typingctx, fptr, layout, ta, tb, m, n, k, alpha, pa, lda, pb, ldb, beta,
                  pc, ldc):  # pragma: no cover - compile-time
        sig = types.void(fptr, layout, ta, tb, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc)

        def cg(context, builder, signature, args):
            t = real(signature.args[7])
            fnty = ir.FunctionType(ir.VoidType(), [i32] * 6 + [t, i8p, i32, i8p, i32, t, i8p,
                                                              i32])
            fn = builder.inttoptr(args[0], fnty.as_pointer())
            builder.call(fn, lower_args(builder, "iiiiiirpipirpi", list(args[1:])))
            return context.get_dummy_value()
        return sig, cg

    @intrinsic
    def axpby_call(typingctx, fptr, n, a, px, incx, b, py,
                   incy):  # pragma: no cover - compile-time
        sig = types.void(fptr, n, a, px, incx, b, py, incy)

        def cg(context, builder, signature, args):
            t = real(signature.args[2])
            fnty = ir.FunctionType(ir.VoidType(), [i32, t, i8p, i32, t, i8p, i32])
            fn = builder.inttoptr(args[0], fnty.as_pointer())
            builder.call(fn, lower_args(builder, "irpirpi", list(args[1:])))
            return context.get_dummy_value()
        return sig, cg

    return gemm_call, axpby_call


def _build() -> SimpleNamespace:
    import numba

    global _GEMM_CALL, _AXPBY_CALL
    _GEMM_CALL, _AXPBY_CALL = _intrinsics()
    jit = numba.njit(cache=True, nogil=True, error_model="numpy", boundscheck=False)

    @jit
    def layout(rows, cols, s0, s1, item):  # pragma: no cover - compiled
        # (transpose flag, leading dimension) reading a (rows, cols) array with byte strides
        # s0, s1 as a row-major matrix, or (0, 0) where cblas cannot (cpu_mkl._layout)
        if s0 % item != 0 or s1 % item != 0:
            return 0, 0
        s0 //= item
        s1 //= item
        if cols == 1:
            s1 = 1
        if rows == 1:
            s0 = max(cols, 1)
        if s1 == 1 and s0 >= max(cols, 1):
            return 111, s0
        if s0 == 1 and s1 >= max(rows, 1):
            return 112, s1
        return 0, 0

    @jit
    def gemm(fptr, a, b, c, one, zero):  # pragma: no cover - compiled
        # c = a @ b for 2-D arrays of any strides (c C-contiguous (m, n)); False when cblas
        # cannot read a or b (nothing written)
        m, k = a.shape
        n = b.shape[1]
        item = a.itemsize
        ta, lda = layout(m, k, a.strides[0], a.strides[1], item)
        tb, ldb = layout(k, n, b.strides[0], b.strides[1], item)
        if ta == 0 or tb == 0 or lda > 2147483647 or ldb > 2147483647:
            return False
        _GEMM_CALL(fptr, 101, ta, tb, m, n, k, one, a.ctypes.data, lda, b.ctypes.data, ldb,
                   zero, c.ctypes.data, max(n, 1))
        return True

    @jit
    def axpby(fptr, a, x, b, y):  # pragma: no cover - compiled
        # y = a * x + b * y over contiguous 1-D arrays
        _AXPBY_CALL(fptr, x.size, a, x.ctypes.data, 1, b, y.ctypes.data, 1)

    return SimpleNamespace(gemm=gemm, axpby=axpby)


kernels = LazyKernels(_build)   # the compiled namespace, or None without numba
