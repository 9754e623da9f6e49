"""Fused numba kernels for float32 scaled dot-product attention on the CPU (no mask other
than ``is_causal``, no dropout, head sizes a multiple of 8), built on first use like
``cpu_kernels`` (None without numba or with ``EMBER_NUMBA=0``).

Why: the NumPy path runs each (batch, head)'s products as per-matrix BLAS calls on small
matrices (64 x 64 x 32 in the tiny GPT) plus a softmax pass and the glue between; at that
size the calls and their packing cost more than the arithmetic. Here one compiled loop does
a head at a time in cache: its q, k, v are copied into small zero-padded contiguous buffers
(they arrive as strided views of a fused qkv projection; k, or v in the backward, transposed
in 8x8 register blocks), and every product is a sequence of register tiles of 8 rows x 2
vectors of W floats (W = 16 on AVX-512 hosts, one zmm register: 16 accumulators, two vector
loads and eight broadcasts per step; 8 rows x 1 vector of 8 floats elsewhere). The softmax
runs on the same explicit vectors, eight rows interleaved, the lanes past a row's visible
keys masked; a block with a NaN or infinite row maximum takes the scalar rows instead.
Explicit vectors because LLVM's vectorizer picks 8 lanes on AVX-512 and keeps a row max
scalar (as for ``cpu_kernels``' GELU); the tiny GPT's 64 heads on one core, alternating in
one process: forward 780-830 -> 310-360 us, backward 720-790 -> 450-500 us against the
previous 8x8 tiles of 8-float vectors, scalar transposes and scalar softmax rows. A plain
loop version, vectorized by LLVM, ran ~2x slower than the NumPy path: each short row loop
paid its setup (alias checks, remainders) once per eight multiply-adds.

The causal mask (query ``i`` sees keys ``j <= i``, torch's top-left alignment) only bounds
the loops: a block of 8 queries visits the key vectors up to its last row. The forward keeps
the attention weights ``p`` (batch, heads, Lp, Sp) (L rounded up to 8, S to W; zero at
the masked keys of the key vectors a block of 8 rows visits, unwritten past them, where no
product reads), the backward reads them: ``dv = p^T dO``, ``dp = dO v^T``,
``ds = p (dp - sum_j p dp) scale``, ``dq = ds k``, ``dk = ds^T q``.

Direct rows: when L (and in the backward S) is a multiple of 8 and the head sizes of W, the
tiles read q, v (backward: q, k and the output gradient) straight from their strided views
and write the output (backward: dq, dk, dv) in place; only k (backward: v) is still copied,
transposed. The tiny GPT's 64 heads on one core, alternating in one process: forward
339-357 -> 338 us, backward 536-563 -> 493-516 us. Products, same method (a run with one
product skipped, against all): forward scores ~90 us and p v ~120 us, backward dp ~78 us
and dq ~103 us, so the backward's products are no slower than the forward's equivalents;
dv and dk together ~175 us.

Prefetch: while a head is computed, each query block prefetches an eighth of the next
head's rows into L2 (q, k, v, the output gradient and p read; the output, dq, dk, dv for
writing). In a training step those rows come from L3 or the other core (the projection's
GEMM wrote them, the outputs are fresh buffers) and their strided layout defeats the
hardware prefetchers: in the tiny GPT's step (64 heads on one core, timed in place) the
forward went 500-540 -> 395-417 us and the backward 717-791 -> 607-626 us; paired
(``bench.gpt_pieces ab EMBER_ATTN_DIRECT=7``) forward + backward 1.06x, step 1.02x faster.
With everything already in cache (the isolated piece) the prefetches cost 5-10%.

``EMBER_ATTN_KERNELS=0`` keeps scaled_dot_product_attention on the NumPy path (an A/B switch).
numba's cache does not see edits of ``cpu_simd``: after editing it delete
``ember/backend/__pycache__/cpu_attention_kernels*.nb*`` too.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ember.backend import cpu_simd
from ember.backend.cpu_kernels import LazyKernels, _spread as spread_kernels
from ember.backend.cpu_vec_ir import _exp_neg, _prefetch

# set by _build, module globals rather than closure variables (numba's on-disk cache does
# not take closure variables that are jitted functions)
_EXP_NEG: Any = None
_VLOAD: Any = None
_VSTORE: Any = None
_VSTORE_T8: Any = None
_LD: Any = None
_ST: Any = None
_W: Any = None      # lanes of the wide vectors (16 with AVX-512, else 8)
_TWO: Any = None    # whether products use 8 x 2W tiles
_WLOAD: Any = None
_WSTORE: Any = None
_WBCAST: Any = None
_WFMA: Any = None
_WZERO: Any = None
_SOFTMAX_VBLOCK: Any = None
_DS_VROW: Any = None
_TILE1: Any = None
_PF_READ: Any = None
_PF_WRITE: Any = None
_FETCH: Any = None
_TILE2: Any = None
_PRODUCT: Any = None
_SOFTMAX_ROW: Any = None
_ROWS: Any = None
_COLS: Any = None
_HEAD: Any = None

_MIN_HEADS = 4  # heads a thread gets at least (a 64 x 64 x 32 causal head: ~10 us forward)


def _spread(n: int, piece: Any) -> None:
    """``piece(lo, hi)`` over the ``n`` heads through ``cpu_kernels._spread``: on the spare
    cores, but serially beside OpenBLAS's spinning workers (as after the qkv projection in a
    training step). Heads on two threads beside the spinning workers measured 0.977x and
    0.960x of serial on the tiny-GPT step alternating in one process, but 1.14x and 1.04x
    in two processes taking turns (``bench.gpt_pieces ab``, the setting of the paired
    benchmarks against torch), so serial it is."""
    spread_kernels(n, piece, _MIN_HEADS)


def _lanes() -> int:
    """Lanes of the products' and rows' explicit vectors: 16 floats (one zmm register)
    where the host has AVX-512, else 8."""
    from ember.backend.cpu_vec_ir import _gelu_lanes
    return _gelu_lanes()


def _wide(lanes: int) -> SimpleNamespace:
    """numba intrinsics on an explicit ``<lanes x float>`` vector (``AttnF32x<lanes>``):
    ``wload``/``wstore`` (``lanes`` floats at a flat index), ``wbcast`` (one element to
    every lane), ``wfma``, ``wzero``, and two row passes over ``nvec`` vectors from flat
    index ``base`` whose lanes from ``n`` on are masked:

    - ``softmax_vrow(x, base, n, nvec, scale)``: ``x[base:base+n] <- softmax(x * scale)``,
      the masked lanes of the last vector set to 0; returns 0 and writes nothing when the
      row's maximum is not finite (a NaN or an infinite score: the caller's scalar row
      gives torch's result);
    - ``ds_vrow(p, pbase, d, dbase, n, nvec, scale)``: the softmax backward in place,
      ``d <- p (d - sum_j p d) scale``, masked lanes set to 0.

    Why explicit vectors (as for ``cpu_kernels``' GELU and cross_entropy rows): LLVM's loop
    vectorizer picks 8 lanes on AVX-512 hosts and keeps a row max scalar. No bounds checks:
    callers keep every index in range."""
    import numpy as np
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic, models, register_model

    from ember.backend.cpu_vec_ir import _ir_exp_neg, _vec_ir

    vt = ir.VectorType(ir.FloatType(), lanes)
    it = ir.VectorType(ir.IntType(32), lanes)
    i32 = ir.IntType(32)

    class _Vec(types.Type):
        def __init__(self) -> None:
            super().__init__(name=f"AttnF32x{lanes}")

    vec = _Vec()

    @register_model(_Vec)
    class _Model(models.PrimitiveModel):
        def __init__(self, dmm: Any, fe_type: Any) -> None:
            super().__init__(dmm, fe_type, vt)

    V = _vec_ir(lanes)
    c, ptr, splat, intr, hreduce = V.c, V.ptr, V.splat, V.intr, V.hreduce

    def lane_mask(builder: Any, n: Any, i: Any) -> Any:
        # lanes l of vector i with i*lanes + l < n
        rest = builder.trunc(builder.sub(n, builder.mul(i, ir.Constant(n.type, lanes))), i32)
        return builder.icmp_signed("<", ir.Constant(it, list(range(lanes))),
                                   splat(builder, rest, it))

    def vec_loop(builder: Any, count: Any, body: Any) -> None:
        with cgutils.for_range(builder, count) as loop:
            body(loop.index)

    def at(builder: Any, base: Any, i: Any) -> Any:
        return builder.add(base, builder.mul(i, ir.Constant(base.type, lanes)))

    @intrinsic
    def wload(typingctx, arr, idx):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            return builder.load(ptr(context, builder, sig.args[0], args[0], args[1]), align=4)
        return vec(arr, idx), cg

    @intrinsic
    def wstore(typingctx, arr, idx, v):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            builder.store(args[2], ptr(context, builder, sig.args[0], args[0], args[1]),
                          align=4)
            return context.get_dummy_value()
        return types.none(arr, idx, v), cg

    @intrinsic
    def wbcast(typingctx, arr, idx):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            a = context.make_array(sig.args[0])(context, builder, args[0])
            return splat(builder, builder.load(builder.gep(a.data, [args[1]]), align=4))
        return vec(arr, idx), cg

    @intrinsic
    def wfma(typingctx, a, b, cc):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            return builder.call(intr(builder, "fma", 3), args)
        return vec(vec, vec, vec), cg

    @intrinsic
    def wzero(typingctx):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            return c(0.0)
        return vec(), cg

    @intrinsic
    def softmax_vblock(typingctx, x, base, ldx, n0, step, nmax, nvec,
                       scale):  # pragma: no cover - compile-time
        # 8 rows r at x[base + r*ldx], row r's n = min(n0 + r*step, nmax): the rows' passes
        # interleaved (8 independent chains of max, exp, sum and division)
        def cg(context, builder, sig, args):
            arr, b0, ld, n0_, st, nm, nv, s = args
            sv = splat(builder, s)
            ninf = c(-np.inf)
            i64 = b0.type
            bases, ns = [], []
            for r in range(8):
                rr = ir.Constant(i64, r)
                bases.append(builder.add(b0, builder.mul(ld, rr)))
                nr = builder.add(n0_, builder.mul(st, rr))
                ns.append(builder.select(builder.icmp_signed("<", nr, nm), nr, nm))

            def scores(r: int, i: Any) -> tuple:
                q = ptr(context, builder, sig.args[0], arr, at(builder, bases[r], i))
                v = builder.fmul(builder.load(q, align=4), sv)
                return q, builder.select(lane_mask(builder, ns[r], i), v, ninf)
            bvt = ir.VectorType(ir.IntType(1), lanes)
            accs = [cgutils.alloca_once_value(builder, ninf) for _ in range(8)]
            nan = cgutils.alloca_once_value(builder, ir.Constant(bvt, [0] * lanes))

            def max_body(i: Any) -> None:
                bad = builder.load(nan)
                for r in range(8):
                    v = scores(r, i)[1]
                    a = builder.load(accs[r])
                    builder.store(builder.select(builder.fcmp_ordered(">", v, a), v, a),
                                  accs[r])
                    bad = builder.or_(bad, builder.fcmp_unordered("uno", v, v))
                builder.store(bad, nan)
            vec_loop(builder, nv, max_body)
            f = ir.FloatType()
            ms = [hreduce(builder, builder.load(a), lambda u, w: builder.select(
                builder.fcmp_ordered(">", u, w), u, w)) for a in accs]
            bits = builder.bitcast(builder.load(nan), ir.IntType(lanes))
            ok = builder.icmp_unsigned("==", bits, ir.Constant(ir.IntType(lanes), 0))
            for m in ms:
                ok = builder.and_(ok, builder.and_(
                    builder.fcmp_ordered(">", m, ir.Constant(f, -np.inf)),
                    builder.fcmp_ordered("<", m, ir.Constant(f, np.inf))))
            with builder.if_then(ok, likely=True):
                mvs = [splat(builder, m) for m in ms]
                tots = [cgutils.alloca_once_value(builder, c(0.0)) for _ in range(8)]

                def exp_body(i: Any) -> None:
                    for r in range(8):
                        q, v = scores(r, i)
                        e = _ir_exp_neg(builder, builder.fsub(v, mvs[r]), lanes,
                                        lambda name, k: intr(builder, name, k))
                        builder.store(e, q, align=4)
                        builder.store(builder.fadd(builder.load(tots[r]), e), tots[r])
                vec_loop(builder, nv, exp_body)
                invs = [splat(builder, builder.fdiv(ir.Constant(f, 1.0), hreduce(
                    builder, builder.load(t), builder.fadd))) for t in tots]

                def norm_body(i: Any) -> None:
                    for r in range(8):
                        q = ptr(context, builder, sig.args[0], arr, at(builder, bases[r], i))
                        builder.store(builder.fmul(builder.load(q, align=4), invs[r]), q,
                                      align=4)
                vec_loop(builder, nv, norm_body)
            return builder.zext(ok, ir.IntType(64))
        return types.int64(x, base, ldx, n0, step, nmax, nvec, types.float32), cg

    @intrinsic
    def ds_vrow(typingctx, p, pbase, d, dbase, n, nvec, scale):  # pragma: no cover
        def cg(context, builder, sig, args):
            pa, pb, da, db, nn, nv, s = args
            zero = c(0.0)
            acc = cgutils.alloca_once_value(builder, zero)

            def load(i: Any) -> tuple:
                pq = ptr(context, builder, sig.args[0], pa, at(builder, pb, i))
                dq = ptr(context, builder, sig.args[2], da, at(builder, db, i))
                return builder.load(pq, align=4), dq, builder.load(dq, align=4)

            def sum_body(i: Any) -> None:
                pv, _, dv = load(i)
                prod = builder.select(lane_mask(builder, nn, i), builder.fmul(pv, dv), zero)
                builder.store(builder.fadd(builder.load(acc), prod), acc)
            vec_loop(builder, nv, sum_body)
            dd = splat(builder, hreduce(builder, builder.load(acc), builder.fadd))
            sv = splat(builder, s)

            def ds_body(i: Any) -> None:
                pv, dq, dv = load(i)
                r = builder.fmul(builder.fmul(pv, builder.fsub(dv, dd)), sv)
                builder.store(builder.select(lane_mask(builder, nn, i), r, zero), dq, align=4)
            vec_loop(builder, nv, ds_body)
            return context.get_dummy_value()
        return types.none(p, pbase, d, dbase, n, nvec, types.float32), cg

    return SimpleNamespace(wload=wload, wstore=wstore, wbcast=wbcast, wfma=wfma, wzero=wzero,
                           softmax_vblock=softmax_vblock, ds_vrow=ds_vrow,
                           prefetch_r=_prefetch(0), prefetch_w=_prefetch(1))


def _build() -> Any:
    import numba
    import numpy as np

    global _EXP_NEG, _VLOAD, _VSTORE, _VSTORE_T8, _LD, _ST, _SOFTMAX_ROW, _ROWS, _COLS, _HEAD
    global _W, _TWO, _WLOAD, _WSTORE, _WBCAST, _WFMA, _WZERO, _SOFTMAX_VBLOCK, _DS_VROW
    global _TILE1, _TILE2, _PRODUCT, _PF_READ, _PF_WRITE, _FETCH
    _EXP_NEG = _exp_neg(numba, np)
    vi = cpu_simd.intrinsics()
    _VLOAD, _VSTORE, _VSTORE_T8 = vi.vload, vi.vstore, vi.vstore_t8
    _LD, _ST = vi.ld, vi.st
    _W = _lanes()
    _TWO = _W == 16  # 8 x 2 tiles: 16 accumulators (AVX-512 has 32 registers, AVX2 16)
    wv = _wide(_W)
    _WLOAD, _WSTORE, _WBCAST, _WFMA, _WZERO = wv.wload, wv.wstore, wv.wbcast, wv.wfma, wv.wzero
    _SOFTMAX_VBLOCK, _DS_VROW = wv.softmax_vblock, wv.ds_vrow
    _PF_READ, _PF_WRITE = wv.prefetch_r, wv.prefetch_w
    jit = numba.njit(fastmath={"reassoc", "contract"}, cache=True, nogil=True,
                     error_model="numpy")

    @numba.njit(inline="always", error_model="numpy")
    def tile1(a, a0, ars, acs, b, b0, ldb, t0, t1, c, c0, ldc):  # pragma: no cover
        # c[c0 + r*ldc : +W] = sum_{t0 <= t < t1} a[a0 + r*ars + t*acs] * b[b0 + t*ldb : +W]
        # for the 8 rows r (flat element offsets into each array's data; W = _W lanes)
        x0 = _WZERO()
        x1 = _WZERO()
        x2 = _WZERO()
        x3 = _WZERO()
        x4 = _WZERO()
        x5 = _WZERO()
        x6 = _WZERO()
        x7 = _WZERO()
        for t in range(t0, t1):
            bv = _WLOAD(b, b0 + t * ldb)
            at = a0 + t * acs
            x0 = _WFMA(_WBCAST(a, at), bv, x0)
            x1 = _WFMA(_WBCAST(a, at + ars), bv, x1)
            x2 = _WFMA(_WBCAST(a, at + 2 * ars), bv, x2)
            x3 = _WFMA(_WBCAST(a, at + 3 * ars), bv, x3)
            x4 = _WFMA(_WBCAST(a, at + 4 * ars), bv, x4)
            x5 = _WFMA(_WBCAST(a, at + 5 * ars), bv, x5)
            x6 = _WFMA(_WBCAST(a, at + 6 * ars), bv, x6)
            x7 = _WFMA(_WBCAST(a, at + 7 * ars), bv, x7)
        _WSTORE(c, c0, x0)
        _WSTORE(c, c0 + ldc, x1)
        _WSTORE(c, c0 + 2 * ldc, x2)
        _WSTORE(c, c0 + 3 * ldc, x3)
        _WSTORE(c, c0 + 4 * ldc, x4)
        _WSTORE(c, c0 + 5 * ldc, x5)
        _WSTORE(c, c0 + 6 * ldc, x6)
        _WSTORE(c, c0 + 7 * ldc, x7)

    @numba.njit(inline="always", error_model="numpy")
    def tile2(a, a0, ars, acs, b, b0, ldb, t0, t1, c, c0, ldc):  # pragma: no cover
        # tile1 over 2W columns: 16 accumulators, each broadcast feeding two FMAs
        x0 = _WZERO()
        x1 = _WZERO()
        x2 = _WZERO()
        x3 = _WZERO()
        x4 = _WZERO()
        x5 = _WZERO()
        x6 = _WZERO()
        x7 = _WZERO()
        y0 = _WZERO()
        y1 = _WZERO()
        y2 = _WZERO()
        y3 = _WZERO()
        y4 = _WZERO()
        y5 = _WZERO()
        y6 = _WZERO()
        y7 = _WZERO()
        for t in range(t0, t1):
            bt = b0 + t * ldb
            bv = _WLOAD(b, bt)
            bw = _WLOAD(b, bt + _W)
            at = a0 + t * acs
            s = _WBCAST(a, at)
            x0 = _WFMA(s, bv, x0)
            y0 = _WFMA(s, bw, y0)
            s = _WBCAST(a, at + ars)
            x1 = _WFMA(s, bv, x1)
            y1 = _WFMA(s, bw, y1)
            s = _WBCAST(a, at + 2 * ars)
            x2 = _WFMA(s, bv, x2)
            y2 = _WFMA(s, bw, y2)
            s = _WBCAST(a, at + 3 * ars)
            x3 = _WFMA(s, bv, x3)
            y3 = _WFMA(s, bw, y3)
            s = _WBCAST(a, at + 4 * ars)
            x4 = _WFMA(s, bv, x4)
            y4 = _WFMA(s, bw, y4)
            s = _WBCAST(a, at + 5 * ars)
            x5 = _WFMA(s, bv, x5)
            y5 = _WFMA(s, bw, y5)
            s = _WBCAST(a, at + 6 * ars)
            x6 = _WFMA(s, bv, x6)
            y6 = _WFMA(s, bw, y6)
            s = _WBCAST(a, at + 7 * ars)
            x7 = _WFMA(s, bv, x7)
            y7 = _WFMA(s, bw, y7)
        _WSTORE(c, c0, x0)
        _WSTORE(c, c0 + _W, y0)
        _WSTORE(c, c0 + ldc, x1)
        _WSTORE(c, c0 + ldc + _W, y1)
        _WSTORE(c, c0 + 2 * ldc, x2)
        _WSTORE(c, c0 + 2 * ldc + _W, y2)
        _WSTORE(c, c0 + 3 * ldc, x3)
        _WSTORE(c, c0 + 3 * ldc + _W, y3)
        _WSTORE(c, c0 + 4 * ldc, x4)
        _WSTORE(c, c0 + 4 * ldc + _W, y4)
        _WSTORE(c, c0 + 5 * ldc, x5)
        _WSTORE(c, c0 + 5 * ldc + _W, y5)
        _WSTORE(c, c0 + 6 * ldc, x6)
        _WSTORE(c, c0 + 6 * ldc + _W, y6)
        _WSTORE(c, c0 + 7 * ldc, x7)
        _WSTORE(c, c0 + 7 * ldc + _W, y7)

    _TILE1, _TILE2 = tile1, tile2

    @numba.njit(inline="always", error_model="numpy")
    def product(a, a0, ars, acs, b, b0, ldb, t0, t1, c, c0, ldc, width):  # pragma: no cover
        # 8 rows of c[:, :width] (width a multiple of W) as tile2s, then a tile1
        j = 0
        if _TWO:
            while j + 2 * _W <= width:
                _TILE2(a, a0, ars, acs, b, b0 + j, ldb, t0, t1, c, c0 + j, ldc)
                j += 2 * _W
        while j < width:
            _TILE1(a, a0, ars, acs, b, b0 + j, ldb, t0, t1, c, c0 + j, ldc)
            j += _W

    _PRODUCT = product

    @numba.njit(inline="always", error_model="numpy")
    def rows(dst, d0, dstride, src, s0, sstride, r0, r1, width):  # pragma: no cover
        # dst[d0 + r*dstride : +width] = src[s0 + r*sstride : +width] for r0 <= r < r1, in
        # 8-float vectors (width a multiple of 8): a head's rows into or out of scratch
        for r in range(r0, r1):
            for e in range(0, width, 8):
                _VSTORE(dst, d0 + r * dstride + e, _VLOAD(src, s0 + r * sstride + e))

    _ROWS = rows

    @numba.njit(inline="always", error_model="numpy")
    def fetch(a, base, stride, r0, r1, width, write):  # pragma: no cover - compiled
        # prefetch rows r0..r1-1 (``width`` floats at a[base + r*stride]) into L2, one
        # prefetch per 64-byte line; ``write`` for rows the kernel will store to. Used for
        # the next head while one is computed: in a training step a head's rows arrive from
        # L3 or the other core's cache (its projection's GEMM wrote them), the outputs are
        # fresh buffers, and the strided rows defeat the hardware prefetchers
        lead = np.int64((a.ctypes.data >> 2) & 15)  # the data's offset in its line (floats)
        for r in range(r0, r1):
            o = base + r * stride
            first = o - ((lead + o) & 15)
            for e in range(first, o + width, 16):
                if write:
                    _PF_WRITE(a, e)
                else:
                    _PF_READ(a, e)

    _FETCH = fetch

    @numba.njit(inline="always", error_model="numpy")
    def cols(dst, dstride, src, s0, sstride, n, width):  # pragma: no cover - compiled
        # dst[e * dstride + j] = src[s0 + j * sstride + e]: n rows of a head transposed into
        # scratch, so a score tile loads W keys at once; 8x8 blocks transposed in registers
        # (width a multiple of 8), the last n % 8 rows in scalar code
        n8 = n - n % 8
        for j0 in range(0, n8, 8):
            r = s0 + j0 * sstride
            for e0 in range(0, width, 8):
                _VSTORE_T8(dst, e0 * dstride + j0, dstride, 8,
                          _VLOAD(src, r + e0), _VLOAD(src, r + sstride + e0),
                          _VLOAD(src, r + 2 * sstride + e0), _VLOAD(src, r + 3 * sstride + e0),
                          _VLOAD(src, r + 4 * sstride + e0), _VLOAD(src, r + 5 * sstride + e0),
                          _VLOAD(src, r + 6 * sstride + e0), _VLOAD(src, r + 7 * sstride + e0))
        for j in range(n8, n):
            for e in range(width):
                _ST(dst, e * dstride + j, _LD(src, s0 + j * sstride + e))

    @numba.njit(inline="always")
    def head(st, b, h):  # pragma: no cover - compiled
        # element offset of (batch b, head h) for element strides st
        return b * st[0] + h * st[1]

    _COLS, _HEAD = cols, head

    @numba.njit(inline="always", fastmath={"reassoc", "contract"}, error_model="numpy")
    def softmax_row(pr, n, scale):  # pragma: no cover - compiled
        # pr[:n] <- softmax(pr[:n] * scale), pr[n:] <- 0, in scalar code: the rows whose
        # maximum is not finite. The max skips NaN; a NaN score then makes the whole row
        # NaN through exp and the sum, as in torch
        m = np.float32(-np.inf)
        for j in range(n):
            x = pr[j] * scale
            pr[j] = x
            m = x if x > m else m
        t = np.float32(0.0)
        for j in range(n):
            x = _EXP_NEG(pr[j] - m)
            pr[j] = x
            t += x
        inv = np.float32(1.0) / t
        for j in range(n):
            pr[j] *= inv
        for j in range(n, pr.size):
            pr[j] = np.float32(0.0)

    _SOFTMAX_ROW = softmax_row

    @jit
    def fwd(q, k, v, out, p, qst, kst, vst, ost, scale, causal, direct, lo,
            hi):  # pragma: no cover - compiled
        # heads lo..hi-1 of the flattened (batch, head) index. q (B, H, L, E), k (B, H, S, E),
        # v (B, H, S, Ev), out (B, H, L, Ev): unit stride along the last axis, element strides
        # of the other three in qst, kst, vst, ost; p (B, H, Lp, Sp) C-contiguous (Lp a
        # multiple of 8, Sp of W). ``direct`` (L a multiple of 8, Ev of W): the tiles read q
        # and v and write out through their strides instead of padded scratch copies
        nh, L, E = q.shape[1], q.shape[2], q.shape[3]
        S, Ev = k.shape[2], v.shape[3]
        Lp, Sp = p.shape[2], p.shape[3]
        Ep = -(-E // _W) * _W
        Evp = -(-Ev // _W) * _W
        direct_bits = direct
        direct = (direct & 1) != 0 and L % 8 == 0 and Ev % _W == 0
        qh = np.zeros((Lp, Ep), np.float32)   # zero padding rows/columns stay zero
        kt = np.zeros((E, Sp), np.float32)    # k transposed: a score tile loads W keys
        vh = np.zeros((Sp, Evp), np.float32)
        oh = np.zeros((Lp, Evp), np.float32)
        for bh in range(lo, hi):
            b = bh // nh
            h = bh - b * nh
            ob = _HEAD(ost, b, h)
            qb = _HEAD(qst, b, h)
            vb = _HEAD(vst, b, h)
            pb = bh * Lp * Sp
            if not direct:
                _ROWS(qh, 0, Ep, q, qb, qst[2], 0, L, E)
                _ROWS(vh, 0, Evp, v, vb, vst[2], 0, S, Ev)
            _COLS(kt, Sp, k, _HEAD(kst, b, h), kst[2], S, E)
            nxt = bh + 1 < hi and (direct_bits & 8) != 0
            b2 = (bh + 1) // nh
            h2 = bh + 1 - b2 * nh
            qn, kn, vn, on = _HEAD(qst, b2, h2), _HEAD(kst, b2, h2), _HEAD(vst, b2, h2), \
                _HEAD(ost, b2, h2)
            pn = (bh + 1) * Lp * Sp
            nblk = Lp // 8
            for i0 in range(0, L, 8):
                if nxt:  # the next head's rows, an eighth of its keys per query block
                    r1 = min(i0 + 8, L)
                    pw = -(-min(i0 + 8, S) // _W) * _W if causal else Sp  # p's written part
                    j0 = (i0 // 8) * S // nblk
                    j1 = (i0 // 8 + 1) * S // nblk
                    _FETCH(q, qn, qst[2], i0, r1, E, False)
                    _FETCH(k, kn, kst[2], j0, j1, E, False)
                    _FETCH(v, vn, vst[2], j0, j1, Ev, False)
                    _FETCH(out, on, ost[2], i0, r1, Ev, True)
                    _FETCH(p, pn, Sp, i0, i0 + 8, pw, True)
                kmax = min(i0 + 8, S) if causal else S
                kw = -(-kmax // _W) * _W
                # scores of 8 queries x the key vectors they see
                if direct:
                    _PRODUCT(q, qb + i0 * qst[2], qst[2], 1, kt, 0, Sp, 0, E, p, pb + i0 * Sp,
                             Sp, kw)
                else:
                    _PRODUCT(qh, i0 * Ep, Ep, 1, kt, 0, Sp, 0, E, p, pb + i0 * Sp, Sp, kw)
                # the block's rows (padding rows past L too: p has them) see the same number
                # of key vectors: n differs by < 8 within a block of 8 aligned rows
                n0 = min(i0 + 1, S) if causal else S
                nv = -(-(min(i0 + 8, S) if causal else S) // _W)
                # (the key vectors past nv are left unwritten: under the causal mask no
                # product reads them, and not writing them saved a quarter of p's writes)
                if not _SOFTMAX_VBLOCK(p, pb + i0 * Sp, Sp, n0, 1 if causal else 0, S, nv,
                                       scale):  # a row with a NaN or infinite maximum
                    for i in range(i0, min(i0 + 8, L)):
                        _SOFTMAX_ROW(p[b, h, i], min(i + 1, S) if causal else S, scale)
                for i in range(L, i0 + 8):
                    p[b, h, i, :] = np.float32(0.0)
                # out = p v over the visible keys
                if direct:
                    _PRODUCT(p, pb + i0 * Sp, Sp, 1, v, vb, vst[2], 0, kmax, out,
                             ob + i0 * ost[2], ost[2], Ev)
                else:
                    _PRODUCT(p, pb + i0 * Sp, Sp, 1, vh, 0, Evp, 0, kmax, oh, i0 * Evp, Evp,
                             Evp)
                    _ROWS(out, ob, ost[2], oh, 0, Evp, i0, min(i0 + 8, L), Ev)

    @jit
    def bwd(q, k, v, g, p, dq, dk, dv, qst, kst, vst, gst, dqst, dkst, dvst, scale, causal,
            direct, lo, hi):  # pragma: no cover - compiled
        # gradients of heads lo..hi-1 into dq, dk, dv (element strides dqst, dkst, dvst);
        # g is the output's gradient (element strides gst). ``direct`` (L and S multiples of
        # 8, E and Ev of W): q, k, g read and dq, dk, dv written through their strides
        nh, L, E = q.shape[1], q.shape[2], q.shape[3]
        S, Ev = k.shape[2], v.shape[3]
        Lp, Sp = p.shape[2], p.shape[3]
        Ep = -(-E // _W) * _W
        Evp = -(-Ev // _W) * _W
        ok = L % 8 == 0 and S % 8 == 0 and E % _W == 0 and Ev % _W == 0
        bits = direct
        dw = (direct & 4) != 0 and ok
        direct = (direct & 2) != 0 and ok
        qh = np.zeros((Lp, Ep), np.float32)
        kh = np.zeros((Sp, Ep), np.float32)
        vt = np.zeros((Ev, Sp), np.float32)   # v transposed: a dp tile loads W keys
        gh = np.zeros((Lp, Evp), np.float32)
        ds = np.zeros((Lp, Sp), np.float32)
        dqh = np.zeros((Lp, Ep), np.float32)
        dkh = np.zeros((Sp, Ep), np.float32)
        dvh = np.zeros((Sp, Evp), np.float32)
        for bh in range(lo, hi):
            b = bh // nh
            h = bh - b * nh
            dqb, dkb, dvb = _HEAD(dqst, b, h), _HEAD(dkst, b, h), _HEAD(dvst, b, h)
            qb, kb, gb = _HEAD(qst, b, h), _HEAD(kst, b, h), _HEAD(gst, b, h)
            pb = bh * Lp * Sp
            if not direct:
                _ROWS(qh, 0, Ep, q, qb, qst[2], 0, L, E)
                _ROWS(gh, 0, Evp, g, gb, gst[2], 0, L, Ev)
                _ROWS(kh, 0, Ep, k, kb, kst[2], 0, S, E)
            _COLS(vt, Sp, v, _HEAD(vst, b, h), vst[2], S, Ev)
            nxt = bh + 1 < hi and (bits & 8) != 0
            b2 = (bh + 1) // nh
            h2 = bh + 1 - b2 * nh
            nblk = Lp // 8
            for i0 in range(0, L, 8):
                if nxt:  # the next head's rows (as in the forward)
                    r1 = min(i0 + 8, L)
                    j0 = (i0 // 8) * S // nblk
                    j1 = (i0 // 8 + 1) * S // nblk
                    _FETCH(q, _HEAD(qst, b2, h2), qst[2], i0, r1, E, False)
                    _FETCH(g, _HEAD(gst, b2, h2), gst[2], i0, r1, Ev, False)
                    _FETCH(p, (bh + 1) * Lp * Sp, Sp, i0, i0 + 8,
                           -(-min(i0 + 8, S) // _W) * _W if causal else Sp, False)
                    _FETCH(dq, _HEAD(dqst, b2, h2), dqst[2], i0, r1, E, True)
                    _FETCH(k, _HEAD(kst, b2, h2), kst[2], j0, j1, E, False)
                    _FETCH(v, _HEAD(vst, b2, h2), vst[2], j0, j1, Ev, False)
                    _FETCH(dk, _HEAD(dkst, b2, h2), dkst[2], j0, j1, E, True)
                    _FETCH(dv, _HEAD(dvst, b2, h2), dvst[2], j0, j1, Ev, True)
                kmax = min(i0 + 8, S) if causal else S
                kw = -(-kmax // _W) * _W
                # dp = dO v^T, then ds = p (dp - sum_j p dp) scale; ds is 0 from key n on
                # up to the row's last vector (at least kmax, and at least the key block of
                # any dk tile reading the row)
                if direct:
                    _PRODUCT(g, gb + i0 * gst[2], gst[2], 1, vt, 0, Sp, 0, Ev, ds, i0 * Sp, Sp,
                             kw)
                else:
                    _PRODUCT(gh, i0 * Evp, Evp, 1, vt, 0, Sp, 0, Ev, ds, i0 * Sp, Sp, kw)
                for i in range(i0, min(i0 + 8, L)):
                    n = min(i + 1, S) if causal else S
                    _DS_VROW(p, pb + i * Sp, ds, i * Sp, n, -(-n // _W), scale)
                # dq = ds k
                if direct and dw:
                    _PRODUCT(ds, i0 * Sp, Sp, 1, k, kb, kst[2], 0, kmax, dq,
                             dqb + i0 * dqst[2], dqst[2], E)
                elif direct:
                    _PRODUCT(ds, i0 * Sp, Sp, 1, k, kb, kst[2], 0, kmax, dqh, i0 * Ep, Ep, Ep)
                    _ROWS(dq, dqb, dqst[2], dqh, 0, Ep, i0, min(i0 + 8, L), E)
                elif dw:
                    _PRODUCT(ds, i0 * Sp, Sp, 1, kh, 0, Ep, 0, kmax, dq,
                             dqb + i0 * dqst[2], dqst[2], E)
                else:
                    _PRODUCT(ds, i0 * Sp, Sp, 1, kh, 0, Ep, 0, kmax, dqh, i0 * Ep, Ep, Ep)
                    _ROWS(dq, dqb, dqst[2], dqh, 0, Ep, i0, min(i0 + 8, L), E)
            for j0 in range(0, S, 8):
                t0 = j0 if causal else 0      # rows that see key block j0
                # dv = p^T dO, dk = ds^T q
                if direct and dw:
                    _PRODUCT(p, pb + j0, 1, Sp, g, gb, gst[2], t0, L, dv,
                             dvb + j0 * dvst[2], dvst[2], Ev)
                    _PRODUCT(ds, j0, 1, Sp, q, qb, qst[2], t0, L, dk, dkb + j0 * dkst[2],
                             dkst[2], E)
                elif direct:
                    _PRODUCT(p, pb + j0, 1, Sp, g, gb, gst[2], t0, L, dvh, j0 * Evp, Evp, Evp)
                    _PRODUCT(ds, j0, 1, Sp, q, qb, qst[2], t0, L, dkh, j0 * Ep, Ep, Ep)
                    _ROWS(dk, dkb, dkst[2], dkh, 0, Ep, j0, min(j0 + 8, S), E)
                    _ROWS(dv, dvb, dvst[2], dvh, 0, Evp, j0, min(j0 + 8, S), Ev)
                elif dw:
                    _PRODUCT(p, pb + j0, 1, Sp, gh, 0, Evp, t0, L, dv,
                             dvb + j0 * dvst[2], dvst[2], Ev)
                    _PRODUCT(ds, j0, 1, Sp, qh, 0, Ep, t0, L, dk, dkb + j0 * dkst[2],
                             dkst[2], E)
                else:
                    _PRODUCT(p, pb + j0, 1, Sp, gh, 0, Evp, t0, L, dvh, j0 * Evp, Evp, Evp)
                    _PRODUCT(ds, j0, 1, Sp, qh, 0, Ep, t0, L, dkh, j0 * Ep, Ep, Ep)
                    _ROWS(dk, dkb, dkst[2], dkh, 0, Ep, j0, min(j0 + 8, S), E)
                    _ROWS(dv, dvb, dvst[2], dvh, 0, Evp, j0, min(j0 + 8, S), Ev)

    return _Kernels(fwd, bwd)


def _elem_strides(a: Any) -> tuple | None:
    """The element strides of a 4-D float32 array's first three axes, or None unless its
    last axis is unit-stride and every stride is non-negative."""
    s0, s1, s2, s3 = a.strides
    if s3 != 4 or s0 < 0 or s1 < 0 or s2 < 0 or (s0 | s1 | s2) & 3:
        return None
    return s0 >> 2, s1 >> 2, s2 >> 2


def usable(q: Any, k: Any, v: Any) -> bool:
    """Whether the kernels take these NumPy operands: float32, 4-D of one (batch, heads),
    head sizes a multiple of 8, at least one query and one key, unit stride along the last
    axis."""
    import numpy as np
    if not (type(q) is np.ndarray and type(k) is np.ndarray and type(v) is np.ndarray):
        return False
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4 or q.dtype != np.float32 or \
            k.dtype != np.float32 or v.dtype != np.float32:
        return False
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or \
            q.shape[3] != k.shape[3]:
        return False
    if q.shape[3] % 8 or v.shape[3] % 8 or not q.shape[3] or not v.shape[3] or \
            not q.shape[2] or not k.shape[2]:
        return False
    return all(_elem_strides(a) is not None for a in (q, k, v))


def _direct() -> int:
    """Where the kernels read and write a head's rows through their strides when the sizes
    allow, as bits: 1 the forward, 2 the backward's reads of q, k and the output gradient, 4
    its writes of dq, dk, dv; 8: prefetch the next head's rows while one is computed.
    ``EMBER_ATTN_DIRECT`` (default 15; 0 keeps every row in padded scratch copies, 7 turns
    the prefetch off) is the A/B switch."""
    import os
    return int(os.environ.get("EMBER_ATTN_DIRECT", "15"))


class _Kernels:
    """The compiled attention kernels behind Python entry points that cut the heads over
    ember's row threads (:func:`_spread`)."""

    def __init__(self, fwd: Any, bwd: Any) -> None:
        self._fwd, self._bwd = fwd, bwd

    def forward(self, q: Any, k: Any, v: Any, out: Any, scale: float, causal: bool) -> Any:
        """Attention of ``q``, ``k``, ``v`` (:func:`usable`) into ``out`` (B, H, L, Ev),
        unit-stride last axis; returns the weights ``p`` for :meth:`backward`."""
        import numpy as np
        B, H, L = q.shape[:3]
        S = k.shape[2]
        w = _W if _W else _lanes()
        p = np.empty((B, H, -(-L // 8) * 8, -(-S // w) * w), np.float32)
        s = np.float32(scale)
        st = (_elem_strides(q), _elem_strides(k), _elem_strides(v), _elem_strides(out))
        fwd = self._fwd
        direct = _direct()

        from ember.backend import cpu_team
        if cpu_team.attention_forward(q, k, v, out, p, st, s, causal, direct):
            return p   # (on MKL's awake OpenMP team: the qkv GEMM just ran)

        def piece(lo: int, hi: int) -> None:
            fwd(q, k, v, out, p, *st, s, causal, direct, lo, hi)
        _spread(B * H, piece)
        return p

    def backward(self, q: Any, k: Any, v: Any, g: Any, p: Any, dq: Any, dk: Any, dv: Any,
                 scale: float, causal: bool) -> None:
        """Gradients of :meth:`forward`'s output into ``dq``, ``dk``, ``dv`` (float32, shaped
        like ``q``, ``k``, ``v``); the upstream ``g`` (float32, shaped like the output) and
        the gradient buffers need a unit-stride last axis and non-negative strides
        (:func:`strided_ok`)."""
        import numpy as np
        s = np.float32(scale)
        st = tuple(_elem_strides(a) for a in (q, k, v, g, dq, dk, dv))
        bwd = self._bwd
        direct = _direct()

        from ember.backend import cpu_team
        if cpu_team.attention_backward((q, k, v, g, p, dq, dk, dv), st, s, causal, direct):
            return   # (on MKL's awake OpenMP team: the projection's GEMMs just ran)

        def piece(lo: int, hi: int) -> None:
            bwd(q, k, v, g, p, dq, dk, dv, *st, s, causal, direct, lo, hi)
        _spread(q.shape[0] * q.shape[1], piece)


def strided_ok(a: Any) -> bool:
    """Whether a 4-D float32 array's layout suits the kernels (unit-stride last axis,
    non-negative strides)."""
    return _elem_strides(a) is not None


kernels = LazyKernels(_build)   # the compiled namespace, or None
