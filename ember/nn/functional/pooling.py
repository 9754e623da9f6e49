"""Pooling: max/avg pooling (1-3d), adaptive pooling, power-average pooling and max unpooling.

Max and average pooling run on the ``_max_pool`` / ``_avg_pool`` primitives
(ember/ops/nn_pool.py); adaptive average pooling is a product with per-dim averaging
matrices (one GEMM per spatial dim, exact for uneven windows); lp_pool is a composite.
"""
from __future__ import annotations

from typing import Any

import numpy as np

import ember
from ember.errors import check, make
from ember.ops.nn_conv import ntuple
from ember.ops.nn_pool import _adaptive_windows
from ember.ops.registry import OPS, apply
from ember.tensor import Tensor

__all__ = ["max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
           "max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d",
           "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
           "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
           "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
           "adaptive_max_pool3d_with_indices", "lp_pool1d", "lp_pool2d", "lp_pool3d",
           "max_unpool1d", "max_unpool2d", "max_unpool3d"]


def _batched(name: str, input: Any, nd: int) -> tuple[Tensor, bool]:
    check(isinstance(input, Tensor), name, f"argument 'input' must be Tensor, not "
                                           f"{type(input).__name__}", TypeError)
    if input.ndim == nd + 1:
        return input.unsqueeze(0), True
    if input.ndim != nd + 2:
        dims = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}[nd]
        raise make(RuntimeError, name,
                   f"Expected {nd + 1}D (unbatched) or {nd + 2}D (batched) input {dims}, but got "
                   f"input of size: {list(input.shape)}")
    return input, False


def _unbatch(out: Any, unbatched: bool) -> Any:
    if not unbatched:
        return out
    if isinstance(out, tuple):
        return tuple(o.squeeze(0) for o in out)
    return out.squeeze(0)


def _stride(stride: Any) -> Any:
    return None if stride is None or (isinstance(stride, (list, tuple)) and not stride) else stride


# ---------------------------------------------------------------------- max pooling
def _max_pool(name: str, nd: int, input: Tensor, kernel_size: Any, stride: Any, padding: Any,
              dilation: Any, ceil_mode: bool, return_indices: bool) -> Any:
    x, unb = _batched(name, input, nd)
    out = apply(OPS["_max_pool"], (x, kernel_size, _stride(stride), padding, dilation,
                                   bool(ceil_mode)))
    out = _unbatch(tuple(out), unb)
    return out if return_indices else out[0]


def max_pool1d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False) -> Any:
    """1-d max pooling over ``(N, C, L)``; ``stride`` defaults to ``kernel_size``.

    With ``return_indices`` also returns the argmax positions (flat over L), for max_unpool1d.
    """
    return _max_pool("max_pool1d", 1, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


def max_pool2d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False) -> Any:
    """2-d max pooling over ``(N, C, H, W)``; ``stride`` defaults to ``kernel_size``.

    With ``return_indices`` also returns the argmax positions (flat over H*W).

    Example::

        >>> max_pool2d(ember.arange(16.).reshape(1, 1, 4, 4), 2)
        tensor([[[[ 5.,  7.],
                  [13., 15.]]]])
    """
    return _max_pool("max_pool2d", 2, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


def max_pool3d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False) -> Any:
    """3-d max pooling over ``(N, C, D, H, W)``; ``stride`` defaults to ``kernel_size``."""
    return _max_pool("max_pool3d", 3, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


def max_pool1d_with_indices(input: Tensor, kernel_size: Any, stride: Any = None,
                            padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False,
                            return_indices: bool = True) -> tuple:
    """:func:`max_pool1d` returning ``(values, indices)``."""
    return max_pool1d(input, kernel_size, stride, padding, dilation, ceil_mode, True)


def max_pool2d_with_indices(input: Tensor, kernel_size: Any, stride: Any = None,
                            padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False,
                            return_indices: bool = True) -> tuple:
    """:func:`max_pool2d` returning ``(values, indices)``."""
    return max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, True)


def max_pool3d_with_indices(input: Tensor, kernel_size: Any, stride: Any = None,
                            padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False,
                            return_indices: bool = True) -> tuple:
    """:func:`max_pool3d` returning ``(values, indices)``."""
    return max_pool3d(input, kernel_size, stride, padding, dilation, ceil_mode, True)


# ---------------------------------------------------------------------- average pooling
def _avg_pool(name: str, nd: int, input: Tensor, kernel_size: Any, stride: Any, padding: Any,
              ceil_mode: bool, count_include_pad: bool, divisor_override: Any) -> Tensor:
    x, unb = _batched(name, input, nd)
    out = apply(OPS["_avg_pool"], (x, kernel_size, _stride(stride), padding, bool(ceil_mode),
                                   bool(count_include_pad), divisor_override))
    return _unbatch(out, unb)


def avg_pool1d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               ceil_mode: bool = False, count_include_pad: bool = True) -> Tensor:
    """1-d average pooling over ``(N, C, L)``."""
    return _avg_pool("avg_pool1d", 1, input, kernel_size, stride, padding, ceil_mode,
                     count_include_pad, None)


def avg_pool2d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None) -> Tensor:
    """2-d average pooling over ``(N, C, H, W)``.

    ``count_include_pad`` counts zero padding in the divisor; ``divisor_override`` replaces
    the divisor altogether.
    """
    return _avg_pool("avg_pool2d", 2, input, kernel_size, stride, padding, ceil_mode,
                     count_include_pad, divisor_override)


def avg_pool3d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None) -> Tensor:
    """3-d average pooling over ``(N, C, D, H, W)``."""
    return _avg_pool("avg_pool3d", 3, input, kernel_size, stride, padding, ceil_mode,
                     count_include_pad, divisor_override)


# ---------------------------------------------------------------------- adaptive pooling
def _out_size(name: str, x: Tensor, output_size: Any, nd: int) -> tuple:
    if isinstance(output_size, (int, np.integer)) or output_size is None:
        output_size = (output_size,) * nd
    output_size = tuple(output_size)
    if len(output_size) == 1 and nd > 1:
        output_size = output_size * nd
    check(len(output_size) == nd, name, f"output_size must be an int or a tuple of {nd} ints, "
                                        f"got {output_size}")
    sp = x.shape[-nd:]
    return tuple(int(sp[i]) if o is None else int(o) for i, o in enumerate(output_size))


def _avg_matrix(size: int, out: int, dtype: Any, device: Any) -> Tensor:
    """``(out, size)`` matrix averaging torch's adaptive windows."""
    st, en = _adaptive_windows(size, out)
    m = np.zeros((out, size))
    for i, (a, b) in enumerate(zip(st, en)):
        m[i, a:b] = 1.0 / (b - a)
    return ember.tensor(m, dtype=dtype, device=device)


def _adaptive_avg(name: str, nd: int, input: Tensor, output_size: Any) -> Tensor:
    x, unb = _batched(name, input, nd)
    out = _out_size(name, x, output_size, nd)
    check(all(s > 0 for s in x.shape[1:]), name,
          f"Expected input to have non-zero size for non-batch dimensions, but input has sizes "
          f"{list(x.shape)}")
    check(x.is_floating_point(), name, f'"{name}" not implemented for \'{x.dtype}\'')
    if all(o == 1 for o in out):
        # global average pooling (a classifier head): one reduction over every spatial dim,
        # rounded once as torch's kernel rounds, in the input's dtype
        return _unbatch(x.mean(tuple(range(2, 2 + nd)), keepdim=True), unb)
    y = x
    for i in range(nd):
        dim = 2 + i
        size = x.shape[dim]
        if out[i] == size:
            continue
        if out[i] == 1:
            y = y.mean(dim, keepdim=True)
            continue
        m = _avg_matrix(size, out[i], x.dtype, x.device)
        y = (y.movedim(dim, -1) @ m.t()).movedim(-1, dim)
    if y is x:
        y = x.clone()
    return _unbatch(y, unb)


def adaptive_avg_pool1d(input: Tensor, output_size: Any) -> Tensor:
    """Average pooling of ``(N, C, L)`` to length ``output_size`` (windows may overlap)."""
    return _adaptive_avg("adaptive_avg_pool1d", 1, input, output_size)


def adaptive_avg_pool2d(input: Tensor, output_size: Any) -> Tensor:
    """Average pooling of ``(N, C, H, W)`` to ``output_size`` (an int, or a pair whose None
    entries keep the input size)."""
    return _adaptive_avg("adaptive_avg_pool2d", 2, input, output_size)


def adaptive_avg_pool3d(input: Tensor, output_size: Any) -> Tensor:
    """Average pooling of ``(N, C, D, H, W)`` to ``output_size``."""
    return _adaptive_avg("adaptive_avg_pool3d", 3, input, output_size)


def _adaptive_max(name: str, nd: int, input: Tensor, output_size: Any,
                  return_indices: bool) -> Any:
    x, unb = _batched(name, input, nd)
    out = _out_size(name, x, output_size, nd)
    res = _unbatch(tuple(apply(OPS["_adaptive_max_pool"], (x, out))), unb)
    return res if return_indices else res[0]


def adaptive_max_pool1d(input: Tensor, output_size: Any, return_indices: bool = False) -> Any:
    """Max pooling of ``(N, C, L)`` to length ``output_size``."""
    return _adaptive_max("adaptive_max_pool1d", 1, input, output_size, return_indices)


def adaptive_max_pool2d(input: Tensor, output_size: Any, return_indices: bool = False) -> Any:
    """Max pooling of ``(N, C, H, W)`` to ``output_size``; indices are flat over H*W."""
    return _adaptive_max("adaptive_max_pool2d", 2, input, output_size, return_indices)


def adaptive_max_pool3d(input: Tensor, output_size: Any, return_indices: bool = False) -> Any:
    """Max pooling of ``(N, C, D, H, W)`` to ``output_size``."""
    return _adaptive_max("adaptive_max_pool3d", 3, input, output_size, return_indices)


def adaptive_max_pool1d_with_indices(input: Tensor, output_size: Any,
                                     return_indices: bool = True) -> tuple:
    return adaptive_max_pool1d(input, output_size, True)


def adaptive_max_pool2d_with_indices(input: Tensor, output_size: Any,
                                     return_indices: bool = True) -> tuple:
    return adaptive_max_pool2d(input, output_size, True)


def adaptive_max_pool3d_with_indices(input: Tensor, output_size: Any,
                                     return_indices: bool = True) -> tuple:
    return adaptive_max_pool3d(input, output_size, True)


# ---------------------------------------------------------------------- power-average pooling
def _lp_pool(name: str, nd: int, input: Tensor, norm_type: float, kernel_size: Any,
             stride: Any, ceil_mode: bool) -> Tensor:
    k = ntuple(kernel_size, nd, "kernel_size", name)
    pool = (avg_pool1d, avg_pool2d, avg_pool3d)[nd - 1]
    p = float(norm_type)
    if p == float("inf"):
        return (max_pool1d, max_pool2d, max_pool3d)[nd - 1](input, k, stride, 0, 1, ceil_mode)
    out = pool(input.pow(p), k, stride, 0, ceil_mode)
    n = int(np.prod(k))
    # torch: (sign(out) * relu(|out|)) * n, then ** (1/p)
    return (out.sign() * out.abs().relu()).mul(n).pow(1.0 / p)


def lp_pool1d(input: Tensor, norm_type: float, kernel_size: Any, stride: Any = None,
              ceil_mode: bool = False) -> Tensor:
    """Power-average pooling: ``(sum over window of x^p)^(1/p)`` over ``(N, C, L)``."""
    return _lp_pool("lp_pool1d", 1, input, norm_type, kernel_size, stride, ceil_mode)


def lp_pool2d(input: Tensor, norm_type: float, kernel_size: Any, stride: Any = None,
              ceil_mode: bool = False) -> Tensor:
    """Power-average pooling: ``(sum over window of x^p)^(1/p)`` over ``(N, C, H, W)``."""
    return _lp_pool("lp_pool2d", 2, input, norm_type, kernel_size, stride, ceil_mode)


def lp_pool3d(input: Tensor, norm_type: float, kernel_size: Any, stride: Any = None,
              ceil_mode: bool = False) -> Tensor:
    """Power-average pooling over ``(N, C, D, H, W)``."""
    return _lp_pool("lp_pool3d", 3, input, norm_type, kernel_size, stride, ceil_mode)


# ---------------------------------------------------------------------- max unpooling
def _unpool(name: str, nd: int, input: Tensor, indices: Tensor, kernel_size: Any, stride: Any,
            padding: Any, output_size: Any) -> Tensor:
    x, unb = _batched(name, input, nd)
    check(isinstance(indices, Tensor) and indices.dtype == ember.int64, name,
          f"elements in indices should be type int64 but got: "
          f"{getattr(indices, 'dtype', type(indices).__name__)}")
    idx = indices.unsqueeze(0) if unb else indices
    k = ntuple(kernel_size, nd, "kernel_size", name)
    s = ntuple(_stride(stride) or k, nd, "stride", name)
    p = ntuple(padding, nd, "padding", name)
    default = tuple((x.shape[2 + i] - 1) * s[i] - 2 * p[i] + k[i] for i in range(nd))
    if output_size is None:
        out = default
    else:
        out = tuple(int(v) for v in output_size)
        if len(out) == nd + 2 or len(out) == nd + 1:
            out = out[-nd:]
        check(len(out) == nd, name, f"output_size must have {nd} elements, got {list(out)}")
        for i in range(nd):
            lo, hi = default[i] - s[i], default[i] + s[i]
            check(lo < out[i] < hi, name,
                  f"invalid output_size {list(out)} (dim {i} must be between {lo} and {hi})")
    shape = tuple(x.shape[:2]) + out
    # assignment, as torch: overlapping windows may record one position twice (same value)
    res = apply(OPS["_pool_scatter"], (x, idx, shape, True))
    return _unbatch(res, unb)


def max_unpool1d(input: Tensor, indices: Tensor, kernel_size: Any, stride: Any = None,
                 padding: Any = 0, output_size: Any = None) -> Tensor:
    """Partial inverse of max_pool1d: values placed at ``indices``, zeros elsewhere."""
    return _unpool("max_unpool1d", 1, input, indices, kernel_size, stride, padding, output_size)


def max_unpool2d(input: Tensor, indices: Tensor, kernel_size: Any, stride: Any = None,
                 padding: Any = 0, output_size: Any = None) -> Tensor:
    """Partial inverse of max_pool2d: values placed at ``indices`` (flat over H*W), zeros
    elsewhere. ``output_size`` resolves the ambiguity of the inverse shape."""
    return _unpool("max_unpool2d", 2, input, indices, kernel_size, stride, padding, output_size)


def max_unpool3d(input: Tensor, indices: Tensor, kernel_size: Any, stride: Any = None,
                 padding: Any = 0, output_size: Any = None) -> Tensor:
    """Partial inverse of max_pool3d."""
    return _unpool("max_unpool3d", 3, input, indices, kernel_size, stride, padding, output_size)


# ---------------------------------------------------------------------- fractional max pooling
def _fractional_intervals(sample: np.ndarray, in_size: int, out_size: int,
                          pool: int) -> np.ndarray:
    """Window starts per (n, c) from uniform samples (torch's generate_intervals)."""
    if out_size <= 1:
        return np.full(sample.shape + (max(out_size, 0),), in_size - pool, dtype=np.int64)
    alpha = (in_size - pool) / (out_size - 1)
    i = np.arange(out_size - 1)
    # torch computes in the input's scalar type; float64 then truncation matches for float32
    starts = (np.floor((i + sample[..., None]) * alpha) -
              np.floor(sample[..., None] * alpha)).astype(np.int64)
    last = np.full(sample.shape + (1,), in_size - pool, dtype=np.int64)
    return np.concatenate([starts, last], -1)


def _fractional(name: str, nd: int, input: Tensor, kernel_size: Any, output_size: Any,
                output_ratio: Any, return_indices: bool, _random_samples: Any) -> Any:
    if output_size is None and output_ratio is None:
        raise make(ValueError, name, f"{name} requires specifying either an output_size or an "
                                     f"output_ratio")
    x, unb = _batched(name, input, nd)
    sp = tuple(x.shape[2:])
    k = ntuple(kernel_size, nd, "kernel_size", name)
    if output_size is None:
        ratio = (output_ratio,) * nd if isinstance(output_ratio, (int, float)) else \
            tuple(output_ratio) * (nd if len(tuple(output_ratio)) == 1 else 1)
        out = tuple(int(sp[i] * ratio[i]) for i in range(nd))
    else:
        out = ntuple(output_size, nd, "output_size", name)
    for i in range(nd):
        check(out[i] + k[i] - 1 <= sp[i], name,
              f"{name}(): pool size {k[i]} and output size {out[i]} are too large for input "
              f"size {sp[i]} (input {tuple(input.shape)}): need output + pool - 1 <= input")
    n, c = x.shape[:2]
    if _random_samples is None:
        samples = ember.rand(n, c, nd, dtype=x.dtype, device=x.device)
    else:
        samples = _random_samples
    check(tuple(samples.shape) == (n, c, nd), name,
          f"Expect _random_samples to be of shape ({n}, {c}, {nd}), got "
          f"{tuple(samples.shape)}")
    smp = samples.detach().cpu().numpy().astype(np.float64)
    # torch's sample order: (w, h) in 2-d, but (t, h, w) in 3-d
    order = [1, 0] if nd == 2 else [0, 1, 2]
    starts = [_fractional_intervals(smp[..., order[i]], sp[i], out[i], k[i])
              for i in range(nd)]
    grids = []
    for i in range(nd):
        idx = starts[i][..., :, None] + np.arange(k[i])  # (N, C, out_i, k_i)
        shape = [n, c] + [1] * (2 * nd)
        shape[2 + i] = out[i]
        shape[2 + nd + i] = k[i]
        grids.append(idx.reshape(shape))
    flat = None
    for i in range(nd):
        term = grids[i] * int(np.prod(sp[i + 1:]))
        flat = term if flat is None else flat + term
    flat = np.broadcast_to(flat, (n, c) + out + k).reshape((n, c) + out + (-1,))
    vals = x.detach().cpu().numpy().reshape(n, c, -1)
    win = np.take_along_axis(vals, flat.reshape(n, c, -1), 2).reshape(flat.shape)
    pick = np.argmax(win, -1)
    nan = np.isnan(win)
    if nan.any():  # NaN wins, as in torch's kernel
        pick = np.where(nan.any(-1), np.argmax(nan, -1), pick)
    idx_np = np.take_along_axis(flat, pick[..., None], -1)[..., 0]
    indices = ember.tensor(idx_np, dtype=ember.int64, device=x.device)
    values = apply(OPS["_pool_gather"], (x, indices))
    res = _unbatch((values, indices), unb)
    return res if return_indices else res[0]


def fractional_max_pool2d(input: Tensor, kernel_size: Any, output_size: Any = None,
                          output_ratio: Any = None, return_indices: bool = False,
                          _random_samples: Tensor | None = None) -> Any:
    """Fractional max pooling (Graham, 2014) over ``(N, C, H, W)``: pseudo-random window
    positions drawn from ``_random_samples`` (uniform, ``(N, C, 2)``) reach ``output_size``
    (or ``output_ratio`` of the input size)."""
    return _fractional("fractional_max_pool2d", 2, input, kernel_size, output_size,
                       output_ratio, return_indices, _random_samples)


def fractional_max_pool3d(input: Tensor, kernel_size: Any, output_size: Any = None,
                          output_ratio: Any = None, return_indices: bool = False,
                          _random_samples: Tensor | None = None) -> Any:
    """Fractional max pooling over ``(N, C, D, H, W)``; ``_random_samples`` is ``(N, C, 3)``."""
    return _fractional("fractional_max_pool3d", 3, input, kernel_size, output_size,
                       output_ratio, return_indices, _random_samples)


def fractional_max_pool2d_with_indices(input: Tensor, kernel_size: Any, output_size: Any = None,
                                       output_ratio: Any = None, return_indices: bool = True,
                                       _random_samples: Tensor | None = None) -> tuple:
    return fractional_max_pool2d(input, kernel_size, output_size, output_ratio, True,
                                 _random_samples)


def fractional_max_pool3d_with_indices(input: Tensor, kernel_size: Any, output_size: Any = None,
                                       output_ratio: Any = None, return_indices: bool = True,
                                       _random_samples: Tensor | None = None) -> tuple:
    return fractional_max_pool3d(input, kernel_size, output_size, output_ratio, True,
                                 _random_samples)


__all__ += ["fractional_max_pool2d", "fractional_max_pool3d",
            "fractional_max_pool2d_with_indices", "fractional_max_pool3d_with_indices"]
