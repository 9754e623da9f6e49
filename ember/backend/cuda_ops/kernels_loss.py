"""Fused cross_entropy over ``(N, C)`` logits with class-index targets (NVRTC kernels).

Forward: one warp or block per row makes a single online pass over the logits (running max
and sum of ``exp``, plus the class-weighted logit sum when label smoothing is on) and writes
the row's log-sum-exp and loss in fp32; one single-block kernel then sums the losses and the
target weights in a fixed order (deterministic) and writes the reduced loss. Backward writes
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
from ember.backend.cuda_ops import _nvrtc as K
from ember.backend.cuda_ops._device_flag import NO_BAD, DeviceFlag

_SRC = r"""
template <typename T>
__global__ void ce_fwd(const T* __restrict__ x, const long long* __restrict__ tgt,
                       const float* __restrict__ w, int has_w, float* __restrict__ lse_out,
                       float* __restrict__ loss_out, float* __restrict__ wt_out,
                       unsigned long long* __restrict__ bad, long long rows, int C,
                       long long ignore, float eps, int vec) {
    __shared__ float shm[32], shs[32], sh[32];
    long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;
    const T* xr = x + row * C;
    float m = -INFINITY, s = 0.f, sx = 0.f, sw = 0.f;
    row_each(xr, C, vec, [&](int c, float v) {
        ms_add(m, s, v);
        if (eps > 0.f) {
            float wc = has_w ? w[c] : 1.f;
            sx += wc * v;
            sw += wc;
        }
    });
    row_ms(m, s, shm, shs);
    if (eps > 0.f) {
        sx = row_sum(sx, sh);
        sw = row_sum(sw, sh);
    }
    if (threadIdx.x != 0) return;
    float l = m + logf(s);
    long long t = tgt[row];
    bool valid = t != ignore;
    bool oob = valid && (t < 0 || t >= C);
    if (oob) {
        atomicCAS(bad, 0x8000000000000000ull, (unsigned long long)t);   // first one wins
        valid = false;
    }
    float wt = valid ? (has_w ? w[t] : 1.f) : 0.f;
    float loss = oob ? __int_as_float(0x7fc00000) : 0.f;   // NaN marks a bad target
    if (valid) {
        loss = -(1.f - eps) * wt * (ld(xr, t) - l);
        if (eps > 0.f) loss -= eps / C * (sx - l * sw);
    }
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
                          T* __restrict__ out, long long rows, int mode) {
    __shared__ float sh[32];
    float a = 0.f, b = 0.f;
    for (long long i = threadIdx.x; i < rows; i += blockDim.x) { a += loss[i]; b += wt[i]; }
    a = row_sum(a, sh);
    b = row_sum(b, sh);
    if (threadIdx.x == 0) {
        red[0] = a;
        red[1] = b;
        red[2] = bad[0] != 0x8000000000000000ull ? 1.f : 0.f;
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

_MODES = {"none": 0, "mean": 1, "sum": 2}


class _DeviceFloat:
    """A device scalar that becomes a Python float only when asked (then it syncs)."""

    __slots__ = ("arr",)

    def __init__(self, arr) -> None:
        self.arr = arr

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
        f = _FLAGS[d] = DeviceFlag(xp)
    return f


def _poll(xp, f: DeviceFlag, start: bool) -> None:
    """Raise for a finished copy that saw a bad target; with ``start``, copy the flag again
    when no copy is in flight (never while a graph is being captured)."""
    value = f.take()
    if value != NO_BAD:
        raise IndexError(f"Target {value} is out of bounds.")
    if start and f.event is None:
        stream = xp.cuda.get_current_stream()
        if not stream.is_capturing():
            f.start_copy(stream)


class _TargetParts:
    """``(safe targets, weights, valid)`` for the generic backward (``create_graph`` only),
    built when it iterates them: the fused path never needs them."""

    __slots__ = ("tgt", "wt", "ignore")

    def __init__(self, tgt, wt, ignore) -> None:
        self.tgt, self.wt, self.ignore = tgt, wt, ignore

    def __iter__(self):
        import cupy as xp  # noqa: PLC0415
        valid = self.tgt != self.ignore
        return iter((xp.where(valid, self.tgt, 0), self.wt, valid))


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
        # CuPy allocation costs host time; the GPU work is two small kernels)
        buf = xp.empty(3 * rows + 3, xp.float32)
        lse, loss, wt, red = buf[:rows], buf[rows:2 * rows], buf[2 * rows:3 * rows], buf[3 * rows:]
        flag = _flag(xp)
        _poll(xp, flag, False)   # an earlier call's bad target raises before this call runs
        bad = flag.dev
        grid, block = K.row_config(rows, n_classes)
        K.function("loss", "ce_fwd", ct)(
            grid, block, (input, tgt, w32 if w32 is not None else lse, K.i32(w32 is not None),
                          lse, loss, wt, bad, K.i64(rows), K.i32(n_classes),
                          K.i64(ignore_index), K.f32(eps), K.aligned(input)))
        mode = _MODES[reduction]
        out = xp.empty((), xp.float32 if fp32_out else input.dtype) if mode else None
        K.function("loss", "ce_reduce", "float" if fp32_out else ct)(
            (1, 1, 1), (1024, 1, 1),
            (loss, wt, bad, red, out if mode else loss, K.i64(rows), K.i32(mode)))
        _poll(xp, flag, True)
        if not mode:
            out = loss.copy() if fp32_out else loss.astype(input.dtype)
        if K.recording(ctx):
            # the generic backward's layout (ember/ops/nn_loss.py), for create_graph
            ctx.cd = 1
            ctx.reduction = reduction
            ctx.denom = _DeviceFloat(red[1])   # read only by the generic (create_graph) path
            ctx.eps = eps
            ctx.w = w32
            ctx.prob = False
            ctx.upcast = fp32_out   # the generic backward computes as after torch's cast
            ctx.xp = xp
            # the generic backward reads only the shape of ctx.p when it recomputes softmax
            ctx.p = _Shape(input.shape)
            ctx.target_parts = _TargetParts(tgt, wt, ignore_index)
            ctx.save(input, target)
            ctx.fused = (lse, tgt, w32, w32.sum() if w32 is not None and eps > 0 else None,
                         ignore_index)
        return out

    def backward(ctx, grad):
        import cupy as xp  # noqa: PLC0415 - only reached on the GPU
        input, target = ctx.saved
        gx = None
        if ctx.next_edges[0] is not None:
            x = input._data
            lse, tgt, w32, wsum, ignore_index = ctx.fused
            g = K.contiguous(xp, grad._data, xp.float32)
            rows, n_classes = x.shape
            _poll(xp, _flag(xp), False)
            denom = ctx.denom.arr if ctx.reduction == "mean" else None
            dx = xp.empty_like(x)
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
