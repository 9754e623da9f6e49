"""Convolution primitives: N-d convolution and transposed convolution, plus im2col/col2im.

The CPU path is im2col + one GEMM: the padded input is viewed through ``as_strided`` as
``(C, *kernel, N, *out)`` windows, copied once into a ``(C*K, N*L)`` column matrix, and
multiplied by the ``(O, C*K)`` weight matrix with ``xp.matmul`` (BLAS); ``_Geom`` describes
the layout (and its faster "wide" form for stride 1). With the output gradient ``g`` laid
out as ``(O, N*L)`` rows in the same order, the two gradients are one GEMM each:

* input gradient  = col2im(W^T @ g), which is also the forward of the transposed conv;
* weight gradient = g @ cols^T (``_conv_weight_grad``).

On the CPU each pass runs over batch chunks of about ``_CHUNK_BYTES`` of columns, in work
arrays reused from call to call (``_Chunk``), spread over the cores other processes leave
free (``backend.cpu.parallel_rows``), and the weight gradient rebuilds the columns rather
than keeping the forward's alive (measured faster); the GPU runs the whole batch at once and
keeps them.

Every backward is written in these ops, so double backward works: the adjoint of a conv
in its input is a transposed conv and vice versa, and ``_conv_weight_grad`` is bilinear with
the convs as its partial derivatives.
"""
from __future__ import annotations

import functools
import math
import threading
from typing import Any, Sequence

import numpy as np

from ember.backend import cpu_conv_kernels
from ember.backend.cpu import gemm_threads, parallel_rows

from ember._state import _State
from ember.errors import check, make
from ember.ops.registry import OPS, OpDef, TensorMeta, apply, register
from ember.tensor import Tensor, _make

# Columns bigger than this are recomputed in backward instead of being kept alive.
_KEEP_COLS_BYTES = 64 * 2 ** 20


# ---------------------------------------------------------------------- array helpers
def ntuple(v: Any, n: int, name: str = "", op: str = "") -> tuple:
    """``v`` as an n-tuple of ints (an int is repeated; a 1-sequence too, as torch does)."""
    if type(v) is tuple and len(v) == n:
        # already normalised (a module's stored tuple): ~10 calls per convolution and step
        for x in v:
            if type(x) is not int:
                break
        else:
            return v
    if isinstance(v, Tensor):
        v = v.tolist()
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return (int(v),) * n
    v = tuple(int(x) for x in v)
    if len(v) == 1 and n > 1:
        return v * n
    if len(v) != n:
        raise make(RuntimeError, op or "conv", f"expected {name or 'argument'} to be a single "
                                               f"integer value or a list of {n} values to match "
                                               f"the spatial dimensions, got {list(v)}")
    return v


def work_dtype(xp: Any, a: Any) -> Any:
    """Half types compute in float32 (NumPy's float16 GEMM is slow, bfloat16 has none)."""
    if a.dtype.itemsize == 2 and a.dtype.kind not in "iu":
        return a.astype(xp.float32)
    return a


def as_strided(xp: Any, a: Any, shape: tuple, strides: tuple) -> Any:
    """A read-only strided view (element strides in bytes, as NumPy's)."""
    if xp is np:
        return np.lib.stride_tricks.as_strided(a, shape=shape, strides=strides, writeable=False)
    return xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)


def pad_spatial(xp: Any, x: Any, pads: Sequence[tuple], value: float = 0.0) -> Any:
    """Pad the trailing ``len(pads)`` dims by ``(before, after)`` each with ``value``."""
    if not any(a or b for a, b in pads):
        return x
    lead = x.ndim - len(pads)
    shape = x.shape[:lead] + tuple(s + a + b for s, (a, b) in zip(x.shape[lead:], pads))
    out = xp.full(shape, value, dtype=x.dtype)
    out[(slice(None),) * lead + tuple(slice(a, a + s) for s, (a, _) in
                                      zip(x.shape[lead:], pads))] = x
    return out


def windows(xp: Any, xpad: Any, ksize: tuple, stride: tuple, dilation: tuple,
            out: tuple) -> Any:
    """The view ``(N, C, *kernel, *out)`` of a padded ``(N, C, *spatial)`` array."""
    st = xpad.strides
    nd = len(ksize)
    strides = st[:2] + tuple(st[2 + i] * dilation[i] for i in range(nd)) + \
        tuple(st[2 + i] * stride[i] for i in range(nd))
    return as_strided(xp, xpad, xpad.shape[:2] + tuple(ksize) + tuple(out), strides)


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def im2col(xp: Any, x: Any, ksize: tuple, stride: tuple, padding: tuple,
           dilation: tuple) -> tuple:
    """``(N, C*K, L)`` columns of ``x`` and the output spatial shape."""
    n, c = x.shape[:2]
    sp = x.shape[2:]
    out = tuple(out_size(sp[i], ksize[i], stride[i], padding[i], dilation[i])
                for i in range(len(sp)))
    if all(k == 1 for k in ksize) and all(s == 1 for s in stride) and not any(padding):
        return x.reshape(n, c, -1), out  # 1x1 conv: the input is its own column matrix
    xpad = pad_spatial(xp, x, [(p, p) for p in padding])
    cols = xp.ascontiguousarray(windows(xp, xpad, ksize, stride, dilation, out))
    return cols.reshape(n, c * math.prod(ksize), math.prod(out)), out


def col2im(xp: Any, cols: Any, c: int, sp: tuple, ksize: tuple, stride: tuple,
           padding: tuple, dilation: tuple) -> Any:
    """Adjoint of :func:`im2col`: sum ``(N, C*K, L)`` columns back into ``(N, C, *sp)``."""
    n = cols.shape[0]
    nd = len(sp)
    out = tuple(out_size(sp[i], ksize[i], stride[i], padding[i], dilation[i]) for i in range(nd))
    if all(k == 1 for k in ksize) and all(s == 1 for s in stride) and not any(padding):
        return cols.reshape((n, c) + tuple(sp))
    cols = cols.reshape((n, c) + tuple(ksize) + out)
    padded = tuple(sp[i] + 2 * padding[i] for i in range(nd))
    # The padded buffer must also hold the reach of the last window (output_padding case).
    reach = tuple(max(padded[i], dilation[i] * (ksize[i] - 1) + stride[i] * (out[i] - 1) + 1)
                  for i in range(nd))
    dx = xp.zeros((n, c) + reach, dtype=cols.dtype)
    for kidx in np.ndindex(*ksize):
        sl = tuple(slice(kidx[i] * dilation[i],
                         kidx[i] * dilation[i] + stride[i] * (out[i] - 1) + 1, stride[i])
                   for i in range(nd))
        dx[(slice(None), slice(None)) + sl] += cols[(slice(None), slice(None)) + kidx]
    crop = tuple(slice(padding[i], padding[i] + sp[i]) for i in range(nd))
    return xp.ascontiguousarray(dx[(slice(None), slice(None)) + crop])


class _Geom:
    """Where each output reads its input: the layout shared by a conv's forward and gradients.

    Columns are ``(C*K, N*L)``: one row per (input channel, kernel offset), one column per
    (sample, output position), so each pass is ONE GEMM with the batch folded into its long
    dimension (NumPy's stacked matmul makes N small GEMMs, and a weight gradient over
    ``(N, C*K, L)`` columns needs a batched GEMM plus a sum).

    ``wide`` (stride 1, no output padding): in the flattened padded input every kernel offset
    is one constant shift, so the columns of a sample are read as ``out[0]`` full padded rows
    (the positions past ``out[1:]`` are garbage that is cropped or multiplied by zeros). The
    copies then move long contiguous runs instead of ``out[-1]``-element ones (2-3x faster at
    LeNet sizes), and col2im is one contiguous add per kernel offset.
    """

    __slots__ = ("nd", "sp", "ksize", "stride", "padding", "dilation", "padded", "out",
                 "wide", "row", "length", "shifts")

    def __init__(self, sp: tuple, ksize: tuple, stride: tuple, padding: tuple,
                 dilation: tuple, out: tuple | None = None) -> None:
        nd = len(sp)
        self.nd, self.sp, self.ksize = nd, tuple(sp), tuple(ksize)
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.padded = tuple(sp[i] + 2 * padding[i] for i in range(nd))
        if out is None:
            out = tuple(out_size(sp[i], ksize[i], stride[i], padding[i], dilation[i])
                        for i in range(nd))
        self.out = tuple(out)
        self.wide = all(s == 1 for s in stride) and \
            all(out[i] + dilation[i] * (ksize[i] - 1) == self.padded[i] for i in range(nd))
        self.row = math.prod(self.padded[1:])
        if self.wide:
            self.length = out[0] * self.row
            self.shifts = [sum(kidx[i] * dilation[i] * math.prod(self.padded[i + 1:])
                               for i in range(nd)) for kidx in np.ndindex(*ksize)]
        else:
            self.length = math.prod(out)
            self.shifts = None

    def narrow(self) -> "_Geom":
        """A copy with exact columns (one per output position)."""
        geo = _Geom(self.sp, self.ksize, self.stride, self.padding, self.dilation, self.out)
        geo.wide, geo.length, geo.shifts = False, math.prod(self.out), None
        return geo

    def garbage(self) -> bool:
        """Whether wide columns hold positions outside the output (read from other rows)."""
        return self.wide and self.padded[1:] != self.out[1:]


@functools.lru_cache(maxsize=256)
def _geom(sp: tuple, ksize: tuple, stride: tuple, padding: tuple, dilation: tuple,
          out: tuple | None = None) -> _Geom:
    """A shared, never modified :class:`_Geom` (building one costs ~30 us of Python)."""
    return _Geom(sp, ksize, stride, padding, dilation, out)


def _gemm(xp: Any, a: Any, b: Any, out: Any = None) -> Any:
    """``a @ b`` for ``(G, M, K) @ (G, K, N)`` (into ``out`` if given); a plain 2-D GEMM when
    G is 1.

    2-D products go through ``dot``, not ``matmul``: NumPy's matmul keeps the GIL when an
    operand is transposed (measured: two threads running the weight gradient's
    ``cols @ rows.T`` chunks took as long as one), ``dot`` releases it around the BLAS call,
    so the chunks that ``parallel_rows`` spreads over two cores really run at once.
    """
    if a.shape[0] == 1:
        if out is None:
            return xp.dot(a[0], b[0])[None]
        xp.dot(a[0], b[0], out=out[0])
        return out
    return xp.matmul(a, b, out=out)


# Batch chunks whose column matrix stays under this many bytes (CPU). A chunk's columns, GEMM
# output and col2im buffer then stay in cache, instead of being multi-MB arrays written to
# and read back from memory on each pass: the whole LeNet step measured 20-25% faster than
# with whole-batch columns (256 KB chunks: slower, Python overhead per chunk; 0.5-4 MB: about
# the same).
_CHUNK_BYTES = 2 ** 20


# Work arrays of the chunked CPU passes are reused from call to call (one set per thread): a
# fresh ~1 MB array is often a new mmap whose first touches page-fault, which measured ~0.5 ms
# per MB inside the LeNet step, more than the chunk's own arithmetic. Nothing built on a work
# array leaves the pass that took it.
_WORK_MAX_BYTES = 16 * 2 ** 20
_work_arrays = threading.local()


def _work(xp: Any, role: str, shape: tuple, dtype: Any, zero: bool = False) -> Any:
    """A scratch array for ``role`` (contents undefined unless ``zero``); fresh on the GPU
    (CuPy has its own pool) or when bigger than ``_WORK_MAX_BYTES``."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if xp is not np or nbytes > _WORK_MAX_BYTES:
        return (xp.zeros if zero else xp.empty)(shape, dtype=dtype)
    pool = getattr(_work_arrays, "pool", None)
    if pool is None:
        pool = _work_arrays.pool = {}
    buf = pool.get(role)
    if buf is None or buf.nbytes < nbytes:
        buf = pool[role] = np.empty(nbytes, dtype=np.uint8)
    a = buf[:nbytes].view(dtype).reshape(shape)
    if zero:
        a.fill(0)
    return a


def _chunk(xp: Any, n: int, per_sample: int) -> int:
    """Samples per chunk for ``per_sample`` bytes of columns each (GPU: the whole batch)."""
    if xp is not np:
        return n
    return max(1, min(n, _CHUNK_BYTES // max(per_sample, 1)))


class _Chunk:
    """The work arrays and pre-sliced views for passes over chunks of ``m`` samples.

    Built once per call and chunk size (the same arrays serve every chunk, so the views stay
    valid): per chunk only the copies, the GEMM and the adds run, not the Python that slices
    them (which cost about as much as the arithmetic at LeNet sizes). Each view is made on
    first use, so a pass only takes the arrays it needs.
    """

    def __init__(self, xp: Any, geo: _Geom, m: int, c: int, o: int, dtype: Any,
                 flat_fold: bool = False) -> None:
        self.xp, self.geo, self.m, self.c, self.o, self.dtype = xp, geo, m, c, o, dtype
        # flat_fold (wide layouts, input gradient): each sample's columns span its whole
        # padded plane plus the spare row, zeros past ``length``, and the column rows are
        # ordered (kernel offset, channel). Every kernel offset's block of columns is then
        # one contiguous run that col2im adds into the flat padded planes with ONE 1-D add
        # (no valid value crosses into the next plane): 3-4x faster adds than per-row ones,
        # for a GEMM 1.5x wider at LeNet's conv2.
        self.flat = flat_fold and geo.wide
        self.pitch = math.prod(geo.padded) + geo.row if self.flat else geo.length
        self.width = m * self.pitch  # columns per chunk
        self._cols = self._rows = self._fold = self._ones = self._flat_out = None

    def columns(self, x: Any) -> Any:
        """The ``(C*K, m*L)`` column matrix of the chunk ``x (m, C, *sp)``."""
        if self._cols is None:
            self._cols = self._column_views()
        interior, view, cols = self._cols
        interior[...] = x
        cols[...] = view
        return cols.reshape(-1, self.width)

    def _column_views(self) -> tuple:
        xp, geo, m, c = self.xp, self.geo, self.m, self.c
        nd, k = geo.nd, geo.ksize
        inner = (slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in
                                                    zip(geo.padding, geo.sp))
        if geo.wide:
            total = math.prod(geo.padded)
            # one spare row: the last window of the last channel reads past the padded plane
            buf = _work(xp, "pad", (m, c, total + geo.row), self.dtype, zero=True)
            interior = buf[:, :, :total].reshape((m, c) + geo.padded)[inner]
            st, item = buf.strides, buf.itemsize
            kst = tuple(geo.dilation[i] * math.prod(geo.padded[i + 1:]) * item
                        for i in range(nd))
            view = as_strided(xp, buf, (c,) + k + (m, geo.length),
                              (st[1],) + kst + (st[0], item))
        else:
            buf = _work(xp, "pad", (m, c) + geo.padded, self.dtype, zero=True)
            interior = buf[inner]
            st = buf.strides
            view = as_strided(xp, buf, (c,) + k + (m,) + geo.out,
                              (st[1],) + tuple(st[2 + i] * geo.dilation[i] for i in range(nd)) +
                              (st[0],) + tuple(st[2 + i] * geo.stride[i] for i in range(nd)))
        return interior, view, _work(xp, "cols", view.shape, self.dtype)

    def rows(self, g: Any) -> Any:
        """An output-shaped chunk ``g (m, O, *out)`` as ``(O, m*L)`` in the columns' order
        (zeros at the wide layout's garbage positions)."""
        if self._rows is None:
            geo, o, m = self.geo, self.o, self.m
            if self.flat:
                buf = _work(self.xp, "rows", (o, m, self.pitch), self.dtype, zero=True)
                dst = buf[:, :, :geo.length].reshape((o, m, geo.out[0]) + geo.padded[1:])
                dst = dst[(slice(None),) * 3 + tuple(slice(0, v) for v in geo.out[1:])]
            elif geo.garbage():
                buf = _work(self.xp, "rows", (o, m, geo.out[0]) + geo.padded[1:], self.dtype,
                            zero=True)
                dst = buf[(slice(None),) * 3 + tuple(slice(0, v) for v in geo.out[1:])]
            else:
                buf = dst = _work(self.xp, "rows", (o, m) + geo.out, self.dtype)
            self._rows = (dst, buf.reshape(o, self.width))
        dst, rows = self._rows
        dst[...] = g.swapaxes(0, 1)
        return rows

    def gemm_out(self, shape: tuple) -> Any:
        return _work(self.xp, "gemm", shape, self.dtype)

    def flat_product(self, wt: Any, rows: Any) -> Any:
        """``wt (K, O) @ rows`` for the flat layout (NumPy), as ``(K, m*pitch)``: one GEMM
        per sample over its first ``length`` columns only, written at the sample's offset.
        The columns past ``length`` (a third of the pitch at LeNet's conv2) hold zeros in
        the rows and so in the product; they are zeroed once per plan instead of computed.
        NumPy's batched matmul takes the strided views as they are (no copies, GIL released)
        and measured ~1.3x faster than the one wide product."""
        geo, m, o, length = self.geo, self.m, self.o, self.geo.length
        if self._flat_out is None:
            buf = _work(self.xp, "dcols", (wt.shape[0], m, self.pitch), self.dtype)
            buf[:, :, length:] = 0
            self._flat_out = (buf, buf[:, :, :length].transpose(1, 0, 2))
        buf, view = self._flat_out
        np.matmul(wt, rows.reshape(o, m, self.pitch)[:, :, :length].transpose(1, 0, 2),
                  out=view)
        return buf.reshape(-1, self.width)

    def ones(self) -> Any:
        """A vector of ``width`` ones (row sums of :meth:`rows` as one GEMV)."""
        if self._ones is None:
            self._ones = self.xp.ones(self.width, self.dtype)
        return self._ones

    def unrows(self, y: Any, dst: Any) -> None:
        """Inverse of :meth:`rows`: write ``y (O, m*L)`` into ``dst (m, O, *out)``."""
        geo, o, m = self.geo, self.o, self.m
        if geo.garbage():
            y = y.reshape((o, m, geo.out[0]) + geo.padded[1:])
            y = y[(slice(None),) * 3 + tuple(slice(0, v) for v in geo.out[1:])]
        else:
            y = y.reshape((o, m) + geo.out)
        dst[...] = y.swapaxes(0, 1)

    def fold(self, dcols: Any, dst: Any) -> None:
        """Adjoint of :meth:`columns`: sum ``dcols (C*K, m*L)`` (the same array on every
        chunk) into ``dst (m, C, *sp)``."""
        xp = self.xp
        if self._fold is None:
            self._fold = self._fold_views(dcols)
        buf, pairs, crop = self._fold
        buf.fill(0)
        for d, s in pairs:
            xp.add(d, s, out=d)
        dst[...] = crop.swapaxes(0, 1)

    def _fold_views(self, dcols: Any) -> tuple:
        geo, m, c, nd = self.geo, self.m, self.c, self.geo.nd
        if self.flat:
            total, size = math.prod(geo.padded), c * self.width
            dc = dcols.reshape(len(geo.shifts), size)
            buf = _work(self.xp, "fold", (size + max(geo.shifts),), self.dtype)
            pairs = [(buf[shift:shift + size], dc[j]) for j, shift in enumerate(geo.shifts)]
            grid = buf[:size].reshape(c, m, self.pitch)[:, :, :total]
            grid = grid.reshape((c, m) + geo.padded)
        elif geo.wide:
            total, length = math.prod(geo.padded), geo.length
            dc = dcols.reshape(c, len(geo.shifts), m, length)
            buf = _work(self.xp, "fold", (c, m, total + geo.row), self.dtype)
            pairs = [(buf[:, :, shift:shift + length], dc[:, j])
                     for j, shift in enumerate(geo.shifts)]
            grid = buf[:, :, :total].reshape((c, m) + geo.padded)
        else:
            k, s, d, out = geo.ksize, geo.stride, geo.dilation, geo.out
            dc = dcols.reshape((c,) + k + (m,) + out)
            # the buffer also holds the reach of the last window (the output_padding case)
            reach = tuple(max(geo.padded[i], d[i] * (k[i] - 1) + s[i] * (out[i] - 1) + 1)
                          for i in range(nd))
            buf = grid = _work(self.xp, "fold", (c, m) + reach, self.dtype)
            pairs = []
            for kidx in np.ndindex(*k):
                sl = tuple(slice(kidx[i] * d[i], kidx[i] * d[i] + s[i] * (out[i] - 1) + 1, s[i])
                           for i in range(nd))
                pairs.append((buf[(slice(None), slice(None)) + sl], dc[(slice(None),) + kidx]))
        crop = grid[(slice(None), slice(None)) + tuple(slice(p, p + v) for p, v in
                                                       zip(geo.padding, geo.sp))]
        return buf, pairs, crop


# Set while this thread runs a part of a pass beside another thread (chunks or tasks split
# by parallel_rows): its GEMMs then take one BLAS thread, as two Python threads each driving
# two BLAS threads would oversubscribe the cores (and OpenBLAS's workers busy-wait).
_beside = threading.local()


def _gemm_threads(xp: Any, macs: int) -> None:
    gemm_threads(xp, 0 if getattr(_beside, "on", False) else macs)


def _over_chunks(xp: Any, geo: _Geom, n: int, c: int, o: int, dtype: Any, body: Any,
                 flat_fold: bool = False, serial: bool = False) -> list:
    """Run ``acc = body(n0, m, plan, acc)`` over the batch chunks (first sample ``n0``, ``m``
    samples); returns each worker's final ``acc``.

    On the CPU the chunks are spread over the cores other processes leave free
    (``parallel_rows``: serial on a busy machine); GEMMs and copies release the GIL. Each
    thread makes its own plans, over its own work arrays: the full chunks share one, the
    remainder (always a worker's last chunk) gets its own. ``serial``: every chunk on this
    thread, a task running beside another (see ``_conv_backward_arrays``).
    """
    m = _chunk(xp, n, c * math.prod(geo.ksize) * geo.length * np.dtype(dtype).itemsize)
    starts = range(0, n, m)
    results = []

    def run(lo: int, hi: int) -> None:
        acc, plans = None, {}
        prev = getattr(_beside, "on", False)
        _beside.on = prev or serial or hi - lo < len(starts)
        try:
            for n0 in starts[lo:hi]:
                size = min(m, n - n0)
                plan = plans.get(size)
                if plan is None:
                    plan = plans[size] = _Chunk(xp, geo, size, c, o, dtype, flat_fold)
                acc = body(n0, size, plan, acc)
        finally:
            _beside.on = prev
        results.append(acc)

    if xp is np and len(starts) > 1 and not serial:
        parallel_rows(len(starts), run)
    else:
        run(0, len(starts))
    return results


def _finite(xp: Any, a: Any) -> bool:
    return bool(xp.isfinite(a).all())


def conv_forward(xp: Any, x: Any, w: Any, stride: tuple, padding: tuple, dilation: tuple,
                 groups: int, bias: Any = None) -> tuple:
    """Correlation of ``x (N, C, *sp)`` with ``w (O, C/groups, *k)``, plus ``bias (O,)`` when
    given; returns (y, cols), where ``cols`` is the whole batch's column matrix when it can be
    kept (GPU), else None."""
    if xp is np and cpu_conv_kernels.forward_fits(x, w, groups):  # direct kernel (float32 2-D)
        y = cpu_conv_kernels.conv2d_forward(x, w, bias, stride, padding, dilation)
        if y is not None:
            return y, None
    n, c = x.shape[:2]
    o = w.shape[0]
    geo = _geom(x.shape[2:], w.shape[2:], tuple(stride), tuple(padding), tuple(dilation))
    wm = w.reshape(groups, o // groups, -1)
    y = xp.empty((n, o) + geo.out, dtype=x.dtype)
    if bias is not None:
        bias = bias.reshape(o, 1)

    def body(n0: int, m: int, plan: _Chunk, acc: Any) -> Any:
        cols = plan.columns(x[n0:n0 + m])
        _gemm_threads(xp, w.size * plan.width)
        yc = _gemm(xp, wm, cols.reshape(groups, -1, plan.width),
                   plan.gemm_out((groups, o // groups, plan.width))).reshape(o, -1)
        if bias is not None:  # on the chunk while it is in cache: ~3x cheaper than a pass over y
            yc += bias
        plan.unrows(yc, y[n0:n0 + m])
        return cols

    (cols,) = _over_chunks(xp, geo, n, c, o, x.dtype, body)[-1:]
    # CPU columns live in a reused work array: only the GPU's can be kept for backward
    return y, (cols if xp is not np and cols.shape[1] == n * geo.length else None)


def conv_input_grad(xp: Any, g: Any, w: Any, sp: tuple, stride: tuple, padding: tuple,
                    dilation: tuple, groups: int, serial: bool = False) -> Any:
    """Gradient of the conv in its input (the transposed conv): ``g (N, O, *out)`` -> ``(N, C, *sp)``
    (``serial``: all chunks on this thread, which runs beside another task)."""
    if xp is np and cpu_conv_kernels.input_grad_fits(g, w, groups):
        return cpu_conv_kernels.conv2d_input_grad(g, w, tuple(sp), stride, padding, dilation,
                                                  serial)
    n, o = g.shape[:2]
    c = w.shape[1] * groups
    geo = _geom(tuple(sp), w.shape[2:], tuple(stride), tuple(padding), tuple(dilation),
                g.shape[2:])
    if geo.garbage() and not _finite(xp, w):
        geo = geo.narrow()  # W^T @ (zeros at garbage positions) must stay 0: not with inf weights
    flat = groups == 1 and geo.wide
    if flat:  # rows of W^T ordered (kernel offset, channel): see _Chunk
        wt = w.reshape(o, c, -1).transpose(2, 1, 0).reshape(1, -1, o)
    else:
        wt = w.reshape(groups, o // groups, -1).transpose(0, 2, 1)
    dx = xp.empty((n, c) + tuple(sp), dtype=g.dtype)

    def body(n0: int, m: int, plan: _Chunk, acc: Any) -> Any:
        rows = plan.rows(g[n0:n0 + m])
        if flat and xp is np:
            _gemm_threads(xp, w.size * geo.length)  # per-sample products: one BLAS thread
            dcols = plan.flat_product(wt[0], rows)
        else:
            _gemm_threads(xp, w.size * plan.width)
            dcols = _gemm(xp, wt, rows.reshape(groups, o // groups, -1),
                          plan.gemm_out((groups, wt.shape[1], plan.width)))
        plan.fold(dcols.reshape(-1, plan.width), dx[n0:n0 + m])

    _over_chunks(xp, geo, n, c, o, g.dtype, body, flat, serial)
    return dx


def conv_weight_grad(xp: Any, x: Any, g: Any, ksize: tuple, stride: tuple, padding: tuple,
                     dilation: tuple, groups: int, cols: Any = None,
                     with_bias: bool = False, serial: bool = False) -> Any:
    """Gradient of the conv in its weight: ``(O, C/groups, *k)``; with ``with_bias``, the
    pair ``(weight grad, bias grad (O,))``, the bias's summed from the same gradient rows
    (a GEMV per chunk, while they are in cache) instead of another pass over ``g``.

    ``cols`` are the forward's whole-batch columns (same geometry), reused when given.
    """
    if xp is np and cpu_conv_kernels.weight_grad_fits(x, g, ksize, groups):
        return cpu_conv_kernels.conv2d_weight_grad(x, g, tuple(ksize), stride, padding,
                                                   dilation, with_bias, serial)
    n, o = g.shape[:2]
    c = x.shape[1]
    geo = _geom(x.shape[2:], tuple(ksize), tuple(stride), tuple(padding), tuple(dilation))
    if geo.garbage() and not _finite(xp, x):
        geo = geo.narrow()  # garbage columns meet zero gradients: 0 * inf would be NaN, not inf
        cols = None
    if cols is not None and cols.shape != (c * math.prod(geo.ksize), n * geo.length):
        cols = None

    def body(n0: int, m: int, plan: _Chunk, acc: Any) -> Any:
        cc = cols if cols is not None else plan.columns(x[n0:n0 + m])
        rows = plan.rows(g[n0:n0 + m])
        _gemm_threads(xp, o * cc.shape[0] * plan.width // groups)
        # a worker's first part is its running sum. The transposed product cols @ rows^T
        # (C*K/groups, O/groups) measured 15% faster than rows @ cols^T at LeNet's conv2.
        out = None if acc is None else plan.gemm_out(acc[0].shape)
        part = _gemm(xp, cc.reshape(groups, -1, plan.width),
                     rows.reshape(groups, o // groups, -1).transpose(0, 2, 1), out)
        # zeros at the wide layout's garbage positions, so the row sums are exact
        db = xp.dot(rows, plan.ones()) if with_bias else None
        if acc is None:
            return part, db
        acc[0][...] += part
        if with_bias:
            acc[1][...] += db
        return acc

    if cols is not None:  # whole-batch columns (GPU): one pass
        parts = [body(0, n, _Chunk(xp, geo, n, c, o, g.dtype), None)]
    else:
        parts = _over_chunks(xp, geo, n, c, o, g.dtype, body, serial=serial)
    dw, db = parts[0]
    for part, pdb in parts[1:]:
        dw += part
        if with_bias:
            db += pdb
    dw = dw.transpose(0, 2, 1).reshape((o, c // groups) + tuple(ksize))  # a contiguous copy
    return (dw, db) if with_bias else dw


# ---------------------------------------------------------------------- meta
def _torch_type(t: Tensor) -> str:
    return {"float32": "float", "float64": "double", "float16": "c10::Half",
            "bfloat16": "c10::BFloat16"}.get(t._dtype.name, t._dtype.name)


# Signatures conv_meta has accepted -> their TensorMeta. The checks depend only on the key's
# parts (shapes, dtypes, the bias's presence and shape, the hyperparameters), so a training
# loop's repeated calls (~50 a ResNet-50 forward, ~40 us of Python each) skip them; bad input
# is never cached and always reaches the checks. Bounded: a program with changing shapes
# starts a new cache rather than growing one without end.
_META_OK: dict = {}
_META_MAX = 4096


def conv_meta(op: Any, input: Any, weight: Any, bias: Any, stride: Any, padding: Any,
              dilation: Any, transposed: bool, output_padding: Any, groups: int) -> TensorMeta:
    key = None
    if isinstance(input, Tensor) and isinstance(weight, Tensor) and type(stride) is tuple and \
            type(padding) is tuple and type(dilation) is tuple and \
            type(output_padding) is tuple and type(groups) is int:
        key = (input._data.shape, weight._data.shape, input._dtype, weight._dtype,
               None if bias is None else (type(bias), getattr(bias, "_dtype", None),
                                          getattr(getattr(bias, "_data", None), "shape", None)),
               stride, padding, dilation, bool(transposed), output_padding, groups)
        hit = _META_OK.get(key)
        if hit is not None:
            return hit
    res = _conv_meta(input, weight, bias, stride, padding, dilation, transposed,
                     output_padding, groups)
    if key is not None:
        if len(_META_OK) >= _META_MAX:
            _META_OK.clear()
        _META_OK[key] = res
    return res


def _conv_meta(input: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any,
               transposed: bool, output_padding: Any, groups: int) -> TensorMeta:
    # Every check builds its message only when it fails: formatting them all eagerly cost
    # ~35 us a call, more than some of the convolutions it guards.
    name = "conv_transpose" if transposed else "conv"
    for argname, t in (("input", input), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise make(TypeError, name, f"argument '{argname}' must be Tensor, not "
                                        f"{type(t).__name__}")
    xs, ws = input._data.shape, weight._data.shape
    nd = len(ws) - 2
    name = f"conv_transpose{nd}d" if transposed else f"conv{nd}d"
    if len(ws) < 3:
        raise make(RuntimeError, name, f"weight should have at least three dimensions, got "
                                       f"shape {tuple(ws)}")
    if len(xs) != len(ws):
        raise make(RuntimeError, name,
                   f"expected {len(ws)}-dim input (N, C, *spatial) for a {len(ws)}-dim weight "
                   f"{tuple(ws)}, got input of shape {tuple(xs)}",
                   hint=f"use conv{len(xs) - 2}d for {len(xs)}-dim input" if len(xs) >= 3
                   else None)
    if input._dtype is not weight._dtype:
        raise make(RuntimeError, name,
                   f"Input type ({_torch_type(input)}) and weight type ({_torch_type(weight)}) "
                   f"should be the same: input {tuple(xs)}, weight {tuple(ws)}",
                   hint="cast the input with .to(weight.dtype)")
    if input._dtype.category < 2 or input._dtype.is_complex:
        raise make(RuntimeError, name, f'"{name}" not implemented for '
                                       f'\'{input._dtype.name}\' input; use a floating dtype')
    stride = ntuple(stride, nd, "stride", name)
    padding = ntuple(padding, nd, "padding", name)
    dilation = ntuple(dilation, nd, "dilation", name)
    if not all(s > 0 for s in stride):
        raise make(RuntimeError, name, f"non-positive stride is not supported: {list(stride)}")
    if not all(p >= 0 for p in padding):
        raise make(RuntimeError, name, f"negative padding is not supported: {list(padding)}")
    if not all(d > 0 for d in dilation):
        raise make(RuntimeError, name, f"dilation should be greater than zero: "
                                       f"{list(dilation)}")
    if not (isinstance(groups, int) and groups > 0):
        raise make(RuntimeError, name, f"non-positive groups is not supported: {groups}")
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise make(TypeError, name, "bias must be a Tensor or None")
        if bias._dtype is not input._dtype:
            raise make(RuntimeError, name,
                       f"Input type ({_torch_type(input)}) and bias type ({_torch_type(bias)}) "
                       f"should be the same")
    ks = ws[2:]
    if not transposed:
        if ws[0] % groups != 0:
            raise make(RuntimeError, name,
                       f"Given groups={groups}, expected weight to be divisible by {groups} at "
                       f"dimension 0, but got weight of size {list(ws)} instead")
        if xs[1] != ws[1] * groups:
            raise make(RuntimeError, name,
                       f"Given groups={groups}, weight of size {list(ws)}, expected "
                       f"input{list(xs)} to have {ws[1] * groups} channels, but got {xs[1]} "
                       f"channels instead")
        if bias is not None and bias._data.shape != (ws[0],):
            raise make(RuntimeError, name,
                       f"Given weight of size {list(ws)}, expected bias to be 1-dimensional "
                       f"with {ws[0]} elements, but got bias of size "
                       f"{list(bias._data.shape)} instead")
        padded = tuple(xs[2 + i] + 2 * padding[i] for i in range(nd))
        eff = tuple(dilation[i] * (ks[i] - 1) + 1 for i in range(nd))
        if any(p < e for p, e in zip(padded, eff)):
            raise make(RuntimeError, name,
                       f"Calculated padded input size per channel: ({' x '.join(map(str, padded))})."
                       f" Kernel size: ({' x '.join(map(str, eff))}). Kernel size can't be greater "
                       f"than actual input size (input {tuple(xs)}, weight {tuple(ws)})")
        out = tuple(out_size(xs[2 + i], ks[i], stride[i], padding[i], dilation[i])
                    for i in range(nd))
        return TensorMeta((xs[0], ws[0]) + out)
    output_padding = ntuple(output_padding, nd, "output_padding", name)
    if xs[1] != ws[0]:
        raise make(RuntimeError, name,
                   f"Given transposed=1, weight of size {list(ws)}, expected input{list(xs)} to "
                   f"have {ws[0]} channels, but got {xs[1]} channels instead")
    if ws[0] % groups != 0:
        raise make(RuntimeError, name,
                   f"Given groups={groups}, expected weight to be divisible by {groups} at "
                   f"dimension 0, but got weight of size {list(ws)}")
    for i in range(nd):
        if not 0 <= output_padding[i] < max(stride[i], dilation[i]):
            raise make(RuntimeError, name,
                       f"output padding must be smaller than either stride or dilation, but got "
                       f"output_padding={list(output_padding)}, stride={list(stride)}, "
                       f"dilation={list(dilation)}")
    out = tuple((xs[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (ks[i] - 1) +
                output_padding[i] + 1 for i in range(nd))
    if not all(o > 0 for o in out):
        raise make(RuntimeError, name, f"Given input size per channel {list(xs[2:])}, "
                                       f"calculated output size {list(out)} is too small")
    if bias is not None and bias._data.shape != (ws[1] * groups,):
        raise make(RuntimeError, name,
                   f"Given transposed=1, weight of size {list(ws)}, expected bias to be "
                   f"1-dimensional with {ws[1] * groups} elements, but got bias of size "
                   f"{list(bias._data.shape)}")
    return TensorMeta((xs[0], ws[1] * groups) + out)


# ---------------------------------------------------------------------- the primitive
def _params(w: Any, stride: Any, padding: Any, dilation: Any, output_padding: Any) -> tuple:
    nd = w.ndim - 2
    return (ntuple(stride, nd), ntuple(padding, nd), ntuple(dilation, nd),
            ntuple(output_padding, nd))


@register("convolution", meta=conv_meta, method=False, onnx="Conv")
class Convolution(OpDef):
    """N-d convolution (cross-correlation) or transposed convolution of ``input`` by ``weight``.

    ``input`` is ``(N, C_in, *spatial)``; ``weight`` is ``(C_out, C_in/groups, *kernel)``, or
    ``(C_in, C_out/groups, *kernel)`` when ``transposed``.
    """

    def forward(ctx, xp, input, weight, bias, stride, padding, dilation, transposed,
                output_padding, groups):
        s, p, d, op = _params(weight, stride, padding, dilation, output_padding)
        x, w = work_dtype(xp, input), work_dtype(xp, weight)
        ctx.p = (s, p, d, op, groups, bool(transposed), bias is not None)
        cols = None
        if not transposed:
            b = work_dtype(xp, bias) if bias is not None else None
            y, cols = conv_forward(xp, x, w, s, p, d, groups, b)
        else:
            sp = tuple((x.shape[2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (w.shape[2 + i] - 1) +
                       op[i] + 1 for i in range(len(s)))
            y = conv_input_grad(xp, x, w, sp, s, p, d, groups)
            if bias is not None:
                y += work_dtype(xp, bias).reshape((1, -1) + (1,) * (y.ndim - 2))
        y = y.astype(input.dtype, copy=False)
        keep = cols is not None and cols.nbytes <= _KEEP_COLS_BYTES
        ctx.save(input, weight, cols if keep else None)
        return y

    def backward(ctx, grad):
        x, w, cols = ctx.saved
        s, p, d, op, groups, transposed, has_bias = ctx.p
        if not transposed and not _State.enabled and type(grad._data) is np.ndarray and \
                grad._dtype is x._dtype:
            return _conv_backward_arrays(ctx, grad, x, w)
        gx = gw = gb = None
        need = ctx.needs_input_grad
        if not transposed:
            if need[0]:
                sp = x.shape[2:]
                outp = tuple(sp[i] - ((grad.shape[2 + i] - 1) * s[i] - 2 * p[i] +
                                      d[i] * (w.shape[2 + i] - 1) + 1) for i in range(len(s)))
                gx = apply(OPS["convolution"], (grad, w, None, s, p, d, True, outp, groups))
            if need[1]:
                arr = cols._data if cols is not None else None
                gw = apply(OPS["_conv_weight_grad"], (x, grad, tuple(w.shape[2:]), s, p, d,
                                                      groups, arr))
        else:
            if need[0]:
                gx = apply(OPS["convolution"], (grad, w, None, s, p, d, False, 0, groups))
            if need[1]:
                gw = apply(OPS["_conv_weight_grad"], (grad, x, tuple(w.shape[2:]), s, p, d,
                                                      groups, None))
        if has_bias and need[2]:
            gb = grad.sum([0] + list(range(2, grad.ndim)))
        return gx, gw, gb, None, None, None, None, None, None


def _direct_backward(g: Any, x: Any, w: Any, groups: int) -> bool:
    """Whether both gradients of this conv come from the direct CPU kernels."""
    return g.ndim == 4 and x.dtype == np.float32 and w.dtype == np.float32 and \
        cpu_conv_kernels.input_grad_fits(g, w, groups) and \
        cpu_conv_kernels.weight_grad_fits(x, g, tuple(w.shape[2:]), groups)


def _conv_backward_arrays(ctx: Any, grad: Tensor, x: Tensor, w: Tensor) -> tuple:
    """A CPU conv's backward straight on arrays when no graph of the backward is wanted:
    the same passes as the two ops it otherwise dispatches (no meta rules, no nodes), and the
    bias gradient summed inside the weight-gradient pass instead of a pass of its own."""
    s, p, d, _, groups, _, has_bias = ctx.p
    need = ctx.needs_input_grad
    g, xa, wa = work_dtype(np, grad._data), x._data, w._data
    dt, dev = x._dtype, x._device
    gx = gw = gb = None
    want_bias = has_bias and need[2]
    res: list = [None, None]

    def grads(lo: int, hi: int) -> None:
        # task 0: input gradient, task 1: weight (and bias) gradient. Split over two cores
        # (parallel_rows), each runs its chunks alone: one thread handoff per backward, and
        # each thread keeps its own data in its cache (splitting every pass's chunks instead
        # measured barely faster than one core inside the LeNet step).
        serial = hi - lo == 1
        if lo == 0 and need[0]:
            res[0] = conv_input_grad(np, g, work_dtype(np, wa), tuple(xa.shape[2:]), s, p, d,
                                     groups, serial)
        if hi == 2 and need[1]:
            res[1] = conv_weight_grad(np, work_dtype(np, xa), g, tuple(wa.shape[2:]), s, p, d,
                                      groups, with_bias=want_bias, serial=serial)

    if need[0] and need[1] and _direct_backward(g, xa, wa, groups):
        # both gradients from the direct kernels, balanced over the free cores there
        res[0], dw, db = cpu_conv_kernels.conv2d_backward(
            g, work_dtype(np, xa), work_dtype(np, wa), s, p, d, want_bias)
        res[1] = (dw, db) if want_bias else dw
    elif need[0] and need[1]:
        parallel_rows(2, grads)
    else:
        grads(0, 2)
    if need[0]:
        gx = _make(res[0].astype(xa.dtype, copy=False), dt, dev)
    if need[1]:
        dw = res[1]
        if want_bias:
            dw, db = dw
            gb = _make(db.astype(xa.dtype, copy=False), dt, dev)
        gw = _make(dw.astype(xa.dtype, copy=False), dt, dev)
    elif want_bias:
        db = g.sum(axis=(0,) + tuple(range(2, g.ndim)))
        gb = _make(db.astype(xa.dtype, copy=False), dt, dev)
    return gx, gw, gb, None, None, None, None, None, None


@register("_conv_weight_grad", meta=None, method=False, function=False)
class ConvWeightGrad(OpDef):
    """Weight gradient of ``convolution(input, w)`` for output gradient ``grad``.

    ``cols`` (an array, optional) is the im2col matrix saved by the forward, reused to skip
    recomputing it.
    """

    def forward(ctx, xp, input, grad, ksize, stride, padding, dilation, groups, cols):
        x, g = work_dtype(xp, input), work_dtype(xp, grad)
        ctx.p = (stride, padding, dilation, groups)
        ctx.save(input, grad)
        dw = conv_weight_grad(xp, x, g, ksize, stride, padding, dilation, groups, cols)
        return dw.astype(input.dtype, copy=False)

    def backward(ctx, ggw):
        x, g = ctx.saved
        s, p, d, groups = ctx.p
        need = ctx.needs_input_grad
        gx = gg = None
        if need[0]:
            sp = x.shape[2:]
            outp = tuple(sp[i] - ((g.shape[2 + i] - 1) * s[i] - 2 * p[i] +
                                  d[i] * (ggw.shape[2 + i] - 1) + 1) for i in range(len(s)))
            gx = apply(OPS["convolution"], (g, ggw, None, s, p, d, True, outp, groups))
        if need[1]:
            gg = apply(OPS["convolution"], (x, ggw, None, s, p, d, False, 0, groups))
        return gx, gg, None, None, None, None, None, None


# ---------------------------------------------------------------------- im2col / col2im
def _im2col_meta(op: Any, input: Any, kernel_size: Any, dilation: Any, padding: Any,
                 stride: Any) -> TensorMeta:
    check(isinstance(input, Tensor), "unfold", f"argument 'input' must be Tensor, not "
                                               f"{type(input).__name__}", TypeError)
    xs = input._data.shape
    nd = len(xs) - 2
    check(len(xs) >= 3, "unfold", f"expected a batched (N, C, *spatial) input, got shape "
                                  f"{tuple(xs)}")
    k, d = ntuple(kernel_size, nd, "kernel_size", "unfold"), ntuple(dilation, nd, "dilation",
                                                                     "unfold")
    p, s = ntuple(padding, nd, "padding", "unfold"), ntuple(stride, nd, "stride", "unfold")
    check(all(v > 0 for v in k + d + s) and all(v >= 0 for v in p), "unfold",
          f"kernel_size, dilation and stride must be positive and padding non-negative, got "
          f"kernel_size={list(k)}, dilation={list(d)}, padding={list(p)}, stride={list(s)}")
    out = tuple(out_size(xs[2 + i], k[i], s[i], p[i], d[i]) for i in range(nd))
    check(all(o > 0 for o in out), "unfold",
          f"Given input with spatial size {list(xs[2:])}, kernel_size={list(k)}, "
          f"dilation={list(d)}, padding={list(p)}, calculated shape of the array of sliding "
          f"blocks as {list(out)}, but its components must be at least one.")
    return TensorMeta((xs[0], xs[1] * math.prod(k), math.prod(out)))


@register("im2col", meta=_im2col_meta, method=False, function=False)
class Im2Col(OpDef):
    """Sliding local blocks ``(N, C*K, L)`` of a batched ``(N, C, *spatial)`` input."""

    def forward(ctx, xp, input, kernel_size, dilation, padding, stride):
        nd = input.ndim - 2
        k, d = ntuple(kernel_size, nd), ntuple(dilation, nd)
        p, s = ntuple(padding, nd), ntuple(stride, nd)
        ctx.p = (input.shape[1:], k, d, p, s)
        cols, _ = im2col(xp, input, k, s, p, d)
        # the 1x1 fast path returns a view of the input; the op promises a new tensor
        return cols.copy() if xp.may_share_memory(cols, input) else cols

    def backward(ctx, grad):
        sp, k, d, p, s = ctx.p
        return apply(OPS["col2im"], (grad, tuple(sp[1:]), k, d, p, s)), None, None, None, None


def _col2im_meta(op: Any, input: Any, output_size: Any, kernel_size: Any, dilation: Any,
                 padding: Any, stride: Any) -> TensorMeta:
    check(isinstance(input, Tensor), "fold", f"argument 'input' must be Tensor, not "
                                             f"{type(input).__name__}", TypeError)
    xs = input._data.shape
    nd = len(output_size)
    check(len(xs) == 3, "fold", f"expected a batched (N, C*prod(kernel_size), L) input, got "
                                f"shape {tuple(xs)}")
    k, d = ntuple(kernel_size, nd, "kernel_size", "fold"), ntuple(dilation, nd, "dilation", "fold")
    p, s = ntuple(padding, nd, "padding", "fold"), ntuple(stride, nd, "stride", "fold")
    kk = math.prod(k)
    check(xs[1] % kk == 0, "fold",
          f"Expected size of input's dimension 1 to be divisible by the product of kernel_size, "
          f"but got input.size(1)={xs[1]} and kernel_size={list(k)}")
    out = tuple(out_size(output_size[i], k[i], s[i], p[i], d[i]) for i in range(nd))
    check(math.prod(out) == xs[2], "fold",
          f"Given output_size={list(output_size)}, kernel_size={list(k)}, dilation={list(d)}, "
          f"padding={list(p)}, stride={list(s)}, expected size of input's dimension 2 to match "
          f"the calculated number of sliding blocks {' * '.join(map(str, out))} = "
          f"{math.prod(out)}, but got input.size(2)={xs[2]}.")
    return TensorMeta((xs[0], xs[1] // kk) + tuple(output_size))


@register("col2im", meta=_col2im_meta, method=False, function=False)
class Col2Im(OpDef):
    """Sum sliding local blocks ``(N, C*K, L)`` back into ``(N, C, *output_size)``."""

    def forward(ctx, xp, input, output_size, kernel_size, dilation, padding, stride):
        nd = len(output_size)
        k, d = ntuple(kernel_size, nd), ntuple(dilation, nd)
        p, s = ntuple(padding, nd), ntuple(stride, nd)
        ctx.p = (k, d, p, s)
        c = input.shape[1] // math.prod(k)
        out = col2im(xp, input, c, tuple(output_size), k, s, p, d)
        return out.copy() if xp.may_share_memory(out, input) else out

    def backward(ctx, grad):
        k, d, p, s = ctx.p
        return apply(OPS["im2col"], (grad, k, d, p, s)), None, None, None, None, None


# ---------------------------------------------------------------------- torch.* aliases
def _lazy_functional(name: str) -> Any:
    """``ember.<name>`` calling ``ember.nn.functional.<name>`` (imported on first call: nn
    depends on the ops, not the other way round)."""
    def fn(*args: Any, **kwargs: Any) -> Any:
        from ember.nn import functional as F
        return getattr(F, name)(*args, **kwargs)
    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = "ember"
    fn.__doc__ = f"Same as ``ember.nn.functional.{name}``."
    return fn


def _top_level() -> None:
    from ember.ops.registry import PUBLIC_FUNCTIONS
    for name in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                 "conv_transpose3d", "conv_tbc"):
        PUBLIC_FUNCTIONS[name] = _lazy_functional(name)


_top_level()
