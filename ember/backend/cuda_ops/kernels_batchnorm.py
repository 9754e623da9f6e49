"""Fused training-mode batch_norm (NVRTC kernels, forward and backward), in both layouts.

The kernels are templates over ``<T, W>``: ``T`` stores the activations (input, output,
gradients), ``W`` the affine parameters and the returned batch statistics. Under autocast a
bfloat16 activation meets float32 weights (batch_norm is on neither autocast list, as in
torch), so ``W`` may be wider than ``T``; all arithmetic is fp32.

NCHW (``(N, C, *)`` C-contiguous):
- statistics: a (C, P) grid of blocks sums ``x - K_c`` and its square per channel (``K_c`` is
  the channel's first element, a shift that keeps the fp32 sums from cancelling); one warp
  per channel adds the P partials in fp64 and writes mean, rstd and the biased variance;
- normalization and ``dx`` are grid-stride elementwise kernels that track the channel of
  each element incrementally (no per-element 64-bit division).

Channels-last (memory ``(N, *, C)``: rows of C channels):
- statistics: each thread owns 8 (bf16/fp16; 4 for fp32) neighbouring channels and reads them
  with one 16-byte load per row; a block is channel groups x rows over a chunk of rows, the
  row partials meet in shared memory, one partial per (channel, chunk); the same fp64
  finalize as NCHW (which also writes per-channel coefficients);
- normalization ``(x - mean) * (rstd * w) + b`` and ``dx = A g + B (x - mean) + D`` run flat
  over memory in 16-byte vectors; the grid stride is a multiple of C, so each thread keeps
  its channels and their coefficients in registers; the output keeps the input's layout. C not a multiple of the vector width or unaligned
  arrays: scalar kernels (blocks of 32 channels x 8 rows for the statistics).
- the vectorised path runs as one cooperative launch per direction (statistics, finalize and
  normalization or ``dx``, with grid-wide barriers between them: ``bncl_fwd_coop``,
  ``bncl_bwd_coop``) instead of three launches, where the device takes a cooperative launch
  of enough resident blocks; not while a CUDA graph is captured, nor with
  ``EMBER_BN_COOP=0`` (then the three launches).

Evaluation mode and anything uncovered return ``NotImplemented`` (generic CuPy code). What
``ctx`` saves is the generic op's layout (ember/ops/nn_norm.py), so under ``create_graph``
its differentiable backward runs on the same node.
"""
from __future__ import annotations

import math
import os
import threading
from operator import is_
from typing import Any

import numpy as np

from ember.backend.cuda import stream_capturing
from ember.backend.cuda_ops import _layout as L
from ember.backend.cuda_ops import _nvrtc as K
from ember.backend.cuda_ops._batchnorm_src import COOP_KERNELS, COOP_SOURCE, KERNELS, SOURCE
from ember.ops.registry import OPS


K.define("batchnorm", SOURCE, KERNELS)
K.define("batchnorm_coop", COOP_SOURCE, COOP_KERNELS)

_THREADS = 256


def _bn_blocks(c: int, per_channel: int, threads: int) -> int:
    """NCHW blocks per channel for the statistics kernels: about 1,000 blocks in all, none
    with fewer than ~4 elements per thread."""
    want = max(1, 1024 // max(c, 1))
    most = max(1, per_channel // (threads * 4))
    return max(1, min(want, most, 65535))


def _cl_chunks(c: int, rows: int) -> tuple[int, int]:
    """Channels-last statistics: (chunks of rows, rows per chunk) for about 1,000 blocks of
    32 channels, each chunk at least 64 rows."""
    col_blocks = (c + 31) // 32
    want = max(1, 1024 // col_blocks)
    p = max(1, min(want, rows // 64, 65535))
    chunk = (rows + p - 1) // p
    return (rows + chunk - 1) // chunk, chunk


def _param_dtype(input: Any, *params: Any) -> Any:
    """The dtype of the parameters and statistics (all given ones must agree; the input's
    when none is given), or None when they disagree or the kernels do not cover it. A
    layer passes the same arrays every step: the answer is kept by their identity."""
    key = tuple(map(id, params))
    hit = _PARAM_DT.get(key)
    if hit is not None and all(map(is_, hit[0], params)):
        return hit[1]
    dt = _param_dtype_of(input, params)
    if any(a is not None for a in params):   # (none at all: the input's dtype decides)
        if len(_PARAM_DT) > 4096:
            _PARAM_DT.clear()
        _PARAM_DT[key] = (params, dt)
    return dt


_PARAM_DT: dict = {}   # ids of the parameter arrays -> (the arrays, their dtype or None)


def _param_dtype_of(input: Any, params: tuple) -> Any:
    dts = {a.dtype for a in params if a is not None}
    if len(dts) > 1:
        return None
    dt = dts.pop() if dts else input.dtype
    if K.dtype_ctype(dt) is None:
        return None
    if any(a is not None and not a.flags.c_contiguous for a in params):
        return None
    return dt


def _layout(a: Any) -> str | None:
    if a.flags.c_contiguous:
        return "c"
    if L.is_channels_last(a):
        return "cl"
    return None


def _vec(c: int, *arrays: Any) -> int:
    """Elements per 16-byte vector when the channels-last vector kernels apply (C a multiple
    of it, every array 16-byte aligned), else 0."""
    n = 16 // arrays[0].itemsize
    return n if c % n == 0 and all(a.data.ptr % 16 == 0 for a in arrays) else 0


class _Kernels(dict):
    """The batch-norm kernels of one template instantiation, fetched on first use."""

    __slots__ = ("targs",)

    def __missing__(self, name: str) -> Any:
        fn = self[name] = K.function("batchnorm", name, self.targs)
        return fn


_KERNELS: dict = {}


def _kernels(targs: str) -> _Kernels:
    import cupy  # noqa: PLC0415 - only reached on the GPU
    key = (targs, cupy.cuda.runtime.getDevice())   # modules are loaded per device
    ks = _KERNELS.get(key)
    if ks is None:
        ks = _KERNELS[key] = _Kernels()
        ks.targs = targs
    return ks


# (c, m, nvec) -> launch geometry of the vectorised channels-last statistics kernel
_CL_GEOM: dict = {}


def _cl_geom(c: int, m: int, nvec: int) -> tuple:
    key = (c, m, nvec)
    geo = _CL_GEOM.get(key)
    if geo is None:
        groups = c // nvec
        gb = min(groups, _THREADS)
        rb = _THREADS // gb
        gx = (groups + gb - 1) // gb
        p = max(1, min(2048 // gx, m // (rb * 8), 65535))
        chunk = (m + p - 1) // p
        p = (m + chunk - 1) // chunk
        geo = _CL_GEOM[key] = ((gx, p, 1), p, K.i64(m), K.i32(c), K.i64(chunk), K.i32(gb),
                               K.i32(rb), rb * gb * nvec * 2 * 4)
    return geo


def _cl_flat_grid(nv: int, c: int, nvec: int) -> tuple[tuple, tuple]:
    """(grid, block) of the vectorised channels-last elementwise kernels: a few waves of
    256-thread blocks, their number a multiple of ``c / gcd(c, 256 * nvec)`` so that the grid
    stride covers whole rows and each thread keeps its channels (and their coefficients)."""
    unit = c // math.gcd(c, _THREADS * nvec)
    blocks = min((nv + _THREADS * 4 - 1) // (_THREADS * 4), 2048)
    blocks = max(unit, (blocks + unit - 1) // unit * unit)
    return (blocks, 1, 1), (_THREADS, 1, 1)


_COOP_ON = os.environ.get("EMBER_BN_COOP", "1") != "0"
_COOP_FAILED: set = set()   # (kernel, template arguments) whose family did not compile


def _coop_launch(name: str, targs: str, c: int, nvec: int, geo: tuple, nv: int) -> Any:
    """``(launcher, grid, block, shared bytes)`` of one cooperative batch-norm kernel for a
    channels-last geometry (``geo``: ``_cl_geom``'s), or None where it does not apply: the
    family did not compile, or too few blocks fit on the device at once for the grid-stride
    phases (a multiple of ``c / gcd(c, 256 * nvec)`` blocks keeps each thread's channels).

    Eager calls only: one launch instead of three saved ~90 us of host time per batch-norm
    forward and backward (H100, in-process A/B), and the GPU time of the large ResNet-50
    B128 layers' forward and backward was 0.95-0.96x (1.03x at 1024 channels, 14x14); but
    a captured ResNet-50 step replayed 0.25 ms slower (27.25 against 27.00 ms), so under
    stream capture the three launches are taken."""
    if not _COOP_ON or (name, targs) in _COOP_FAILED:
        return None
    try:
        fn = K.function("batchnorm_coop", name, targs, coop=True)
        shared = geo[7]
        most = fn.max_blocks(_THREADS, shared)
    except Exception:  # noqa: BLE001 - no cooperative groups header, no driver binding: 3 launches
        _COOP_FAILED.add((name, targs))
        return None
    unit = c // math.gcd(c, _THREADS * nvec)
    stats_blocks = geo[0][0] * geo[0][1]
    flat_blocks = _cl_flat_grid(nv, c, nvec)[0][0]
    blocks = min(most, max(stats_blocks, flat_blocks)) // unit * unit
    if blocks < 1:
        return None
    return fn, (blocks, 1, 1), (_THREADS, 1, 1), shared


def _stats_plan(lay: str, c: int, m: int, nvec: int) -> tuple:
    """The statistics kernels' launch: ``(P, ...)`` with P partial sums per channel; NCHW
    ``(P,)``, channels-last vectorised ``(P, geometry)``, channels-last scalar ``(P, chunk)``."""
    if lay == "c":
        return (_bn_blocks(c, m, _THREADS),)
    if nvec:
        geo = _cl_geom(c, m, nvec)
        return geo[1], geo
    return _cl_chunks(c, m)


_NULL = np.uint64(0)
_U64 = np.uint64
_ONE = np.int32(1)
_ZERO = np.int32(0)
_NO_UPDATE = (_NULL, _NULL, np.float32(0), np.float32(0), _NULL, np.int32(0))


class _Running(threading.local):
    """F.batch_norm's running update armed for the next CUDA batch norm of this thread:
    ``(running_mean, running_var, momentum, unbias, num_batches_tracked, dtype, done)``
    (arrays or None; float32 scalars; a one-item list set when a finalize kernel did it)."""

    pending: Any = None


_RUNNING = _Running()


def arm_running(running_mean: Any, running_var: Any, momentum: float, n: int,
                nbt: Any = None) -> list | None:
    """Ask the next fused batch-norm forward on this thread to update the running statistics
    (and ``nbt += 1``) inside its finalize kernel, as :func:`update_running` would; returns
    the ``done`` flag (a list) to read after the call, or None when the tensors are not
    covered (on the GPU, one float dtype, contiguous, one element per channel). The caller
    clears the request with :func:`disarm_running` after the call either way."""
    if OPS["_batch_norm"].cuda_impl is not BatchNormImpl:
        return None
    rm_a = running_mean._data if running_mean is not None else None
    rv_a = running_var._data if running_var is not None else None
    nbt_a = nbt._data if nbt is not None else None
    r0 = running_mean if running_mean is not None else running_var
    if r0 is None:
        return None
    # A layer passes the same buffer arrays every step: their checks are kept by identity
    # (an array's dtype, shape and layout never change; a replaced buffer is a new array).
    hit = _ARMED_OK.get((id(rm_a), id(rv_a), id(nbt_a)))
    if hit is not None and hit[0] is rm_a and hit[1] is rv_a and hit[2] is nbt_a and \
            hit[3] is r0._device and \
            (nbt is None or nbt._device is hit[3]):
        dt = hit[4]
    else:
        dt = _arm_check(running_mean, running_var, nbt)
        if dt is None:
            return None
        if len(_ARMED_OK) > 4096:
            _ARMED_OK.clear()
        _ARMED_OK[(id(rm_a), id(rv_a), id(nbt_a))] = (
            rm_a, rv_a, nbt_a, r0._device, dt)
    key = (momentum, n)
    consts = _ARM_CONSTS.get(key)
    if consts is None:
        if len(_ARM_CONSTS) > 4096:
            _ARM_CONSTS.clear()
        consts = _ARM_CONSTS[key] = (np.float32(momentum), np.float32(n / max(n - 1, 1)))
    done = [False]
    _RUNNING.pending = (rm_a, rv_a, consts[0], consts[1], nbt_a, dt, done)
    return done


_ARMED_OK: dict = {}    # ids of (running_mean, running_var, nbt) arrays -> accepted, with dtype
_ARM_CONSTS: dict = {}  # (momentum, n) -> their float32 kernel arguments


def _arm_check(running_mean: Any, running_var: Any, nbt: Any) -> Any:
    """The running statistics' dtype when the finalize kernel can update them, else None."""
    runs = [t for t in (running_mean, running_var) if t is not None]
    if not runs:
        return None
    r0 = runs[0]
    dt = r0._data.dtype
    if r0._device.type != "cuda" or K.dtype_ctype(dt) is None or any(
            t._device is not r0._device or t._data.dtype != dt or t._data.ndim != 1 or
            not t._data.flags.c_contiguous for t in runs) or \
            (len(runs) == 2 and runs[1]._data.shape != r0._data.shape):
        return None
    if nbt is not None and (nbt._device is not r0._device or nbt._data.dtype != np.int64
                            or nbt._data.size != 1 or not nbt._data.flags.c_contiguous):
        return None
    return dt


def disarm_running() -> None:
    _RUNNING.pending = None


class BatchNormImpl:
    """Training-mode ``_batch_norm`` over NCHW or channels-last input; half-precision input
    may come with float32 parameters (then the batch statistics are float32 too)."""

    def forward(ctx, xp, input, weight, bias, running_mean, running_var, training, eps):
        return _forward(ctx, xp, input, weight, bias, running_mean, running_var, training,
                        eps, 0)

    def backward(ctx, g, _gm=None, _gv=None):
        return _backward(ctx, g, ctx.saved if g is not None else None, None)


class BatchNormReluImpl:
    """``_batch_norm_relu``: the same kernels with the ReLU inside (the output saved too:
    the backward kernels mask the gradient with it)."""

    def forward(ctx, xp, input, weight, bias, running_mean, running_var, training, eps):
        return _forward(ctx, xp, input, weight, bias, running_mean, running_var, training,
                        eps, 1)

    def backward(ctx, g, _gm=None, _gv=None):
        if g is None:
            return (None,) * 7
        saved = ctx.saved
        return _backward(ctx, g, saved, saved[4]._data)


def _fwd_plan(input: Any, wdt: Any, hasw: bool, hasb: bool, relu: int) -> Any:
    """What the forward launches for one input geometry: ``(fn, lay, c, P, scratch floats,
    stats launch, finalize launch, apply launch, reduction axes, broadcast shape,
    (lay, targs, wdt), the int32 has-weight and has-bias flags)``, the launches as (kernel
    name, grid, block, constant trailing arguments[, shared bytes]); False where the
    kernels do not apply."""
    ct = K.ctype(input)
    if ct is None or input.ndim < 2 or input.size == 0:
        return False
    lay = _layout(input)
    if lay is None:
        return False
    n, c = input.shape[0], input.shape[1]
    hw = input.size // (n * c)
    if n * hw < 2:
        return False  # F.batch_norm rejects it; the generic code decides
    targs = f"{ct}, {K.dtype_ctype(wdt)}"
    fn = _kernels(targs).__getitem__
    m = n * hw
    nvec = _vec(c, input) if lay != "c" else 0   # y is a fresh, aligned allocation
    plan = _stats_plan(lay, c, m, nvec)
    p = plan[0]
    if lay == "c":
        stats = ("bn_stats", (c, p, 1), (_THREADS, 1, 1), (K.i32(n), K.i32(c), K.i32(hw)), 0)
    elif nvec:
        grid, _, m64, c32, chunk64, gb32, rb32, shared = plan[1]
        stats = ("bncl_stats_v", grid, (_THREADS, 1, 1),
                 (m64, c32, chunk64, K.i32(0), gb32, rb32, _NULL), shared)
    else:
        chunk = plan[1]
        stats = ("bncl_stats", ((c + 31) // 32, p, 1), (32, 8, 1),
                 (K.i64(n * hw), K.i32(c), K.i64(chunk), K.i32(0), _NULL), 0)
    fin = ("bn_finalize", ((c + 3) // 4, 1, 1), (32, 4, 1),
           (K.i32(p), K.i32(c), K.i64(hw if lay == "c" else 1), K.i64(m)))
    hw_, hb_, rl = K.i32(hasw), K.i32(hasb), K.i32(relu)
    if lay == "c":
        grid, block = K.flat_grid(input.size, _THREADS, 4)
        apply = ("bn_apply", grid, block, (K.i64(input.size), K.i32(c), K.i32(hw), hw_, hb_, rl))
    elif nvec:
        nv = input.size // nvec
        grid, block = _cl_flat_grid(nv, c, nvec)
        apply = ("bncl_apply_v", grid, block, (K.i64(nv), K.i32(c), rl))
    else:
        grid, block = K.flat_grid(input.size, _THREADS, 4)
        apply = ("bncl_apply", grid, block, (K.i64(input.size), K.i32(c), hw_, hb_, rl))
    coop = None
    if lay != "c" and nvec:
        launch = _coop_launch("bncl_fwd_coop", targs, c, nvec, plan[1], input.size // nvec)
        if launch is not None:
            (gx, _, _), _, m64, c32, chunk64, gb32, rb32, _ = plan[1]
            coop = launch + ((m64, c32, chunk64, gb32, rb32, K.i32(gx), K.i32(p)),
                             (K.i64(input.size // nvec), rl))
    return (fn, lay, c, p, 5 * c + 2 * c * p, stats, fin, apply,
            (0,) + tuple(range(2, input.ndim)), (1, c) + (1,) * (input.ndim - 2),
            (lay, targs, wdt), (hw_, hb_), coop)


_FWD_PLANS: dict = {}   # input geometry, parameters' dtype, ... -> _fwd_plan's result


def _forward(ctx: Any, xp: Any, input: Any, weight: Any, bias: Any, running_mean: Any,
             running_var: Any, training: bool, eps: float, relu: int) -> Any:
    """The training forward (``relu``: 1 applies the ReLU in the kernels and saves the output
    for the backward's mask), or NotImplemented for what the kernels do not cover.

    The launch geometry of a repeated call (a training loop's) comes from ``_FWD_PLANS``;
    only the allocations, the pointers and ``eps`` are per call."""
    if not training:
        return NotImplemented
    wdt = _param_dtype(input, weight, bias, running_mean, running_var)
    if wdt is None:
        return NotImplemented
    hasw, hasb = weight is not None, bias is not None
    key = (input.shape, input.strides, input.dtype, wdt, hasw, hasb, relu,
           input.data.ptr % 16 == 0, xp.cuda.runtime.getDevice())
    plan = _FWD_PLANS.get(key)
    if plan is None:
        plan = _fwd_plan(input, wdt, hasw, hasb, relu)
        if len(_FWD_PLANS) > 1024:
            _FWD_PLANS.clear()
        _FWD_PLANS[key] = plan
    if plan is False:
        return NotImplemented
    fn, lay, c, p, nscratch, stats_l, fin_l, apply_l, axes, bshape, bn_layout, flags, coop = plan
    if coop is not None and stream_capturing():
        coop = None   # in a CUDA graph the three kernels replay faster (see _coop_launch)
    # one allocation, addressed by pointer: the float32 scratch (mean, rstd, coef (3C: mean,
    # rstd * w, b), then the two (C, P) partial sums; saved whole for the backward), then
    # the returned statistics at a 16-byte boundary, an array over each half (indexing a
    # (2, C) array cost ~3.5 us a view; each allocation ~5 us of host time inside a step)
    stats_at = (4 * nscratch + 15) // 16 * 16
    mem = xp.cuda.alloc(stats_at + 2 * c * wdt.itemsize)
    scratch = xp.ndarray((nscratch,), xp.float32, mem)
    base = mem.ptr
    mean, rstd, coef = _U64(base), _U64(base + 4 * c), _U64(base + 8 * c)
    p1, p2 = _U64(base + 20 * c), _U64(base + 20 * c + 4 * c * p)
    mean_t = xp.ndarray((c,), wdt, mem + stats_at)
    var_t = xp.ndarray((c,), wdt, mem + (stats_at + c * wdt.itemsize))
    wa = weight if hasw else mean_t
    ba = bias if hasb else mean_t
    y = xp.empty_like(input) if lay == "c" else L.empty_like(xp, input)
    if coop is None:
        name, grid, block, tail, shared = stats_l
        if lay == "c":
            fn(name)(grid, block, (input, p1, p2) + tail)
        else:
            fn(name)(grid, block, (input, input, mean, rstd, p1, p2) + tail, shared_mem=shared)
    pend = _RUNNING.pending
    if pend is not None and pend[0] is running_mean and pend[1] is running_var and \
            pend[5] == wdt:
        # F.batch_norm armed its running update for this call: the finalize kernel does it
        rm_a, rv_a, mom, unb, nbt_a, _, done = pend
        upd = (rm_a if rm_a is not None else _NULL, rv_a if rv_a is not None else _NULL,
               mom, unb, nbt_a if nbt_a is not None else _NULL, _ONE)
        done[0] = True
    else:
        upd = _NO_UPDATE
    if coop is not None:   # statistics, finalize and apply in one launch
        cfn, grid, block, shared, geo, tail = coop
        cfn(grid, block, (input, p1, p2) + geo + (K.f32(eps), mean, rstd, mean_t, var_t, wa,
                                                  ba) + flags + (coef,) + upd + (y,) + tail,
            shared_mem=shared)
    else:
        name, grid, block, tail = fin_l
        fn(name)(grid, block, (input, p1, p2) + tail + (K.f32(eps), mean, rstd, mean_t, var_t,
                                                        wa, ba) + flags + (coef,) + upd)
        name, grid, block, tail = apply_l
        if name == "bncl_apply_v":
            fn(name)(grid, block, (input, coef, y) + tail)
        else:
            fn(name)(grid, block, (input, wa, ba, mean, rstd, y) + tail)
    ctx.p = (True, eps, axes, bshape)
    ctx.bn_layout = bn_layout
    # slots 2 and 3 hold the batch statistics in the generic op's layout; only this backward
    # reads them (the generic one runs under create_graph, and recomputes them from x)
    if relu:   # the output last (BatchNormRelu's layout)
        ctx.save(input, weight, scratch, None, y)
    else:
        ctx.save(input, weight, scratch, None)
    return y, mean_t, var_t


def _bwd_plan(lay: str, targs: str, shape: tuple, c: int, nvec: int, hasw: bool) -> tuple:
    """What the backward launches for one geometry: ``(fn, P, scratch floats, stats launch,
    finalize launch, dx launch)``, the launches as (kernel name, grid, block, constant
    trailing arguments[, shared bytes])."""
    fn = _kernels(targs).__getitem__
    n = shape[0]
    size = math.prod(shape)
    hw = size // (n * c)
    plan = _stats_plan(lay, c, n * hw, nvec)
    p = plan[0]
    mode = K.i32(1)
    if lay == "c":
        stats = ("bn_bwd_stats", (c, p, 1), (_THREADS, 1, 1), (K.i32(n), K.i32(c), K.i32(hw)), 0)
    elif nvec:
        grid, _, m64, c32, chunk64, gb32, rb32, shared = plan[1]
        stats = ("bncl_stats_v", grid, (_THREADS, 1, 1), (m64, c32, chunk64, mode, gb32, rb32),
                 shared)
    else:
        stats = ("bncl_stats", ((c + 31) // 32, p, 1), (32, 8, 1),
                 (K.i64(n * hw), K.i32(c), K.i64(plan[1]), mode), 0)
    inv = K.f32(1.0 / (n * hw))
    fin = ("bn_bwd_finalize", ((c + 3) // 4, 1, 1), (32, 4, 1), (K.i32(p), K.i32(c)),
           (K.i32(hasw), inv))
    if lay == "c":
        grid, block = K.flat_grid(size, _THREADS, 4)
        dx = ("bn_bwd_dx", grid, block, (K.i64(size), K.i32(c), K.i32(hw), inv, K.i32(hasw)))
    elif nvec:
        grid, block = _cl_flat_grid(size // nvec, c, nvec)
        dx = ("bncl_bwd_dx_v", grid, block, (K.i64(size // nvec), K.i32(c)))
    else:
        grid, block = K.flat_grid(size, _THREADS, 4)
        dx = ("bncl_bwd_dx", grid, block, (K.i64(size), K.i32(c), inv, K.i32(hasw)))
    coop = None
    if lay != "c" and nvec:
        launch = _coop_launch("bncl_bwd_coop", targs, c, nvec, plan[1], size // nvec)
        if launch is not None:
            (gx, _, _), _, m64, c32, chunk64, gb32, rb32, _ = plan[1]
            coop = launch + ((m64, c32, chunk64, gb32, rb32, K.i32(gx), K.i32(p)),
                             (K.i32(hasw), inv), K.i64(size // nvec))
    return fn, p, 6 * c + 2 * c * p, stats, fin, dx, coop


_BWD_PLANS: dict = {}   # geometry, layout, kernels, ... -> _bwd_plan's result


def _backward(ctx: Any, g: Any, saved: tuple, ym: Any) -> tuple:
    """The batch norm's gradients from ``ctx.saved`` (``ym``: the fused ReLU's output,
    masking ``g``). The launch geometry of a repeated call comes from ``_BWD_PLANS``."""
    if g is None:
        return (None,) * 7
    import cupy as xp  # noqa: PLC0415 - only reached on the GPU
    x, w = saved[0], saved[1]
    lay, targs, wdt = ctx.bn_layout
    xa = x._data
    c = xa.shape[1]
    fbase = saved[2]._data.data.ptr          # the forward's scratch: mean, rstd first
    ma, ra = _U64(fbase), _U64(fbase + 4 * c)
    wa = w._data if w is not None else None
    ymp = ym if ym is not None else _NULL    # the output has x's layout
    if lay == "c":
        ga = K.contiguous(xp, g._data, xa.dtype)
        nvec = 0
    else:
        ga = L.as_layout(xp, g._data, xa, xa.dtype)
        nvec = _vec(c, ga, xa) if ym is None else _vec(c, ga, xa, ym)
    key = (xa.shape, lay, targs, nvec, wa is not None, xp.cuda.runtime.getDevice())
    plan = _BWD_PLANS.get(key)
    if plan is None:
        plan = _bwd_plan(lay, targs, xa.shape, c, nvec, wa is not None)
        if len(_BWD_PLANS) > 1024:
            _BWD_PLANS.clear()
        _BWD_PLANS[key] = plan
    fn, p, nscratch, stats_l, fin_l, dx_l, coop = plan
    # scratch: sums (2C), coef (4C: mean, A, B, D), then the two (C, P) partial sums
    scratch = xp.ndarray((nscratch,), xp.float32)
    base = scratch.data.ptr
    sums, coef = _U64(base), _U64(base + 8 * c)
    p1, p2 = _U64(base + 24 * c), _U64(base + 24 * c + 4 * c * p)
    if coop is not None and not stream_capturing():   # (in a graph: three, as forward)
        return _backward_coop(ctx, xp, coop, x, w, xa, ga, wa, ma, ra, ymp, sums, coef, p1, p2,
                              scratch, wdt, c)
    name, grid, block, tail, shared = stats_l
    if lay == "c":
        fn(name)(grid, block, (ga, xa, ma, ra, p1, p2) + tail + (ymp,))
    else:
        fn(name)(grid, block, (xa, ga, ma, ra, p1, p2) + tail + (ymp,), shared_mem=shared)
    gb, gw = _param_grads(xp, c, wdt)
    name, grid, block, mid, tail = fin_l
    fn(name)(grid, block, (p1, p2) + mid + (sums, gb, gw, ma, ra,
                                            wa if wa is not None else gw) + tail + (coef,))
    need = ctx.needs_input_grad
    gx = None
    if need[0]:
        wp = wa if wa is not None else gw
        dx = xp.empty_like(xa) if lay == "c" else L.empty_like(xp, xa)   # fresh: aligned
        name, grid, block, tail = dx_l
        if lay == "c":
            fn(name)(grid, block, (ga, xa, wp, ma, ra, sums, dx) + tail + (ymp,))
        elif nvec:
            fn(name)(grid, block, (ga, xa, coef, dx) + tail + (ymp,))
        else:
            fn(name)(grid, block, (ga, xa, wp, ma, ra, sums, dx) + tail + (ymp,))
        gx = K.wrap(dx, x.device)
    gw_t = K.wrap(gw, x.device) if w is not None and need[1] else None
    gb_t = K.wrap(gb, x.device) if need[2] else None
    return gx, gw_t, gb_t, None, None, None, None


def _backward_coop(ctx: Any, xp: Any, coop: tuple, x: Any, w: Any, xa: Any, ga: Any, wa: Any,
                   ma: Any, ra: Any, ymp: Any, sums: Any, coef: Any, p1: Any, p2: Any,
                   scratch: Any, wdt: Any, c: int) -> tuple:
    """:func:`_backward`'s channels-last vectorised case in one cooperative launch
    (``scratch`` holds ``sums``, ``coef`` and the partials until the launch is queued)."""
    cfn, grid, block, shared, geo, (hasw, inv), nv = coop
    gb, gw = _param_grads(xp, c, wdt)
    need = ctx.needs_input_grad
    dx = L.empty_like(xp, xa) if need[0] else None
    cfn(grid, block, (xa, ga, ma, ra, p1, p2) + geo + (ymp, sums, gb, gw,
                                                        wa if wa is not None else gw, hasw, inv,
                                                        coef, dx if dx is not None else _NULL,
                                                        nv, _ONE if dx is not None else _ZERO),
        shared_mem=shared)
    del scratch
    gx = K.wrap(dx, x.device) if dx is not None else None
    gw_t = K.wrap(gw, x.device) if w is not None and need[1] else None
    gb_t = K.wrap(gb, x.device) if need[2] else None
    return gx, gw_t, gb_t, None, None, None, None


def _param_grads(xp: Any, c: int, wdt: Any) -> tuple:
    """The bias and weight gradients, ``(C,)`` each: two arrays over one allocation."""
    mem = xp.cuda.alloc(2 * c * wdt.itemsize)
    return xp.ndarray((c,), wdt, mem), xp.ndarray((c,), wdt, mem + c * wdt.itemsize)


def update_running(running_mean: Any, running_var: Any, mean: Any, var: Any, momentum: float,
                   n: int, nbt: Any = None) -> bool:
    """``F.batch_norm``'s running-statistics update in one kernel (in place, versions bumped),
    and with ``nbt`` (BatchNorm's int64 ``num_batches_tracked``, on the same device) its
    ``+= 1`` too; False (nothing done) unless every tensor is on the GPU with the batch
    statistics' dtype, contiguous, and the fused batch_norm is installed."""
    if OPS["_batch_norm"].cuda_impl is not BatchNormImpl:
        return False
    runs = [t for t in (running_mean, running_var) if t is not None]
    if not runs or mean._device.type != "cuda":
        return False
    dt = mean._data.dtype
    ct = K.dtype_ctype(dt)
    if ct is None or var._data.dtype != dt or any(
            t._device is not mean._device or t._data.dtype != dt or
            not t._data.flags.c_contiguous or t._data.shape != mean._data.shape for t in runs):
        return False
    if nbt is not None and (nbt._device is not mean._device or nbt._data.dtype != np.int64
                            or nbt._data.size != 1):
        return False
    c = mean._data.size
    rm = running_mean._data if running_mean is not None else mean._data
    rv = running_var._data if running_var is not None else var._data
    K.function("batchnorm", "bn_running", f"{ct}, {ct}")(
        ((c + 127) // 128, 1, 1), (128, 1, 1),
        (rm, rv, mean._data, var._data, K.i32(c), K.f32(momentum), K.f32(n / max(n - 1, 1)),
         K.i32(running_mean is not None), K.i32(running_var is not None),
         nbt._data if nbt is not None else np.uint64(0)))
    for t in runs if nbt is None else runs + [nbt]:
        t._version[0] += 1
    return True


IMPLS = {"_batch_norm": BatchNormImpl, "_batch_norm_relu": BatchNormReluImpl}
