"""Scaled dot-product attention on cuDNN's fused flash kernels (forward and backward).

Covers float16/bfloat16 ``(B, H, L, E)`` query/key/value with equal head counts, an
optional causal mask (top-left aligned, like torch) and any scale. Everything else --
float32, an explicit ``attn_mask``, dropout, grouped-query heads, head dims cuDNN rejects --
returns ``NotImplemented`` and runs the generic code.

Layout: operands are declared to cuDNN with their own strides, so the usual
``qkv.view(B, T, H, D).transpose(1, 2)`` views (BSHD memory) need no copy. The output and
the gradients are allocated BSHD too, which makes the caller's
``out.transpose(1, 2).reshape(B, T, H * D)`` a free view.

Saved state: the generic backward reads ``ctx.saved == (query, key, value, attn_mask)``,
``ctx.info`` and ``ctx.keep`` (its double-backward path), so those are set exactly as the
generic forward sets them; cuDNN's output and softmax statistics live on
``ctx.cudnn_o``/``ctx.cudnn_stats`` for the fused backward.
"""
from __future__ import annotations

import math
from typing import Any

from ember.backend.cuda_ops import _cudnn


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


def _build_fwd(h: Any, dt: Any, shapes: tuple, strides: tuple, scale: float,
               causal: bool) -> _cudnn.Built:
    DT = _cudnn.cudnn.data_type
    g = _cudnn.new_graph(h, dt)
    q = g.tensor(name="Q", dim=list(shapes[0]), stride=list(strides[0]), data_type=dt)
    k = g.tensor(name="K", dim=list(shapes[1]), stride=list(strides[1]), data_type=dt)
    v = g.tensor(name="V", dim=list(shapes[2]), stride=list(strides[2]), data_type=dt)
    o, stats = g.sdpa(q=q, k=k, v=v, generate_stats=True, attn_scale=scale,
                      use_causal_mask=causal)
    o.set_output(True).set_data_type(dt).set_dim(list(shapes[3])).set_stride(list(strides[3]))
    stats.set_output(True).set_data_type(DT.FLOAT)
    _cudnn.finalize(g)
    return _cudnn.Built(g, [q, k, v, o, stats])


def _build_bwd(h: Any, dt: Any, shapes: tuple, strides: tuple, scale: float,
               causal: bool) -> _cudnn.Built:
    DT = _cudnn.cudnn.data_type
    g = _cudnn.new_graph(h, dt)
    names = ("Q", "K", "V", "O", "dO")
    ts = [g.tensor(name=n, dim=list(shapes[i]), stride=list(strides[i]), data_type=dt)
          for i, n in enumerate(names)]
    b, hh, sq, _ = shapes[0]
    stats = g.tensor(name="Stats", dim=[b, hh, sq, 1], stride=[hh * sq, sq, 1, 1],
                     data_type=DT.FLOAT)
    dq, dk, dv = g.sdpa_backward(q=ts[0], k=ts[1], v=ts[2], o=ts[3], dO=ts[4], stats=stats,
                                 attn_scale=scale, use_causal_mask=causal)
    for t, i in ((dq, 5), (dk, 6), (dv, 7)):
        t.set_output(True).set_data_type(dt).set_dim(list(shapes[i])).set_stride(
            list(strides[i]))
    _cudnn.finalize(g)
    return _cudnn.Built(g, ts + [stats, dq, dk, dv])


class CudnnSDPA:
    """``scaled_dot_product_attention`` on cuDNN (flash forward, fused backward)."""

    def forward(ctx, xp, query, key, value, attn_mask, dropout_p, is_causal, scale,
                enable_gqa):
        if attn_mask is not None or dropout_p > 0.0 or query.ndim != 4 or \
                key.ndim != 4 or value.ndim != 4 or query.dtype.name not in ("float16",
                                                                             "bfloat16"):
            return NotImplemented
        if not (query.dtype == key.dtype == value.dtype) or \
                key.shape[:2] != query.shape[:2] or value.shape[:2] != query.shape[:2]:
            return NotImplemented
        b, h, sq, d = query.shape
        skv, dv = key.shape[2], value.shape[3]
        if min(b, h, sq, skv, d, dv) == 0 or d % 8 or dv % 8 or d > 256 or dv > 256:
            return NotImplemented
        s = 1.0 / math.sqrt(d) if scale is None else float(scale)
        q, sqs = _operand(xp, query)
        k, sks = _operand(xp, key)
        v, svs = _operand(xp, value)
        o = _bshd(xp, b, h, sq, dv, query.dtype)
        stats = xp.empty((b, h, sq, 1), dtype=xp.float32)
        dt = _cudnn.data_type(query.dtype)
        shapes = (q.shape, k.shape, v.shape, o.shape)
        strides = (sqs, sks, svs, _cudnn.elem_strides(o))
        dev = xp.cuda.runtime.getDevice()
        key_ = ("sdpa_fwd", shapes, strides, query.dtype.str, s, bool(is_causal), dev)
        hd = _cudnn.handle(xp)
        built = _cudnn.cached(key_, lambda: _build_fwd(hd, dt, shapes, strides, s,
                                                       bool(is_causal)))
        if built is None:
            return NotImplemented
        built.execute(xp, hd, [q.data.ptr, k.data.ptr, v.data.ptr, o.data.ptr,
                               stats.data.ptr])
        need = ctx.needs_input_grad
        if need[0] or need[1] or need[2]:  # not the shared no-grad ctx: keep nothing there
            # the layout the generic backward (double backward) reads
            ctx.info = (s, False, h, bool(is_causal), False)
            ctx.keep = None
            ctx.p = None
            ctx.cudnn_o = o
            ctx.cudnn_stats = stats
            ctx.save(query, key, value, None)
        return o

    def backward(ctx, grad):
        query, key, value, _ = ctx.saved
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
        b, h, sq, d = q.shape
        dq = _bshd(cp, b, h, sq, d, q.dtype)
        dk = _bshd(cp, b, h, k.shape[2], k.shape[3], q.dtype)
        dv = _bshd(cp, b, h, v.shape[2], v.shape[3], q.dtype)
        shapes = (q.shape, k.shape, v.shape, o.shape, do.shape, dq.shape, dk.shape, dv.shape)
        strides = (sqs, sks, svs, _cudnn.elem_strides(o), sdo, _cudnn.elem_strides(dq),
                   _cudnn.elem_strides(dk), _cudnn.elem_strides(dv))
        dt = _cudnn.data_type(q.dtype)
        dev = cp.cuda.runtime.getDevice()
        key_ = ("sdpa_bwd", shapes, strides, q.dtype.str, s, causal, dev)
        hd = _cudnn.handle(cp)
        built = _cudnn.cached(key_, lambda: _build_bwd(hd, dt, shapes, strides, s, causal))
        if built is None:
            # the forward ran on cuDNN; differentiate the reference decomposition instead
            from ember.ops.nn_attention import _decomposition_vjp
            return _decomposition_vjp(ctx, grad, query, key, value, None)
        built.execute(cp, hd, [q.data.ptr, k.data.ptr, v.data.ptr, o.data.ptr, do.data.ptr,
                               ctx.cudnn_stats.data.ptr, dq.data.ptr, dk.data.ptr,
                               dv.data.ptr])
        from ember.tensor import _make
        return (_make(dq, query._dtype, query._device), _make(dk, key._dtype, key._device),
                _make(dv, value._dtype, value._device), None, None, None, None, None)


IMPLS = {"scaled_dot_product_attention": CudnnSDPA} if _cudnn.available() else {}
