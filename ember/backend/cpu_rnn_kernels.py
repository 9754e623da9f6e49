"""numba time loops of the CPU LSTM layer (``ops/nn_rnn``): forward and backward over all
timesteps in one compiled call, with the recurrent GEMM of each step done by oneMKL.

The Python loop of ``_lstm_layer`` called, per step, NumPy's matmul (OpenBLAS on one
thread: 64 us for a (20, 200) @ (200, 800) product here), the numba gate kernel, and a few
slice copies, ~10 us of Python around them. MKL's ``cblas_sgemm`` takes that product in
~41 us on one thread and ~24 us on the two cores (OpenBLAS threads thrash on products this
small); calling it through its address from compiled code (``backend/cpu_mkl_jit``'s
intrinsic) costs no Python at all, so the whole layer is one call.

Used only for float32 NumPy arrays, no projection (``proj_size`` 0), with numba and MKL both
there; ``ops/nn_rnn`` keeps its per-step loop for everything else. :data:`kernels` returns
None without numba (or with ``EMBER_NUMBA=0``).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

from ember.backend.cpu_kernels import LazyKernels
from ember.backend.cpu_mkl_jit import lower_args

# module globals, since numba's on-disk cache does not take closure variables
_GEMM_CALL: Any = None
_COMPUTE_CALL: Any = None
_CELL: Any = None   # cpu_kernels' lstm_cell (inlined: this module's flags apply)
_STEP_BACK: Any = None   # cpu_kernels' lstm_step_back (a module global: numba caches callers)

_ROW, _NO, _TRANS, _PACKED = 101, 111, 112, 151   # cblas layout and operand flags
_B_MATRIX = 162   # cblas_sgemm_pack's identifier of the B operand


def _compute_intrinsic() -> Any:
    """``compute_call(fptr, layout, ta, tb, m, n, k, pa, lda, pb, ldb, beta, pc, ldc)``: an
    indirect call of ``cblas_sgemm_compute`` (LP64: ints as C ints, pointers as integers)."""
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    i32 = ir.IntType(32)
    i8p = ir.IntType(8).as_pointer()

    @intrinsic
    def compute_call(typingctx, fptr, layout, ta, tb, m, n, k, pa, lda, pb, ldb, beta, pc,
                     ldc):  # pragma: no cover - compile-time
        sig = types.void(fptr, layout, ta, tb, m, n, k, pa, lda, pb, ldb, beta, pc, ldc)

        def cg(context, builder, signature, args):
            fnty = ir.FunctionType(ir.VoidType(), [i32] * 6 + [i8p, i32, i8p, i32,
                                                              ir.FloatType(), i8p, i32])
            fn = builder.inttoptr(args[0], fnty.as_pointer())
            builder.call(fn, lower_args(builder, "iiiiiipipirpi", list(args[1:])))
            return context.get_dummy_value()
        return sig, cg
    return compute_call


def _build() -> SimpleNamespace | None:
    import numba
    import numpy as np

    from ember.backend import cpu_kernels, cpu_mkl_jit

    global _GEMM_CALL, _COMPUTE_CALL, _CELL, _STEP_BACK
    base = cpu_kernels.kernels()   # builds the LSTM cell row the forward inlines
    if base is None:
        return None
    _GEMM_CALL = cpu_mkl_jit._intrinsics()[0]
    _COMPUTE_CALL = _compute_intrinsic()
    _CELL = cpu_kernels._LSTM_CELL
    _STEP_BACK = base.lstm_step_back
    jit = numba.njit(fastmath=False, cache=True, nogil=True, error_model="numpy",
                     boundscheck=False)
    # the forward's sigmoid and tanh polynomials as fused multiply-adds (one rounding fewer
    # per step): its half-batch layer loop 996 -> 878 us on one thread
    fma = numba.njit(fastmath={"contract"}, cache=True, nogil=True, error_model="numpy",
                     boundscheck=False)

    @fma
    def lstm_forward(fptr, cptr, xproj, w_t, h, c, act, tanh_c, c_prev, h_prev, out, gates,
                     off, sizes, reverse, r0, r1):  # pragma: no cover - compiled
        # one LSTM layer direction over packed rows; h (B, H) and c (B, H) hold the initial
        # state and end with the final one. Per step: gates = h[:b] @ w_t (MKL), then the
        # elementwise part as cpu_kernels.lstm_step does it (its lstm_cell on each row),
        # writing h and out directly. w_t is (H, 4H) C-contiguous. Only the sequences (batch
        # rows) r0 <= r < r1 are run: each row's recurrence is its own, so two threads can
        # take one half each and never wait on each other. With cptr (the address of
        # cblas_sgemm_compute) nonzero, w_t is instead W_hh^T in MKL's packed format.
        T = sizes.size
        H = h.shape[1]
        g4 = 4 * H
        one = np.float32(1.0)
        zero = np.float32(0.0)
        for s in range(T):
            t = T - 1 - s if reverse else s
            b = min(sizes[t], r1)
            if b <= r0:
                continue
            lo = off[t]
            for r in range(r0, b):
                h_prev[lo + r] = h[r]
                c_prev[lo + r] = c[r]
            if cptr != 0:
                _COMPUTE_CALL(cptr, _ROW, _NO, _PACKED, b - r0, g4, H,
                              h.ctypes.data + r0 * H * h.itemsize, H, w_t.ctypes.data, g4,
                              zero, gates.ctypes.data + r0 * g4 * gates.itemsize, g4)
            else:
                _GEMM_CALL(fptr, _ROW, _NO, _NO, b - r0, g4, H, one,
                           h.ctypes.data + r0 * H * h.itemsize, H, w_t.ctypes.data, g4, zero,
                           gates.ctypes.data + r0 * g4 * gates.itemsize, g4)
            for r in range(r0, b):
                tr = tanh_c[lo + r]
                _CELL(gates[r], xproj[lo + r], act[lo + r], c[r], tr)
                ao = act[lo + r][3 * H:]
                hr = h[r]
                orow = out[lo + r]
                for j in range(H):
                    v = ao[j] * tr[j]
                    hr[j] = v
                    orow[j] = v

    @jit
    def lstm_backward(fptr, go, has_go, w, act, tanh_c, c_prev, dh, dc, dgates, dhs, off,
                      sizes, reverse, r0, r1):  # pragma: no cover - compiled
        # backpropagation through time of lstm_forward: dh (B, H) and dc (B, H) hold the
        # gradients of the final state and end with those of the initial state; dgates
        # (N, 4H) receives the gate pre-activations' gradients (= xproj's). Per step the
        # elementwise part is cpu_kernels.lstm_step_back's, then dh[:b] = dgates_t @ w (MKL),
        # w (4H, H) C-contiguous. dhs is (B, H) scratch. Rows r0 <= r < r1 as in
        # lstm_forward. (W packed for MKL as in the forward measured no faster here: the
        # pack is an extra copy, where the forward's replaces the transpose.)
        T = sizes.size
        H = dh.shape[1]
        g4 = 4 * H
        one = np.float32(1.0)
        zero = np.float32(0.0)
        for s in range(T):
            t = s if reverse else T - 1 - s
            b = min(sizes[t], r1)
            if b <= r0:
                continue
            lo = off[t]
            for r in range(r0, b):
                d = dhs[r]
                dr = dh[r]
                if has_go:
                    gr = go[lo + r]
                    for j in range(H):
                        d[j] = dr[j] + gr[j]
                else:
                    for j in range(H):
                        d[j] = dr[j]
            # the elementwise part: cpu_kernels' lstm_step_back on this step's rows
            _STEP_BACK(dhs[r0:b], act[lo + r0:lo + b], tanh_c[lo + r0:lo + b],
                       c_prev[lo + r0:lo + b], dc[r0:b], dgates[lo + r0:lo + b])
            pa = dgates.ctypes.data + (lo + r0) * g4 * dgates.itemsize
            pc = dh.ctypes.data + r0 * H * dh.itemsize
            _GEMM_CALL(fptr, _ROW, _NO, _NO, b - r0, H, g4, one, pa, g4, w.ctypes.data, H,
                       zero, pc, H)

    return SimpleNamespace(lstm_forward=lstm_forward, lstm_backward=lstm_backward)


kernels = LazyKernels(_build)   # the compiled namespace, or None without numba


# Fewest sequences a thread takes: below this the per-step products get too thin to pay
# for the second thread's start (~25 us a layer), and MKL threads each step's product instead
MIN_ROWS = 4


def _mkl_sgemm(macs: int) -> int:
    """The address of MKL's ``cblas_sgemm`` for the compiled loops, with MKL's thread count
    set for products of ``macs`` multiply-adds (``cpu.gemm_threads``: the spare cores from
    256K on, else one); 0 where the MKL route is off, missing, or has no compiled callers."""
    import numpy as np

    from ember.backend import cpu_mkl
    from ember.backend.cpu import gemm_threads
    if not cpu_mkl.available() or cpu_mkl._mkl["jit"] is None:
        return 0
    gemm_threads(np, macs)
    cpu_mkl._threads(cpu_mkl._mkl["lib"])
    return int(cpu_mkl._mkl["sgemm"])


_pack: dict = {"bound": False, "size": None, "pack": None, "compute": 0}
PACK = True   # the per-step products read W_hh from MKL's packed format (cblas_sgemm_pack)


def packed_b(w: Any, trans: bool, m: int) -> tuple:
    """``(cblas_sgemm_compute address, buffer)``: the (k, n) operand ``w.T if trans else w``
    (``w`` a C-contiguous float32 array) packed for MKL's products with up to ``m`` rows;
    ``(0, None)`` where packing is off or missing (the loops then call ``cblas_sgemm``).

    Packed once per layer call and read by every step (and both threads), the weight is
    already laid out as the kernel's inner loop wants it: a (10, 200) @ (200, 800) product
    took ~20 us against ~27 through cblas_sgemm, and the forward's transposed copy of W_hh
    is the pack itself (in-process A/B, LSTM 2x200 forward: 5.01 vs 5.40 ms)."""
    import ctypes

    import numpy as np

    from ember.backend import cpu_mkl
    if not PACK:
        return 0, None
    if not _pack["bound"]:
        lib = cpu_mkl._load()   # (None where MKL is missing: bound as missing below)
        try:
            size = lib.cblas_sgemm_pack_get_size
            pack = lib.cblas_sgemm_pack
            compute = ctypes.cast(lib.cblas_sgemm_compute, ctypes.c_void_p).value
        except AttributeError:
            size = pack = None
            compute = 0
        if pack is not None:
            ci, vp = ctypes.c_int, ctypes.c_void_p
            size.argtypes = [ci, ci, ci, ci]
            size.restype = ctypes.c_size_t
            pack.argtypes = [ci, ci, ci, ci, ci, ci, ctypes.c_float, vp, ci, vp]
            pack.restype = None
        _pack.update(bound=True, size=size, pack=pack, compute=compute or 0)
    if not _pack["compute"] or w.dtype != np.float32 or not w.flags.c_contiguous:
        return 0, None
    rows, cols = w.shape
    k, n = (cols, rows) if trans else (rows, cols)
    buf = np.empty(_pack["size"](_B_MATRIX, max(m, 1), n, k) // 4 + 16, np.float32)
    _pack["pack"](_ROW, _B_MATRIX, _TRANS if trans else _NO, max(m, 1), n, k, 1.0,
                  w.ctypes.data, cols, buf.ctypes.data)
    return _pack["compute"], buf


def available() -> bool:
    """Whether the compiled loops can run now (numba, MKL and its compiled callers)."""
    from ember.backend import cpu_mkl
    return kernels() is not None and cpu_mkl.available() and cpu_mkl._mkl["jit"] is not None


def over_rows(batch: int, step_macs: int, body: Callable[[int, int, int], None]) -> None:
    """Run ``body(sgemm_address, r0, r1)`` over the sequences ``[0, batch)``.

    The sequences' recurrences are independent, so with a spare core and at least
    ``MIN_ROWS`` each, two threads run the whole time loop on one half each (MKL on one
    thread in each): no per-step synchronisation. On the LM's 20 x 200 layer the forward
    took ~1.1 ms this way against 1.7 ms with each step's product on MKL's two threads and
    the gates on one. Otherwise one call, with MKL threading each step's ``step_macs``
    product as ``cpu.gemm_threads`` decides."""
    from ember.backend.cpu import parallel_rows, row_threads
    if row_threads(batch, MIN_ROWS) >= 2:
        fptr = _mkl_sgemm(0)

        def piece(lo: int, hi: int) -> None:
            body(fptr, lo, hi)
        parallel_rows(batch, piece, MIN_ROWS)
        return
    body(_mkl_sgemm(step_macs), 0, batch)
