"""numba code that ``cpu_team`` runs on MKL's OpenMP team: a C-callable body (``cfunc``)
per pass, which every team thread enters with one pointer to a control block of int64s,
and the jitted packer that fills the block (array addresses, size, chunk counter).

Control block: [a, b, out, n, op, next chunk, chunk size, -]. The body takes chunks with an
atomic fetch-and-add until none is left. Compiled with ``cache=True`` (no addresses of
other libraries are baked into the code: ``cpu_team`` calls ``GOMP_parallel`` itself).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ember.backend.cpu_kernels import LazyKernels


def _build() -> SimpleNamespace:
    import numba
    import numpy as np
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def fetch_add(typingctx, ptr, val):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            return builder.atomic_rmw("add", args[0], args[1], "monotonic")
        return types.int64(types.CPointer(types.int64), types.int64), cg

    @intrinsic
    def slot(typingctx, p, idx):  # pragma: no cover - compile-time
        """The address of the control block's int64 number ``idx``."""
        def cg(context, builder, sig, args):
            base = builder.bitcast(args[0], ir.IntType(64).as_pointer())
            return builder.gep(base, [args[1]])
        return types.CPointer(types.int64)(types.voidptr, types.int64), cg

    @intrinsic
    def as_f32_ptr(typingctx, p):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            return builder.inttoptr(args[0], ir.FloatType().as_pointer())
        return types.CPointer(types.float32)(types.int64), cg

    @intrinsic
    def as_f64_ptr(typingctx, p):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            return builder.bitcast(args[0], ir.DoubleType().as_pointer())
        return types.CPointer(types.float64)(types.CPointer(types.int64)), cg

    @intrinsic
    def as_f64_ptr_i(typingctx, p):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            return builder.inttoptr(args[0], ir.DoubleType().as_pointer())
        return types.CPointer(types.float64)(types.int64), cg

    global _FETCH_ADD, _SLOT, _F32P, _F64P, _F64PI
    _FETCH_ADD, _SLOT, _F32P, _F64P, _F64PI = fetch_add, slot, as_f32_ptr, as_f64_ptr, as_f64_ptr_i

    @numba.njit(cache=True, nogil=True)
    def pack(ctl, op, a, b, out, chunk):
        ctl[0] = a.ctypes.data
        ctl[1] = b.ctypes.data
        ctl[2] = out.ctypes.data
        ctl[3] = out.size
        ctl[4] = op
        ctl[5] = 0
        ctl[6] = chunk

    @numba.cfunc(types.void(types.voidptr), cache=True, error_model="numpy")
    def binary_body(data):
        ctl = numba.carray(_SLOT(data, 0), 8)
        n = ctl[3]
        chunk = ctl[6]
        x = numba.carray(_F32P(ctl[0]), n)
        y = numba.carray(_F32P(ctl[1]), n)
        o = numba.carray(_F32P(ctl[2]), n)
        counter = _SLOT(data, 5)
        mul = ctl[4] == 1
        # (out is b, or a: loops over two arrays, since LLVM's runtime overlap check sends
        # an exactly aliased third operand to its scalar loop: 4 us -> 9 us a chunk)
        into = 1 if ctl[2] == ctl[1] else (2 if ctl[2] == ctl[0] else 0)
        while True:
            lo = _FETCH_ADD(counter, 1) * chunk
            if lo >= n:
                break
            # (unsigned indices: numba then emits no negative-index fix-up, and LLVM
            # vectorizes the loops)
            hi = numba.uint64(min(n, lo + chunk))
            lo = numba.uint64(lo)
            if into == 1:
                if mul:
                    for i in range(lo, hi):
                        o[i] = x[i] * o[i]
                else:
                    for i in range(lo, hi):
                        o[i] = x[i] + o[i]
            elif into == 2:
                if mul:
                    for i in range(lo, hi):
                        o[i] = o[i] * y[i]
                else:
                    for i in range(lo, hi):
                        o[i] = o[i] + y[i]
            elif mul:
                for i in range(lo, hi):
                    o[i] = x[i] * y[i]
            else:
                for i in range(lo, hi):
                    o[i] = x[i] + y[i]

    from ember.backend import cpu_kernels
    if cpu_kernels.kernels() is None:
        return SimpleNamespace(pack=pack, binary_body=binary_body, gelu_body=None,
                               pack_ln=None, ln_body=None, ln_back_body=None)
    global _GELU_SPAN, _GELU_SPAN_GRAD
    _GELU_SPAN, _GELU_SPAN_GRAD = cpu_kernels._GELU_SPAN, cpu_kernels._GELU_SPAN_GRAD

    @numba.cfunc(types.void(types.voidptr), cache=True, error_model="numpy")
    def gelu_body(data):
        # [x, y, d, n, with derivative, next chunk, chunk]: cpu_kernels' GELU spans
        ctl = numba.carray(_SLOT(data, 0), 8)
        n = ctl[3]
        chunk = ctl[6]
        x = numba.carray(_F32P(ctl[0]), n)
        y = numba.carray(_F32P(ctl[1]), n)
        d = numba.carray(_F32P(ctl[2]), n)
        counter = _SLOT(data, 5)
        grad = ctl[4] == 1
        while True:
            lo = _FETCH_ADD(counter, 1) * chunk
            if lo >= n:
                break
            hi = min(n, lo + chunk)
            if grad:
                _GELU_SPAN_GRAD(x[lo:hi], y[lo:hi], d[lo:hi])
            else:
                _GELU_SPAN(x[lo:hi], y[lo:hi])
    global _LN_ROWS
    _LN_ROWS = cpu_kernels._LN_ROWS

    @numba.njit(cache=True, nogil=True)
    def pack_ln(ctl, ctlf, x, w, b, eps, y, mean, rstd, chunk):
        ctl[0] = x.ctypes.data
        ctl[1] = w.ctypes.data
        ctl[2] = b.ctypes.data
        ctl[3] = y.ctypes.data
        ctl[4] = mean.ctypes.data
        ctl[6] = rstd.ctypes.data
        ctl[7] = x.shape[0]
        ctl[8] = x.shape[1]
        ctlf[9] = eps
        ctl[5] = 0
        ctl[10] = chunk

    @numba.cfunc(types.void(types.voidptr), cache=True, error_model="numpy")
    def ln_body(data):
        # [x, w, b, y, mean, next chunk, rstd, rows, n, eps (float64), chunk rows]:
        # cpu_kernels' float32 layer-norm rows
        ctl = numba.carray(_SLOT(data, 0), 16)
        rows = ctl[7]
        n = ctl[8]
        eps = numba.carray(_F64P(_SLOT(data, 9)), 1)[0]
        chunk = ctl[10]
        x = numba.carray(_F32P(ctl[0]), (rows, n))
        w = numba.carray(_F32P(ctl[1]), n)
        b = numba.carray(_F32P(ctl[2]), n)
        y = numba.carray(_F32P(ctl[3]), (rows, n))
        mean = numba.carray(_F32P(ctl[4]), rows)
        rstd = numba.carray(_F32P(ctl[6]), rows)
        counter = _SLOT(data, 5)
        while True:
            lo = _FETCH_ADD(counter, 1) * chunk
            if lo >= rows:
                break
            hi = min(rows, lo + chunk)
            _LN_ROWS(x[lo:hi], w, b, eps, y[lo:hi], mean[lo:hi], rstd[lo:hi])
    global _LN_BACK_ROWS
    _LN_BACK_ROWS = cpu_kernels._LN_BACK_ROWS

    @numba.njit(cache=True, nogil=True)
    def pack_ln_back(ctl, x, g, w, mean, rstd, gx, gw, gb, want_gx, chunk):
        ctl[0] = x.ctypes.data
        ctl[1] = g.ctypes.data
        ctl[2] = w.ctypes.data
        ctl[3] = mean.ctypes.data
        ctl[4] = rstd.ctypes.data
        ctl[5] = 0
        ctl[6] = gx.ctypes.data
        ctl[7] = gw.ctypes.data
        ctl[8] = gb.ctypes.data
        ctl[9] = x.shape[0]
        ctl[10] = x.shape[1]
        ctl[11] = 1 if want_gx else 0
        ctl[12] = chunk

    @numba.cfunc(types.void(types.voidptr), cache=True, error_model="numpy")
    def ln_back_body(data):
        # [x, g, w, mean, rstd, next chunk, gx, gw, gb, rows, n, want gx, chunk rows]:
        # cpu_kernels' layer-norm backward rows, each chunk into its own float64 row of
        # gw and gb (summed by the caller in chunk order: the same on any thread count)
        ctl = numba.carray(_SLOT(data, 0), 16)
        rows, n = ctl[9], ctl[10]
        want = ctl[11] != 0
        chunk = ctl[12]
        nc = (rows + chunk - 1) // chunk
        x = numba.carray(_F32P(ctl[0]), (rows, n))
        g = numba.carray(_F32P(ctl[1]), (rows, n))
        w = numba.carray(_F32P(ctl[2]), n)
        mean = numba.carray(_F32P(ctl[3]), rows)
        rstd = numba.carray(_F32P(ctl[4]), rows)
        gx = numba.carray(_F32P(ctl[6]), (rows if want else 0, n))
        gw = numba.carray(_F64PI(ctl[7]), (nc, n))
        gb = numba.carray(_F64PI(ctl[8]), (nc, n))
        counter = _SLOT(data, 5)
        while True:
            c = _FETCH_ADD(counter, 1)
            lo = c * chunk
            if lo >= rows:
                break
            hi = min(rows, lo + chunk)
            _LN_BACK_ROWS(x[lo:hi], g[lo:hi], w, mean[lo:hi], rstd[lo:hi],
                          gx[lo:hi] if want else gx, gw[c], gb[c], want)

    ns = SimpleNamespace(pack=pack, binary_body=binary_body, gelu_body=gelu_body,
                         pack_ln_back=pack_ln_back, ln_back_body=ln_back_body,
                         pack_ln=pack_ln, ln_body=ln_body, attn_fwd_body=None,
                         attn_bwd_body=None)
    from ember.backend import cpu_attention_kernels
    ak = cpu_attention_kernels.kernels()
    if ak is None:
        return ns
    global _ATTN_FWD, _QKV, _ST3, _PUT_QKV, _PUT_OPTS, _OPTS
    _ATTN_FWD = ak._fwd

    @numba.njit(inline="always")
    def qkv(ctl, at, dims):
        """Arrays of q's (B, H, L, E), k's (B, H, S, E) and v's (B, H, S, Ev) shapes at the
        addresses in the block's numbers ``at`` to ``at + 2``; B, H, L, E at ``dims`` and S,
        Ev at 14 and 15. The kernels' q, k, v (and out, g) are strided views: they read
        them only by flat index and the element strides passed beside them, so C-ordered
        arrays of their shapes over the same first element stand in for them."""
        B, H, L, E = ctl[dims], ctl[dims + 1], ctl[dims + 2], ctl[dims + 3]
        S, Ev = ctl[14], ctl[15]
        return (numba.carray(_F32P(ctl[at]), (B, H, L, E)),
                numba.carray(_F32P(ctl[at + 1]), (B, H, S, E)),
                numba.carray(_F32P(ctl[at + 2]), (B, H, S, Ev)))

    @numba.njit(inline="always")
    def st3(ctl, i):
        """The three element strides at the block's numbers ``i`` to ``i + 2``."""
        return ctl[i], ctl[i + 1], ctl[i + 2]

    @numba.njit(inline="always")
    def put_qkv(ctl, q, k, v, p, dims, pdims):
        """What ``qkv`` reads, written: q, k, v's addresses at 0 to 2, B, H, L, E at
        ``dims``, S and Ev at 14 and 15; p's address at 4 and its shape at ``pdims``; the
        chunk counter (5) reset."""
        ctl[0] = q.ctypes.data
        ctl[1] = k.ctypes.data
        ctl[2] = v.ctypes.data
        ctl[4] = p.ctypes.data
        ctl[5] = 0
        for i in range(4):
            ctl[dims + i] = q.shape[i]
            ctl[pdims + i] = p.shape[i]
        ctl[14] = k.shape[2]
        ctl[15] = v.shape[3]

    @numba.njit(inline="always")
    def put_opts(ctl, ctlf, at, scale, causal, direct, chunk):
        """The attention options at numbers ``at`` to ``at + 3``: scale (a float64), causal,
        direct, chunk."""
        ctlf[at] = scale
        ctl[at + 1] = 1 if causal else 0
        ctl[at + 2] = direct
        ctl[at + 3] = chunk

    @numba.njit(inline="always")
    def opts(data, ctl, at):
        """What ``put_opts`` wrote: (scale as float32, causal, direct, chunk)."""
        scale = np.float32(numba.carray(_F64P(_SLOT(data, at)), 1)[0])
        return scale, ctl[at + 1] != 0, ctl[at + 2], ctl[at + 3]
    _QKV, _ST3, _PUT_QKV, _PUT_OPTS, _OPTS = qkv, st3, put_qkv, put_opts, opts

    @numba.njit(cache=True, nogil=True)
    def pack_attn(ctl, ctlf, q, k, v, out, p, qst, kst, vst, ost, scale, causal, direct,
                  chunk):
        _PUT_QKV(ctl, q, k, v, p, 6, 10)
        ctl[3] = out.ctypes.data
        for i in range(3):
            ctl[16 + i] = qst[i]
            ctl[19 + i] = kst[i]
            ctl[22 + i] = vst[i]
            ctl[25 + i] = ost[i]
        _PUT_OPTS(ctl, ctlf, 28, scale, causal, direct, chunk)

    @numba.cfunc(types.void(types.voidptr), cache=True, error_model="numpy")
    def attn_fwd_body(data):
        # cpu_attention_kernels' forward over chunks of (batch, head) pairs (qkv: why its
        # strided arrays are C-ordered here)
        ctl = numba.carray(_SLOT(data, 0), 32)
        B, H, L, Ev = ctl[6], ctl[7], ctl[8], ctl[15]
        q, k, v = _QKV(ctl, 0, 6)
        out = numba.carray(_F32P(ctl[3]), (B, H, L, Ev))
        p = numba.carray(_F32P(ctl[4]), (ctl[10], ctl[11], ctl[12], ctl[13]))  # (C-contiguous)
        qst, kst, vst, ost = _ST3(ctl, 16), _ST3(ctl, 19), _ST3(ctl, 22), _ST3(ctl, 25)
        scale, causal, direct, chunk = _OPTS(data, ctl, 28)
        n = B * H
        counter = _SLOT(data, 5)
        while True:
            lo = _FETCH_ADD(counter, 1) * chunk
            if lo >= n:
                break
            _ATTN_FWD(q, k, v, out, p, qst, kst, vst, ost, scale, causal, direct, lo,
                      min(n, lo + chunk))
    ns.pack_attn, ns.attn_fwd_body = pack_attn, attn_fwd_body
    global _ATTN_BWD
    _ATTN_BWD = ak._bwd

    @numba.njit(cache=True, nogil=True)
    def pack_attn_bwd(ctl, ctlf, q, k, v, g, p, dq, dk, dv, st, scale, causal, direct,
                      chunk):
        # [q, k, v, g, p, next chunk, dq, dk, dv, -, B, H, L, E, S, Ev, p's 4 dims,
        #  7 x 3 element strides, scale, causal, direct, chunk]
        _PUT_QKV(ctl, q, k, v, p, 10, 16)
        ctl[3] = g.ctypes.data
        ctl[6] = dq.ctypes.data
        ctl[7] = dk.ctypes.data
        ctl[8] = dv.ctypes.data
        for i in range(21):
            ctl[20 + i] = st[i]
        _PUT_OPTS(ctl, ctlf, 41, scale, causal, direct, chunk)

    @numba.cfunc(types.void(types.voidptr), cache=True, error_model="numpy")
    def attn_bwd_body(data):
        # the backward's heads, as attn_fwd_body (each head writes only its own rows of
        # dq, dk, dv)
        ctl = numba.carray(_SLOT(data, 0), 48)
        B, H, L, Ev = ctl[10], ctl[11], ctl[12], ctl[15]
        q, k, v = _QKV(ctl, 0, 10)
        g = numba.carray(_F32P(ctl[3]), (B, H, L, Ev))
        p = numba.carray(_F32P(ctl[4]), (ctl[16], ctl[17], ctl[18], ctl[19]))
        dq, dk, dv = _QKV(ctl, 6, 10)
        qst, kst, vst, gst = _ST3(ctl, 20), _ST3(ctl, 23), _ST3(ctl, 26), _ST3(ctl, 29)
        dqst, dkst, dvst = _ST3(ctl, 32), _ST3(ctl, 35), _ST3(ctl, 38)
        scale, causal, direct, chunk = _OPTS(data, ctl, 41)
        n = B * H
        counter = _SLOT(data, 5)
        while True:
            lo = _FETCH_ADD(counter, 1) * chunk
            if lo >= n:
                break
            _ATTN_BWD(q, k, v, g, p, dq, dk, dv, qst, kst, vst, gst, dqst, dkst, dvst, scale,
                      causal, direct, lo, min(n, lo + chunk))
    ns.pack_attn_bwd, ns.attn_bwd_body = pack_attn_bwd, attn_bwd_body
    return ns


# intrinsics and cpu_kernels' loops, bound before compiling: numba's on-disk cache takes
# module globals, not closure variables (with closures every process compiled anew, ~3 s)
_FETCH_ADD: Any = None
_SLOT: Any = None
_F32P: Any = None
_F64P: Any = None
_F64PI: Any = None
_GELU_SPAN: Any = None
_GELU_SPAN_GRAD: Any = None
_LN_ROWS: Any = None
_LN_BACK_ROWS: Any = None
_ATTN_FWD: Any = None
_ATTN_BWD: Any = None
_QKV: Any = None
_ST3: Any = None
_PUT_QKV: Any = None
_PUT_OPTS: Any = None
_OPTS: Any = None


kernels = LazyKernels(_build)
