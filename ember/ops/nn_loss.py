"""``cross_entropy``: a fused primitive (log_softmax + negative log likelihood in one pass).

The decomposition ``nll_loss(log_softmax(x), target)`` (and its probability-target and
label-smoothing forms) is in ``ember/nn/functional/loss.py`` as ``_cross_entropy_reference``;
the opdb record (tests/opdb/nn_loss.py) checks the primitive against it in NumPy float64 and
against torch.

Both target kinds reduce to one formula. With per-element class weights ``q`` (a one-hot of
the target scaled by the class weight and ``1 - label_smoothing``, plus the smoothing mass
``label_smoothing / C * weight``; or the probability target times the weight), the loss of
element ``i`` is ``-sum_c q_ic log p_ic``, and its gradient with respect to the logits is
``p_i * sum_c q_ic - q_i``. ``q`` depends only on the target, so forward builds it once.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ember import dtypes as _dt
from ember.backend import cpu_kernels
from ember.backend.cpu import parallel_rows
from ember.errors import make
from ember.ops.registry import OpDef, OpNode, TensorMeta, register
from ember.tensor import Tensor, _make

_REDUCTIONS = ("none", "mean", "sum")


def _class_dim(ndim: int) -> int:
    return 1 if ndim >= 2 else 0


def cross_entropy_meta(op: Any, input: Any, target: Any, weight: Any = None,
                       ignore_index: int = -100, reduction: str = "mean",
                       label_smoothing: float = 0.0) -> TensorMeta:
    """Validate shapes/dtypes the way torch does and give the output shape."""
    name = "cross_entropy"
    # the classifier case, (N, C) float logits with (N,) int64 targets, checked in a few
    # attribute reads (the full rule below cost ~5 us of a ~10 us small loss)
    if type(input) is Tensor and type(target) is Tensor and weight is None and \
            target._dtype is _dt.int64 and input._dtype.is_floating_point and \
            reduction in _REDUCTIONS and 0.0 <= label_smoothing <= 1.0:
        ishape = input._data.shape
        if len(ishape) == 2 and target._data.shape == ishape[:1]:
            return TensorMeta(() if reduction != "none" else ishape[:1], input._dtype)
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        bad = "input" if not isinstance(input, Tensor) else "target"
        raise make(TypeError, name, f"argument '{bad}' must be Tensor")
    if reduction not in _REDUCTIONS:
        raise make(ValueError, name, f"{reduction} is not a valid value for reduction")
    ishape = tuple(input.shape)
    tshape = tuple(target.shape)
    if input.dim() == 0:
        raise make(RuntimeError, name, "input must have at least 1 dimension (C) or (N, C, ...), "
                                       "got a 0-dim tensor")
    if not input.dtype.is_floating_point:
        raise make(RuntimeError, name, f"expected a floating point input, got {input.dtype}")
    cd = _class_dim(input.dim())
    n_classes = ishape[cd]
    if weight is not None and (weight.dim() != 1 or weight.shape[0] != n_classes):
        raise make(RuntimeError, name, f"weight tensor should be defined either for all "
                                       f"{n_classes} classes or no classes but got weight tensor "
                                       f"of shape: {list(weight.shape)}")
    if ishape == tshape:
        if not target.dtype.is_floating_point:
            raise make(RuntimeError, name, f"Expected floating point type for target with class "
                                           f"probabilities, got {_torch_short(target.dtype)}")
        if ignore_index != -100:
            pass  # torch ignores ignore_index for probability targets
        _check_smoothing(label_smoothing)
        out = () if reduction != "none" else ishape[:cd] + ishape[cd + 1:]
        return TensorMeta(out, input.dtype)
    if target.dtype.is_floating_point or target.dtype is _dt.bool:
        if input.dim() >= 2 and tshape and tshape[0] != ishape[0]:
            raise make(ValueError, name, f"Expected input batch_size ({ishape[0]}) to match "
                                         f"target batch_size ({tshape[0]}).")
        raise make(RuntimeError, name,
                   f"expected target dtype to be Long or Byte, but got "
                   f"{_torch_short(target.dtype)} (input {ishape}, target {tshape})",
                   hint="class-index targets are int64; probability targets must have the "
                        "input's shape")
    expected = ishape[:cd] + ishape[cd + 1:]
    if input.dim() >= 2 and (not tshape or tshape[0] != ishape[0]):
        raise make(ValueError, name, f"Expected input batch_size ({ishape[0]}) to match target "
                                     f"batch_size ({tshape[0] if tshape else 0}).")
    if tshape != expected:
        if input.dim() <= 2:
            raise make(RuntimeError, name, f"0D or 1D target tensor expected, multi-target not "
                                           f"supported (input {ishape}, target {tshape})")
        raise make(RuntimeError, name, f"size mismatch (got input: {list(ishape)} , target: "
                                       f"{list(tshape)})")
    _check_smoothing(label_smoothing)
    out = () if reduction != "none" else expected
    return TensorMeta(out, input.dtype)


def _check_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing <= 1.0:
        raise make(RuntimeError, "cross_entropy", f"label_smoothing must be between 0.0 and 1.0. "
                                                  f"Got: {label_smoothing}")


def _torch_short(d: Any) -> str:
    from ember.ops.registry import _torch_name
    return _torch_name(d)


def _move_class_last(xp: Any, a: Any, cd: int) -> Any:
    return xp.moveaxis(a, cd, -1) if cd != a.ndim - 1 else a


@register("cross_entropy", meta=cross_entropy_meta, method=False, function=False,
          sig="input, target, weight=None, ignore_index=-100, reduction='mean', "
              "label_smoothing=0.0", onnx="SoftmaxCrossEntropyLoss")
class CrossEntropy(OpDef):
    """Fused ``nll_loss(log_softmax(input, 1), target)`` with class weights, ignore_index,
    label smoothing and probability targets."""

    def forward(ctx, xp, input, target, weight, ignore_index, reduction, label_smoothing):
        if target.shape != input.shape and input.ndim <= 2:
            return _forward_rows(ctx, xp, input, target, weight, ignore_index, reduction,
                                 label_smoothing)
        cd = _class_dim(input.ndim)
        work = input.astype(xp.float32) if input.dtype.itemsize < 4 else input
        n_classes = work.shape[cd]
        # log_softmax along the class dim, after subtracting the max
        m = xp.max(work, axis=cd, keepdims=True) if work.size else work
        shifted = work - xp.where(xp.isfinite(m), m, 0) if work.size else work
        e = xp.exp(shifted)
        s = xp.sum(e, axis=cd, keepdims=True)
        log_s = xp.log(s)
        w = w_b = None
        if weight is not None:
            w = weight.astype(work.dtype, copy=False)
            wshape = [1] * work.ndim
            wshape[cd] = n_classes
            w_b = w.reshape(wshape)
        eps = float(label_smoothing)
        ctx.prob = target.shape == input.shape
        if ctx.prob:                      # class probabilities: needs the full q
            t = target.astype(work.dtype, copy=False)
            if eps > 0:
                t = t * (1 - eps) + eps / n_classes
            q = t * w_b if w is not None else t
            loss_el = -(q * (shifted - log_s)).sum(axis=cd)
            denom = float(work.size // max(n_classes, 1)) if work.size else 0.0
            ctx.q = q
        else:                             # class indices: gather, no (N, C) temporaries
            tgt = target.astype(xp.int64, copy=False)
            valid = tgt != ignore_index
            bad = valid & ((tgt < 0) | (tgt >= n_classes))
            if bool(xp.any(bad)):
                first = int(tgt[bad].reshape(-1)[0])
                raise IndexError(f"Target {first} is out of bounds.")
            safe = xp.where(valid, tgt, 0)
            picked = xp.take_along_axis(shifted, xp.expand_dims(safe, cd), axis=cd)
            logp_t = (picked - log_s).squeeze(cd) if work.ndim else picked - log_s
            w_t = (w[safe] if w is not None else xp.ones(safe.shape, work.dtype)) * valid
            loss_el = -(w_t * logp_t) * (1 - eps)
            if eps > 0:
                wl = (shifted - log_s) * w_b if w is not None else shifted - log_s
                loss_el = loss_el - (eps / n_classes) * wl.sum(axis=cd) * valid
            denom = float(w_t.sum())
            ctx.target_parts = (safe, w_t.astype(work.dtype, copy=False), valid)
        if reduction == "none":
            out = loss_el
        elif reduction == "sum":
            out = loss_el.sum()
        else:
            with _errstate(xp):
                out = loss_el.sum() / work.dtype.type(denom)
        if isinstance(ctx, OpNode):       # a graph is recorded: keep what backward needs
            ctx.cd = cd
            ctx.reduction = reduction
            ctx.denom = denom
            ctx.eps = eps
            ctx.w = w
            ctx.p = (e / s).astype(input.dtype, copy=False)
            ctx.xp = xp
            ctx.rows = False
            ctx.save(input, target)
        return xp.asarray(out).astype(input.dtype, copy=False)

    def backward(ctx, grad):
        import ember
        if getattr(ctx, "rows", False) and not ember.is_grad_enabled():
            return _backward_rows(ctx, grad), None, None, None, None, None
        input, target = ctx.saved
        # bf16/fp16 logits that CUDA autocast passed uncast to the fused kernels
        # (kernels_loss.fp32_from_low): differentiate as torch's cast-then-compute does
        low = input.dtype if getattr(ctx, "upcast", False) else None
        if low is not None:
            input = input.float()
        cd = ctx.cd
        dev = input.device
        if ctx.reduction == "none":
            g = grad.unsqueeze(cd)
        elif ctx.reduction == "sum":
            g = grad
        else:
            g = grad / ctx.denom
        gx = gt = None
        if ctx.next_edges[0] is not None:
            q = _wrap(_index_q(ctx) if not ctx.prob else ctx.q, dev).to(input.dtype)
            # Recompute softmax in ember ops only when the backward itself is recorded
            # (double backward); otherwise reuse the forward's probabilities.
            if ember.is_grad_enabled():
                p = input.softmax(cd)
            else:
                p = _wrap(ctx.p, dev)
            gx = (p * q.sum(cd, keepdim=True) - q) * g
            if ctx.reduction == "mean" and not ctx.prob and not ctx.denom:
                # total weight 0: torch leaves ignored positions at exactly 0 (no 0 * inf),
                # while counted targets of weight 0 give NaN
                valid = _wrap(ctx.target_parts[2], dev)
                gx = ember.where(valid.unsqueeze(cd) if input.dim() > 1 else valid, gx,
                                 ember.zeros((), dtype=gx.dtype, device=dev))
        if ctx.prob and ctx.next_edges[1] is not None:
            logp = input.log_softmax(cd)
            if ctx.w is not None:
                shape = [1] * input.dim()
                shape[cd] = -1
                logp = logp * _wrap(ctx.w, dev).to(input.dtype).reshape(shape)
            gt = -logp * (1 - ctx.eps) * g
        if low is not None and gx is not None:
            gx = gx.to(low)
        return gx, gt, None, None, None, None



# ---------------------------------------------------------------------- class-last fast path
# Logits of shape (N, C) or (C,) with index targets (the LM / classifier case). The forward
# runs max, shift, exp, row sum and normalisation on blocks of rows that fit in the L2 cache:
# at (700, 10000) NumPy's exp over the whole array is ~2.5x slower per element than over
# cache-resident blocks, and each extra full pass is another 28 MB of memory traffic. The
# backward turns the saved probabilities into the gradient in place: one pass plus a scatter
# at the targets, no (N, C) one-hot.
_BLOCK_ELEMS = 1 << 16  # 256 KB of float32 per block
_PARALLEL_ELEMS = 1 << 20  # spread over spare cores from here (exp dominates; GIL released)
# Up to here the one-pass row kernel (_forward_small) runs on the calling thread: the tiny
# GPT's (1024, 256) logits took the blocked statistics kernel plus NumPy's log, gather and
# sums before (fwd+bwd, paired turns: 746 -> 525 us; torch ~540-640); in a training step
# the row kernels run serially anyway beside OpenBLAS's spinning workers.
_SMALL_ELEMS = 1 << 19


def _forward_rows(ctx: Any, xp: Any, input: Any, target: Any, weight: Any, ignore_index: int,
                  reduction: str, label_smoothing: float) -> Any:
    x = input.reshape(1, -1) if input.ndim == 1 else input
    work = x.astype(xp.float32) if x.dtype.itemsize < 4 else x
    rows, n_classes = work.shape
    if xp.__name__ == "numpy" and weight is None and not label_smoothing and \
            work.dtype == xp.float32 and rows * n_classes < _SMALL_ELEMS and rows and \
            n_classes and work.flags.c_contiguous:
        res = _forward_small(ctx, xp, input, target, work, ignore_index, reduction)
        if res is not None:
            return res
    tgt = target.reshape(-1).astype(xp.int64, copy=False)
    valid = tgt != ignore_index
    bad = valid & ((tgt < 0) | (tgt >= n_classes))
    if bool(bad.any()):
        first = int(tgt[bad][0])
        raise IndexError(f"Target {first} is out of bounds.")
    safe = xp.where(valid, tgt, 0)
    eps = float(label_smoothing)
    w = weight.astype(work.dtype, copy=False) if weight is not None else None
    recording = isinstance(ctx, OpNode)
    numpy = xp.__name__ == "numpy"
    step = max(1, _BLOCK_ELEMS // max(n_classes, 1)) if numpy else max(rows, 1)
    out = xp.empty_like(work) if recording else None  # the probabilities, kept for backward
    m = xp.empty(rows, work.dtype)       # row max (0 where it is not finite)
    s = xp.empty(rows, work.dtype)       # sum of exp(x - m)
    ssum = xp.empty(rows, work.dtype) if eps > 0 else None  # sum_c w_c (x_c - m)
    rmax = xp.maximum.reduce if numpy else _reduce_max
    rsum = xp.add.reduce if numpy else _reduce_sum

    def blocks(first: int, last: int) -> None:
        # without a graph each caller gets its own block of scratch
        scratch = out if recording else xp.empty((min(step, last - first), n_classes),
                                                 work.dtype)
        for lo in range(first, last, step):
            hi = min(lo + step, last)
            xb = work[lo:hi]
            ob = scratch[lo:hi] if recording else scratch[:hi - lo]
            mb = rmax(xb, axis=1, keepdims=True)
            if not bool(xp.isfinite(mb).all()):   # all -inf rows: shift by 0 (+inf and
                mb = xp.where(mb == -xp.inf, 0, mb)  # NaN rows give NaN, as in torch)
            m[lo:hi] = mb[:, 0]
            xp.subtract(xb, mb, out=ob)
            if ssum is not None:
                # (no BLAS call here: blocks may run on several Python threads at once)
                ssum[lo:hi] = rsum(ob * w if w is not None else ob, axis=1)
            xp.exp(ob, out=ob)
            sb = rsum(ob, axis=1, keepdims=True)
            s[lo:hi] = sb[:, 0]
            if recording:
                ob *= 1 / sb

    nb = cpu_kernels.kernels() if numpy and work.dtype == xp.float32 and ssum is None and \
        work.flags.c_contiguous and rows * n_classes >= _BLOCK_ELEMS else None
    with _errstate(xp):  # all -inf rows give nan quietly, as in torch
        if nb is not None and nb.softmax_stats(work, out if recording else xp.empty_like(work),
                                               m, s, recording) == 0:
            pass  # max, exp, sum and normalisation in one visit per row, on spare cores
        elif numpy and rows * n_classes >= _PARALLEL_ELEMS:
            parallel_rows(rows, blocks, min_rows=step)
        else:
            blocks(0, rows)
        log_s = xp.log(s)
        logp_t = (work[xp.arange(rows), safe] - m) - log_s
    w_t = w[safe] * valid if w is not None else valid.astype(work.dtype)
    loss_el = -(w_t * logp_t) * (1 - eps)
    if ssum is not None:
        wsum = float(w.sum()) if w is not None else float(n_classes)
        loss_el = loss_el - (eps / n_classes) * (ssum - log_s * wsum) * valid
    denom = float(w_t.sum())
    res = _reduce_rows(xp, loss_el, denom, reduction, target.shape, work.dtype)
    if recording:
        ctx.rows = True
        ctx.prob = False
        ctx.cd = _class_dim(input.ndim)
        ctx.reduction = reduction
        ctx.denom = denom
        ctx.eps = eps
        ctx.w = w
        ctx.xp = xp
        p = out.reshape(input.shape)
        ctx.p = p.astype(input.dtype) if p.dtype != input.dtype else p
        ctx.target_parts = (safe.reshape(target.shape),
                            w_t.astype(work.dtype, copy=False).reshape(target.shape),
                            valid.reshape(target.shape))
        ctx.save(input, target)
    return xp.asarray(res).astype(input.dtype, copy=False)


def _reduce_rows(xp: Any, loss_el: Any, denom: float, reduction: str, shape: tuple,
                 dtype: Any) -> Any:
    """The per-row losses reduced as ``reduction`` asks (mean: over the target weights)."""
    if reduction == "none":
        return loss_el.reshape(shape)
    if reduction == "sum":
        return loss_el.sum()
    with _errstate(xp):
        return loss_el.sum() / dtype.type(denom)


def _forward_small(ctx: Any, xp: Any, input: Any, target: Any, work: Any, ignore_index: int,
                   reduction: str) -> Any:
    """:func:`_forward_rows` for small float32 logits without class weights or smoothing as
    one numba pass (None: no kernels, or a row the NumPy code must handle). The Python around
    the kernel is kept to a few calls: at (128, 10) it cost more than the kernel."""
    nb = cpu_kernels.kernels()
    if nb is None:
        return None
    rows, n_classes = work.shape
    tgt = target.reshape(-1) if target.ndim != 1 else target
    if tgt.dtype != xp.int64:
        tgt = tgt.astype(xp.int64)
    p = xp.empty_like(work)
    loss_el = xp.empty(rows, work.dtype)
    safe = xp.empty(rows, xp.int64)
    w_t = xp.empty(rows, work.dtype)
    valid = xp.empty(rows, bool)
    if nb.ce_rows(work, tgt, int(ignore_index), p, loss_el, safe, w_t, valid) != 0:
        return None
    # w_t is 1 at the valid rows and 0 elsewhere: the mean's divisor is their count (exact)
    denom = float(xp.count_nonzero(valid))
    if reduction == "mean" and denom:
        res = xp.add.reduce(loss_el) / work.dtype.type(denom)
    else:
        res = _reduce_rows(xp, loss_el, denom, reduction, target.shape, work.dtype)
    if isinstance(ctx, OpNode):
        ctx.rows = True
        ctx.prob = False
        ctx.cd = _class_dim(input.ndim)
        ctx.reduction = reduction
        ctx.denom = denom
        ctx.eps = 0.0
        ctx.w = None
        ctx.xp = xp
        ctx.p = p.reshape(input.shape) if input.ndim != 2 else p
        ctx.target_parts = (safe, w_t, valid) if target.ndim == 1 else \
            (safe.reshape(target.shape), w_t.reshape(target.shape), valid.reshape(target.shape))
        ctx.save(input, target)
    return xp.asarray(res, dtype=input.dtype)


class _ShapeOnly:
    """What is left of ``ctx.p`` once backward has taken the array: its shape."""

    __slots__ = ("shape", "ndim")

    def __init__(self, shape: tuple) -> None:
        self.shape = shape
        self.ndim = len(shape)


def _reduce_max(a: Any, axis: int, keepdims: bool) -> Any:
    return a.max(axis=axis, keepdims=keepdims)


def _reduce_sum(a: Any, axis: int, keepdims: bool = False) -> Any:
    return a.sum(axis=axis, keepdims=keepdims)


def _backward_rows(ctx: Any, grad: Tensor) -> Tensor | None:
    """``p * sum(q) - q`` times the incoming gradient, written into the saved probabilities
    (handed over: a second backward through a retained graph recomputes them)."""
    input, _ = ctx.saved
    if ctx.next_edges[0] is None:
        return None
    xp = ctx.xp
    p = ctx.p
    # hand the array over; a stand-in keeps the shape and ndim that _index_q reads
    ctx.p = _ShapeOnly(p.shape)
    if getattr(ctx, "p_taken", False):  # an earlier backward (retain_graph) used it: recompute
        x = input._data
        x = x.astype(xp.float32) if x.dtype.itemsize < 4 else x
        e = xp.exp(x - x.max(axis=-1, keepdims=True))
        p = (e / e.sum(axis=-1, keepdims=True)).astype(input._data.dtype, copy=False)
    ctx.p_taken = True
    gx = p.reshape(-1, p.shape[-1]) if p.ndim != 2 else p
    rows, n_classes = gx.shape
    safe, w_t, valid = ctx.target_parts
    if safe.ndim != 1:
        safe, w_t, valid = safe.reshape(-1), w_t.reshape(-1), valid.reshape(-1)
    dt = gx.dtype
    g = grad._data
    if g.dtype != dt:
        g = g.astype(dt)
    if ctx.reduction == "none":
        g = g.reshape(-1)
    elif ctx.reduction == "mean":
        if ctx.denom:
            g = g / dt.type(ctx.denom)
        else:
            with _errstate(xp):   # all targets ignored: nan, quietly (torch)
                g = g / dt.type(ctx.denom)
    eps, w = ctx.eps, ctx.w
    if not eps and w is None and g.ndim == 0 and ctx.denom == rows and \
            gx.size < _PARALLEL_ELEMS:
        # every row valid and unweighted: the row scale is the one scalar (NumPy's broadcast
        # of a (rows, 1) column costs ~2x a scalar multiply at classifier sizes)
        gx *= g
        at = g
    else:
        with _errstate(xp):
            at = _scale_rows(xp, gx, g, w_t, valid, eps, w, rows, n_classes)
    if xp is np and gx.flags.c_contiguous:
        # one flat index instead of a (row, column) pair: ~3x faster on small logits
        gx.reshape(-1)[_row_starts(rows, n_classes) + safe] -= at
    else:
        gx[xp.arange(rows), safe] -= at
    return _wrap(gx.reshape(input._data.shape) if gx.shape != input._data.shape else gx,
                 input.device)


def _scale_rows(xp: Any, gx: Any, g: Any, w_t: Any, valid: Any, eps: float, w: Any, rows: int,
                n_classes: int) -> Any:
    """``gx = p * sum(q) * g`` less the smoothing mass, in place; returns what is still to
    be subtracted at each row's target (``q`` there, times ``g``)."""
    dt = gx.dtype
    if eps > 0:
        pick = w_t * (1 - eps)        # q at the target (before the smoothing mass)
        wsum = float(w.sum()) if w is not None else float(n_classes)
        qsum = pick + (eps / n_classes) * wsum * valid
        col = (qsum * g).astype(dt, copy=False)
        at = (pick * g).astype(dt, copy=False)
        mass = ((eps / n_classes) * g * valid).astype(dt, copy=False).reshape(-1, 1)
    else:                             # q is w_t at the target only: sum(q) = w_t
        col = at = (w_t * g).astype(dt, copy=False)
        mass = None
    if not bool(xp.isfinite(g).all()):
        # torch leaves ignored rows at exactly 0 whatever the incoming gradient (an all-ignored
        # mean divides by 0, and 0 * inf is nan)
        col, at = xp.where(valid, col, 0).astype(dt), xp.where(valid, at, 0).astype(dt)
        if mass is not None:
            mass = xp.where(valid.reshape(-1, 1), mass, 0).astype(dt)
    col = col.reshape(-1, 1)
    w_row = w.astype(dt, copy=False) if w is not None else None

    def scale(lo: int, hi: int) -> None:
        gx[lo:hi] *= col[lo:hi]
        if mass is not None:
            gx[lo:hi] -= mass[lo:hi] * w_row if w_row is not None else mass[lo:hi]

    if xp.__name__ == "numpy" and gx.size >= _PARALLEL_ELEMS:
        # a memory-bound pass: two cores measured ~1.5x faster at (700, 10000)
        parallel_rows(rows, scale, min_rows=max(1, _BLOCK_ELEMS // max(n_classes, 1)))
    else:
        scale(0, rows)
    return at


@functools.lru_cache(maxsize=16)
def _row_starts(rows: int, n_classes: int) -> Any:
    """The flat offsets ``arange(rows) * n_classes`` of a C-contiguous (rows, C) array's rows
    (cached read-only: recurring batch shapes)."""
    a = np.arange(rows, dtype=np.int64) * n_classes
    a.flags.writeable = False
    return a


def _index_q(ctx: Any) -> Any:
    """The per-element class weights ``q`` of index targets, built at backward time (the
    forward only gathers): ``(1 - eps) w_t onehot(t) + eps / C * weight``, zero where
    ignored."""
    xp = ctx.xp
    safe, w_t, valid = ctx.target_parts
    cd, eps = ctx.cd, ctx.eps
    p = ctx.p
    n_classes = p.shape[cd]
    shape = [n_classes if i == cd else 1 for i in range(p.ndim)]
    onehot = xp.expand_dims(safe, cd) == xp.arange(n_classes).reshape(shape)
    q = onehot * xp.expand_dims(w_t * (1 - eps), cd)
    if eps > 0:
        w_b = ctx.w.reshape(shape) if ctx.w is not None else 1.0
        q = q + (w_b * (eps / n_classes)) * xp.expand_dims(valid, cd)
    return q.astype(w_t.dtype, copy=False)


def _wrap(arr: Any, dev: Any) -> Tensor:
    """A constant tensor around a forward-time array (no copy)."""
    return _make(arr, _dt._FROM_NP[arr.dtype], dev)


class _errstate:
    """Silence NumPy's divide warnings for an all-ignored mean (torch returns nan quietly)."""

    def __init__(self, xp: Any) -> None:
        self._ctx = xp.errstate(invalid="ignore", divide="ignore") if hasattr(xp, "errstate") \
            else None

    def __enter__(self) -> None:
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
