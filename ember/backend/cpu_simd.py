"""numba building blocks of ember's CPU kernel modules: an ``F32x8`` vector type lowered to
LLVM's ``<8 x float>`` with load/broadcast/fma/store intrinsics, unchecked scalar loads and
stores (kernel modules build their namespaces with ``cpu_kernels.LazyKernels``).

numba has no SIMD type, and neither its loop vectorizer nor the SLP vectorizer kept
per-lane accumulators in registers (a naive direct conv ran LeNet's conv2 in 5.4 ms, the
scalar-accumulator form in 4 ms; measured), hence the explicit vector type. The intrinsics
do no bounds or wraparound checks: the callers guarantee every index (numba's negative-index
handling added a compare and a conditional move to each load, half the inner loop).
Kernel modules bind them to module globals before compiling (numba's on-disk cache does not
take closure variables). numba's cache is invalidated by a change of the kernel's own source
file only: after editing this file, delete the kernel modules' cached code
(``ember/backend/__pycache__/cpu_conv_kernels*.nb*`` and ``cpu_pool_kernels*.nb*``), or their
cached machine code keeps the old intrinsics. numba and llvmlite are imported on first use.
"""
from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

_lock = threading.Lock()
_defined: list = []


def intrinsics() -> SimpleNamespace:
    """The vector type's intrinsics (defined once per process): ``vload``/``vstore`` (8
    floats at an index), ``vbcast`` (one element to all lanes), ``vfma``, ``vadd``,
    ``vzero``, ``vtail`` (lanes below k zeroed), ``vstore_t8``/``vstore_t4`` (an 8x8 or 8x4
    block transposed in registers and stored by rows), and the scalar ``ld``/``st``."""
    with _lock:
        if not _defined:
            _defined.append(_define())
    return _defined[0]


def _define() -> SimpleNamespace:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic, models, register_model

    vt = ir.VectorType(ir.FloatType(), 8)
    i32 = ir.IntType(32)

    class F32x8(types.Type):
        def __init__(self) -> None:
            super().__init__(name="F32x8")

    f32x8 = F32x8()

    @register_model(F32x8)
    class _Model(models.PrimitiveModel):
        def __init__(self, dmm: Any, fe_type: Any) -> None:
            super().__init__(dmm, fe_type, vt)

    def elem_ptr(context: Any, builder: Any, arrty: Any, arr: Any, idx: Any) -> Any:
        a = context.make_array(arrty)(context, builder, arr)
        return builder.gep(a.data, [idx])

    def splat(builder: Any, s: Any) -> Any:
        v = builder.insert_element(ir.Constant(vt, ir.Undefined), s, ir.Constant(i32, 0))
        return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined),
                                      ir.Constant(ir.VectorType(i32, 8), [0] * 8))

    def store_rows(context: Any, builder: Any, sig: Any, args: Any, r: list, rowty: Any) -> None:
        # the transposing stores' tail: row j of ``r`` (of type ``rowty``) stored at
        # base + j*stride for j < rows (args: arr, base, stride, rows, ...)
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        for j in range(8):
            cond = builder.icmp_signed(">", args[3], ir.Constant(args[3].type, j))
            with cgutils.if_likely(builder, cond):
                off = builder.add(args[1], builder.mul(args[2], ir.Constant(args[2].type, j)))
                ptr = builder.bitcast(builder.gep(ary.data, [off]), rowty.as_pointer())
                builder.store(r[j], ptr, align=4)

    @intrinsic
    def vload(typingctx, arr, idx):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            p = elem_ptr(context, builder, sig.args[0], args[0], args[1])
            return builder.load(builder.bitcast(p, vt.as_pointer()), align=4)
        return f32x8(arr, idx), cg

    @intrinsic
    def vstore(typingctx, arr, idx, v):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            p = elem_ptr(context, builder, sig.args[0], args[0], args[1])
            builder.store(args[2], builder.bitcast(p, vt.as_pointer()), align=4)
            return context.get_dummy_value()
        return types.none(arr, idx, v), cg

    @intrinsic
    def vbcast(typingctx, arr, idx):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            p = elem_ptr(context, builder, sig.args[0], args[0], args[1])
            return splat(builder, builder.load(p, align=4))
        return f32x8(arr, idx), cg

    @intrinsic
    def vfma(typingctx, a, b, c):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3),
                                                "llvm.fma.v8f32")
            return builder.call(fn, args)
        return f32x8(f32x8, f32x8, f32x8), cg

    @intrinsic
    def vzero(typingctx):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            return ir.Constant(vt, [0.0] * 8)
        return f32x8(), cg

    @intrinsic
    def vtail(typingctx, v, k):  # pragma: no cover - compile-time
        # lanes below k set to +0.0 (a select, so inf/NaN there vanish too)
        def cg(context, builder, sig, args):
            lanes = ir.Constant(ir.VectorType(ir.IntType(64), 8), list(range(8)))
            kk = builder.insert_element(ir.Constant(ir.VectorType(ir.IntType(64), 8),
                                                    ir.Undefined), args[1],
                                        ir.Constant(i32, 0))
            kk = builder.shuffle_vector(kk, ir.Constant(ir.VectorType(ir.IntType(64), 8),
                                                        ir.Undefined),
                                        ir.Constant(ir.VectorType(i32, 8), [0] * 8))
            keep = builder.icmp_signed(">=", lanes, kk)
            return builder.select(keep, args[0], ir.Constant(vt, [0.0] * 8))
        return f32x8(f32x8, types.int64), cg

    @intrinsic
    def vstore_t8(typingctx, arr, base, stride, rows, a0, a1, a2, a3, a4, a5, a6,
                  a7):  # pragma: no cover - compile-time
        # the 8x8 block (a_i: lane j = row j of column i) transposed in registers (unpack,
        # shuffle, 128-bit permute), its rows j < ``rows`` stored at base + j*stride
        def cg(context, builder, sig, args):
            a = args[4:]

            def shuf(x, y, mask):
                return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, 8), mask))
            lo = [shuf(a[i], a[i + 1], [0, 8, 1, 9, 4, 12, 5, 13]) for i in range(0, 8, 2)]
            hi = [shuf(a[i], a[i + 1], [2, 10, 3, 11, 6, 14, 7, 15]) for i in range(0, 8, 2)]
            m_even, m_odd = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
            s04 = [shuf(lo[h], lo[h + 1], m_even) for h in (0, 2)]
            s15 = [shuf(lo[h], lo[h + 1], m_odd) for h in (0, 2)]
            s26 = [shuf(hi[h], hi[h + 1], m_even) for h in (0, 2)]
            s37 = [shuf(hi[h], hi[h + 1], m_odd) for h in (0, 2)]
            first, second = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
            r = [None] * 8
            for j, pair in enumerate((s04, s15, s26, s37)):
                r[j] = shuf(pair[0], pair[1], first)
                r[j + 4] = shuf(pair[0], pair[1], second)
            store_rows(context, builder, sig, args, r, vt)
            return context.get_dummy_value()
        return types.none(arr, base, stride, rows, *([f32x8] * 8)), cg

    @intrinsic
    def vstore_t4(typingctx, arr, base, stride, rows, a0, a1, a2,
                  a3):  # pragma: no cover - compile-time
        # the 8x4 block (a_i: lane j = row j of column i) transposed in registers, its rows
        # j < ``rows`` (4 floats each) stored at base + j*stride
        def cg(context, builder, sig, args):
            a = args[4:]
            v4 = ir.VectorType(ir.FloatType(), 4)

            def shuf(x, y, mask):
                n = len(mask)
                return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, n), mask))
            lo = [shuf(a[i], a[i + 1], [0, 8, 1, 9, 4, 12, 5, 13]) for i in (0, 2)]
            hi = [shuf(a[i], a[i + 1], [2, 10, 3, 11, 6, 14, 7, 15]) for i in (0, 2)]
            m_even, m_odd = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
            pairs = (shuf(lo[0], lo[1], m_even), shuf(lo[0], lo[1], m_odd),
                     shuf(hi[0], hi[1], m_even), shuf(hi[0], hi[1], m_odd))
            r = [None] * 8
            for j, v in enumerate(pairs):
                r[j] = shuf(v, v, [0, 1, 2, 3])
                r[j + 4] = shuf(v, v, [4, 5, 6, 7])
            store_rows(context, builder, sig, args, r, v4)
            return context.get_dummy_value()
        return types.none(arr, base, stride, rows, *([f32x8] * 4)), cg

    @intrinsic
    def vadd(typingctx, a, b):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            return builder.fadd(args[0], args[1])
        return f32x8(f32x8, f32x8), cg

    @intrinsic
    def ld(typingctx, arr, idx):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            return builder.load(elem_ptr(context, builder, sig.args[0], args[0], args[1]),
                                align=4)
        return arr.dtype(arr, idx), cg

    @intrinsic
    def st(typingctx, arr, idx, v):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            builder.store(args[2], elem_ptr(context, builder, sig.args[0], args[0], args[1]),
                          align=4)
            return context.get_dummy_value()
        return types.none(arr, idx, arr.dtype), cg

    return SimpleNamespace(vload=vload, vstore=vstore, vbcast=vbcast, vfma=vfma, vadd=vadd,
                           ld=ld, st=st, vzero=vzero, vtail=vtail, vstore_t8=vstore_t8,
                           vstore_t4=vstore_t4)


