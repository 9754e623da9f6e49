"""LLVM building blocks of ember's explicit-vector numba kernels (``backend/cpu_kernels``,
``cpu_attention_kernels``): a vectorizable float32 ``exp`` for non-positive arguments, the
``<lanes x float>`` IR plumbing (types, constants, element pointers, intrinsics, splat, tree
reductions), prefetch intrinsics, and the vector bodies of GELU and of the softmax-style row
passes (max, exp-and-sum, scale). Nothing here compiles before a kernel family asks for it;
numba and llvmlite are imported inside the functions.
"""
from __future__ import annotations

import math
from typing import Any


def _exp_neg(numba: Any, np: Any) -> Any:
    """A jitted float32 ``exp(z)`` for ``z <= 0`` that LLVM can vectorize (``math.exp`` is a
    call to libm per element, which keeps the loop scalar: GELU's kernel ran at ~5 ns an
    element, no faster than NumPy). Cody-Waite reduction z = n ln2 + r, |r| <= ln2/2, Cephes'
    degree-6 polynomial for exp(r) (8e-8 relative error measured against float64), and
    2^n built from its exponent bits; 0 below -87 (where exp(z) leaves the normal float32s)
    and for z = -inf; NaN stays NaN."""
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def bits_to_f32(typingctx, v):  # pragma: no cover - compile-time
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())
        return types.float32(types.int32), codegen

    @numba.njit(inline="always")
    def exp_neg(z):  # pragma: no cover - compiled
        lo = np.float32(-87.0)
        zc = max(z, lo)  # np.floor below, not math.floor: an int64 result scalarizes the loop
        m = np.floor(zc * np.float32(1.4426950408889634) + np.float32(0.5))
        r = zc - m * np.float32(0.693359375) - m * np.float32(-2.12194440e-4)
        q = np.float32(1.9875691500e-4)
        q = q * r + np.float32(1.3981999507e-3)
        q = q * r + np.float32(8.3334519073e-3)
        q = q * r + np.float32(4.1665795894e-2)
        q = q * r + np.float32(1.6666665459e-1)
        q = q * r + np.float32(5.0000001201e-1)
        q = q * r * r + r + np.float32(1.0)
        e = q * bits_to_f32((np.int32(m) + np.int32(127)) << 23)
        return np.float32(0.0) if z < lo else e

    return exp_neg


def _gelu_lanes() -> int:
    """Lanes of the explicit GELU vector: 16 floats (one zmm register) where the host has
    AVX-512, else 8 (LLVM splits wider vectors into the registers there are)."""
    try:
        from llvmlite import binding
        return 16 if "+avx512f" in binding.get_host_cpu_features().flatten() else 8
    except Exception:  # pragma: no cover - llvmlite without the query
        return 8


def _vec_ir(lanes: int) -> Any:
    """The LLVM IR plumbing of explicit ``<lanes x float>`` kernels, shared by the GELU,
    cross_entropy row and attention kernels: ``vt``/``it`` (the float and int32 vector
    types), ``c(v)`` (a float32 constant in every lane), ``ptr`` (a vector pointer to
    ``arr[idx]``), ``intr(builder, name, n)`` (the ``llvm.<name>.v<lanes>f32`` intrinsic of
    ``n`` operands), ``splat(builder, s, ty=vt)`` (one scalar in every lane) and
    ``hreduce(builder, v, op)`` (a tree over halves, the same order for every call)."""
    from types import SimpleNamespace

    import numpy as np
    from llvmlite import ir
    from numba.core import cgutils

    vt = ir.VectorType(ir.FloatType(), lanes)
    i32 = ir.IntType(32)
    it = ir.VectorType(i32, lanes)

    def c(v: float) -> Any:
        return ir.Constant(vt, [float(np.float32(v))] * lanes)

    def ptr(context: Any, builder: Any, arrty: Any, arr: Any, idx: Any) -> Any:
        a = context.make_array(arrty)(context, builder, arr)
        return builder.bitcast(builder.gep(a.data, [idx]), vt.as_pointer())

    def intr(builder: Any, name: str, n: int) -> Any:
        return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * n),
                                              f"llvm.{name}.v{lanes}f32")

    def splat(builder: Any, s: Any, ty: Any = vt) -> Any:
        v = builder.insert_element(ir.Constant(ty, ir.Undefined), s, ir.Constant(i32, 0))
        return builder.shuffle_vector(v, ir.Constant(ty, ir.Undefined),
                                      ir.Constant(it, [0] * lanes))

    def hreduce(builder: Any, v: Any, op: Any) -> Any:
        w = lanes
        while w > 1:
            w //= 2
            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, w),
                                                          list(range(w))))
            hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, w),
                                                          list(range(w, 2 * w))))
            v = op(lo, hi)
        return builder.extract_element(v, ir.Constant(i32, 0))

    return SimpleNamespace(vt=vt, it=it, i32=i32, c=c, ptr=ptr, intr=intr, splat=splat,
                           hreduce=hreduce)


def _prefetch(rw: int) -> Any:
    """A numba intrinsic ``pf(arr, idx)``: ``llvm.prefetch`` of the cache line holding
    element ``idx`` of ``arr`` (flat, no bounds check: a prefetch never faults) into L2;
    ``rw`` 1 for a line that will be written. Row kernels fetch a few rows ahead: in a
    training step their inputs come from L3 or the other core's cache (a GEMM on two
    threads wrote them) and their outputs are fresh buffers."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    i32 = ir.IntType(32)

    @intrinsic
    def pf(typingctx, arr, idx):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            a = context.make_array(sig.args[0])(context, builder, args[0])
            i8p = ir.IntType(8).as_pointer()
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                "llvm.prefetch.p0")
            builder.call(fn, [builder.bitcast(builder.gep(a.data, [args[1]]), i8p),
                              ir.Constant(i32, rw), ir.Constant(i32, 2), ir.Constant(i32, 1)])
            return context.get_dummy_value()
        return types.none(arr, idx), cg
    return pf


def _ir_exp_neg(builder: Any, z: Any, lanes: int, intr: Any) -> Any:
    """LLVM IR for ``exp(z)``, ``z <= 0``, on a ``<lanes x float>`` vector: ``_exp_neg``'s
    steps (clamp at -87, Cody-Waite reduction, degree-6 polynomial, 2^m from exponent bits;
    0 below -87) with fused multiply-adds. ``intr(name, n)`` gives the vector intrinsic
    ``llvm.<name>.v<lanes>f32`` of ``n`` operands."""
    from llvmlite import ir

    V = _vec_ir(lanes)
    vt, it, c = V.vt, V.it, V.c
    fma = intr("fma", 3)

    def fm(a: Any, b: Any, cc: Any) -> Any:
        return builder.call(fma, [a, b, cc])
    lo = c(-87.0)
    zc = builder.select(builder.fcmp_ordered(">", z, lo), z, lo)
    m = builder.call(intr("floor", 1), [fm(zc, c(1.4426950408889634), c(0.5))])
    r = fm(m, c(-0.693359375), zc)
    r = fm(m, c(2.12194440e-4), r)
    q = c(1.9875691500e-4)
    for k in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
              5.0000001201e-1):
        q = fm(q, r, c(k))
    q = builder.fadd(fm(builder.fmul(q, r), r, r), c(1.0))
    bits = builder.shl(builder.add(builder.fptosi(m, it), ir.Constant(it, [127] * lanes)),
                       ir.Constant(it, [23] * lanes))
    e = builder.fmul(q, builder.bitcast(bits, vt))
    return builder.select(builder.fcmp_ordered("<", z, lo), c(0.0), e)


def _gelu_vec(lanes: int) -> tuple:
    """Two numba intrinsics, ``gelu_v(x, y, i)`` and ``gelu_grad_v(x, y, d, i)``: GELU of
    the ``lanes`` floats of the 1-D float32 ``x`` at ``i`` into ``y`` (and its derivative
    into ``d``), the same operations as ``gelu_parts`` (fused multiply-adds where LLVM's
    "contract" fused them, so the results are bit for bit the scalar loop's) on an explicit
    ``<lanes x float>`` vector. Why explicit: LLVM's loop vectorizer picks 8 lanes on
    AVX-512 machines (their "prefer 256-bit" tuning), while an explicit 16-lane vector is
    compiled to zmm registers: GELU of 512K floats with the derivative 0.66-0.75 -> 0.52-0.55
    ns an element on one core (no derivative 0.60-0.65 -> 0.45-0.53; alternating in one
    process). No bounds checks: callers keep ``i + lanes <= x.size``."""
    from numba import types
    from numba.extending import intrinsic

    from ember.ops.nn_activation import _GELU_K, _GELU_R

    V = _vec_ir(lanes)
    c, ptr = V.c, V.ptr

    def body(builder: Any, v: Any) -> tuple:
        def intr(name: str, n: int) -> Any:
            return V.intr(builder, name, n)
        fma = intr("fma", 3)

        def fm(a: Any, b: Any, cc: Any) -> Any:
            return builder.call(fma, [a, b, cc])
        a = builder.call(intr("fabs", 1), [v])
        t = builder.fdiv(c(1.0), fm(c(_GELU_K), a, c(1.0)))
        # exp(-a^2/2) as _exp_neg
        z = builder.fmul(builder.fmul(c(-0.5), a), a)
        e = _ir_exp_neg(builder, z, lanes, intr)
        pol = c(_GELU_R[0])
        for k in _GELU_R[1:]:
            pol = fm(pol, t, c(k))
        h = builder.fmul(builder.fmul(t, e), pol)
        p = builder.select(builder.fcmp_ordered(">", v, c(0.0)), builder.fsub(c(1.0), h), h)
        return builder.fmul(v, p), p, e

    @intrinsic
    def gelu_v(typingctx, x, y, i):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            v = builder.load(ptr(context, builder, sig.args[0], args[0], args[2]), align=4)
            builder.store(body(builder, v)[0],
                          ptr(context, builder, sig.args[1], args[1], args[2]), align=4)
            return context.get_dummy_value()
        return types.none(x, y, i), cg

    isp = 1.0 / math.sqrt(2.0 * math.pi)

    @intrinsic
    def gelu_grad_v(typingctx, x, y, d, i):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            v = builder.load(ptr(context, builder, sig.args[0], args[0], args[3]), align=4)
            yv, p, e = body(builder, v)
            builder.store(yv, ptr(context, builder, sig.args[1], args[1], args[3]), align=4)
            xphi = builder.select(builder.fcmp_ordered(">", v, c(20.0)), c(0.0),
                                  builder.fmul(builder.fmul(v, e), c(isp)))
            builder.store(builder.fadd(p, xphi),
                          ptr(context, builder, sig.args[2], args[2], args[3]), align=4)
            return context.get_dummy_value()
        return types.none(x, y, d, i), cg

    return gelu_v, gelu_grad_v


def _row_vec(lanes: int) -> tuple:
    """Three numba intrinsics over ``count`` explicit ``<lanes x float>`` vectors of a
    C-contiguous float32 array from flat index ``base`` (the bulk of a softmax row; callers
    do the last ``n % lanes`` elements in scalar code and keep every index in bounds):

    - ``vrow_max(x, base, count)``: the largest element, NaN when any element is NaN
      (-inf for ``count == 0``);
    - ``vrow_exp_sum(x, p, base, count, m)``: ``p = exp(x - m)`` (``_exp_neg``'s steps on
      vectors: ``x <= m`` and ``m`` finite) and the sum of those values;
    - ``vrow_scale(p, base, count, s)``: ``p *= s``.

    Why explicit vectors: LLVM's loop vectorizer kept the row max (a compare-and-select
    reduction it does not reorder without no-NaN flags) scalar and used 8 lanes on AVX-512
    for the rest; the cross_entropy rows of the tiny GPT's (1024, 256) logits took ~340 us
    that way."""
    import numpy as np
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    V = _vec_ir(lanes)
    c, intr, ptr, splat, hreduce = V.c, V.intr, V.ptr, V.splat, V.hreduce
    bt = ir.VectorType(ir.IntType(1), lanes)

    def exp_neg(builder: Any, z: Any) -> Any:
        return _ir_exp_neg(builder, z, lanes, lambda name, n: intr(builder, name, n))

    def vec_loop(context: Any, builder: Any, base: Any, count: Any, body: Any) -> None:
        step = ir.Constant(base.type, lanes)
        with cgutils.for_range(builder, count) as loop:
            body(builder.add(base, builder.mul(loop.index, step)))

    @intrinsic
    def vrow_max(typingctx, x, base, count):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            acc = cgutils.alloca_once_value(builder, c(-np.inf))
            nan = cgutils.alloca_once_value(builder, ir.Constant(bt, [0] * lanes))

            def body(i: Any) -> None:
                v = builder.load(ptr(context, builder, sig.args[0], args[0], i), align=4)
                a = builder.load(acc)
                builder.store(builder.select(builder.fcmp_ordered(">", v, a), v, a), acc)
                builder.store(builder.or_(builder.load(nan),
                                          builder.fcmp_unordered("uno", v, v)), nan)
            vec_loop(context, builder, args[1], args[2], body)
            mx = hreduce(builder, builder.load(acc), lambda a, b: builder.select(
                builder.fcmp_ordered(">", a, b), a, b))
            bits = builder.bitcast(builder.load(nan), ir.IntType(lanes))
            any_nan = builder.icmp_unsigned("!=", bits, ir.Constant(ir.IntType(lanes), 0))
            return builder.select(any_nan, ir.Constant(ir.FloatType(), float("nan")), mx)
        return types.float32(x, base, count), cg

    @intrinsic
    def vrow_exp_sum(typingctx, x, p, base, count, m):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            acc = cgutils.alloca_once_value(builder, c(0.0))
            mv = splat(builder, args[4])

            def body(i: Any) -> None:
                v = builder.load(ptr(context, builder, sig.args[0], args[0], i), align=4)
                e = exp_neg(builder, builder.fsub(v, mv))
                builder.store(e, ptr(context, builder, sig.args[1], args[1], i), align=4)
                builder.store(builder.fadd(builder.load(acc), e), acc)
            vec_loop(context, builder, args[2], args[3], body)
            return hreduce(builder, builder.load(acc), builder.fadd)
        return types.float32(x, p, base, count, types.float32), cg

    @intrinsic
    def vrow_scale(typingctx, p, base, count, s):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            sv = splat(builder, args[3])

            def body(i: Any) -> None:
                q = ptr(context, builder, sig.args[0], args[0], i)
                builder.store(builder.fmul(builder.load(q, align=4), sv), q, align=4)
            vec_loop(context, builder, args[1], args[2], body)
            return context.get_dummy_value()
        return types.none(p, base, count, types.float32), cg

    return vrow_max, vrow_exp_sum, vrow_scale
