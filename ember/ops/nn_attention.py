"""Scaled dot-product attention: a primitive with a fused forward (scores, mask, stable
softmax, dropout, weighted sum in one pass) and a fused backward.

The decomposition in ember ops (:func:`sdpa_decomposition`) is the reference the tests
compare against, and the backward falls back on it when a graph of the backward is wanted
(``create_graph=True``), so double backward stays exact.
"""
from __future__ import annotations

import math
from typing import Any

from ember import dtypes as _dt
from ember._state import _State
from ember.backend import cpu_attention_kernels, cpu_kernels
from ember.backend.cpu import gemm_threads, parallel_rows
from ember.backend.cpu_kernels import blas_spinning
from ember.errors import check, make
from ember.ops import meta as M
from ember.ops.registry import OpDef, TensorMeta, register
from ember.tensor import Tensor, _make

_OP = "scaled_dot_product_attention"


def _sdpa_meta(op: Any, query: Any, key: Any, value: Any, attn_mask: Any = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: Any = None,
               enable_gqa: bool = False) -> TensorMeta:
    # the checks' messages are formatted only on failure (this runs on every call)
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            check(False, _OP, f"argument '{name}' must be Tensor, not {type(t).__name__}",
                  TypeError)
        if t._data.ndim < 2:
            check(False, _OP, f"{name} must have at least 2 dims (..., L, E), got shape "
                              f"{tuple(t._data.shape)}")
    q, k, v = query._data, key._data, value._data
    if not (query._dtype is key._dtype is value._dtype):
        raise make(RuntimeError, _OP,
                   f"Expected query, key, and value to have the same dtype, but got "
                   f"query.dtype: {query._dtype.name} key.dtype: {key._dtype.name} and "
                   f"value.dtype: {value._dtype.name} instead.")
    if query._dtype.category < 2:
        check(False, _OP, f"query, key and value must be floating point, got "
                          f"{query._dtype.name}")
    if q.shape[-1] != k.shape[-1]:
        check(False, _OP, f"query and key must have the same embedding size (last dim): "
                          f"query {tuple(q.shape)}, key {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        check(False, _OP, f"key and value must have the same sequence length (dim -2): key "
                          f"{tuple(k.shape)}, value {tuple(v.shape)}")
    if not 0.0 <= dropout_p <= 1.0:
        check(False, _OP, f"dropout_p must be in [0, 1], got {dropout_p}")
    if is_causal and attn_mask is not None:
        raise make(RuntimeError, _OP,
                   "_scaled_dot_product_attention: Explicit attn_mask should not be set when "
                   "is_causal=True")
    kb, vb = k.shape[:-2], v.shape[:-2]
    if enable_gqa and q.ndim >= 3 and k.ndim >= 3:
        hq, hk, hv = q.shape[-3], k.shape[-3], v.shape[-3]
        if hk == 0 or hv == 0 or hq % hk or hq % hv:
            raise make(RuntimeError, _OP,
                       f"Number of heads in key and value must divide the number of heads in "
                       f"query: query {tuple(q.shape)}, key {tuple(k.shape)}, value "
                       f"{tuple(v.shape)}")
        kb = kb[:-1] + (hq,)
        vb = vb[:-1] + (hq,)
    batch = M.broadcast_shapes(_OP, q.shape[:-2], kb, vb)
    L, S = q.shape[-2], k.shape[-2]
    if attn_mask is not None:
        check(isinstance(attn_mask, Tensor), _OP, "attn_mask must be a Tensor or None", TypeError)
        am = attn_mask._data
        check(attn_mask._dtype is _dt.bool or attn_mask._dtype is query._dtype, _OP,
              f"Expected attn_mask dtype to be bool or {query._dtype.name} (the query's dtype), "
              f"but got attn_mask.dtype: {attn_mask._dtype.name}")
        try:
            M.broadcast_shapes(_OP, am.shape, batch + (L, S))
        except RuntimeError:
            raise make(RuntimeError, _OP,
                       f"attn_mask of shape {tuple(am.shape)} does not broadcast to the "
                       f"attention scores' shape {batch + (L, S)}") from None
    return TensorMeta(batch + (L, v.shape[-1]))


def _expand_heads(xp: Any, x: Any, hq: int) -> Any:
    rep = hq // x.shape[-3]
    return x if rep == 1 else xp.repeat(x, rep, axis=-3)


def _causal(xp: Any, L: int, S: int) -> Any:
    # torch aligns the causal mask top-left: query i sees keys 0..i
    return xp.tril(xp.ones((L, S), dtype=bool))


def _out_buffer(xp: Any, shape: tuple, dtype: Any, query: Any) -> Any:
    """An empty attention output. A 4-d query laid out (batch, L, heads, E), the usual view
    of a fused qkv projection, gets its output in that layout too, as torch's CPU kernel
    does: the caller's ``transpose(1, 2).reshape(B, L, heads * E)`` is then a view."""
    if len(shape) != 4 or query.ndim != 4 or query.strides[1] >= query.strides[2] or \
            xp.__name__ != "numpy":
        return xp.empty(shape, dtype)
    b, h, n, e = shape
    return xp.empty((b, n, h, e), dtype).transpose(0, 2, 1, 3)


def _mm(xp: Any, a: Any, b: Any) -> Any:
    """``a @ b``; on the GPU through cuBLASLt where a CUDA graph capture needs it (CuPy's
    cuBLAS matmul refuses to run while a stream captures)."""
    if xp.__name__ == "numpy":
        return xp.matmul(a, b)
    from ember.backend.cuda_ops.nvmath_linear import batched_matmul
    return batched_matmul(xp, a, b)


def _weighted_sum(xp: Any, p: Any, v: Any, query: Any) -> Any:
    """``p @ v`` into :func:`_out_buffer`."""
    shape = xp.broadcast_shapes(p.shape[:-2], v.shape[:-2]) + (p.shape[-2], v.shape[-1])
    if xp.__name__ != "numpy":
        return _mm(xp, p, v)
    return xp.matmul(p, v, out=_out_buffer(xp, shape, xp.result_type(p, v), query))


def _row_sum(xp: Any, a: Any) -> Any:
    """``a.sum(-1, keepdims=True)``; on NumPy one GEMV against ones over all rows, ~5x faster
    than a reduction over short rows (64 keys)."""
    if xp.__name__ != "numpy" or not a.flags.c_contiguous or a.ndim < 2 or not a.size:
        return a.sum(axis=-1, keepdims=True)
    n = a.shape[-1]
    return (a.reshape(-1, n) @ xp.ones((n, 1), a.dtype)).reshape(a.shape[:-1] + (1,))


_CAUSAL_BIAS: dict = {}


def _causal_bias(xp: Any, L: int, S: int, dtype: Any) -> Any:
    """The causal mask as an additive ``(L, S)`` bias (0 or -inf), cached for NumPy: one
    broadcast add in place instead of a ``where`` that allocates (and is ~6x slower)."""
    key = (L, S, dtype)
    bias = _CAUSAL_BIAS.get(key) if xp.__name__ == "numpy" else None
    if bias is None:
        bias = xp.where(_causal(xp, L, S), 0.0, -xp.inf).astype(dtype)
        if xp.__name__ == "numpy":
            bias.flags.writeable = False
            if len(_CAUSAL_BIAS) > 64:
                _CAUSAL_BIAS.clear()
            _CAUSAL_BIAS[key] = bias
    return bias


@register(_OP, meta=_sdpa_meta, method=False, onnx=None, node_name="ScaledDotProductAttention",
          sig="query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, "
              "enable_gqa=False")
class ScaledDotProductAttention(OpDef):
    """``softmax(q @ k^T * scale + mask) @ v`` (with dropout on the weights).

    Args:
        query: ``(..., Hq, L, E)``; key ``(..., Hk, S, E)``; value ``(..., Hk, S, Ev)``.
        attn_mask: bool (True = take part) or float (added to the scores), broadcastable to
            ``(..., L, S)``.
        dropout_p: dropout probability on the attention weights.
        is_causal: apply a top-left causal mask (query ``i`` sees keys ``0..i``).
        scale: defaults to ``1/sqrt(E)``.
        enable_gqa: key/value heads are shared by groups of ``Hq // Hk`` query heads.
    """

    def forward(ctx, xp, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        s = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
        hq = query.shape[-3] if query.ndim >= 3 else 1
        gqa = enable_gqa and query.ndim >= 3 and key.ndim >= 3
        k = _expand_heads(xp, key, hq) if gqa else key
        v = _expand_heads(xp, value, hq) if gqa else value
        # half types accumulate in float32, like torch's CPU math kernels
        work = xp.float32 if query.dtype.itemsize < 4 else query.dtype
        qw, kw, vw = (a.astype(work, copy=False) for a in (query, k, v))
        L, S = qw.shape[-2], kw.shape[-2]
        if attn_mask is None and dropout_p == 0.0:
            fused = _fused_kernels(xp, qw, kw, vw)
            if fused is not None:
                out = _out_buffer(xp, qw.shape[:3] + (vw.shape[3],), qw.dtype, query)
                ctx.p = _FusedWeights(fused.forward(qw, kw, vw, out, s, is_causal))
                ctx.info = (s, gqa, hq, is_causal, False)
                ctx.keep = None
                ctx.save(query, key, value, attn_mask)
                return out.astype(query.dtype, copy=False)
        if attn_mask is None and dropout_p == 0.0 and _batch_split(xp, qw, kw, vw):
            out, p = _forward_by_batch(xp, qw, kw, vw, s, is_causal, query)
            ctx.info = (s, gqa, hq, is_causal, False)
            ctx.p, ctx.keep = p, None
            out = out.astype(query.dtype, copy=False)
            # the output as well (a 5th saved value: backward's row sums of dO * O)
            ctx.save(query, key, value, attn_mask, out if out.dtype == work else None)
            return out
        scores = _mm(xp, qw, xp.swapaxes(kw, -1, -2))
        scores *= s
        if is_causal:
            scores += _causal_bias(xp, L, S, scores.dtype)
        if attn_mask is not None:
            if attn_mask.dtype == bool:
                scores = xp.where(attn_mask, scores, -xp.inf)
            else:
                scores = scores + attn_mask.astype(work, copy=False)
        p = _softmax_(xp, scores)
        keep = None
        if dropout_p > 0.0:
            import ember
            u = ember.rand(p.shape, dtype=_dt._FROM_NP[xp.dtype(work)],
                           device=_device_of(query))._data
            keep = (u >= dropout_p).astype(work) / (1.0 - dropout_p) if dropout_p < 1.0 \
                else xp.zeros(p.shape, work)
            pd = p * keep
        else:
            pd = p
        out = _weighted_sum(xp, pd, vw, query).astype(query.dtype, copy=False)
        ctx.info = (s, gqa, hq, is_causal, attn_mask is not None and attn_mask.dtype != bool)
        ctx.p, ctx.keep = p, keep
        ctx.save(query, key, value, attn_mask)
        return out

    def backward(ctx, grad):
        saved = ctx.saved
        query, key, value, attn_mask = saved[:4]
        s, gqa, hq, is_causal, float_mask = ctx.info
        if _State.enabled:
            # A graph of the backward is wanted: differentiate the decomposition instead, so
            # the second derivative is exact.
            return _decomposition_vjp(ctx, grad, query, key, value, attn_mask)
        g = grad._data
        xp = _xp(grad)
        p, keep = ctx.p, ctx.keep
        if isinstance(p, _FusedWeights):
            return _fused_backward(ctx, grad, p.p, query, key, value)
        work = (p[0] if isinstance(p, tuple) else p).dtype
        k = _expand_heads(xp, key._data, hq) if gqa else key._data
        v = _expand_heads(xp, value._data, hq) if gqa else value._data
        gw = g.astype(work, copy=False)
        qw, kw, vw = (a.astype(work, copy=False) for a in (query._data, k, v))
        # a tuple p: causal query blocks of the batch path (only it can use them)
        if isinstance(p, tuple) or (keep is None and not float_mask and
                                    _batch_split(xp, qw, kw, vw, gw, p)):
            o = saved[4]._data if len(saved) > 4 and saved[4] is not None else None
            dq, dk, dv = _backward_by_batch(xp, p, gw, qw, kw, vw, s, o)
            ds = None
        else:
            dq, dk, dv, ds = _attention_backward(xp, p, keep, gw, qw, kw, vw, s)
        if gqa:
            dk = _group_sum(dk, key._data.shape[-3])
            dv = _group_sum(dv, value._data.shape[-3])
        dt = query._dtype
        dmask = _wrap(ds.astype(dt.np, copy=False), grad) if float_mask else None
        return (_wrap(dq.astype(dt.np, copy=False), grad), _wrap(dk.astype(dt.np, copy=False),
                                                                  grad),
                _wrap(dv.astype(dt.np, copy=False), grad), dmask, None, None, None, None)


class _FusedWeights:
    """The attention weights kept by the fused CPU kernels (``cpu_attention_kernels``):
    padded (batch, heads, Lp, Sp), readable only by their backward."""

    __slots__ = ("p",)

    def __init__(self, p: Any) -> None:
        self.p = p


def _fused_kernels(xp: Any, q: Any, k: Any, v: Any) -> Any:
    """The fused float32 attention kernels when they take these operands (NumPy, 4-D with
    one (batch, heads), head sizes a multiple of 8; see ``cpu_attention_kernels.usable``),
    else None (numba missing, ``EMBER_NUMBA=0``, or another case: the batched path)."""
    import os
    if xp.__name__ != "numpy" or os.environ.get("EMBER_ATTN_KERNELS") == "0" or \
            not cpu_attention_kernels.usable(q, k, v):
        return None
    return cpu_attention_kernels.kernels()


def _fused_backward(ctx: Any, grad: Tensor, p: Any, query: Tensor, key: Tensor,
                    value: Tensor) -> tuple:
    """The fused kernels' backward. The gradients come back laid out like q, k, v (views of
    one array when those are views of a fused qkv projection: :func:`_grad_buffers`)."""
    import numpy as np
    s, gqa, hq, is_causal, _ = ctx.info
    k = _expand_heads(np, key._data, hq) if gqa else key._data
    v = _expand_heads(np, value._data, hq) if gqa else value._data
    qw, kw, vw = (a.astype(np.float32, copy=False) for a in (query._data, k, v))
    g = grad._data.astype(np.float32, copy=False)
    if not cpu_attention_kernels.strided_ok(g):
        g = np.ascontiguousarray(g)
    dq, dk, dv = _grad_buffers(np, qw.shape[:2], qw, kw, vw, np.float32)
    if not all(cpu_attention_kernels.strided_ok(a) for a in (dq, dk, dv)):
        dq, dk, dv = (np.empty(a.shape, np.float32) for a in (qw, kw, vw))
    nb = cpu_attention_kernels.kernels()
    if nb is None:  # EMBER_NUMBA=0 set between forward and backward
        raise make(RuntimeError, _OP, "the forward ran the numba attention kernels but they "
                                      "are off now (EMBER_NUMBA=0 set in between)")
    nb.backward(qw, kw, vw, g, p, dq, dk, dv, s, is_causal)
    if gqa:
        dk = _group_sum(dk, key._data.shape[-3])
        dv = _group_sum(dv, value._data.shape[-3])
    dt = query._dtype
    return (_wrap(dq.astype(dt.np, copy=False), grad), _wrap(dk.astype(dt.np, copy=False), grad),
            _wrap(dv.astype(dt.np, copy=False), grad), None, None, None, None, None)


def _softmax_(xp: Any, scores: Any, shift: bool = True) -> Any:
    """Softmax over the last axis, in place (scores becomes p). Rows with every key masked
    (all -inf) give zeros (torch's safe softmax), not NaN. ``shift=False``: the caller knows
    every finite score is small (:func:`_scores_bounded`), so ``exp`` needs no row max."""
    if shift:
        S = scores.shape[-1]
        m = scores.max(axis=-1, keepdims=True) if S else scores.sum(axis=-1, keepdims=True)
        # (copyto with where, not a boolean-mask store: CuPy's mask store counts the mask on
        # the host, a sync that a CUDA graph capture refuses)
        xp.copyto(m, 0, where=~xp.isfinite(m))
        scores -= m
    p = xp.exp(scores, out=scores)
    denom = _row_sum(xp, p)
    xp.copyto(denom, 1, where=denom == 0)
    p *= xp.reciprocal(denom, out=denom)
    return p


def _attention_backward(xp: Any, p: Any, keep: Any, gw: Any, q: Any, k: Any, v: Any,
                        s: float) -> tuple:
    """``(dq, dk, dv, ds)`` of ``out = (p * keep) @ v``, ``p = softmax(q @ k^T * s + mask)``."""
    pd = p * keep if keep is not None else p
    dv = _mm(xp, xp.swapaxes(pd, -1, -2), gw)
    dp = _mm(xp, gw, xp.swapaxes(v, -1, -2))
    if keep is not None:
        dp *= keep
    # ds = p * (dp - rowsum(dp * p)), with one temporary
    dp *= p
    ds = p * _row_sum(xp, dp)
    xp.subtract(dp, ds, out=ds)
    dq = _mm(xp, ds, k)
    dq *= s
    dk = _mm(xp, xp.swapaxes(ds, -1, -2), q)
    dk *= s
    return dq, dk, dv, ds


# On NumPy the batch (dim 0) is cut into blocks that run on the cores other processes leave
# free (backend.cpu.parallel_rows): the batched products and the softmax release the GIL.
# Right after a threaded GEMM (a qkv projection) OpenBLAS's workers spin on the other cores
# and the blocks run in turn (cpu_kernels.blas_spinning, read before the per-matrix products
# set BLAS to one thread; in the tiny-GPT step, paired: attention 24 -> 18 ms a step).
def _batch_split(xp: Any, *arrays: Any) -> bool:
    """Whether these arrays can be cut along dim 0 (NumPy, same rank >= 3, same dim 0 > 1)."""
    a0 = arrays[0]
    return (xp.__name__ == "numpy" and a0.ndim >= 3 and a0.shape[0] > 1
            and all(a.ndim == a0.ndim and a.shape[0] == a0.shape[0] for a in arrays))


# Softmax without the row max: when Cauchy-Schwarz bounds every score by
# |s| max|q_i| max|k_j| < _SCORE_BOUND, exp(score) can neither overflow nor flush to zero
# (e^60 * 1e12 keys < float32 max; e^-60 is a normal float32), and exp(x) / sum exp(x) is as
# accurate as the shifted form. The row max (a reduction over short rows) and the shift pass
# cost about as much as the exp itself. NaN/inf inputs fail the test and take the max path.
_SCORE_BOUND = 60.0


def _mem_perm(a: Any) -> tuple:
    """The axes of ``a`` from largest to smallest stride (its memory order), keeping the last
    axis last: a pass over ``a.transpose(perm)`` reads memory in order with long inner loops
    (NumPy's per-inner-loop cost dominates on rows of 32), and row reductions over the last
    axis stay valid."""
    perm = tuple(sorted(range(a.ndim - 1), key=lambda i: -a.strides[i])) + (a.ndim - 1,)
    return perm if a.ndim and a.strides[-1] <= min(a.strides[:-1], default=a.strides[-1]) \
        else tuple(range(a.ndim))


def _scaled_copy(xp: Any, a: Any, s: float) -> Any:
    """``a * s`` as a new array laid out like ``a`` (made in memory order)."""
    perm = _mem_perm(a)
    am = a.transpose(perm)
    out = xp.empty(am.shape, a.dtype)
    xp.multiply(am, s, out=out)
    return out.transpose(tuple(_argsort(perm)))


def _argsort(perm: tuple) -> list:
    inv = [0] * len(perm)
    for i, j in enumerate(perm):
        inv[j] = i
    return inv


def _max_sq_norm(xp: Any, a: Any) -> float:
    """The largest squared norm of ``a``'s last-axis rows (one pass in memory order, a GEMV)."""
    if not a.size:
        return 0.0
    am = a.transpose(_mem_perm(a))
    sq = xp.empty(am.shape, a.dtype)
    xp.multiply(am, am, out=sq)
    return float(_row_sum(xp, sq).max())


def _scores_bounded(xp: Any, qs: Any, k: Any) -> bool:
    """Whether ``|qs_i . k_j| < _SCORE_BOUND`` for all rows (``qs`` is the scaled query)."""
    bound = _max_sq_norm(xp, qs) * _max_sq_norm(xp, k)
    return bool(bound < _SCORE_BOUND * _SCORE_BOUND)  # False for NaN or inf


def _causal_blocks(is_causal: bool, L: int, S: int) -> list | None:
    """Query blocks ``[(q0, q1), ...]`` for a causal self-attention (``L == S``), or None.
    Block ``[q0, q1)`` sees only keys ``< q1``, so its scores, softmax, products and their
    backward skip the masked keys beyond it, as torch's CPU flash kernel does (same block
    sizes: 32 queries under 192, 64 under 768, else 256). T=64 does 3/4 of the full work."""
    if not is_causal or L != S:
        return None
    qb = 32 if L < 192 else (64 if L < 768 else 256)
    if L < 2 * qb:
        return None
    return [(q0, min(q0 + qb, L)) for q0 in range(0, L, qb)]


def _forward_by_batch(xp: Any, q: Any, k: Any, v: Any, s: float, is_causal: bool,
                      query: Any) -> tuple:
    """``(out, p)`` without masks other than ``is_causal`` and without dropout. With causal
    query blocks (:func:`_causal_blocks`) ``p`` is a tuple of each block's weights over its
    visible keys, ``(*batch, q1 - q0, q1)``."""
    L, S = q.shape[-2], k.shape[-2]
    batch = xp.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    dtype = xp.result_type(q, k)
    blocks = _causal_blocks(is_causal, L, S)
    if blocks is None:
        p = xp.empty(batch + (L, S), dtype)
        ps = (p,)
        blocks = [(0, L)]
    else:
        ps = tuple(xp.empty(batch + (q1 - q0, q1), dtype) for q0, q1 in blocks)
        p = ps
    out = _out_buffer(xp, xp.broadcast_shapes(batch, v.shape[:-2]) + (L, v.shape[-1]),
                      xp.result_type(dtype, v), query)
    bias = _causal_bias(xp, L, S, dtype) if is_causal else None
    # each block's rows of the bias over its keys, contiguous (the numba kernel's layout)
    biases = [None if bias is None else xp.ascontiguousarray(bias[q0:q1, :pj.shape[-1]])
              for (q0, q1), pj in zip(blocks, ps)]
    serial = blas_spinning()
    # per-matrix products: one BLAS thread (the blocks themselves run on the spare cores)
    gemm_threads(xp, L * S * q.shape[-1])
    nb = _kernels(xp, ps[0])
    if nb is not None:
        qs = q  # the kernel scales the scores in its first pass over them
    else:
        qs = _scaled_copy(xp, q, s)  # the scale on q, (L, E), rather than on the (L, S) scores
    shift = nb is None and not _scores_bounded(xp, qs, k)

    def block(lo: int, hi: int) -> None:
        qb_, kb_, vb_, ob_ = qs[lo:hi], k[lo:hi], v[lo:hi], out[lo:hi]
        for (q0, q1), pj, bj in zip(blocks, ps, biases):
            n = pj.shape[-1]
            scores = xp.matmul(qb_[..., q0:q1, :], xp.swapaxes(kb_[..., :n, :], -1, -2),
                               out=pj[lo:hi])
            if nb is not None:  # scale, bias, max, exp, sum and norm in one visit per row
                nb.softmax(scores.reshape(-1, n), bj, s)
            else:
                if bj is not None:
                    scores += bj
                _softmax_(xp, scores, shift)
            xp.matmul(scores, vb_[..., :n, :], out=ob_[..., q0:q1, :])

    if serial:
        block(0, q.shape[0])
    else:
        parallel_rows(q.shape[0], block)
    return out, p


def _kernels(xp: Any, p: Any) -> Any:
    """The numba kernels for a contiguous float32 NumPy ``p`` (the attention weights), or
    None: their exp is float32-accurate only."""
    if xp.__name__ != "numpy" or p.dtype != xp.float32 or not p.flags.c_contiguous:
        return None
    return cpu_kernels.kernels()


def _grad_buffers(xp: Any, batch: tuple, q: Any, k: Any, v: Any, dtype: Any) -> tuple:
    """Empty ``(dq, dk, dv)`` laid out in memory like ``q``, ``k``, ``v``. Views of one fused
    qkv array (``qkv.split(d, 2)`` then ``view``/``transpose``) get views of one new array of
    that shape at the same offsets, so the caller's transposes, views and the split's
    backward (``Split`` joins adjacent views without ``cat``) copy nothing."""
    arrays = (q, k, v)
    full = all(a.shape[:-2] == batch and a.dtype == dtype for a in arrays)
    base = q.base
    if full and base is not None and k.base is base and v.base is base and \
            type(base) is xp.ndarray and base.dtype == dtype and base.flags.c_contiguous and \
            q.size + k.size + v.size == base.size and _disjoint(xp, q, k, v):
        g = xp.empty_like(base)
        start = base.__array_interface__["data"][0]
        return tuple(xp.ndarray(a.shape, dtype, buffer=g, strides=a.strides,
                                offset=a.__array_interface__["data"][0] - start)
                     for a in arrays)
    return tuple(xp.empty_like(a, dtype=dtype) if a.shape[:-2] == batch
                 else xp.empty(batch + a.shape[-2:], dtype) for a in arrays)


def _disjoint(xp: Any, *arrays: Any) -> bool:
    """Whether no two of these views share an element (NumPy's exact overlap test, with a
    work limit: a case too hard to decide counts as overlapping)."""
    try:
        return not any(xp.shares_memory(a, b, max_work=1 << 16)
                       for i, a in enumerate(arrays) for b in arrays[i + 1:])
    except Exception:  # numpy.exceptions.TooHardError
        return False


def _backward_by_batch(xp: Any, p: Any, gw: Any, q: Any, k: Any, v: Any, s: float,
                       o: Any = None) -> tuple:
    """``(dq, dk, dv)``; ``o`` (the forward's output, when saved) gives the softmax
    backward's row sums as ``sum(dO * O)`` over E instead of ``sum(P * dP)`` over S. ``p``
    is the forward's: one array, or a tuple of causal query blocks' weights."""
    batch = gw.shape[:-2]  # the output's: every operand broadcast
    ps = p if isinstance(p, tuple) else (p,)
    # query blocks from their weights' shapes: block j has q1 - q0 rows and q1 keys
    blocks, q0 = [], 0
    for pj in ps:
        blocks.append((q0, q0 + pj.shape[-2]))
        q0 += pj.shape[-2]
    dtype = ps[0].dtype
    dq, dk, dv = _grad_buffers(xp, batch, q, k, v, dtype)
    L, S = q.shape[-2], k.shape[-2]
    serial = blas_spinning()
    gemm_threads(xp, L * S * q.shape[-1])
    nb = _kernels(xp, ps[0])
    s32 = dtype.type(s)

    def block(lo: int, hi: int) -> None:
        g_, o_ = gw[lo:hi], (o[lo:hi] if o is not None else None)
        qb_, kb_, vb_ = q[lo:hi], k[lo:hi], v[lo:hi]
        dqb, dkb, dvb = dq[lo:hi], dk[lo:hi], dv[lo:hi]
        rows_all = None
        if o_ is not None and g_.strides == o_.strides:
            perm = _mem_perm(g_)
            gm = g_.transpose(perm)
            tmp = xp.empty(gm.shape, dtype)
            xp.multiply(gm, o_.transpose(perm), out=tmp)
            rows_all = _row_sum(xp, tmp).transpose(tuple(_argsort(perm)))
        # the last block sees every key and writes dk, dv; earlier ones add to their keys
        for j in range(len(ps) - 1, -1, -1):
            (q0, q1), pj = blocks[j], ps[j][lo:hi]
            n = pj.shape[-1]
            gj = g_[..., q0:q1, :]
            first = j == len(ps) - 1
            if first:
                xp.matmul(xp.swapaxes(pj, -1, -2), gj, out=dvb[..., :n, :])
            else:
                dvb[..., :n, :] += xp.matmul(xp.swapaxes(pj, -1, -2), gj)
            dp = xp.matmul(gj, xp.swapaxes(vb_[..., :n, :], -1, -2))
            rows = rows_all[..., q0:q1, :] if rows_all is not None else \
                _row_sum(xp, xp.multiply(pj, dp))
            if nb is not None and dp.flags.c_contiguous and dp.shape == pj.shape:
                nb.softmax_backward(dp.reshape(-1, n), pj.reshape(-1, n),
                                    xp.ascontiguousarray(rows).reshape(-1), s32)
            else:
                dp -= rows
                dp *= pj  # ds = p * (dp - rowsum(p * dp))
                dp *= s   # the scale of both products below, on a contiguous array
            xp.matmul(dp, kb_[..., :n, :], out=dqb[..., q0:q1, :])
            if first:
                xp.matmul(xp.swapaxes(dp, -1, -2), qb_[..., q0:q1, :], out=dkb[..., :n, :])
            else:
                dkb[..., :n, :] += xp.matmul(xp.swapaxes(dp, -1, -2), qb_[..., q0:q1, :])

    if serial:
        block(0, batch[0])
    else:
        parallel_rows(batch[0], block)
    return dq, dk, dv


def _device_of(arr: Any) -> Any:
    from ember.backend import device_of_array
    return device_of_array(arr)


def _xp(t: Tensor) -> Any:
    from ember.backend import get_xp
    return get_xp(t.device)


def _wrap(arr: Any, like: Tensor) -> Tensor:
    return _make(arr, _dt._FROM_NP[arr.dtype], like.device)


def _group_sum(x: Any, hk: int) -> Any:
    """Sum the gradients of the query-head copies back onto the shared key/value heads."""
    shape = x.shape
    return x.reshape(shape[:-3] + (hk, shape[-3] // hk) + shape[-2:]).sum(axis=-3)


def _decomposition_vjp(ctx: Any, grad: Tensor, query: Tensor, key: Tensor, value: Tensor,
                       attn_mask: Tensor | None) -> tuple:
    import ember
    s, gqa, hq, is_causal, float_mask = ctx.info
    keep_arr = ctx.keep
    if keep_arr is None and getattr(ctx, "keep_fn", None) is not None:
        keep_arr = ctx.keep_fn()  # a fused forward (cuDNN) that never stored its dropout mask
    keep = _wrap(keep_arr, grad) if keep_arr is not None else None
    inputs = [t for t in (query, key, value, attn_mask if float_mask else None)
              if t is not None and t.requires_grad]
    with ember.enable_grad():
        out = sdpa_decomposition(query, key, value, attn_mask, is_causal=is_causal, scale=s,
                                 enable_gqa=gqa, dropout_scale=keep)
    grads = ember.autograd.grad(out, inputs, grad, create_graph=True, allow_unused=True)
    found = dict(zip(map(id, inputs), grads))
    res = [found.get(id(t)) if t is not None else None
           for t in (query, key, value, attn_mask if float_mask else None)]
    return tuple(res) + (None, None, None, None)


def sdpa_decomposition(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                       dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                       enable_gqa: bool = False, dropout_scale: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention written in ember ops (torch's documented reference).

    ``dropout_scale`` (keep-mask / (1 - p)) replaces sampling a new dropout mask, so the
    decomposition can replay a forward exactly.
    """
    import ember
    L, S = query.shape[-2], key.shape[-2]
    s = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if enable_gqa and query.dim() >= 3 and key.dim() >= 3:
        rep_k = query.shape[-3] // key.shape[-3]
        rep_v = query.shape[-3] // value.shape[-3]
        key = _repeat_heads(key, rep_k)
        value = _repeat_heads(value, rep_v)
    scores = ember.matmul(query, key.transpose(-2, -1)) * s
    if is_causal:
        rows = ember.arange(L, device=query.device).unsqueeze(-1)
        cols = ember.arange(S, device=query.device)
        attn_mask = rows >= cols
    if attn_mask is not None:
        if attn_mask.dtype == ember.bool:
            scores = ember.where(attn_mask, scores, float("-inf"))
        else:
            scores = scores + attn_mask
    m = scores.amax(-1, keepdim=True).detach()
    m = ember.where(m.isfinite(), m, 0.0)
    e = (scores - m).exp()
    denom = e.sum(-1, keepdim=True)
    p = e / ember.where(denom == 0, 1.0, denom)
    if dropout_scale is not None:
        # keep is float32 for half inputs (the forward's work dtype); stay in p's dtype so
        # the product with value type-checks
        p = p * dropout_scale.to(p.dtype)
    elif dropout_p > 0.0:
        keep = (ember.rand(p.shape, dtype=p.dtype, device=p.device) >= dropout_p).to(p.dtype)
        p = p * keep / (1.0 - dropout_p)
    return ember.matmul(p, value)


def _repeat_heads(x: Tensor, rep: int) -> Tensor:
    if rep == 1:
        return x
    shape = tuple(x.shape)
    y = x.unsqueeze(-3).expand(*shape[:-2], rep, *shape[-2:])
    return y.reshape(*shape[:-3], shape[-3] * rep, *shape[-2:])


__all__: list = []
