"""Embedding lookups: ``embedding``, its dense backward, ``embedding_bag`` and
``embedding_renorm_``.

``embedding`` is a gather of weight rows; its backward is ``embedding_dense_backward``, a
scatter-add of the output gradient into a zero weight gradient (rows at ``padding_idx`` get
nothing, ``scale_grad_by_freq`` divides each row by how often its index occurs). The two ops
are each other's adjoint, so double backward comes free. ``embedding_bag`` reduces the
looked-up rows per bag (sum, mean or max) in one pass instead of materialising them.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ember import dtypes as _dt
from ember.backend import cpu_kernels
from ember.backend.cuda import stream_capturing
from ember.errors import check, make
from ember.ops.registry import OpDef, TensorMeta, composite, register
from ember.tensor import Tensor, _make

_INDEX_DTYPES = ("int64", "int32")
_TORCH_TYPE = {"float32": "Float", "float64": "Double", "float16": "Half", "bfloat16": "BFloat16",
               "int16": "Short", "int8": "Char", "uint8": "Byte", "bool": "Bool"}


def _check_indices(op: str, indices: Any, arg: str = "indices", pos: int = 1) -> None:
    check(isinstance(indices, Tensor), op,
          f"argument '{arg}' must be Tensor, not {type(indices).__name__}", TypeError)
    if indices._dtype.name not in _INDEX_DTYPES:
        name = _TORCH_TYPE.get(indices._dtype.name, indices._dtype.name)
        raise make(RuntimeError, op,
                   f"Expected tensor for argument #{pos} '{arg}' to have one of the following "
                   f"scalar types: Long, Int; but got torch.{name}Tensor instead (while checking "
                   f"arguments for {op})")


def _check_range(op: str, xp: Any, indices: Any, num: int, kind: type = IndexError,
                 out: Any = None, busy: bool = False) -> None:
    """Torch raises for an out-of-range index (IndexError from embedding, RuntimeError from
    embedding_bag); NumPy would wrap negatives silently. On CUDA, reading the indices on
    the host waits for the GPU's whole queue. So embedding (``out`` given) and any op while a
    graph is captured check on the device instead, setting the gathered rows ``out`` of bad
    indices to NaN. If the GPU was ``busy`` before the call, the IndexError comes from the
    next embedding call or ``ember.cuda.synchronize()``; if it was idle, from this call."""
    if xp is not np:
        from ember.backend.cuda_ops import kernels_embedding as ke
        if stream_capturing():
            if indices.size:
                ke.check_range_on_device(xp, indices, num, out)
            return
        if out is not None:
            # embedding: always the device check (a host check costs three round trips, the
            # min, the max and the record, ~0.1 ms each at a step's start); with the GPU idle
            # its record is read back at once, one round trip, and the error raised here
            if busy:
                ke.raise_recorded(xp)
            ke.check_range_on_device(xp, indices, num, out)
            if not busy:
                ke.raise_checked(xp)
            return
        ke.raise_recorded(xp, wait=True)
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= num):
        bad = int(indices.min()) if int(indices.min()) < 0 else int(indices.max())
        raise make(kind, op, f"index out of range in self: index {bad} with "
                                   f"{num} embeddings (weight rows)")


def scatter_add_rows(xp: Any, num_rows: int, idx: Any, rows: Any) -> Any:
    """A ``(num_rows, D)`` array with ``rows[k]`` added into row ``idx[k]`` (repeats sum)."""
    out = xp.zeros((num_rows,) + rows.shape[1:], dtype=rows.dtype)
    if idx.size == 0:
        return out
    if xp is np and rows.ndim == 2 and rows.dtype in (np.float32, np.float64) and \
            idx.dtype.kind in "iu":
        nb = cpu_kernels.kernels()
        # (the kernel does not check bounds: an index out of range takes the NumPy path,
        # which raises)
        if nb is not None and 0 <= int(idx.min()) and int(idx.max()) < num_rows:
            nb.scatter_add_rows(out, idx, rows)
            return out
    if xp is np:
        # Sort once and reduce contiguous runs: much faster than np.add.at on 2-D rows.
        order = np.argsort(idx, kind="stable")
        sidx = idx[order]
        starts = np.flatnonzero(np.concatenate(([True], sidx[1:] != sidx[:-1])))
        out[sidx[starts]] = np.add.reduceat(rows[order], starts, axis=0)
        return out
    xp.add.at(out, idx, rows)  # CuPy: atomic adds on the GPU
    return out


def _row_scale(xp: Any, idx: Any, num: int, padding_idx: int, by_freq: bool,
               dtype: Any) -> Any | None:
    """Per-index factor on the gradient: 0 at padding_idx, 1/count with scale_grad_by_freq."""
    if padding_idx < 0 and not by_freq:
        return None
    scale = xp.ones(idx.shape, dtype=dtype)
    if by_freq:
        counts = xp.bincount(idx, minlength=num)
        scale = scale / counts[idx].astype(dtype)
    if padding_idx >= 0:
        scale = xp.where(idx == padding_idx, xp.zeros((), dtype), scale)
    return scale


def _const(arr: Any, like: Tensor) -> Tensor:
    return _make(arr, _dt._FROM_NP[arr.dtype], like.device)


# ---------------------------------------------------------------------- embedding
def _embedding_meta(op: Any, weight: Any, indices: Any, padding_idx: int = -1,
                    scale_grad_by_freq: bool = False, sparse: bool = False) -> TensorMeta:
    check(isinstance(weight, Tensor), op.name,
          f"argument 'weight' must be Tensor, not {type(weight).__name__}", TypeError)
    check(weight._data.ndim == 2, op.name,
          f"'weight' must be 2-D, got weight of shape {tuple(weight._data.shape)}")
    _check_indices(op.name, indices)
    return TensorMeta(indices._data.shape + weight._data.shape[1:], weight._dtype)


@register("embedding", meta=_embedding_meta, method=False, onnx="Gather")
class Embedding(OpDef):
    """Rows of ``weight`` at ``indices``: output shape ``indices.shape + (D,)``.

    Torch's low-level ``torch.embedding(weight, indices, padding_idx, scale_grad_by_freq,
    sparse)``; ``nn.functional.embedding`` is the user-facing form.
    """

    def forward(ctx, xp, weight, indices, padding_idx=-1, scale_grad_by_freq=False,
                sparse=False):
        if xp is np:
            _check_range("embedding", xp, indices, weight.shape[0])
            out = xp.take(weight, indices, axis=0)
        else:
            # CuPy's take wraps an out-of-range index (no fault); checked after the gather so
            # that a device-side check can set the bad rows to NaN. Whether the GPU is busy is
            # asked before the gather is queued (an idle GPU: waiting for the check stalls nothing).
            stream = xp.cuda.get_current_stream()
            busy = not stream_capturing() and not stream.done
            out = xp.take(weight, indices, axis=0)
            _check_range("embedding", xp, indices, weight.shape[0], out=out, busy=busy)
        ctx.num = weight.shape[0]
        ctx.args = (padding_idx, scale_grad_by_freq)
        ctx.save(indices)
        return out

    def backward(ctx, grad):
        (indices,) = ctx.saved
        padding_idx, by_freq = ctx.args
        gw = embedding_dense_backward(grad, indices, ctx.num, padding_idx, by_freq)
        return gw, None, None, None, None


def _dense_bwd_meta(op: Any, grad_output: Any, indices: Any, num_weights: int,
                    padding_idx: int, scale_grad_by_freq: bool) -> TensorMeta:
    _check_indices(op.name, indices, pos=2)
    check(grad_output._data.shape[:-1] == indices._data.shape, op.name,
          f"grad_output shape {tuple(grad_output._data.shape)} does not match indices shape "
          f"{tuple(indices._data.shape)} + (D,)")
    return TensorMeta((num_weights, grad_output._data.shape[-1]))


@register("embedding_dense_backward", meta=_dense_bwd_meta, method=False, function=False)
class EmbeddingDenseBackward(OpDef):
    """The weight gradient of ``embedding``: ``grad_output`` rows scatter-added by index."""

    def forward(ctx, xp, grad_output, indices, num_weights, padding_idx, scale_grad_by_freq):
        d = grad_output.shape[-1]
        idx = indices.reshape(-1)
        rows = grad_output.reshape(-1, d)
        scale = _row_scale(xp, idx, num_weights, padding_idx, scale_grad_by_freq, rows.dtype)
        if scale is not None:
            rows = rows * scale[:, None]
        ctx.scale = scale
        ctx.save(indices)
        return scatter_add_rows(xp, num_weights, idx, rows)

    def backward(ctx, grad):
        # Adjoint of a scatter-add is a gather (with the same per-index factor).
        (indices,) = ctx.saved
        out = grad[indices]
        if ctx.scale is not None:
            out = out * _const(ctx.scale.reshape(indices.shape + (1,)), grad)
        return out, None, None, None, None


def embedding_dense_backward(grad_output: Tensor, indices: Tensor, num_weights: int,
                             padding_idx: int, scale_grad_by_freq: bool) -> Tensor:
    from ember.ops.registry import OPS, apply
    return apply(OPS["embedding_dense_backward"],
                 (grad_output, indices, num_weights, padding_idx, scale_grad_by_freq))


# ---------------------------------------------------------------------- embedding_renorm_
def _renorm_rows(xp: Any, weight: Any, indices: Any, max_norm: float, norm_type: float) -> None:
    rows = xp.unique(indices.reshape(-1))
    sub = weight[rows].astype(xp.float64 if weight.dtype == xp.float64 else xp.float32)
    if norm_type == float("inf"):
        norms = xp.abs(sub).max(axis=1)
    else:
        norms = (xp.abs(sub) ** norm_type).sum(axis=1) ** (1.0 / norm_type)
    # torch's kernel: scale = max_norm / (norm + 1e-7) for rows whose norm exceeds max_norm
    big = norms > max_norm
    scale = xp.where(big, max_norm / (norms + 1e-7), 1.0)
    weight[rows] = (sub * scale[:, None]).astype(weight.dtype)


@composite(method=False)
def embedding_renorm_(input: Tensor, indices: Tensor, max_norm: float,
                      norm_type: float) -> Tensor:
    """Rescale, in place, the rows of ``input`` (a weight) referenced by ``indices`` whose
    ``norm_type``-norm exceeds ``max_norm`` to norm ``max_norm``. Not differentiable: call it
    under ``no_grad`` (as ``nn.functional.embedding`` does), like torch."""
    check(input._data.ndim == 2, "embedding_renorm_",
          f"'self' must be 2-D, got shape {tuple(input._data.shape)}")
    _check_indices("embedding_renorm_", indices)
    from ember._state import _State
    if _State.enabled and input._requires_grad and input._grad_fn is None:
        raise make(RuntimeError, "embedding_renorm_",
                   "a leaf Variable that requires grad is being used in an in-place operation.",
                   hint="wrap the call in `with ember.no_grad():`")
    from ember.backend import get_xp
    xp = get_xp(input.device)
    _check_range("embedding_renorm_", xp, indices._data, input._data.shape[0])
    _renorm_rows(xp, input._data, indices._data, float(max_norm), float(norm_type))
    input._version[0] += 1
    return input


# ---------------------------------------------------------------------- embedding_bag
def _bag_meta(op: Any, weight: Any, indices: Any, offsets: Any, scale_grad_by_freq: bool = False,
              mode: int = 0, sparse: bool = False, per_sample_weights: Any = None,
              include_last_offset: bool = False, padding_idx: Any = None) -> tuple:
    name = op.name
    check(weight._data.ndim == 2, name,
          f"weight has to be a 2D Tensor, but got weight of shape {tuple(weight._data.shape)}",
          ValueError)
    _check_indices(name, indices, pos=2)
    _check_indices(name, offsets, "offsets", pos=3)
    check(indices._data.ndim == 1, name,
          f"input has to be a 1D Tensor, got shape {tuple(indices._data.shape)}", ValueError)
    check(offsets._data.ndim == 1, name, "offsets has to be a 1D Tensor", ValueError)
    check(mode in (0, 1, 2), name, f"mode has to be 0 (sum), 1 (mean) or 2 (max), got {mode}",
          ValueError)
    if per_sample_weights is not None:
        check(per_sample_weights._data.shape == indices._data.shape, name,
              f"per_sample_weights {tuple(per_sample_weights._data.shape)} must have the same "
              f"shape as the input {tuple(indices._data.shape)}", ValueError)
    nb = offsets._data.shape[0] - (1 if include_last_offset else 0)
    check(nb >= 0, name, "offsets must have at least one element with include_last_offset=True",
          ValueError)
    d = weight._data.shape[1]
    return (TensorMeta((nb, d), weight._dtype), TensorMeta(indices._data.shape, indices._dtype),
            TensorMeta((nb,), indices._dtype), TensorMeta((nb, d), indices._dtype))


def _bag_ids(xp: Any, offsets: Any, n: int, include_last: bool) -> tuple[Any, int]:
    """The bag of every index (-1: in no bag). With ``include_last_offset`` the final offset
    ends the last bag (CSR layout, normally ``len(input)``); otherwise the last bag runs to the
    end of the input."""
    off = offsets.astype(xp.int64)
    nb = off.shape[0] - (1 if include_last else 0)
    starts = off[:nb]
    end = min(int(off[-1]), n) if include_last and off.shape[0] else n
    if nb and (int(starts[0]) != 0 or bool((starts[1:] < starts[:-1]).any())
               or int(starts[-1]) > end):
        shown = off.tolist()[:8]
        raise make(ValueError, "embedding_bag",
                   f"offsets must start at 0, be non-decreasing and not exceed the input length "
                   f"{n}, got offsets {shown}{'...' if off.shape[0] > 8 else ''}")
    if not nb:
        return xp.full(n, -1, dtype=xp.int64), 0
    # each index belongs to the last bag starting at or before it (empty bags get none)
    pos = xp.arange(n, dtype=xp.int64)
    bag = xp.searchsorted(starts, pos, side="right") - 1
    return xp.where(pos < end, bag, -1), nb


@register("embedding_bag", meta=_bag_meta, method=False, nondiff_outputs=(1, 2, 3),
          node_name="EmbeddingBag")
class EmbeddingBag(OpDef):
    """Per-bag sums, means or maxima of embedding rows, without materialising them.

    Torch's low-level ``torch.embedding_bag(weight, indices, offsets, scale_grad_by_freq,
    mode, sparse, per_sample_weights, include_last_offset, padding_idx)`` with ``mode`` 0 (sum),
    1 (mean) or 2 (max); returns ``(output, offset2bag, bag_size, max_indices)``.
    """

    def forward(ctx, xp, weight, indices, offsets, scale_grad_by_freq=False, mode=0,
                sparse=False, per_sample_weights=None, include_last_offset=False,
                padding_idx=None):
        num, d = weight.shape
        _check_range("embedding_bag", xp, indices, num, RuntimeError)
        n = indices.shape[0]
        bag, nb = _bag_ids(xp, offsets, n, include_last_offset)
        # torch's low-level rule: None means no padding row; a negative index counts from the end
        pad = -1 if padding_idx is None else int(padding_idx) % num
        if nb == 0:
            # no bags: nothing to reduce, and no index reaches the weight gradient
            bag = xp.full(n, -1, dtype=xp.int64)
        valid = bag >= 0 if pad < 0 else (bag >= 0) & (indices != pad)
        safe_bag = xp.maximum(bag, 0)
        rows = xp.take(weight, indices, axis=0)
        if per_sample_weights is not None:
            rows = rows * per_sample_weights[:, None].astype(rows.dtype)
        vb = bag[valid]
        counts = xp.bincount(vb, minlength=nb)[:nb] if nb else xp.zeros(0, xp.int64)
        max_idx = xp.zeros((nb, d), dtype=indices.dtype)
        if mode == 2:
            out, scale, max_idx = _bag_max(xp, rows, bag, valid, nb, indices)
        else:
            w = valid.astype(rows.dtype)
            if mode == 1 and nb:
                safe = xp.maximum(counts, 1).astype(rows.dtype)
                w = w / safe[safe_bag]
            out = scatter_add_rows(xp, nb, vb, (rows * w[:, None])[valid]) if nb else \
                xp.zeros((0, d), rows.dtype)
            scale = w[:, None]
        ctx.bag, ctx.scale, ctx.num = safe_bag, scale, num
        ctx.args = (mode, scale_grad_by_freq, pad)
        ctx.save(weight, indices, per_sample_weights)
        return out, bag.astype(indices.dtype), counts.astype(indices.dtype), max_idx

    def backward(ctx, grad, g1=None, g2=None, g3=None):
        weight, indices, psw = ctx.saved
        mode, by_freq, pad = ctx.args
        bag = ctx.bag
        # Each index's gradient row is its bag's gradient times its weight in the reduction.
        g_rows = grad[_const(bag, grad)] * _const(ctx.scale, grad)
        g_psw = None
        if psw is not None:
            g_psw = (g_rows * weight[indices]).sum(-1)
            g_rows = g_rows * psw.unsqueeze(-1)
        gw = embedding_dense_backward(g_rows, indices, ctx.num, pad, by_freq)
        return gw, None, None, None, None, None, g_psw, None, None


def _bag_max(xp: Any, rows: Any, bag: Any, valid: Any, nb: int, indices: Any) -> tuple:
    """Per-bag, per-column maxima; the first row attaining each maximum takes the gradient.

    One lexicographic sort over (bag and column, value descending, position) picks the
    winning row of every (bag, column) exactly, on NumPy and CuPy alike (a scatter-max
    kernel would need an exact float comparison afterwards to find the winner).
    Returns (out (nb, d), winner mask (n, d) as the gradient scale, max_indices (nb, d)).
    """
    n, d = rows.shape
    out = xp.zeros(nb * d, dtype=rows.dtype)
    winner = xp.zeros((n, d), dtype=rows.dtype)
    max_idx = xp.zeros(nb * d, dtype=indices.dtype)
    vpos = xp.nonzero(valid)[0]
    if vpos.size:
        cols = xp.arange(d, dtype=xp.int64)
        seg = (bag[vpos][:, None] * d + cols[None, :]).reshape(-1)
        val = rows[vpos].reshape(-1)
        pos = xp.broadcast_to(vpos[:, None], (vpos.size, d)).reshape(-1)
        keys = xp.stack([pos.astype(xp.float64), -val.astype(xp.float64),
                         seg.astype(xp.float64)])
        order = xp.lexsort(keys)  # last key first: segment, then value down, then position
        sseg = seg[order]
        first = xp.ones(sseg.shape[0], dtype=bool)
        first[1:] = sseg[1:] != sseg[:-1]
        win = order[first]
        win_seg = sseg[first]
        out[win_seg] = val[win]
        winner[pos[win], win_seg % d] = 1
        max_idx[win_seg] = indices[pos[win]]
    return out.reshape(nb, d), winner, max_idx.reshape(nb, d)


__all__: list = []
