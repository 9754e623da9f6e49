"""Recurrent layers as fused primitives: one op runs a whole layer direction over time.

The input projection ``x @ W_ih^T + b`` for every timestep is one matmul done by the caller
(``nn.LSTM``); these ops take it precomputed and run the recurrence in a tight loop over
``xp`` arrays, so a sequence costs one graph node instead of dozens per step. Their backward
is the matching loop (backpropagation through time) with the weight gradients taken as one
matmul over all steps at the end.

Inputs are in packed layout: ``xproj`` is ``(N, G)`` with the rows of timestep ``t`` at
``offsets[t] : offsets[t] + batch_sizes[t]`` (batch sizes non-increasing, as in a
``PackedSequence``); a padded ``(T, B, G)`` input is the special case ``batch_sizes = (B,) * T``.
A row that has finished keeps its last state, which is what ``h_n`` reports, like torch.

Each op has a reference written in tensor ops (``*_reference(m, ...)`` for ``m`` = ember or
torch): the tests compare against it, and the backward differentiates it when a graph of the
backward is wanted (``create_graph=True``), so double backward stays exact.
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

from ember import dtypes as _dt
from ember._state import _State
from ember.backend import cpu_kernels, cpu_rnn_kernels
from ember.backend.cpu import gemm_threads
from ember.errors import check
from ember.ops.blas import _mm   # MKL where it takes the product (the weight gradient's)
from ember.ops.registry import OpDef, TensorMeta, composite, register
from ember.tensor import Tensor, _make


def _one_blas_thread(xp: Any) -> Any:
    """A context for the per-step loops: BLAS on one thread, floating-point warnings off.

    Each step multiplies a few small matrices (batch x hidden); a threaded BLAS spends more on
    waking and syncing threads than on the product, and on a busy machine it thrashes (10-30x
    slower measured). The thread count goes through ``gemm_threads`` (one cached ctypes call,
    only when it changes; the next large GEMM switches back). The sigmoid is
    ``1 / (1 + exp(-x))``, whose exp overflows to inf (giving 0) for very negative inputs: the
    warning is silenced.
    """
    if xp.__name__ != "numpy":
        return contextlib.nullcontext()
    gemm_threads(xp, 0)
    return xp.errstate(over="ignore")


def _sigmoid_(xp: Any, x: Any, out: Any) -> Any:
    """``out = sigmoid(x)`` as ``1 / (1 + exp(-x))``: NumPy's exp is about 3x faster than
    scipy's expit on float32, and the two extra passes run on cache-resident step blocks."""
    xp.negative(x, out=out)
    xp.exp(out, out=out)
    out += 1
    return xp.reciprocal(out, out=out)


def _kernels(xp: Any, *arrays: Any) -> Any:
    """The numba kernels when every array is a float32 NumPy array (their sigmoid and tanh
    are float32-accurate), else None."""
    if xp.__name__ != "numpy" or any(a.dtype != xp.float32 for a in arrays):
        return None
    return cpu_kernels.kernels()


def _fused_lstm(xp: Any, w_hr: Any, *arrays: Any) -> Any:
    """The compiled LSTM time loops where the whole layer can run as one compiled call
    (``backend/cpu_rnn_kernels``: float32 NumPy arrays, no projection, numba and MKL there),
    else None."""
    if w_hr is not None or _kernels(xp, *arrays) is None or not cpu_rnn_kernels.available():
        return None
    return cpu_rnn_kernels.kernels()


def _offsets(batch_sizes: Sequence[int]) -> list:
    off = [0]
    for b in batch_sizes:
        off.append(off[-1] + b)
    return off


def _wrap(arr: Any, like: Tensor) -> Tensor:
    return _make(arr, _dt._FROM_NP[arr.dtype], like.device)


def _check_layer(name: str, xproj: Any, h0: Any, w_hh: Any, gates: int,
                 batch_sizes: Sequence[int]) -> tuple:
    x, h, w = xproj._data, h0._data, w_hh._data
    check(x.ndim == 2 and h.ndim == 2 and w.ndim == 2, name,
          f"expected 2-D xproj, h0 and w_hh, got shapes {tuple(x.shape)}, {tuple(h.shape)}, "
          f"{tuple(w.shape)}")
    hidden = w.shape[0] // gates
    check(w.shape[0] == gates * hidden and x.shape[1] == gates * hidden, name,
          f"w_hh {tuple(w.shape)} and xproj {tuple(x.shape)} must have {gates} * hidden_size "
          "rows / columns")
    check(sum(batch_sizes) == x.shape[0], name,
          f"batch_sizes sum to {sum(batch_sizes)} but xproj has {x.shape[0]} rows")
    check(not batch_sizes or batch_sizes[0] == h.shape[0], name,
          f"h0 has batch {h.shape[0]} but the first timestep has batch "
          f"{batch_sizes[0] if batch_sizes else 0}")
    check(all(a >= b for a, b in zip(batch_sizes, batch_sizes[1:])), name,
          "batch_sizes must be non-increasing (sort sequences by length)")
    check(h.shape[1] == w.shape[1], name,
          f"h0 {tuple(h.shape)} does not match w_hh {tuple(w.shape)} (hidden columns)")
    return hidden, h.shape[0]


# ---------------------------------------------------------------------- LSTM
def _lstm_meta(op: Any, xproj: Any, h0: Any, c0: Any, w_hh: Any, w_hr: Any,
               batch_sizes: tuple, reverse: bool) -> tuple:
    hidden, batch = _check_layer(op.name, xproj, h0, w_hh, 4, batch_sizes)
    out_size = h0._data.shape[1]
    check(c0._data.shape == (batch, hidden), op.name,
          f"c0 must have shape {(batch, hidden)}, got {tuple(c0._data.shape)}")
    if w_hr is not None:
        check(w_hr._data.shape == (out_size, hidden), op.name,
              f"w_hr must have shape {(out_size, hidden)}, got {tuple(w_hr._data.shape)}")
    n = xproj._data.shape[0]
    return (TensorMeta((n, out_size)), TensorMeta((batch, out_size)), TensorMeta((batch, hidden)))


@register("_lstm_layer", meta=_lstm_meta, function=False, method=False, node_name="LstmLayer")
class LstmLayer(OpDef):
    """One direction of one LSTM layer over a (packed) sequence; gates in torch's order
    (input, forget, cell, output). Returns ``(output, h_n, c_n)``."""

    def forward(ctx, xp, xproj, h0, c0, w_hh, w_hr, batch_sizes, reverse):
        n, g4 = xproj.shape
        H = g4 // 4
        P = h0.shape[1]
        off = _offsets(batch_sizes)
        steps = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
        wr_t = xp.ascontiguousarray(w_hr.T) if w_hr is not None else None
        h = h0.copy()
        c = c0.copy()
        dt = xproj.dtype
        act = xp.empty((n, g4), dt)      # sigmoid(i, f, o) and tanh(g), for backward
        tanh_c = xp.empty((n, H), dt)
        c_prev = xp.empty((n, H), dt)
        h_prev = xp.empty((n, P), dt)
        out = xp.empty((n, P), dt)
        h_pre = xp.empty((n, H), dt) if w_hr is not None else None
        ws = xp.empty((h0.shape[0], g4), dt)   # one step's pre-activations
        fused = _fused_lstm(xp, w_hr, xproj, w_hh, c)
        if fused is not None:   # the whole time loop in compiled calls
            starts = xp.asarray(off[:-1], xp.int64)
            sizes = xp.asarray(batch_sizes, xp.int64)
            rev = bool(reverse)

            # W_hh^T for the steps: packed by MKL (the pack is the transposed copy) or plain
            cptr, wp = cpu_rnn_kernels.packed_b(xp.ascontiguousarray(w_hh), True, h0.shape[0])
            wk = xp.ascontiguousarray(w_hh.T) if wp is None else wp

            def rows(fptr: int, r0: int, r1: int) -> None:
                fused.lstm_forward(fptr, cptr, xproj, wk, h, c, act, tanh_c, c_prev, h_prev,
                                   out, ws, starts, sizes, rev, r0, r1)
            cpu_rnn_kernels.over_rows(h0.shape[0], h0.shape[0] * g4 * P, rows)
            ctx.cache = (act, tanh_c, c_prev, h_prev, h_pre)
            ctx.args = (tuple(batch_sizes), reverse)
            ctx.save(xproj, h0, c0, w_hh, w_hr)
            return out, h, c
        w_t = xp.ascontiguousarray(w_hh.T)
        nb = _kernels(xp, xproj, w_t, c)
        hbuf = xp.empty((h0.shape[0], H), dt) if nb is not None else None
        with _one_blas_thread(xp):
            for t in steps:
                b = batch_sizes[t]
                lo, hi = off[t], off[t] + b
                hp = h[:b]
                h_prev[lo:hi] = hp
                gates = xp.matmul(hp, w_t, out=ws[:b])
                a = act[lo:hi]
                cp = c[:b]
                c_prev[lo:hi] = cp
                tc = tanh_c[lo:hi]
                if nb is not None:  # the step's elementwise part in one pass (c in place)
                    hn = hbuf[:b]
                    nb.lstm_step(gates, xproj[lo:hi], cp, a, tc, hn)
                    cn = cp
                else:
                    gates += xproj[lo:hi]
                    _sigmoid_(xp, gates, a)   # all four blocks; the cell block is redone
                    xp.tanh(gates[:, 2 * H:3 * H], out=a[:, 2 * H:3 * H])  # as tanh
                    cn = a[:, H:2 * H] * cp
                    cn += a[:, :H] * a[:, 2 * H:3 * H]
                    xp.tanh(cn, out=tc)
                    hn = a[:, 3 * H:] * tc
                if wr_t is not None:
                    h_pre[lo:hi] = hn
                    hn = xp.matmul(hn, wr_t)
                out[lo:hi] = hn
                h[:b] = hn
                c[:b] = cn
        ctx.cache = (act, tanh_c, c_prev, h_prev, h_pre)
        ctx.args = (tuple(batch_sizes), reverse)
        ctx.save(xproj, h0, c0, w_hh, w_hr)
        return out, h, c

    def backward(ctx, g_out, g_h, g_c):
        xproj, h0, c0, w_hh, w_hr = ctx.saved
        batch_sizes, reverse = ctx.args
        if _State.enabled:
            return _reference_vjp(lstm_layer_reference, ctx, (xproj, h0, c0, w_hh, w_hr),
                                  (g_out, g_h, g_c), (batch_sizes, reverse))
        act, tanh_c, c_prev, h_prev, h_pre = ctx.cache
        xp = _xp(xproj)
        n, g4 = act.shape
        H = g4 // 4
        dt = act.dtype
        B, P = h0._data.shape
        w = w_hh._data
        wr = w_hr._data if w_hr is not None else None
        dh = g_h._data.astype(dt, copy=True) if g_h is not None else xp.zeros((B, P), dt)
        dc = g_c._data.astype(dt, copy=True) if g_c is not None else xp.zeros((B, H), dt)
        go = g_out._data if g_out is not None else None
        dgates = xp.empty((n, g4), dt)
        dh_out = xp.empty((n, P), dt) if wr is not None else None
        off = _offsets(batch_sizes)
        steps = range(len(batch_sizes)) if reverse else range(len(batch_sizes) - 1, -1, -1)
        fused = _fused_lstm(xp, wr, act, w, dc, dh)
        if fused is not None and (go is None or go.dtype == dt):
            wc = xp.ascontiguousarray(w)
            dh = xp.ascontiguousarray(dh)   # MKL writes it as a (B, H) row-major matrix
            gc = xp.ascontiguousarray(go) if go is not None else dh
            dhs = xp.empty((B, H), dt)
            starts = xp.asarray(off[:-1], xp.int64)
            sizes = xp.asarray(batch_sizes, xp.int64)
            rev = bool(reverse)

            def rows(fptr: int, r0: int, r1: int) -> None:
                fused.lstm_backward(fptr, gc, go is not None, wc, act, tanh_c, c_prev, dh, dc,
                                    dgates, dhs, starts, sizes, rev, r0, r1)
            cpu_rnn_kernels.over_rows(B, B * g4 * H, rows)
        else:
            nb = _kernels(xp, act, w, dc)
            with _one_blas_thread(xp):
                for t in steps:
                    b = batch_sizes[t]
                    lo, hi = off[t], off[t] + b
                    dhs = dh[:b] + go[lo:hi] if go is not None else dh[:b]
                    if wr is not None:
                        dh_out[lo:hi] = dhs
                        dhs = xp.matmul(dhs, wr)
                    a = act[lo:hi]
                    tc = tanh_c[lo:hi]
                    dg_ = dgates[lo:hi]
                    if nb is not None:  # one pass; dc carried back in place
                        nb.lstm_step_back(xp.ascontiguousarray(dhs), a, tc, c_prev[lo:hi],
                                          dc[:b], dg_)
                        dh[:b] = xp.matmul(dg_, w)
                        continue
                    i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
                    dcs = dhs * o
                    dcs *= 1 - tc * tc
                    dcs += dc[:b]
                    xp.multiply(dcs * g, i * (1 - i), out=dg_[:, :H])
                    xp.multiply(dcs * c_prev[lo:hi], f * (1 - f), out=dg_[:, H:2 * H])
                    xp.multiply(dcs * i, 1 - g * g, out=dg_[:, 2 * H:3 * H])
                    xp.multiply(dhs * tc, o * (1 - o), out=dg_[:, 3 * H:])
                    dc[:b] = dcs * f
                    dh[:b] = xp.matmul(dg_, w)
        like = xproj
        gemm_threads(xp, dgates.size * h_prev.shape[1])
        res_w = _wrap(_mm(xp, dgates.T, h_prev), like)
        res_wr = _wrap(xp.matmul(dh_out.T, h_pre), like) if wr is not None else None
        return (_wrap(dgates, like), _wrap(dh, like), _wrap(dc, like), res_w, res_wr, None, None)


def lstm_layer_reference(m: Any, xproj: Any, h0: Any, c0: Any, w_hh: Any, w_hr: Any,
                         batch_sizes: Sequence[int], reverse: bool) -> tuple:
    """``_lstm_layer`` in tensor ops of module ``m`` (ember or torch)."""
    H = w_hh.shape[0] // 4
    off = _offsets(batch_sizes)
    steps = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    h, c = h0, c0
    outs = [None] * len(batch_sizes)
    for t in steps:
        b = batch_sizes[t]
        gates = xproj[off[t]:off[t] + b] + m.matmul(h[:b], w_hh.t())
        i = gates[:, :H].sigmoid()
        f = gates[:, H:2 * H].sigmoid()
        g = gates[:, 2 * H:3 * H].tanh()
        o = gates[:, 3 * H:].sigmoid()
        cn = f * c[:b] + i * g
        hn = o * cn.tanh()
        if w_hr is not None:
            hn = m.matmul(hn, w_hr.t())
        outs[t] = hn
        h = m.cat([hn, h[b:]], 0)
        c = m.cat([cn, c[b:]], 0)
    out = m.cat(outs, 0) if outs else xproj[:, :h0.shape[1]] * 0
    return out, h, c


# ---------------------------------------------------------------------- GRU
def _gru_meta(op: Any, xproj: Any, h0: Any, w_hh: Any, b_hh: Any, batch_sizes: tuple,
              reverse: bool) -> tuple:
    hidden, batch = _check_layer(op.name, xproj, h0, w_hh, 3, batch_sizes)
    if b_hh is not None:
        check(b_hh._data.shape == (3 * hidden,), op.name,
              f"b_hh must have shape {(3 * hidden,)}, got {tuple(b_hh._data.shape)}")
    return (TensorMeta((xproj._data.shape[0], hidden)), TensorMeta((batch, hidden)))


@register("_gru_layer", meta=_gru_meta, function=False, method=False, node_name="GruLayer")
class GruLayer(OpDef):
    """One direction of one GRU layer; gates in torch's order (reset, update, new), with the
    hidden bias of the new gate inside the reset product like torch. ``xproj`` already holds
    ``x @ W_ih^T + b_ih``. Returns ``(output, h_n)``."""

    def forward(ctx, xp, xproj, h0, w_hh, b_hh, batch_sizes, reverse):
        n, g3 = xproj.shape
        H = g3 // 3
        off = _offsets(batch_sizes)
        steps = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
        w_t = xp.ascontiguousarray(w_hh.T)
        h = h0.copy()
        dt = xproj.dtype
        act = xp.empty((n, g3), dt)     # sigmoid(r), sigmoid(z), tanh(n)
        hh_n = xp.empty((n, H), dt)     # W_hn h + b_hn, needed by the reset gate's gradient
        h_prev = xp.empty((n, H), dt)
        out = xp.empty((n, H), dt)
        with _one_blas_thread(xp):
            for t in steps:
                b = batch_sizes[t]
                lo, hi = off[t], off[t] + b
                hp = h[:b]
                h_prev[lo:hi] = hp
                hh = xp.matmul(hp, w_t)
                if b_hh is not None:
                    hh += b_hh
                x = xproj[lo:hi]
                a = act[lo:hi]
                _sigmoid_(xp, x[:, :2 * H] + hh[:, :2 * H], a[:, :2 * H])
                hh_n[lo:hi] = hh[:, 2 * H:]
                xp.tanh(x[:, 2 * H:] + a[:, :H] * hh[:, 2 * H:], out=a[:, 2 * H:])
                nn_ = a[:, 2 * H:]
                hn = nn_ + a[:, H:2 * H] * (hp - nn_)
                out[lo:hi] = hn
                h[:b] = hn
        ctx.cache = (act, hh_n, h_prev)
        ctx.args = (tuple(batch_sizes), reverse)
        ctx.save(xproj, h0, w_hh, b_hh)
        return out, h

    def backward(ctx, g_out, g_h):
        xproj, h0, w_hh, b_hh = ctx.saved
        batch_sizes, reverse = ctx.args
        if _State.enabled:
            return _reference_vjp(gru_layer_reference, ctx, (xproj, h0, w_hh, b_hh),
                                  (g_out, g_h), (batch_sizes, reverse))
        act, hh_n, h_prev = ctx.cache
        xp = _xp(xproj)
        n, g3 = act.shape
        H = g3 // 3
        dt = act.dtype
        w = w_hh._data
        dh = g_h._data.astype(dt, copy=True) if g_h is not None else xp.zeros(h0._data.shape, dt)
        go = g_out._data if g_out is not None else None
        dx = xp.empty((n, g3), dt)
        dhh = xp.empty((n, g3), dt)
        off = _offsets(batch_sizes)
        steps = range(len(batch_sizes)) if reverse else range(len(batch_sizes) - 1, -1, -1)
        with _one_blas_thread(xp):
            for t in steps:
                b = batch_sizes[t]
                lo, hi = off[t], off[t] + b
                dhs = dh[:b] + go[lo:hi] if go is not None else dh[:b].copy()
                a = act[lo:hi]
                r, z, nn_ = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
                hp = h_prev[lo:hi]
                dn = dhs * (1 - z) * (1 - nn_ * nn_)
                dxs, dhhs = dx[lo:hi], dhh[lo:hi]
                xp.multiply(dhs * (hp - nn_), z * (1 - z), out=dxs[:, H:2 * H])
                xp.multiply(dn * hh_n[lo:hi], r * (1 - r), out=dxs[:, :H])
                dxs[:, 2 * H:] = dn
                dhhs[:, :2 * H] = dxs[:, :2 * H]
                xp.multiply(dn, r, out=dhhs[:, 2 * H:])
                dh[:b] = dhs * z + xp.matmul(dhhs, w)
        like = xproj
        gemm_threads(xp, dhh.size * h_prev.shape[1])
        gw = _wrap(xp.matmul(dhh.T, h_prev), like)
        gb = _wrap(dhh.sum(axis=0), like) if b_hh is not None else None
        return _wrap(dx, like), _wrap(dh, like), gw, gb, None, None


def gru_layer_reference(m: Any, xproj: Any, h0: Any, w_hh: Any, b_hh: Any,
                        batch_sizes: Sequence[int], reverse: bool) -> tuple:
    """``_gru_layer`` in tensor ops of module ``m`` (ember or torch)."""
    H = w_hh.shape[0] // 3
    off = _offsets(batch_sizes)
    steps = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    h = h0
    outs = [None] * len(batch_sizes)
    for t in steps:
        b = batch_sizes[t]
        x = xproj[off[t]:off[t] + b]
        hh = m.matmul(h[:b], w_hh.t())
        if b_hh is not None:
            hh = hh + b_hh
        r = (x[:, :H] + hh[:, :H]).sigmoid()
        z = (x[:, H:2 * H] + hh[:, H:2 * H]).sigmoid()
        nn_ = (x[:, 2 * H:] + r * hh[:, 2 * H:]).tanh()
        hn = (1 - z) * nn_ + z * h[:b]
        outs[t] = hn
        h = m.cat([hn, h[b:]], 0)
    out = m.cat(outs, 0) if outs else xproj[:, :H] * 0
    return out, h


# ---------------------------------------------------------------------- Elman RNN
def _rnn_meta(op: Any, xproj: Any, h0: Any, w_hh: Any, batch_sizes: tuple, reverse: bool,
              nonlinearity: str = "tanh") -> tuple:
    hidden, batch = _check_layer(op.name, xproj, h0, w_hh, 1, batch_sizes)
    check(nonlinearity in ("tanh", "relu"), op.name,
          f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.", ValueError)
    return (TensorMeta((xproj._data.shape[0], hidden)), TensorMeta((batch, hidden)))


@register("_rnn_layer", meta=_rnn_meta, function=False, method=False, node_name="RnnLayer")
class RnnLayer(OpDef):
    """One direction of one Elman RNN layer, ``h' = act(xproj + h @ W_hh^T)`` with ``act``
    tanh or relu (``xproj`` holds both biases). Returns ``(output, h_n)``."""

    def forward(ctx, xp, xproj, h0, w_hh, batch_sizes, reverse, nonlinearity="tanh"):
        n, H = xproj.shape
        off = _offsets(batch_sizes)
        steps = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
        w_t = xp.ascontiguousarray(w_hh.T)
        h = h0.copy()
        h_prev = xp.empty((n, H), xproj.dtype)
        out = xp.empty((n, H), xproj.dtype)
        relu = nonlinearity == "relu"
        with _one_blas_thread(xp):
            for t in steps:
                b = batch_sizes[t]
                lo, hi = off[t], off[t] + b
                hp = h[:b]
                h_prev[lo:hi] = hp
                pre = xp.matmul(hp, w_t)
                pre += xproj[lo:hi]
                o = out[lo:hi]
                if relu:
                    xp.maximum(pre, 0, out=o)
                else:
                    xp.tanh(pre, out=o)
                h[:b] = o
        ctx.cache = (out, h_prev)
        ctx.args = (tuple(batch_sizes), reverse, nonlinearity)
        ctx.save(xproj, h0, w_hh)
        return out, h

    def backward(ctx, g_out, g_h):
        xproj, h0, w_hh = ctx.saved
        batch_sizes, reverse, nonlinearity = ctx.args
        if _State.enabled:
            return _reference_vjp(rnn_layer_reference, ctx, (xproj, h0, w_hh), (g_out, g_h),
                                  (batch_sizes, reverse, nonlinearity))
        out, h_prev = ctx.cache
        xp = _xp(xproj)
        dt = out.dtype
        w = w_hh._data
        dh = g_h._data.astype(dt, copy=True) if g_h is not None else xp.zeros(h0._data.shape, dt)
        go = g_out._data if g_out is not None else None
        dpre = xp.empty(out.shape, dt)
        off = _offsets(batch_sizes)
        steps = range(len(batch_sizes)) if reverse else range(len(batch_sizes) - 1, -1, -1)
        relu = nonlinearity == "relu"
        with _one_blas_thread(xp):
            for t in steps:
                b = batch_sizes[t]
                lo, hi = off[t], off[t] + b
                dhs = dh[:b] + go[lo:hi] if go is not None else dh[:b]
                y = out[lo:hi]
                d = dpre[lo:hi]
                if relu:
                    xp.multiply(dhs, y > 0, out=d)
                else:
                    xp.multiply(dhs, 1 - y * y, out=d)
                dh[:b] = xp.matmul(d, w)
        like = xproj
        gemm_threads(xp, dpre.size * h_prev.shape[1])
        return (_wrap(dpre, like), _wrap(dh, like), _wrap(xp.matmul(dpre.T, h_prev), like),
                None, None, None)


def rnn_layer_reference(m: Any, xproj: Any, h0: Any, w_hh: Any, batch_sizes: Sequence[int],
                        reverse: bool, nonlinearity: str = "tanh") -> tuple:
    """``_rnn_layer`` in tensor ops of module ``m`` (ember or torch)."""
    off = _offsets(batch_sizes)
    steps = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    h = h0
    outs = [None] * len(batch_sizes)
    for t in steps:
        b = batch_sizes[t]
        pre = xproj[off[t]:off[t] + b] + m.matmul(h[:b], w_hh.t())
        hn = pre.relu() if nonlinearity == "relu" else pre.tanh()
        outs[t] = hn
        h = m.cat([hn, h[b:]], 0)
    out = m.cat(outs, 0) if outs else xproj * 0
    return out, h


# ---------------------------------------------------------------------- shared helpers
def _xp(t: Tensor) -> Any:
    from ember.backend import get_xp
    return get_xp(t.device)


def _reference_vjp(ref: Any, ctx: Any, inputs: tuple, grads: tuple, extra: tuple) -> tuple:
    """Backward through the reference decomposition (used when create_graph=True)."""
    import ember
    with ember.enable_grad():
        outs = ref(ember, *inputs, *extra)
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    if not pairs or not wanted:
        return tuple(None for _ in inputs) + tuple(None for _ in extra)
    res = ember.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                              create_graph=True, allow_unused=True)
    found = dict(zip(map(id, wanted), res))
    return tuple(found.get(id(t)) if t is not None else None for t in inputs) + \
        tuple(None for _ in extra)


def _cell_args(name: str, input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
               gates: int) -> None:
    check(input.dim() == 2, name, f"input must be 2-D (batch, input_size), got shape "
                                  f"{tuple(input.shape)}")
    check(w_ih.shape[0] == gates * w_hh.shape[1] and w_ih.shape[1] == input.shape[1], name,
          f"w_ih {tuple(w_ih.shape)} does not fit input {tuple(input.shape)} and hidden size "
          f"{w_hh.shape[1]} ({gates} gates)")
    check(hx.dim() == 2 and hx.shape[0] == input.shape[0], name,
          f"hidden state {tuple(hx.shape)} does not match input batch {input.shape[0]}")


def _proj(input: Tensor, w_ih: Tensor, b: Tensor | None) -> Tensor:
    x = input.matmul(w_ih.t())
    return x + b if b is not None else x


@composite(method=False)
def lstm_cell(input: Tensor, hx: Sequence[Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor | None = None, b_hh: Tensor | None = None) -> tuple:
    """One LSTM step (torch's ``torch.lstm_cell``): returns ``(h', c')``."""
    from ember.ops.registry import OPS, apply
    h, c = hx
    _cell_args("lstm_cell", input, h, w_ih, w_hh, 4)
    b = b_ih + b_hh if b_ih is not None and b_hh is not None else (b_ih if b_ih is not None
                                                                    else b_hh)
    out, hn, cn = apply(OPS["_lstm_layer"], (_proj(input, w_ih, b), h, c, w_hh, None,
                                             (input.shape[0],), False))
    return hn, cn


@composite(method=False)
def gru_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None) -> Tensor:
    """One GRU step (torch's ``torch.gru_cell``): returns ``h'``."""
    from ember.ops.registry import OPS, apply
    _cell_args("gru_cell", input, hx, w_ih, w_hh, 3)
    out, hn = apply(OPS["_gru_layer"], (_proj(input, w_ih, b_ih), hx, w_hh, b_hh,
                                        (input.shape[0],), False))
    return hn


def _rnn_cell(nonlinearity: str) -> Any:
    def cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None) -> Tensor:
        from ember.ops.registry import OPS, apply
        _cell_args(f"rnn_{nonlinearity}_cell", input, hx, w_ih, w_hh, 1)
        x = _proj(input, w_ih, b_ih)
        if b_hh is not None:
            x = x + b_hh
        out, hn = apply(OPS["_rnn_layer"], (x, hx, w_hh, (input.shape[0],), False,
                                            nonlinearity))
        return hn
    cell.__name__ = f"rnn_{nonlinearity}_cell"
    cell.__doc__ = (f"One Elman RNN step with {nonlinearity} "
                    f"(torch's ``torch.rnn_{nonlinearity}_cell``).")
    return cell


rnn_tanh_cell = composite("rnn_tanh_cell", method=False)(_rnn_cell("tanh"))
rnn_relu_cell = composite("rnn_relu_cell", method=False)(_rnn_cell("relu"))

__all__: list = []
