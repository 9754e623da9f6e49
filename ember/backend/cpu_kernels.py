"""Optional fused CPU kernels compiled by numba (``pip install ember[cpu]``).

NumPy runs an elementwise chain as one call per operation; every call hands the GIL back, so
chains split over Python threads barely scale past one core, while torch runs one fused loop
per op on every core. These kernels are that fused loop: one pass per element, compiled
``nogil``, and the large ones cut into pieces for ember's row threads (:func:`_spread`).
numba is imported on the first call of a covered op, never by ``import ember``; without
numba, or with ``EMBER_NUMBA=0``, ``kernels()`` (a :class:`LazyKernels`) returns None and
callers keep their NumPy code. Kernels are compiled with ``cache=True`` (the
compiled code lands in ``__pycache__``) and for few signatures (1-D float32 arrays).
"""
from __future__ import annotations

import math
import os
import threading
from types import SimpleNamespace
from typing import Any, Callable

from ember.backend import cpu_team
from ember.backend.cpu_vec_ir import _exp_neg, _gelu_lanes, _gelu_vec, _prefetch, _row_vec

_AHEAD = 8  # rows the row kernels prefetch ahead
_GELU_AHEAD = 1024  # elements GELU prefetches ahead
# The calling thread's extra share of a split kernel: the pool thread starts its piece
# ~25-50 us late (a Python thread's wake-up), and a caller that finishes first then waits on
# the join (another wake-up, 25-90 us measured). With the caller taking 60% of two pieces,
# in the tiny-GPT step: attention forward 399 -> 345 us, backward 541 -> 476, GELU 328 -> 302
# (0.12 the same, 0.16 and 0.22 slower). EMBER_ROWS_MAIN_EXTRA=0 splits evenly (an A/B switch).
_MAIN_EXTRA = "0.1"
_GELU_MIN = 1 << 17  # elements a GELU piece gets at least: 128K split no faster (measured)
# jitted helpers that other kernels call, set by _build: module globals rather than closure
# variables, which numba's on-disk cache does not take (every process recompiled them)
_EXP_NEG: Any = None
_GELU_PARTS: Any = None
_GELU_SPAN: Any = None
_GELU_SPAN_GRAD: Any = None
_GELU_VEC: Any = None
_GELU_VEC_GRAD: Any = None
_SIGMOID: Any = None
_TANH: Any = None
_LSTM_CELL: Any = None
_LN_ROWS: Any = None
_LN_BACK_ROWS: Any = None
_SOFTMAX_STATS_ROWS: Any = None
_ROW_MAX: Any = None
_ROW_VMAX: Any = None
_ROW_VEXP_SUM: Any = None
_ROW_VSCALE: Any = None
_PF_READ: Any = None
_PF_WRITE: Any = None


def enabled() -> bool:
    """Whether the numba kernels may be used (``EMBER_NUMBA=0`` turns them off at any time)."""
    # (os.environ's own bytes mapping, which its writes update: ~0.05 us a lookup against
    # ~0.6 through os.environ.get, once per kernel call)
    if _ENV is None:
        return os.environ.get("EMBER_NUMBA", "1") != "0"
    return _ENV.get(b"EMBER_NUMBA") != b"0"


_ENV: Any = getattr(os.environ, "_data", None) if os.name == "posix" else None


class LazyKernels:
    """A kernel module's compiled namespace, built by ``build`` on the first call (once, even
    when two threads ask at the same time; ``after`` runs once the attempt is over); None
    when numba is missing or ``EMBER_NUMBA=0`` (read on every call)."""

    __slots__ = ("build", "after", "value", "tried", "lock")

    def __init__(self, build: Callable[[], Any], after: Callable[[], None] | None = None
                 ) -> None:
        self.build, self.after = build, after
        self.value: Any = None
        self.tried = False
        self.lock = threading.Lock()

    def __call__(self) -> Any:
        if not enabled():
            return None
        if not self.tried:
            with self.lock:
                if not self.tried:
                    try:
                        self.value = self.build()
                    except ImportError:
                        self.value = None
                    self.tried = True
                    if self.after is not None:
                        self.after()
        return self.value


def _blas_to_one() -> None:
    from ember.backend.cpu import _libs, _set_blas_threads
    _libs()  # (sets the current count to the default: no GEMM has run yet)
    _set_blas_threads(1)


def blas_spinning() -> bool:
    """Whether OpenBLAS's worker threads are likely busy-waiting in this process: the last
    GEMM ran on several threads and the workers spin when idle. After a threaded GEMM they
    spin for ~2^28 cycles (~0.1 s; measured: 0.11 s of CPU time over a 0.2 s sleep, whatever
    ``set_num_threads`` says meanwhile), so in a training step, where one comes every few
    ms, a core is never free for a second thread of ours: the tiny-GPT step ran its
    attention and kernels faster on one thread (paired, same process kind: 99.8 vs 107.6 ms
    a step). ember normally cuts the spinning to ~0.4 ms (``backend.cpu._short_spin``); then
    this is False. The BLAS count is set to one when the kernels are built, so this reads
    True only after a threaded GEMM."""
    from ember.backend.cpu import _state
    cur = _state["current"]
    return cur is not None and cur > 1 and bool(_state["spin"])


def _spread(n: int, piece: Any, min_rows: int) -> None:
    """Call ``piece(lo, hi)`` over ``[0, n)``, in pieces of at least ``min_rows`` on the
    cores other processes leave free (``backend.cpu.parallel_rows``: Python threads; the
    kernels are compiled ``nogil``, so the pieces run at once), or in one call beside
    OpenBLAS's spinning workers (:func:`blas_spinning`).

    Why not numba's own ``prange``: measured alternating in one process, GELU of 512K float32
    elements took 471 us this way against 546 us (often ~900) with ``prange`` on numba's
    workqueue threads, and right after a threaded GEMM 1.69 vs 2.22 ms for both (serial
    787 us); one thread pool for every parallel pass also keeps ember's threads to one set.
    The calling thread takes the larger piece (``_MAIN_EXTRA``)."""
    if blas_spinning():
        piece(0, n)
        return
    from ember.backend.cpu import parallel_rows, row_threads
    threads = row_threads(n, min_rows)
    share = float(os.environ.get("EMBER_ROWS_MAIN_EXTRA", _MAIN_EXTRA))
    if threads < 2 or share <= 0:
        parallel_rows(n, piece, min_rows)
        return
    cut = min(n, int(n * (1.0 / threads + share)))
    bounds = [0] + [cut + (n - cut) * i // (threads - 1) for i in range(threads)]

    def part(lo: int, hi: int) -> None:
        piece(bounds[lo], bounds[hi])
    parallel_rows(threads, part, 1)


def _row_blocks(rows: int, n: int) -> int:
    """Blocks of rows a row kernel is cut into: ~128K elements each, at most 16, so that the
    per-block partial sums (and so the result) do not depend on the thread count. One block
    runs on the calling thread (a parallel launch cost more than a second thread saved on a
    (1024, 128) layer norm)."""
    return max(1, min(16, rows, rows * n >> 17))


def _build() -> SimpleNamespace:
    import numba
    import numpy as np

    if "NUMBA_THREADING_LAYER" not in os.environ:
        # for any prange kernel compiled in this process (none here: see _spread): not
        # OpenMP (numba's pick when libgomp is there), whose threads spin after each kernel
        # and took the cores from OpenBLAS's next GEMM (measured: a GPT step 120 -> 230 ms);
        # workqueue threads sleep between kernels
        numba.config.THREADING_LAYER = "workqueue"

    from ember.ops.nn_activation import _GELU_K, _GELU_R

    # error_model="numpy": with numba's default ("python") every division checks for a zero
    # divisor to raise ZeroDivisionError, a branch that kept the GELU loop scalar (6.4 ms vs
    # 0.9 ms for 512K elements on one core)
    serial = numba.njit(fastmath=False, cache=True, nogil=True, error_model="numpy")
    # row reductions may be reassociated (that alone lets LLVM vectorize a sum; NaN and inf
    # keep their IEEE behaviour), and multiply-adds fused (the softmax rows' exp: 481 vs
    # 566 us for (4096, 64), alternating in one process)
    rows_jit = numba.njit(fastmath={"reassoc", "contract"}, cache=True, nogil=True,
                          error_model="numpy")
    # GELU's polynomials and exp as fused multiply-adds (one rounding fewer per step; the
    # loop is bound by its ~40 vector arithmetic instructions per 8 elements)
    fma = numba.njit(fastmath={"contract"}, cache=True, nogil=True, error_model="numpy")
    r0, r1, r2, r3, r4, r5, r6, r7 = _GELU_R
    isp = 1.0 / math.sqrt(2.0 * math.pi)

    global _EXP_NEG, _GELU_PARTS, _GELU_SPAN, _GELU_SPAN_GRAD, _SIGMOID, _TANH
    global _LSTM_CELL
    global _GELU_VEC, _GELU_VEC_GRAD
    global _LN_ROWS, _LN_BACK_ROWS, _SOFTMAX_STATS_ROWS, _ROW_MAX
    global _ROW_VMAX, _ROW_VEXP_SUM, _ROW_VSCALE, _PF_READ, _PF_WRITE
    _EXP_NEG = _exp_neg(numba, np)
    _PF_READ, _PF_WRITE = _prefetch(0), _prefetch(1)

    @numba.njit(inline="always", error_model="numpy")
    def row_max(xr):  # pragma: no cover - compiled
        # (max, whether any element is NaN) of a row; the max of an empty row is 0
        mx = xr[0] if xr.size else np.float32(0.0)
        nan = False
        for j in range(xr.size):
            v = xr[j]
            mx = v if v > mx else mx
            nan = nan | (v != v)
        return mx, nan
    _ROW_MAX = row_max

    @numba.njit(inline="always", fastmath={"contract"}, error_model="numpy")
    def gelu_parts(v):  # pragma: no cover - compiled
        # The erfc fit of ember.ops.nn_activation (libm's erfc per element is ~4x slower):
        # h = Phi(-|x|) = t exp(-x^2/2) R(t), t = 1/(1 + K|x|); Phi(x) = 1 - h for x > 0.
        # Branch-free (selects only) and exp inlined, so that LLVM vectorizes the loop.
        # Returns (Phi(x), exp(-x^2/2)).
        one = np.float32(1.0)
        a = abs(v)
        t = one / (one + np.float32(_GELU_K) * a)
        e = _EXP_NEG(np.float32(-0.5) * a * a)
        h = t * e * (((((((np.float32(r0) * t + np.float32(r1)) * t + np.float32(r2)) * t
                         + np.float32(r3)) * t + np.float32(r4)) * t + np.float32(r5)) * t
                      + np.float32(r6)) * t + np.float32(r7))
        return (one - h if v > np.float32(0.0) else h), e

    _GELU_PARTS = gelu_parts

    # Two loops, with and without the derivative, rather than one with a loop-invariant
    # flag: LLVM kept the flag as a masked store (vmaskmovps, microcoded on AMD), 2.05 vs
    # 1.28 ns an element on one core for the same values. The bulk runs on explicit vectors
    # (_gelu_vec), the last few elements through gelu_parts (the same values).
    lanes = _gelu_lanes()
    _GELU_VEC, _GELU_VEC_GRAD = _gelu_vec(lanes)

    @fma
    def span_grad(x, y, d):  # pragma: no cover - compiled
        s = np.float32(isp)
        big = np.float32(20.0)
        n = x.size
        m = n - n % lanes
        for i in range(0, m, lanes):
            _PF_READ(x, i + _GELU_AHEAD)
            _PF_WRITE(y, i + _GELU_AHEAD)
            _PF_WRITE(d, i + _GELU_AHEAD)
            _GELU_VEC_GRAD(x, y, d, i)
        for i in range(m, n):
            v = x[i]
            p, e = _GELU_PARTS(v)
            y[i] = v * p  # +inf: inf * 1
            # x phi(x) is 0 to float32 beyond x = 20 (inf * 0 at +inf; NaN at -inf as torch)
            d[i] = p + (np.float32(0.0) if v > big else v * e * s)

    @fma
    def span(x, y):  # pragma: no cover - compiled
        n = x.size
        m = n - n % lanes
        for i in range(0, m, lanes):
            _PF_READ(x, i + _GELU_AHEAD)
            _PF_WRITE(y, i + _GELU_AHEAD)
            _GELU_VEC(x, y, i)
        for i in range(m, n):
            v = x[i]
            p, _ = _GELU_PARTS(v)
            y[i] = v * p

    _GELU_SPAN = span
    _GELU_SPAN_GRAD = span_grad

    def gelu_f(flat: Any, y: Any, d: Any) -> None:
        """float32 GELU of the 1-D contiguous ``flat`` into ``y`` and, unless ``d`` is None,
        its derivative into ``d`` (float32 only: the fit is float32-accurate)."""
        if flat.size >= _GELU_MIN and cpu_team.gelu(flat, y, d):
            return   # (on MKL's awake OpenMP team: no thread wake-up)
        if d is None:
            def piece(lo: int, hi: int) -> None:
                span(flat[lo:hi], y[lo:hi])
        else:
            def piece(lo: int, hi: int) -> None:
                span_grad(flat[lo:hi], y[lo:hi], d[lo:hi])
        _spread(flat.size, piece, _GELU_MIN)

    @rows_jit
    def ln_rows(x, w, b, eps, y, mean, rstd):  # pragma: no cover - compiled
        # two-pass statistics, then the affine output, in x's dtype (torch's CPU kernel
        # accumulates float32 rows in float32 too; float64 accumulation of float32 data cost
        # a conversion per element: (1024, 128) 97 -> 54 us). Rows as 1-D views keep every
        # loop vectorized. No xhat is written: the backward recomputes it from x, mean, rstd.
        rows, n = x.shape
        cast = x.dtype.type
        inv_n = cast(1.0 / n)
        line = 64 // x.itemsize
        for r in range(rows):
            if r + _AHEAD < rows:
                for j in range(0, n, line):
                    _PF_READ(x, (r + _AHEAD) * n + j)
                    _PF_WRITE(y, (r + _AHEAD) * n + j)
            xr = x[r]
            s = cast(0.0)
            for j in range(n):
                s += xr[j]
            m = s * inv_n
            q = cast(0.0)
            for j in range(n):
                dv = xr[j] - m
                q += dv * dv
            rs = cast(1.0) / np.sqrt(q * inv_n + cast(eps))
            mean[r] = m
            rstd[r] = rs
            yr = y[r]
            for j in range(n):
                yr[j] = (xr[j] - m) * rs * w[j] + b[j]

    _LN_ROWS = ln_rows

    def layer_norm_f(x2: Any, w1: Any, b1: Any, eps: float, y: Any, mean: Any,
                     rstd: Any) -> None:
        """Layer norm of the C-contiguous (rows, n) ``x2`` (float32 or float64) into ``y``,
        ``mean`` and ``rstd`` (rows,); ``w1``/``b1`` (n,) contiguous of x's dtype or None."""
        rows, n = x2.shape
        blocks = _row_blocks(rows, n)
        w1 = np.ones(n, x2.dtype) if w1 is None else w1
        b1 = np.zeros(n, x2.dtype) if b1 is None else b1   # h * 1 + 0 is h exactly
        eps = float(eps)
        if cpu_team.layer_norm(x2, w1, b1, eps, y, mean, rstd):
            return   # (on MKL's awake OpenMP team, 64-row chunks)

        def piece(lo: int, hi: int) -> None:  # rows are independent
            ln_rows(x2[lo:hi], w1, b1, eps, y[lo:hi], mean[lo:hi], rstd[lo:hi])
        if blocks == 1:
            piece(0, rows)
        else:
            _spread(rows, piece, rows // blocks)

    @rows_jit
    def ln_back_rows(x, g, w, mean, rstd, gx, gw, gb, want_gx):  # pragma: no cover - compiled
        # xhat = (x - mean) rstd recomputed per element; gxhat = g w;
        # gx = rstd (gxhat - mean(gxhat) - xhat mean(gxhat xhat)). The weight and bias
        # gradients' column sums of g xhat and g accumulate in x's dtype over runs of 128
        # rows (vector loads and stores, no conversions), each run then added into this
        # block's float64 row of gw, gb.
        rows, n = x.shape
        cast = x.dtype.type
        inv_n = cast(1.0 / n)
        line = 64 // x.itemsize
        aw = np.zeros(n, x.dtype)
        ab = np.zeros(n, x.dtype)
        for r0 in range(0, rows, 128):
            for r in range(r0, min(rows, r0 + 128)):
                if r + _AHEAD < rows:
                    for j in range(0, n, line):
                        _PF_READ(x, (r + _AHEAD) * n + j)
                        _PF_READ(g, (r + _AHEAD) * n + j)
                        if want_gx:
                            _PF_WRITE(gx, (r + _AHEAD) * n + j)
                xr = x[r]
                gr = g[r]
                m = mean[r]
                rs = rstd[r]
                a = cast(0.0)
                c = cast(0.0)
                for j in range(n):
                    h = (xr[j] - m) * rs
                    gv = gr[j]
                    gh = gv * w[j]
                    a += gh * h
                    c += gh
                    aw[j] += gv * h
                    ab[j] += gv
                if want_gx:
                    ac = a * inv_n
                    cc = c * inv_n
                    xo = gx[r]
                    for j in range(n):
                        xo[j] = (gr[j] * w[j] - cc - (xr[j] - m) * rs * ac) * rs
            for j in range(n):
                gw[j] += aw[j]
                gb[j] += ab[j]
                aw[j] = 0
                ab[j] = 0

    _LN_BACK_ROWS = ln_back_rows

    def layer_norm_backward_f(x: Any, g: Any, w: Any, mean: Any, rstd: Any,
                              want_gx: bool) -> tuple:
        """Layer norm's gradients from the C-contiguous (rows, n) input ``x``, the upstream
        ``g`` (same shape and dtype), ``w`` (n,) of that dtype (ones when the norm has none)
        and the saved ``mean``, ``rstd`` (rows,): ``(gx or None, gw, gb)``, gw and gb summed
        over the rows in a fixed block order (the same result on any thread count)."""
        res = cpu_team.layer_norm_backward(x, g, w, mean, rstd, want_gx)
        if res is not None:
            return res
        rows, n = x.shape
        blocks = _row_blocks(rows, n)
        gw = np.zeros((blocks, n))
        gb = np.zeros((blocks, n))
        gx = np.empty_like(x) if want_gx else x[:0]

        def piece(c0: int, c1: int) -> None:  # blocks c0..c1-1, each its own partial sums
            for c in range(c0, c1):
                lo, hi = rows * c // blocks, rows * (c + 1) // blocks
                ln_back_rows(x[lo:hi], g[lo:hi], w, mean[lo:hi], rstd[lo:hi],
                             gx[lo:hi] if want_gx else gx, gw[c], gb[c], want_gx)
        if blocks == 1:
            piece(0, 1)
        else:
            _spread(blocks, piece, 1)
        return (gx if want_gx else None), gw.sum(0), gb.sum(0)

    @rows_jit
    def softmax_rows(x, bias, scale):  # pragma: no cover - compiled
        # in place over the rows of x (float32): x * scale + bias[r % L] (bias (L, S), or
        # (0, 0) for none) and the row max in one pass, then exp(x - max) with the vectorized
        # exp and its sum, then a scale, each row in cache. The scale here rather than on a
        # scaled copy of q, and a float32 sum (torch's CPU kernel accumulates floats in float
        # too): 2048 rows of 64 in 162 vs 291 us, plus the copy's ~80 us a call. A row with
        # no finite maximum (all keys masked) gives zeros, torch's safe softmax; NaN or +inf
        # make the row NaN, as in torch.
        rows, n = x.shape
        lb = bias.shape[0]
        ninf = np.float32(-np.inf)
        for r in range(rows):
            xr = x[r]
            m = ninf
            nan = False  # max() skips NaN: a NaN row must not pass for a fully masked one
            if lb:
                br = bias[r % lb]
                for j in range(n):
                    v = xr[j] * scale + br[j]
                    xr[j] = v
                    m = max(m, v)
                    nan = nan | (v != v)
            else:
                for j in range(n):
                    v = xr[j] * scale
                    xr[j] = v
                    m = max(m, v)
                    nan = nan | (v != v)
            if m == ninf and not nan:
                for j in range(n):
                    xr[j] = np.float32(0.0)
                continue
            t = np.float32(0.0)
            for j in range(n):
                e = _EXP_NEG(xr[j] - m)
                xr[j] = e
                t += e
            inv = np.float32(1.0) / t
            for j in range(n):
                xr[j] *= inv

    def softmax_f(x2: Any, bias: Any, scale: float = 1.0) -> None:
        """Softmax over the last axis of the C-contiguous float32 (rows, n) ``x2`` in place,
        of ``x2 * scale`` plus ``bias`` (L, n) on row r's ``bias[r % L]`` (None: no bias).
        Runs on the calling thread (callers spread blocks of rows over the cores)."""
        softmax_rows(x2, x2[:0, :0] if bias is None else bias, np.float32(scale))

    @serial
    def softmax_back(dp, p, rows, s):  # pragma: no cover - compiled
        # dp <- s p (dp - rows[r]) in place: the softmax backward and the score scale in one
        # pass (three NumPy passes before)
        n_rows, n = dp.shape
        for r in range(n_rows):
            dr = dp[r]
            pr = p[r]
            c = rows[r]
            for j in range(n):
                dr[j] = (dr[j] - c) * pr[j] * s

    @rows_jit
    def softmax_stats_rows(x, out, m, s, normalize):  # pragma: no cover - compiled
        # out = exp(x - max) (divided by its sum when normalize), m = row max, s = that sum;
        # returns how many rows were left alone (NaN or an infinite max: the caller redoes
        # them with NumPy's semantics)
        rows, n = x.shape
        bad = 0
        for r in range(rows):
            xr = x[r]
            mx, nan = _ROW_MAX(xr)
            if nan or not math.isfinite(mx):
                bad += 1
                continue
            orr = out[r]
            t = 0.0
            for j in range(n):
                e = _EXP_NEG(xr[j] - mx)
                orr[j] = e
                t += e
            m[r] = mx
            s[r] = t
            if normalize:
                inv = np.float32(1.0 / t)
                for j in range(n):
                    orr[j] *= inv
        return bad

    _SOFTMAX_STATS_ROWS = softmax_stats_rows

    def softmax_stats_f(x2: Any, out: Any, m: Any, s: Any, normalize: bool) -> int:
        """For the C-contiguous float32 (rows, n) ``x2``: ``out = exp(x - m)`` (normalized
        to sum 1 when ``normalize``), ``m`` the row max and ``s`` the row sum of the
        exponentials (float32 (rows,) each). Returns the number of rows skipped (a NaN, or an
        infinite max); the caller must redo those rows."""
        rows = x2.shape[0]
        blocks = _row_blocks(*x2.shape)
        bad = []

        def piece(lo: int, hi: int) -> None:
            bad.append(int(softmax_stats_rows(x2[lo:hi], out[lo:hi], m[lo:hi], s[lo:hi],
                                              normalize)))
        if blocks == 1:
            piece(0, rows)
        else:
            _spread(rows, piece, rows // blocks)
        return sum(bad)

    @serial
    def adam(p, g, m, v, vmax, decay, l2, neg, w1, two_sided, b2, c2, step_size, bc2_sqrt,
             eps):  # pragma: no cover - compiled
        # ember.optim.adam.adam_update's NumPy passes as one: the same operations in the same
        # order and precision (scalars arrive in the parameters' dtype), one visit per element
        for i in range(p.size):
            gi = -g[i] if neg else g[i]
            pi = p[i] * decay
            if l2 != 0:
                gi = gi + l2 * pi
            mi = m[i]
            if two_sided:  # _lerp_'s form for weights >= 0.5 (w1 is then 1 - weight)
                mi = gi - (gi - mi) * w1
            else:
                mi = mi + (gi - mi) * w1
            m[i] = mi
            vi = v[i] * b2 + (gi * gi) * c2
            v[i] = vi
            if vmax.size:  # np.maximum: NaN wins
                vm = vmax[i]
                vi = vm if vm > vi or vm != vm else vi
                vmax[i] = vi
            p[i] = pi + (mi / (np.sqrt(vi) / bc2_sqrt + eps)) * -step_size

    @numba.njit(inline="always", error_model="numpy")
    def sigmoid(x):  # pragma: no cover - compiled
        # e = exp(-|x|) <= 1: 1/(1+e) for x >= 0, e/(1+e) below (no overflow, no cancellation)
        e = _EXP_NEG(-abs(x))
        r = np.float32(1.0) / (np.float32(1.0) + e)
        return r if x >= 0 else e * r

    _SIGMOID = sigmoid

    @numba.njit(inline="always", error_model="numpy")
    def tanh(x):  # pragma: no cover - compiled
        # Cephes' tanhf: an odd polynomial below |x| = 0.625, else 1 - 2/(exp(2|x|) + 1)
        # written with e = exp(-2|x|); ~1e-7 relative error either way
        a = abs(x)
        z = x * x
        small = ((((np.float32(-5.70498872745e-3) * z + np.float32(2.06390887954e-2)) * z
                   - np.float32(5.37397155531e-2)) * z + np.float32(1.33314422036e-1)) * z
                 - np.float32(3.33332819422e-1)) * z * x + x
        e = _EXP_NEG(np.float32(-2.0) * a)
        big = (np.float32(1.0) - e) / (np.float32(1.0) + e)
        big = big if x >= 0 else -big
        return big if a > np.float32(0.625) else small

    _TANH = tanh

    @numba.njit(inline="always", error_model="numpy")
    def lstm_cell(gr, xr, ar, cr, tr):  # pragma: no cover - compiled
        # one row of an LSTM step after the recurrent GEMM (gr = h W_hh^T): add the input
        # projection xr, the four activations into ar (torch's gate order i, f, g, o:
        # sigmoid on the i, f and o blocks, tanh on g), the new cell state (into cr) and
        # tanh(c) into tr; the caller writes h = o tanh(c). Short loops over 1-D row
        # views, each touching few arrays, so that LLVM vectorizes them (one fused loop
        # over the four gates stayed scalar: 3x slower than NumPy). Inlined: each caller's
        # fastmath flags apply (cpu_rnn_kernels' forward contracts to FMAs, lstm_step not)
        H = cr.shape[0]
        a2 = ar[:2 * H]
        g2 = gr[:2 * H]
        x2 = xr[:2 * H]
        for j in range(2 * H):
            a2[j] = _SIGMOID(g2[j] + x2[j])
        a3 = ar[3 * H:]
        g3 = gr[3 * H:]
        x3 = xr[3 * H:]
        for j in range(H):
            a3[j] = _SIGMOID(g3[j] + x3[j])
        ag = ar[2 * H:3 * H]
        gg = gr[2 * H:3 * H]
        xg = xr[2 * H:3 * H]
        for j in range(H):
            ag[j] = _TANH(gg[j] + xg[j])
        ai = ar[:H]
        af = ar[H:2 * H]
        for j in range(H):
            cn = af[j] * cr[j] + ai[j] * ag[j]
            cr[j] = cn
            tr[j] = _TANH(cn)

    _LSTM_CELL = lstm_cell

    @serial
    def lstm_step(gates, xw, c, act, tanh_c, hn):  # pragma: no cover - compiled
        # one LSTM step after the recurrent GEMM (gates = h W_hh^T): lstm_cell on each
        # row, then h = o tanh(c)
        rows, g4 = gates.shape
        H = g4 // 4
        for r in range(rows):
            tr = tanh_c[r]
            _LSTM_CELL(gates[r], xw[r], act[r], c[r], tr)
            ao = act[r][3 * H:]
            hr = hn[r]
            for j in range(H):
                hr[j] = ao[j] * tr[j]

    @serial
    def lstm_step_back(dhs, act, tanh_c, c_prev, dc, dgates):  # pragma: no cover - compiled
        # the gate gradients of one step (into dgates) and the cell gradient carried back
        # (dc, in place), from dh of this step's output; 1-D row views as in lstm_step
        rows, g4 = act.shape
        H = g4 // 4
        one = np.float32(1.0)
        for r in range(rows):
            ar = act[r]
            dr = dgates[r]
            ai, af, ag, ao = ar[:H], ar[H:2 * H], ar[2 * H:3 * H], ar[3 * H:]
            di, df, dg, do = dr[:H], dr[H:2 * H], dr[2 * H:3 * H], dr[3 * H:]
            tr = tanh_c[r]
            hr = dhs[r]
            cp = c_prev[r]
            dcr = dc[r]
            for j in range(H):
                tc = tr[j]
                dh = hr[j]
                o = ao[j]
                dcs = dh * o * (one - tc * tc) + dcr[j]
                do[j] = (dh * tc) * (o * (one - o))
                dcr[j] = dcs
            for j in range(H):
                dcs = dcr[j]
                i = ai[j]
                f = af[j]
                g = ag[j]
                di[j] = (dcs * g) * (i * (one - i))
                df[j] = (dcs * cp[j]) * (f * (one - f))
                dg[j] = (dcs * i) * (one - g * g)
                dcr[j] = dcs * f

    @serial
    def sgd(p, g, b, lr, momentum, damp, scaled, wd, nesterov,
            neg):  # pragma: no cover - compiled
        # ember.optim.sgd.sgd_update's passes (with an existing momentum buffer) as one,
        # the same operations in the same order; damp is 1 - dampening, applied when scaled
        # (dampening != 0: with the default 0 g is added unscaled, as the NumPy path does)
        for i in range(p.size):
            gi = -g[i] if neg else g[i]
            if wd != 0:
                gi = gi + wd * p[i]
            bi = b[i] * momentum
            bi = bi + (damp * gi if scaled else gi)
            b[i] = bi
            gi = gi + momentum * bi if nesterov else bi
            p[i] = p[i] - lr * gi

    @serial
    def relu_flat(x, out):  # pragma: no cover - compiled
        # max(x, 0) with NaN passed through, one pass (NumPy's maximum needs a zeros
        # operand for its SIMD loop and still ran ~3x torch's time on LeNet's activations)
        for i in range(x.size):
            v = x[i]
            out[i] = v if not v < 0 else 0

    @serial
    def threshold_backward_flat(g, x, t, out):  # pragma: no cover - compiled
        # g where x > t, else 0 (a select: NaN x passes g; an inf/NaN g at a clipped
        # element gives 0), one pass instead of a comparison, a multiply and a NaN check
        for i in range(g.size):
            out[i] = 0 if x[i] <= t else g[i]

    @serial
    def scatter_add_rows(out, idx, rows):  # pragma: no cover - compiled
        # out[idx[k]] += rows[k] in k order: the same sums in the same order as the NumPy
        # path's stable sort and reduceat, without the sort, gathers and temporaries
        for k in range(idx.size):
            o = out[idx[k]]
            r = rows[k]
            for j in range(r.size):
                o[j] += r[j]

    _ROW_VMAX, _ROW_VEXP_SUM, _ROW_VSCALE = _row_vec(lanes)

    @rows_jit
    def ce_rows(x, tgt, ignore, p, loss, safe, w_t, valid):  # pragma: no cover - compiled
        # cross_entropy over small C-contiguous (rows, C) float32 logits with index targets,
        # no class weights, no smoothing: probabilities into p (C-contiguous), per-row loss
        # -log p[target] (0 where ignored) and backward's target parts. Returns 1 at a row
        # with NaN or an infinite max, 2 at a target out of range (the caller runs the NumPy
        # code, which raises), else 0. (~25 NumPy calls on tiny arrays before: ~130 us
        # against torch's ~10.) Each row's bulk runs on explicit vectors (_row_vec: 342 ->
        # ~60 us for (1024, 256), where the loop vectorizer left the row max scalar), its
        # last n % lanes elements here.
        rows, n = x.shape
        nv = n // lanes
        m0 = nv * lanes
        for r in range(rows):
            base = r * n
            if r + _AHEAD < rows:  # the logits come from the head GEMM's two threads
                for j in range(0, n, 16):
                    _PF_READ(x, base + _AHEAD * n + j)
                    _PF_WRITE(p, base + _AHEAD * n + j)
            xr = x[r]
            mx = _ROW_VMAX(x, base, nv)
            nan = False
            for j in range(m0, n):
                v = xr[j]
                mx = v if v > mx else mx
                nan = nan | (v != v)
            if nan or not math.isfinite(mx):
                return 1
            t = tgt[r]
            ok = t != ignore
            if ok and (t < 0 or t >= n):
                return 2
            pr = p[r]
            sm = _ROW_VEXP_SUM(x, p, base, nv, mx)
            for j in range(m0, n):
                e = _EXP_NEG(xr[j] - mx)
                pr[j] = e
                sm += e
            inv = np.float32(1.0) / sm
            _ROW_VSCALE(p, base, nv, inv)
            for j in range(m0, n):
                pr[j] *= inv
            ts = t if ok else 0
            safe[r] = ts
            valid[r] = ok
            w = np.float32(1.0) if ok else np.float32(0.0)
            w_t[r] = w
            loss[r] = -(w * ((xr[ts] - mx) - np.log(sm)))
        return 0

    return SimpleNamespace(gelu=gelu_f, layer_norm=layer_norm_f,
                           layer_norm_backward=layer_norm_backward_f, softmax=softmax_f,
                           softmax_backward=softmax_back, softmax_stats=softmax_stats_f,
                           adam=adam, lstm_step=lstm_step, lstm_step_back=lstm_step_back,
                           sgd=sgd, scatter_add_rows=scatter_add_rows, relu=relu_flat,
                           threshold_backward=threshold_backward_flat,
                           ce_rows=ce_rows)


kernels = LazyKernels(_build, after=_blas_to_one)   # the compiled namespace, or None
