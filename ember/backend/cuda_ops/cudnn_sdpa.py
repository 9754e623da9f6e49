"""Scaled dot-product attention on cuDNN's fused flash kernels (forward and backward).

Covers float16/bfloat16 ``(B, H, L, E)`` query/key/value, any scale, and:

- ``is_causal`` (top-left aligned, like torch);
- ``attn_mask``, bool (True = take part) or float (added to the scores), broadcastable to
  ``(B, H, L, S)``: passed to cuDNN as its additive ``bias`` in the query dtype (a bool mask
  becomes 0 / -inf). Batch and head dims of size 1 or stride 0 stay broadcast (cuDNN takes
  ``(1|B, 1|H, L, S)``); a mask broadcast over L or S, or not laid out in 16-byte rows, is
  materialised once. Rows with every key masked give zeros (torch's safe softmax), not NaN.
  A float mask that requires grad runs the generic code (cuDNN's dBias is not wired);
- ``dropout_p`` in (0, 1): cuDNN's Philox dropout. Its (seed, offset) comes from the device's
  default CUDA generator, which advances by one draw per call exactly as the generic path's
  ``rand`` does, so ``ember.manual_seed`` reproduces a mask and successive calls differ. The
  mask itself differs from the generic path's (another sampler, as torch's flash kernel has
  its own RNG stream); the backward replays it from the seed saved on ctx;
- ``enable_gqa``: key/value with ``H_kv`` heads dividing the query's ``H`` (cuDNN reads the
  shared heads itself; no ``repeat``).

Everything else -- float32, head dims cuDNN rejects, graphs whose build cuDNN refuses --
returns ``NotImplemented`` and runs the generic code.

Layout: operands are declared to cuDNN with their own strides, so the usual
``qkv.view(B, T, H, D).transpose(1, 2)`` views (BSHD memory) need no copy. The output and
the gradients are allocated BSHD too, which makes the caller's
``out.transpose(1, 2).reshape(B, T, H * D)`` a free view.

Saved state: the generic backward (run for double backward) reads ``ctx.saved == (query,
key, value, attn_mask)``, ``ctx.info`` and ``ctx.keep``, so those are set as the generic
forward sets them, with one difference: under dropout ``ctx.keep`` stays None (the mask is
never stored) and ``ctx.keep_fn()`` rebuilds the same ``keep / (1 - p)`` array on demand
from cuDNN's RNG dump with the saved seed. cuDNN's output, softmax statistics, bias and RNG
seed live on ``ctx.cudnn_o``/``cudnn_stats``/``cudnn_bias``/``cudnn_rng`` for the fused
backward. ``CALLS`` counts the fused forwards and backwards that ran (tests read it).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ember.backend.cuda_ops import _cudnn
from ember.backend.cuda_ops import _nvrtc

CALLS = {"forward": 0, "backward": 0}


def _bshd(cp: Any, b: int, h: int, s: int, d: int, dtype: Any) -> Any:
    """A new ``(B, H, S, D)`` array stored as ``(B, S, H, D)``."""
    return cp.empty((b, s, h, d), dtype=dtype).transpose(0, 2, 1, 3)


def _operand(cp: Any, a: Any) -> tuple:
    """``a`` with a unit last stride and 16-byte alignment (a copy otherwise), and its
    element strides."""
    st = _cudnn.elem_strides(a)
    if st[-1] != 1 or a.data.ptr % 16 or any(s < 0 for s in st) or \
            any((s * a.itemsize) % 16 for s in st[:-1]):
        b, h, s, d = a.shape
        out = _bshd(cp, b, h, s, d, a.dtype)
        out[...] = a
        a, st = out, _cudnn.elem_strides(out)
    return a, st


def _grads_like_base(cp: Any, q: Any, k: Any, v: Any) -> tuple | None:
    """``(dq, dk, dv)`` as views of one new array laid out like the array that ``q``, ``k``
    and ``v`` are views of, when together they are all of it (a fused qkv projection split
    in three), else None. The gradients then lie side by side as the projection's output
    does, and split's backward joins them without a copy (a ~60 us copy per GPT-2 layer)."""
    base = q.base   # e.g. a linear layer's (B, T, 3C) output (C or F order)
    if base is None or k.base is not base or v.base is not base or \
            not (base.flags.c_contiguous or base.flags.f_contiguous) or \
            q.size + k.size + v.size != base.size or \
            not (q.dtype == k.dtype == v.dtype == base.dtype):
        return None
    out = cp.empty_like(base)   # order 'K': the same strides
    if out.strides != base.strides:
        return None
    start = base.data.ptr

    def like(a: Any) -> Any:
        return cp.ndarray(a.shape, a.dtype, memptr=out.data + (a.data.ptr - start),
                          strides=a.strides)
    return like(q), like(k), like(v)


def _packed_strides(shape: tuple, strides: tuple) -> tuple:
    """``strides`` with those of size-1 dims replaced by row-major values (any value is valid
    for them; cuDNN's validation prefers consistent ones)."""
    st = list(strides)
    for i in range(len(shape) - 2, -1, -1):
        if shape[i] == 1:
            st[i] = st[i + 1] * shape[i + 1]
    return tuple(st)


def _bias(xp: Any, mask: Any, b: int, h: int, sq: int, skv: int, dtype: Any) -> Any:
    """``attn_mask`` as cuDNN's additive bias ``(1|B, 1|H, Lq, Lk)`` in ``dtype``; None when it
    does not broadcast that way."""
    if mask.ndim > 4:
        return None
    m = mask[(None,) * (4 - mask.ndim)]
    # broadcast batch/head dims (size 1 or stride 0) stay size 1: cuDNN broadcasts those
    m = m[tuple(slice(0, 1) if m.shape[i] == 1 or m.strides[i] == 0 else slice(None)
                for i in range(2))]
    mb, mh, ml, ms = m.shape
    if mb not in (1, b) or mh not in (1, h) or ml not in (1, sq) or ms not in (1, skv):
        return None
    isz = np.dtype(dtype).itemsize
    if m.dtype == dtype and ml == sq and ms == skv and m.strides[3] == isz and \
            m.data.ptr % 16 == 0 and \
            all(st > 0 and st % 16 == 0 for st, n in zip(m.strides[:3], m.shape[:3]) if n > 1):
        return m  # the caller's float mask as it is
    # a copy with 16-byte rows: broadcast over L or S materialised, bool -> 0 / -inf
    pad = -(-skv // 8) * 8
    out = xp.empty((mb, mh, sq, pad), dtype=dtype)[..., :skv]
    if m.dtype == bool:
        out[...] = xp.where(m, xp.float32(0), xp.float32(-math.inf))
    else:
        out[...] = m
    return out


def _signature(a: Any) -> tuple:
    return (a.shape, _packed_strides(a.shape, _cudnn.elem_strides(a))) if a is not None else None


def _rng_tensors(g: Any) -> tuple:
    DT = _cudnn.cudnn.data_type
    seed = g.tensor(name="Seed", dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=DT.INT64)
    off = g.tensor(name="Offset", dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=DT.INT64)
    return seed, off


def _build_fwd(h: Any, dt: Any, shapes: tuple, strides: tuple, scale: float, causal: bool,
               bias: tuple | None, p: float, dump: bool) -> _cudnn.Built:
    """Forward graph; operands in execute order: Q, K, V, [Bias], [Seed, Offset], O, Stats,
    [RngDump]."""
    DT = _cudnn.cudnn.data_type
    g = _cudnn.new_graph(h, dt)
    q = g.tensor(name="Q", dim=list(shapes[0]), stride=list(strides[0]), data_type=dt)
    k = g.tensor(name="K", dim=list(shapes[1]), stride=list(strides[1]), data_type=dt)
    v = g.tensor(name="V", dim=list(shapes[2]), stride=list(strides[2]), data_type=dt)
    ins = [q, k, v]
    kw: dict = {}
    if bias is not None:
        kw["bias"] = g.tensor(name="Bias", dim=list(bias[0]), stride=list(bias[1]),
                              data_type=dt)
        ins.append(kw["bias"])
    rd = None
    if p > 0.0:
        seed, off = _rng_tensors(g)
        kw["dropout"] = (p, seed, off)
        ins += [seed, off]
        if dump:
            b, hh, sq, _ = shapes[0]
            skv = shapes[1][2]
            rd = g.tensor(name="RngDump", dim=[b, hh, sq, skv],
                          stride=[hh * sq * skv, sq * skv, skv, 1], data_type=DT.FLOAT)
            kw["rng_dump"] = rd
    o, stats = g.sdpa(q=q, k=k, v=v, generate_stats=True, attn_scale=scale,
                      use_causal_mask=causal, **kw)
    o.set_output(True).set_data_type(dt).set_dim(list(shapes[3])).set_stride(list(strides[3]))
    stats.set_output(True).set_data_type(DT.FLOAT)
    _cudnn.finalize(g)
    return _cudnn.Built(g, ins + [o, stats] + ([rd] if rd is not None else []))


def _build_bwd(h: Any, dt: Any, shapes: tuple, strides: tuple, scale: float, causal: bool,
               bias: tuple | None, p: float) -> _cudnn.Built:
    """Backward graph; operands in execute order: Q, K, V, O, dO, Stats, [Bias],
    [Seed, Offset], dQ, dK, dV."""
    DT = _cudnn.cudnn.data_type
    g = _cudnn.new_graph(h, dt)
    names = ("Q", "K", "V", "O", "dO")
    ts = [g.tensor(name=n, dim=list(shapes[i]), stride=list(strides[i]), data_type=dt)
          for i, n in enumerate(names)]
    b, hh, sq, _ = shapes[0]
    stats = g.tensor(name="Stats", dim=[b, hh, sq, 1], stride=[hh * sq, sq, 1, 1],
                     data_type=DT.FLOAT)
    ins = ts + [stats]
    kw: dict = {}
    if bias is not None:
        kw["bias"] = g.tensor(name="Bias", dim=list(bias[0]), stride=list(bias[1]),
                              data_type=dt)
        ins.append(kw["bias"])
    if p > 0.0:
        seed, off = _rng_tensors(g)
        kw["dropout"] = (p, seed, off)
        ins += [seed, off]
    dq, dk, dv = g.sdpa_backward(q=ts[0], k=ts[1], v=ts[2], o=ts[3], dO=ts[4], stats=stats,
                                 attn_scale=scale, use_causal_mask=causal, **kw)
    for t, i in ((dq, 5), (dk, 6), (dv, 7)):
        t.set_output(True).set_data_type(dt).set_dim(list(shapes[i])).set_stride(
            list(strides[i]))
    _cudnn.finalize(g)
    return _cudnn.Built(g, ins + [dq, dk, dv])


def _extra_ptrs(bias: Any, rng: Any) -> list:
    ptrs = [bias.data.ptr] if bias is not None else []
    if rng is not None:  # seed at element 0, offset at element 2 (16-byte aligned)
        ptrs += [rng.data.ptr, rng.data.ptr + 16]
    return ptrs


def _run_forward(xp: Any, q: Any, k: Any, v: Any, bias: Any, rng: Any, s: float,
                 causal: bool, p: float, dump: bool = False) -> tuple | None:
    """``(o, stats, rng_dump or None, rng)`` from cuDNN, or None when cuDNN rejects the graph.
    ``rng`` (dropout only) is the seed array, or a callable that draws one: it is called
    only once the graph is known to build, so a fallback does not advance the generator
    twice (the generic path draws its own)."""
    b, h, sq, _ = q.shape
    dt = _cudnn.data_type(q.dtype)
    qo, sqs = _operand(xp, q)
    ko, sks = _operand(xp, k)
    vo, svs = _operand(xp, v)
    o = _bshd(xp, b, h, sq, v.shape[3], q.dtype)
    shapes = (qo.shape, ko.shape, vo.shape, o.shape)
    strides = (sqs, sks, svs, _cudnn.elem_strides(o))
    bsig = _signature(bias)
    dev = xp.cuda.runtime.getDevice()
    key_ = ("sdpa_fwd", shapes, strides, q.dtype.str, s, causal, bsig, p, dump, dev)
    hd = _cudnn.handle(xp)
    built = _cudnn.cached(key_, lambda: _build_fwd(hd, dt, shapes, strides, s, causal, bsig,
                                                   p, dump))
    if built is None:
        return None
    if callable(rng):
        rng = rng()
    stats = xp.empty((b, h, sq, 1), dtype=xp.float32)
    # zeros: cuDNN may skip tiles the causal mask hides, leaving their dump unwritten
    rd = xp.zeros((b, h, sq, k.shape[2]), dtype=xp.float32) if dump else None
    built.execute(xp, hd, [qo.data.ptr, ko.data.ptr, vo.data.ptr] + _extra_ptrs(bias, rng) +
                  [o.data.ptr, stats.data.ptr] + ([rd.data.ptr] if dump else []))
    if bias is not None:
        # Rows with every key masked: cuDNN's statistics come out -inf or NaN (and O with
        # them). torch's safe softmax gives 0 there; Stats = 0 makes the backward's
        # exp(-inf - Stats) = 0 too, so those rows get zero gradients as well.
        bad = ~xp.isfinite(stats)
        bits = xp.ndarray(o.shape, dtype=xp.uint16, memptr=o.data, strides=o.strides)
        xp.copyto(bits, xp.uint16(0), where=bad)  # +0.0 in float16 and bfloat16 alike
        xp.copyto(stats, xp.float32(0), where=bad)
    return o, stats, rd, rng


def _draw_rng(xp: Any, query: Any) -> Any:
    """A fresh Philox seed from the device's default CUDA generator (one draw, like the
    generic path's ``rand``), as the int64 device array the graphs read (seed, -, offset, -)."""
    from ember.backend import device_of_array
    from ember.backend.cuda_ops.kernels_dropout import next_key
    seed = next_key(device_of_array(query)) >> 1  # 63 bits: cuDNN's seed is a signed int64
    from ember.backend.cuda_ops._upload import to_device
    return to_device(xp, np.array([seed, 0, 0, 0], dtype=np.int64))


class CudnnSDPA:
    """``scaled_dot_product_attention`` on cuDNN (flash forward, fused backward)."""

    def forward(ctx, xp, query, key, value, attn_mask, dropout_p, is_causal, scale,
                enable_gqa):
        if query.ndim != 4 or key.ndim != 4 or value.ndim != 4 or \
                _nvrtc.dtype_name(query.dtype) not in ("float16", "bfloat16") or \
                not (query.dtype == key.dtype == value.dtype):
            return NotImplemented
        b, h, sq, d = query.shape
        hk, skv = key.shape[1], key.shape[2]
        hv, dv = value.shape[1], value.shape[3]
        if key.shape[0] != b or value.shape[0] != b:
            return NotImplemented
        if enable_gqa:
            if hk == 0 or hv == 0 or h % hk or h % hv:
                return NotImplemented
        elif hk != h or hv != h:
            return NotImplemented  # broadcast heads: the generic code
        if min(b, h, sq, skv, d, dv) == 0 or d % 8 or dv % 8 or d > 256 or dv > 256:
            return NotImplemented
        p = float(dropout_p)
        if p >= 1.0:
            return NotImplemented  # cuDNN's 1 / (1 - p) is undefined; the generic gives 0
        need = ctx.needs_input_grad
        float_mask = attn_mask is not None and attn_mask.dtype != bool
        if float_mask and need[3]:
            return NotImplemented  # dBias is not wired: the generic code differentiates it
        bias = None
        if attn_mask is not None:
            bias = _bias(xp, attn_mask, b, h, sq, skv, query.dtype)
            if bias is None:
                return NotImplemented
        s = 1.0 / math.sqrt(d) if scale is None else float(scale)
        causal = bool(is_causal)
        draw = (lambda: _draw_rng(xp, query)) if p > 0.0 else None
        res = _run_forward(xp, query, key, value, bias, draw, s, causal, p)
        if res is None:
            return NotImplemented
        o, stats, _, rng = res
        CALLS["forward"] += 1
        if need[0] or need[1] or need[2]:  # not the shared no-grad ctx: keep nothing there
            # the layout the generic backward (double backward) reads
            ctx.info = (s, bool(enable_gqa), h, causal, float_mask)
            ctx.keep = None
            ctx.p = None
            ctx.cudnn_o = o
            ctx.cudnn_stats = stats
            ctx.cudnn_bias = bias
            ctx.cudnn_rng = rng
            ctx.cudnn_dropout = p
            if p > 0.0:
                ctx.keep_fn = _KeepFn(query, key, value, bias, rng, s, causal, p)
            ctx.save(query, key, value, attn_mask)
        return o

    def backward(ctx, grad):
        query, key, value, mask = ctx.saved
        s, _gqa, _h, causal, _fm = ctx.info
        from ember.backend import get_xp
        cp = get_xp(grad.device)
        qa, ka, va = query._data, key._data, value._data
        g = grad._data
        if g.dtype != qa.dtype:
            g = g.astype(qa.dtype)
        q, sqs = _operand(cp, qa)
        k, sks = _operand(cp, ka)
        v, svs = _operand(cp, va)
        o = ctx.cudnn_o
        do, sdo = _operand(cp, g)
        bias, rng, p = ctx.cudnn_bias, ctx.cudnn_rng, ctx.cudnn_dropout
        b, h, sq, d = q.shape
        grads = _grads_like_base(cp, q, k, v)
        if grads is not None:
            dq, dk, dv = grads
        else:
            dq = _bshd(cp, b, h, sq, d, q.dtype)
            dk = _bshd(cp, b, k.shape[1], k.shape[2], k.shape[3], q.dtype)
            dv = _bshd(cp, b, v.shape[1], v.shape[2], v.shape[3], q.dtype)
        shapes = (q.shape, k.shape, v.shape, o.shape, do.shape, dq.shape, dk.shape, dv.shape)
        strides = (sqs, sks, svs, _cudnn.elem_strides(o), sdo, _cudnn.elem_strides(dq),
                   _cudnn.elem_strides(dk), _cudnn.elem_strides(dv))
        dt = _cudnn.data_type(q.dtype)
        bsig = _signature(bias)
        dev = cp.cuda.runtime.getDevice()
        key_ = ("sdpa_bwd", shapes, strides, q.dtype.str, s, causal, bsig, p, dev)
        hd = _cudnn.handle(cp)
        built = _cudnn.cached(key_, lambda: _build_bwd(hd, dt, shapes, strides, s, causal,
                                                       bsig, p))
        if built is None:
            # the forward ran on cuDNN; differentiate the reference decomposition instead
            # (under dropout it replays cuDNN's mask through ctx.keep_fn)
            from ember.ops.nn_attention import _decomposition_vjp
            return _decomposition_vjp(ctx, grad, query, key, value, mask)
        built.execute(cp, hd, [q.data.ptr, k.data.ptr, v.data.ptr, o.data.ptr, do.data.ptr,
                               ctx.cudnn_stats.data.ptr] + _extra_ptrs(bias, rng) +
                      [dq.data.ptr, dk.data.ptr, dv.data.ptr])
        CALLS["backward"] += 1
        from ember.tensor import _make
        return (_make(dq, query._dtype, query._device), _make(dk, key._dtype, key._device),
                _make(dv, value._dtype, value._device), None, None, None, None, None)


class _KeepFn:
    """``ctx.keep_fn``: the forward's dropout mask as the generic ``keep`` array
    (``mask / (1 - p)``, float32, ``(B, H, Lq, Lk)``), rebuilt from cuDNN's RNG dump with the
    saved seed; built only when the generic backward asks (double backward), so the fused
    path never stores an ``L x S`` array."""

    __slots__ = ("args",)

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __call__(self) -> Any:
        import cupy as cp
        q, k, v, bias, rng, s, causal, p = self.args
        res = _run_forward(cp, q, k, v, bias, rng, s, causal, p, dump=True)
        if res is None:
            raise RuntimeError("[scaled_dot_product_attention] cuDNN rejected the graph that "
                               "replays the dropout mask (needed for double backward through "
                               "the fused path)")
        return res[2] * cp.float32(1.0 / (1.0 - p))


IMPLS = {"scaled_dot_product_attention": CudnnSDPA} if _cudnn.available() else {}
