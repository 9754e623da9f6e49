"""softmax and log_softmax: primitives with fused, numerically stable forwards."""
from __future__ import annotations

from typing import Any

from ember import dtypes as _dt
from ember.ops import meta as M
from ember.ops.registry import OpDef, TensorMeta, register


def _softmax_meta(op: Any, input: Any, dim: Any = None, dtype: Any = None) -> TensorMeta:
    if dim is None:
        from ember.errors import make
        raise make(TypeError, op.name, "dim must be given (implicit dim is deprecated in torch)")
    M.wrap_dim(op.name, dim, input._data.ndim)
    return TensorMeta(input._data.shape)


def _prep(xp: Any, input: Any, dim: int, dtype: Any) -> tuple:
    x = input.astype(_dt.to_dtype(dtype).np) if dtype is not None else input
    if x.dtype.kind in "iub":
        raise TypeError(f"softmax is not implemented for integer dtype {x.dtype}; pass dtype=")
    d = dim % max(x.ndim, 1)
    # half types compute in float32 and round once, like torch's CPU kernels
    work = x.astype(xp.float32) if x.dtype.itemsize < 4 else x
    if x.ndim == 0:
        work = work.reshape(1)
        d = 0
    m = xp.max(work, axis=d, keepdims=True) if work.size else work
    shifted = work - xp.where(xp.isfinite(m), m, 0) if work.size else work
    return x, d, shifted


@register("softmax", meta=_softmax_meta, sig="input, dim=None, dtype=None", onnx="Softmax")
class Softmax(OpDef):
    """``exp(x) / sum(exp(x), dim)``, computed after subtracting the max."""

    def forward(ctx, xp, input, dim, dtype):
        x, d, shifted = _prep(xp, input, dim, dtype)
        e = xp.exp(shifted)
        y = (e / xp.sum(e, axis=d, keepdims=True)).astype(x.dtype, copy=False).reshape(x.shape)
        ctx.dim = d
        ctx.save(y)
        return y

    def backward(ctx, grad):
        (y,) = ctx.saved
        d = ctx.dim if y.ndim else None
        if y.ndim == 0:
            return grad * 0, None, None
        return y * (grad - (grad * y).sum(d, keepdim=True)), None, None


@register("log_softmax", meta=_softmax_meta, sig="input, dim=None, dtype=None",
          onnx="LogSoftmax")
class LogSoftmax(OpDef):
    """``x - logsumexp(x, dim)``."""

    def forward(ctx, xp, input, dim, dtype):
        x, d, shifted = _prep(xp, input, dim, dtype)
        y = shifted - xp.log(xp.sum(xp.exp(shifted), axis=d, keepdims=True))
        y = y.astype(x.dtype, copy=False).reshape(x.shape)
        ctx.dim = d
        ctx.save(y)
        return y

    def backward(ctx, grad):
        (y,) = ctx.saved
        if y.ndim == 0:
            return grad * 0, None, None
        return grad - y.exp() * grad.sum(ctx.dim, keepdim=True), None, None
