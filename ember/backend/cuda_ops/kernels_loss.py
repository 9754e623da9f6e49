"""Fused cross_entropy over ``(N, C)`` logits with class-index targets (NVRTC kernels).

Forward: one warp or block per row makes a single online pass over the logits (running max
and sum of ``exp``, plus the class-weighted logit sum when label smoothing is on; without
smoothing each 16-byte vector rescales the sum once and two vectors are in flight per thread,
which took GPT-2's (16384, 50304) bf16 forward from 1.22 to 0.88 ms on an H100) and writes
the row's log-sum-exp and loss in fp32; one single-block kernel then sums the losses and the
target weights in a fixed order (deterministic) and writes the reduced loss. Small inputs
(up to 65,536 logits, 1,024 classes) run both steps in one single-block launch, since there
the host's cost of a launch exceeds the GPU's work (an MLP's (64, 10) logits). Backward writes
``dlogits = g * (softmax * sum(q) - q)`` row by row straight from the saved logits and
log-sum-exp (``q``: the target's weight times ``1 - label_smoothing`` on the target class,
plus ``label_smoothing / C * weight``). Logits are read in their own dtype, so bf16 logits of
a 50k vocabulary never get an fp32 copy; the only (N, C) array made is the gradient itself.

Under CUDA autocast cross_entropy is a float32 op: torch casts bf16/fp16 logits to a float32
copy first (GPT-2 B16: 3.3 GB written, kept for backward, and a float32 gradient cast back).
These kernels already compute in float32 from the logits' own dtype, so autocast hands them
the logits uncast (``fp32_from_low``); the loss is float32 and the gradient is written once in
the logits' dtype, the values torch's cast-then-compute gives (the bf16 -> fp32 cast is exact,
the gradient is rounded once either way).

Covered: 2-D contiguous float32/bfloat16/float16 logits, 1-D int64 targets, optional class
weights, ignore_index, reduction mean/sum/none, label smoothing. Probability targets, the
``(N, C, d1, ...)`` form and float64 fall back to the generic code (ember/ops/nn_loss.py),
whose ``ctx`` layout forward fills in for double backward.

Nothing is read back to the host (the step can be captured in a CUDA graph; the mean's
denominator stays on the device). An out-of-range target makes the loss NaN at once and
raises ``IndexError`` from the next cross_entropy call that finds the GPU done with it.
"""
from __future__ import annotations

import numpy as np

from ember._state import _State
from ember.backend.cuda import stream_capturing
from ember.backend.cuda_ops import _nvrtc as K
from ember.backend.cuda_ops._device_flag import NO_BAD, DeviceFlag

_ROW_SRC = r"""
// One row's log-sum-exp, loss and target weight, computed by the threads of threadIdx.x
// (a warp, or the whole block when blockDim.y == 1); every thread gets the results.
template <typename T>
__device__ __forceinline__ void ce_row(const T* __restrict__ x,
                                       const long long* __restrict__ tgt,
                                       const float* __restrict__ w, int has_w,
                                       unsigned long long* __restrict__ bad, long long row,
                                       int C, long long ignore, float eps, int vec,
                                       float* shm, float* shs, float* sh,
                                       float& l, float& loss, float& wt) {
    const T* xr = x + row * C;
    float m = -INFINITY, s = 0.f, sx = 0.f, sw = 0.f;
    if (eps > 0.f) {
        row_each(xr, C, vec, [&](int c, float v) {
            ms_add(m, s, v);
            float wc = has_w ? w[c] : 1.f;
            sx += wc * v;
            sw += wc;
        });
    } else {
        row_ms_scan(xr, C, vec, m, s);
    }
    row_ms(m, s, shm, shs);
    if (eps > 0.f) {
        sx = row_sum(sx, sh);
        sw = row_sum(sw, sh);
    }
    // a +inf logit makes the row NaN, as torch's log_softmax does (its inf - inf); the
    // online sum alone would give an infinite log-sum-exp and an infinite loss
    l = m == INFINITY ? __int_as_float(0x7fc00000) : m + logf(s);
    long long t = tgt[row];
    bool valid = t != ignore;
    bool oob = valid && (t < 0 || t >= C);
    if (oob) {
        if (threadIdx.x == 0)
            atomicCAS(bad, 0x8000000000000000ull, (unsigned long long)t);   // first one wins
        valid = false;
    }
    wt = valid ? (has_w ? w[t] : 1.f) : 0.f;
    loss = oob ? __int_as_float(0x7fc00000) : 0.f;   // NaN marks a bad target
    if (valid) {
        loss = -(1.f - eps) * wt * (ld(xr, t) - l);
        if (eps > 0.f) loss -= eps / C * (sx - l * sw);
    }
}

"""

_SRC = _ROW_SRC + r"""
template <typename T>
__global__ void ce_fwd(const T* __restrict__ x, const long long* __restrict__ tgt,
                       const float* __restrict__ w, int has_w, float* __restrict__ lse_out,
                       float* __restrict__ loss_out, float* __restrict__ wt_out,
                       unsigned long long* __restrict__ bad, long long rows, int C,
                       long long ignore, float eps, int vec) {
    __shared__ float shm[32], shs[32], sh[32];
    long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;
    float l, loss, wt;
    ce_row(x, tgt, w, has_w, bad, row, C, ignore, eps, vec, shm, shs, sh, l, loss, wt);
    if (threadIdx.x != 0) return;
    lse_out[row] = l;
    loss_out[row] = loss;
    wt_out[row] = wt;
}

// One block: red = (sum loss, sum weight, any bad target); out = mean (mode 1) or sum (2).
// T here is the loss's dtype: the logits' own, or float32 for low-precision logits under
// autocast (the instantiation for float32 logits serves then).
template <typename T>
__global__ void ce_reduce(const float* __restrict__ loss, const float* __restrict__ wt,
                          const unsigned long long* __restrict__ bad, float* __restrict__ red,
                          T* __restrict__ out, long long rows, int mode,
                          unsigned long long* mirror) {
    __shared__ float sh[32];
    float a = 0.f, b = 0.f;
    for (long long i = threadIdx.x; i < rows; i += blockDim.x) { a += loss[i]; b += wt[i]; }
    a = row_sum(a, sh);
    b = row_sum(b, sh);
    if (threadIdx.x == 0) {
        red[0] = a;
        red[1] = b;
        unsigned long long v = bad[0];
        red[2] = v != 0x8000000000000000ull ? 1.f : 0.f;
        if (mirror && v != 0x8000000000000000ull) *mirror = v;   // host-mapped word
        if (mode == 1) st(out, 0, a / b);
        else if (mode == 2) st(out, 0, a);
    }
}

template <typename T>
__global__ void ce_bwd(const T* __restrict__ x, const long long* __restrict__ tgt,
                       const float* __restrict__ w, int has_w, const float* __restrict__ wsum,
                       const float* __restrict__ lse, const float* __restrict__ gout,
                       int g_per_row, const float* __restrict__ denom, T* __restrict__ dx,
                       long long rows, int C, long long ignore, float eps, int vec) {
    long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;
    const T* xr = x + row * C;
    T* dr = dx + row * C;
    long long t = tgt[row];
    if (t == ignore) {
        row_map(xr, dr, C, vec, [&](int, float) { return 0.f; });
        return;
    }
    // mean: divide by the summed target weights, read on the device (no host sync)
    float g = ld(gout, g_per_row ? row : 0);
    if (denom) g *= 1.f / denom[0];
    float wt = has_w ? w[t] : 1.f;
    float smooth = eps / C;
    float sumq = (1.f - eps) * wt + smooth * (has_w ? wsum[0] : (float)C);
    float l = lse[row];
    row_map(xr, dr, C, vec, [&](int c, float v) {
        float q = (c == t ? (1.f - eps) * wt : 0.f);
        if (eps > 0.f) q += smooth * (has_w ? w[c] : 1.f);
        return g * (expf(v - l) * sumq - q);
    });
}
"""

K.define("loss", _SRC, ("ce_fwd", "ce_reduce", "ce_bwd"))

_SMALL_SRC = _ROW_SRC + r"""
// Small inputs (a few thousand rows of up to 1024 classes): the whole forward in one block
// of 32 warps, a warp per row (rows strided over the warps), then the reduction that
// ce_reduce does, in a fixed order: one launch instead of two. T2 is the loss's dtype.
template <typename T, typename T2>
__global__ void ce_fwd_small(const T* __restrict__ x, const long long* __restrict__ tgt,
                             const float* __restrict__ w, int has_w,
                             float* __restrict__ buf, unsigned long long* __restrict__ bad,
                             T2* __restrict__ out, long long rows, int C, long long ignore,
                             float eps, int vec, int mode, unsigned long long* mirror) {
    __shared__ float sa[32], sb[32];
    float a = 0.f, b = 0.f;
    float* lse_out = buf;
    float* loss_out = buf + rows;
    float* wt_out = buf + 2 * rows;
    for (long long row = threadIdx.y; row < rows; row += blockDim.y) {
        float l, loss, wt;
        // a warp per row: the row reductions use shuffles only (no shared memory)
        ce_row(x, tgt, w, has_w, bad, row, C, ignore, eps, vec, nullptr, nullptr, nullptr,
               l, loss, wt);
        if (threadIdx.x == 0) {
            lse_out[row] = l;
            loss_out[row] = loss;
            wt_out[row] = wt;
            a += loss;
            b += wt;
        }
    }
    if (threadIdx.x == 0) { sa[threadIdx.y] = a; sb[threadIdx.y] = b; }
    __syncthreads();
    if (threadIdx.y != 0) return;
    a = threadIdx.x < blockDim.y ? sa[threadIdx.x] : 0.f;
    b = threadIdx.x < blockDim.y ? sb[threadIdx.x] : 0.f;
    a = warp_sum(a);
    b = warp_sum(b);
    if (threadIdx.x == 0) {
        float* red = buf + 3 * rows;
        red[0] = a;
        red[1] = b;
        // the warps' atomics on bad are visible after __syncthreads
        unsigned long long v = bad[0];
        red[2] = v != 0x8000000000000000ull ? 1.f : 0.f;
        if (mirror && v != 0x8000000000000000ull) *mirror = v;   // host-mapped word
        if (mode == 1) st(out, 0, a / b);
        else st(out, 0, a);
    }
}
"""

K.define("loss_small", _SMALL_SRC, ("ce_fwd_small",))

_MODES = {"none": 0, "mean": 1, "sum": 2}
# rows x classes up to which the forward runs in one block (ce_fwd_small: one launch, a few
# microseconds on one SM) rather than a grid of rows and a reduction kernel
_SMALL = 1 << 16
_P = np.uint64   # a device address passed to a kernel as a raw pointer
_NULLP = np.uint64(0)


class _DeviceFloat:
    """A device scalar that becomes a Python float only when asked (then it syncs)."""

    __slots__ = ("buf", "i")

    def __init__(self, buf, i: int) -> None:
        self.buf, self.i = buf, i   # element i of buf (its view is made only when read)

    @property
    def arr(self):
        return self.buf[self.i]

    def __float__(self) -> float:
        return float(self.arr)

    def __rtruediv__(self, other):
        return other / float(self)


# Out-of-range targets: the forward does not wait for the GPU (no host sync, so it can be
# captured in a CUDA graph). The kernel makes the loss NaN and records the bad target value
# in the device's flag (_device_flag.py); the IndexError is raised by the next cross_entropy
# forward or backward that finds the flag's copy finished.
_FLAGS: dict = {}   # device -> DeviceFlag


def _flag(xp) -> DeviceFlag:
    d = xp.cuda.runtime.getDevice()
    f = _FLAGS.get(d)
    if f is None:
        f = _FLAGS[d] = DeviceFlag(xp, mirror=True)
    return f


def _poll(xp, f: DeviceFlag, start: bool) -> None:
    """Raise for a bad target the kernels stored in the host-mapped word (no CUDA call), or
    without one, for a finished copy that saw one; with ``start``, copy the flag again when
    no copy is in flight (never while a graph is being captured)."""
    if f.mirror is not None:
        if start:   # after this call's launch: its own bad target raises at a later call
            return
        value = f.take_mirror(xp)
        if value != NO_BAD:
            raise IndexError(f"Target {value} is out of bounds.")
        return
    value = f.take()
    if value != NO_BAD:
        raise IndexError(f"Target {value} is out of bounds.")
    if start and f.event is None:
        if not stream_capturing():
            f.start_copy(xp.cuda.get_current_stream())


class _TargetParts:
    """``(safe targets, weights, valid)`` for the generic backward (``create_graph`` only),
    built when it iterates them: the fused path never needs them."""

    __slots__ = ("tgt", "buf", "ignore")

    def __init__(self, tgt, buf, ignore) -> None:
        self.tgt, self.buf, self.ignore = tgt, buf, ignore

    def __iter__(self):
        import cupy as xp  # noqa: PLC0415
        valid = self.tgt != self.ignore
        rows = self.tgt.size
        return iter((xp.where(valid, self.tgt, 0), self.buf[2 * rows:3 * rows], valid))


class _Shape:
    """What the generic backward reads of ``ctx.p`` (the shape) when it recomputes softmax."""

    __slots__ = ("shape", "ndim")

    def __init__(self, shape) -> None:
        self.shape, self.ndim = shape, len(shape)


def _fused(input, target, reduction) -> bool:
    """Whether the kernels take this call (else the generic code runs)."""
    return K.ctype(input) is not None and input.ndim == 2 and target.ndim == 1 and \
        target.dtype == np.int64 and input.flags.c_contiguous and input.size != 0 and \
        reduction in _MODES and input.shape[1] < 2 ** 31


def _autocast_cuda() -> bool:
    ac = _State.autocast
    return ac is not None and "cuda" in ac


class CrossEntropyImpl:
    """``cross_entropy(input (N, C), target (N,) int64, ...)`` in two kernels each way."""

    # the backward reads its incoming gradient (by pointer) and never writes or returns it:
    # the engine may hand a scalar loss's seed gradient as a shared cached 1
    reads_grad_only = True

    @staticmethod
    def fp32_from_low(args: tuple) -> bool:
        """Autocast's question for this float32-listed op: do the kernels take these
        low-precision logits as they are (computing in float32, returning a float32 loss)?"""
        x, t = getattr(args[0], "_data", None), getattr(args[1], "_data", None)
        return x is not None and t is not None and K.ctype(x) in K.HALF_CTYPES and \
            _fused(x, t, args[4] if len(args) > 4 else "mean")

    def forward(ctx, xp, input, target, weight, ignore_index, reduction, label_smoothing):
        if not _fused(input, target, reduction):
            return NotImplemented
        ct = K.ctype(input)
        # low-precision logits here under CUDA autocast: autocast passed them uncast
        # (fp32_from_low), so the loss is float32 as after torch's cast
        fp32_out = ct in K.HALF_CTYPES and _autocast_cuda()
        rows, n_classes = input.shape
        tgt = K.contiguous(xp, target)
        eps = float(label_smoothing)
        w32 = weight.astype(xp.float32) if weight is not None else None
        if w32 is not None:
            w32 = K.contiguous(xp, w32)
        # lse, per-row loss, per-row weight and the 3 reduced values: one allocation (each
        # CuPy allocation costs host time; the GPU work is one or two small kernels). The
        # kernels get its pointer and offsets: views of it are made only where read.
        buf = xp.ndarray((3 * rows + 3,), xp.float32)
        flag = _flag(xp)
        _poll(xp, flag, False)   # an earlier call's bad target raises before this call runs
        bad = flag.dev
        mirror = flag.mirror if flag.mirror is not None else _NULLP
        mode = _MODES[reduction]
        w_arg = w32 if w32 is not None else buf
        if mode and rows * n_classes <= _SMALL and n_classes <= 1024:
            out = xp.ndarray((), xp.float32 if fp32_out else input.dtype)
            K.function("loss_small", "ce_fwd_small", f"{ct}, {'float' if fp32_out else ct}")(
                (1, 1, 1), (32, 32, 1),
                (input, tgt, w_arg, K.i32(w32 is not None), buf, bad, out, K.i64(rows),
                 K.i32(n_classes), K.i64(ignore_index), K.f32(eps), K.aligned(input),
                 K.i32(mode), mirror))
        else:
            base = buf.data.ptr
            lse, loss, wt, red = base, base + 4 * rows, base + 8 * rows, base + 12 * rows
            grid, block = K.row_config(rows, n_classes)
            K.function("loss", "ce_fwd", ct)(
                grid, block, (input, tgt, w_arg, K.i32(w32 is not None), _P(lse), _P(loss),
                              _P(wt), bad, K.i64(rows), K.i32(n_classes),
                              K.i64(ignore_index), K.f32(eps), K.aligned(input)))
            out = xp.ndarray((), xp.float32 if fp32_out else input.dtype) if mode else None
            K.function("loss", "ce_reduce", "float" if fp32_out else ct)(
                (1, 1, 1), (1024, 1, 1),
                (_P(loss), _P(wt), bad, _P(red), out if mode else _P(loss), K.i64(rows),
                 K.i32(mode), mirror))
        _poll(xp, flag, True)
        if not mode:
            loss = buf[rows:2 * rows]
            out = loss.copy() if fp32_out else loss.astype(input.dtype)
        if K.recording(ctx):
            # the generic backward's layout (ember/ops/nn_loss.py), for create_graph
            ctx.cd = 1
            ctx.reduction = reduction
            ctx.denom = _DeviceFloat(buf, 3 * rows + 1)   # read only by the generic path
            ctx.eps = eps
            ctx.w = w32
            ctx.prob = False
            ctx.upcast = fp32_out   # the generic backward computes as after torch's cast
            ctx.xp = xp
            # the generic backward reads only the shape of ctx.p when it recomputes softmax
            ctx.p = _Shape(input.shape)
            ctx.target_parts = _TargetParts(tgt, buf, ignore_index)
            ctx.save(input, target)
            ctx.fused = (buf, tgt, w32, w32.sum() if w32 is not None and eps > 0 else None,
                         ignore_index)
        return out

    def backward(ctx, grad):
        import cupy as xp  # noqa: PLC0415 - only reached on the GPU
        input, target = ctx.saved
        gx = None
        if ctx.next_edges[0] is not None:
            x = input._data
            buf, tgt, w32, wsum, ignore_index = ctx.fused
            g = K.contiguous(xp, grad._data, xp.float32)
            rows, n_classes = x.shape
            _poll(xp, _flag(xp), False)
            lse = _P(buf.data.ptr)   # the row log-sum-exps lead the forward's buffer
            # mean: the summed target weights, element 3 rows + 1 of that buffer
            denom = _P(buf.data.ptr + 4 * (3 * rows + 1)) if ctx.reduction == "mean" \
                else None
            dx = xp.ndarray(x.shape, x.dtype)   # x is C-contiguous (_fused)
            grid, block = K.row_config(rows, n_classes)
            K.function("loss", "ce_bwd", K.ctype(x))(
                grid, block, (x, tgt, w32 if w32 is not None else lse, K.i32(w32 is not None),
                              wsum if wsum is not None else lse, lse, g,
                              K.i32(ctx.reduction == "none"),
                              denom if denom is not None else np.uint64(0), dx, K.i64(rows),
                              K.i32(n_classes), K.i64(ignore_index), K.f32(ctx.eps),
                              K.aligned(x, dx)))
            gx = K.wrap(dx, input.device)
        return gx, None, None, None, None, None


IMPLS = {"cross_entropy": CrossEntropyImpl}
