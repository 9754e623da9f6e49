"""Vision functions: pad, interpolate/upsample, grid_sample, affine_grid, pixel_shuffle,
pixel_unshuffle and channel_shuffle.

``pad`` runs on the ``_pad`` primitive. ``interpolate`` is separable: each spatial dim is
resampled in turn by gathering source rows (``index_select``) and blending them with constant
weights, with torch's source-index rules per mode, so gradients come from the primitives.
``grid_sample`` gathers the corner pixels with advanced indexing; its weights are ember ops
of the grid, so the grid gets a gradient too.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

import ember
from ember.errors import EmberError, check, make
from ember.ops.nn_sample import channel_shuffle, pixel_shuffle, pixel_unshuffle
from ember.ops.registry import OPS, apply
from ember.tensor import Tensor

__all__ = ["pad", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear",
           "grid_sample", "affine_grid", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
           "native_channel_shuffle"]

native_channel_shuffle = channel_shuffle


class _NotImpl(EmberError, NotImplementedError):
    """torch raises NotImplementedError for a mode/rank mismatch in interpolate."""


def pad(input: Tensor, pad: Sequence[int], mode: str = "constant",
        value: float | None = None) -> Tensor:
    """Pad ``input``. ``pad`` gives ``(before, after)`` pairs starting from the last dim.

    Modes: ``'constant'`` (``value``, default 0; negative pads crop), ``'reflect'``,
    ``'replicate'`` and ``'circular'`` (these pad the last 1-3 dims of a batched or
    unbatched input).

    Example::

        >>> pad(ember.ones(1, 2, 2), (1, 1), value=0.5).shape
        ember.Size([1, 2, 4])
    """
    check(isinstance(input, Tensor), "pad", f"argument 'input' must be Tensor, not "
                                            f"{type(input).__name__}", TypeError)
    pads = tuple(int(p) for p in pad)
    if mode != "constant":
        check(value is None or value == 0, "pad",
              f"Padding mode \"{mode}\" doesn't take in value argument", ValueError)
    return apply(OPS["_pad"], (input, pads, mode, value))


# ---------------------------------------------------------------------- interpolate
_DIMS = {"linear": 1, "bilinear": 2, "bicubic": 2, "trilinear": 3}


def _out_sizes(x: Tensor, size: Any, scale_factor: Any, recompute: Any) -> tuple:
    nd = x.ndim - 2
    if size is not None and scale_factor is not None:
        raise make(ValueError, "interpolate", "only one of size or scale_factor should be defined")
    if size is not None:
        sizes = (size,) * nd if isinstance(size, (int, np.integer)) else tuple(size)
        check(len(sizes) == nd, "interpolate",
              f"Input and output must have the same number of spatial dimensions, but got input "
              f"with spatial dimensions of {list(x.shape[2:])} and output size of "
              f"{list(sizes)}. Please provide input tensor in (N, C, d1, d2, ...,dK) format and "
              f"output size in (o1, o2, ...,oK) format.", ValueError)
        return tuple(int(s) for s in sizes), (None,) * nd
    if scale_factor is None:
        raise make(ValueError, "interpolate", "either size or scale_factor should be defined")
    sf = (scale_factor,) * nd if isinstance(scale_factor, (int, float)) else tuple(scale_factor)
    check(len(sf) == nd, "interpolate",
          f"Input and scale_factor must have the same number of spatial dimensions, but got input"
          f" with spatial dimensions of {list(x.shape[2:])} and scale_factor of shape {list(sf)}.",
          ValueError)
    out = tuple(int(math.floor(float(x.shape[2 + i]) * float(sf[i]))) for i in range(nd))
    scales = (None,) * nd if recompute else tuple(float(s) for s in sf)
    return out, scales


def _scale(in_size: int, out_size: int, align_corners: bool, scale: float | None) -> float:
    """torch's area_pixel_compute_scale."""
    if align_corners:
        return (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    if scale is not None and scale > 0:
        return 1.0 / scale
    return in_size / out_size


def _nearest_index(in_size: int, out_size: int, scale: float | None, exact: bool) -> np.ndarray:
    s = 1.0 / scale if scale is not None and scale > 0 else in_size / out_size
    dst = np.arange(out_size, dtype=np.float64)
    # torch computes these in float32
    s32 = np.float32(s)
    src = np.floor(((dst.astype(np.float32) + np.float32(0.5)) * s32) if exact
                   else (dst.astype(np.float32) * s32))
    return np.minimum(src.astype(np.int64), in_size - 1)


def _source(in_size: int, out_size: int, align_corners: bool, scale: float | None,
            cubic: bool) -> np.ndarray:
    """torch's area_pixel_compute_source_index for every output position (float32, as torch)."""
    s = np.float32(_scale(in_size, out_size, align_corners, scale))
    dst = np.arange(out_size, dtype=np.float32)
    if align_corners:
        return s * dst
    src = s * (dst + np.float32(0.5)) - np.float32(0.5)
    return src if cubic else np.maximum(src, np.float32(0.0))


def _take(x: Tensor, dim: int, idx: np.ndarray) -> Tensor:
    return ember.index_select(x, dim, ember.tensor(idx, dtype=ember.int64, device=x.device))


def _w(lam: np.ndarray, x: Tensor, dim: int) -> Tensor:
    shape = (len(lam),) + (1,) * (x.ndim - dim - 1)
    return ember.tensor(lam.reshape(shape), dtype=x.dtype, device=x.device)


def _linear_dim(x: Tensor, dim: int, out_size: int, align_corners: bool,
                scale: float | None) -> Tensor:
    in_size = x.shape[dim]
    src = _source(in_size, out_size, align_corners, scale, False)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = (src - i0).astype(np.float64)
    a, b = _take(x, dim, i0), _take(x, dim, i1)
    return a * _w(1.0 - lam, x, dim) + b * _w(lam, x, dim)


def _cubic_coeffs(t: np.ndarray, a: float = -0.75) -> list:
    def cc1(v: np.ndarray) -> np.ndarray:
        return ((a + 2) * v - (a + 3)) * v * v + 1

    def cc2(v: np.ndarray) -> np.ndarray:
        return ((a * v - 5 * a) * v + 8 * a) * v - 4 * a
    return [cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2(2.0 - t)]


def _cubic_dim(x: Tensor, dim: int, out_size: int, align_corners: bool,
               scale: float | None) -> Tensor:
    in_size = x.shape[dim]
    src = _source(in_size, out_size, align_corners, scale, True)
    i = np.floor(src).astype(np.int64)
    t = (src - i).astype(np.float64)
    coeffs = _cubic_coeffs(t)
    out = None
    for k in range(4):
        idx = np.clip(i - 1 + k, 0, in_size - 1)
        term = _take(x, dim, idx) * _w(coeffs[k], x, dim)
        out = term if out is None else out + term
    return out


def _antialias_weights(in_size: int, out_size: int, align_corners: bool, scale: float | None,
                       cubic: bool) -> np.ndarray:
    """``(out, in)`` resampling matrix of torch's antialiased (PIL-style) kernels: the filter
    (triangle, or cubic with a=-0.5) is widened by the downscaling factor and normalized."""
    s = _scale(in_size, out_size, align_corners, scale)
    interp = 4 if cubic else 2
    support = interp * 0.5 * s if s >= 1.0 else interp * 0.5
    invscale = 1.0 / s if s >= 1.0 else 1.0

    def filt(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        if not cubic:
            return np.maximum(0.0, 1.0 - x)
        a = -0.5
        return np.where(x < 1.0, ((a + 2) * x - (a + 3)) * x * x + 1,
                        np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))
    m = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = s * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi)
        w = filt((j - center + 0.5) * invscale)
        total = w.sum()
        m[i, lo:hi] = w / total if total != 0 else w
    return m


def _antialias_dim(x: Tensor, dim: int, out_size: int, align_corners: bool,
                   scale: float | None, cubic: bool) -> Tensor:
    m = _antialias_weights(x.shape[dim], out_size, align_corners, scale, cubic)
    mt = ember.tensor(m.T, dtype=x.dtype, device=x.device)
    return (x.movedim(dim, -1) @ mt).movedim(-1, dim)


def interpolate(input: Tensor, size: Any = None, scale_factor: Any = None,
                mode: str = "nearest", align_corners: bool | None = None,
                recompute_scale_factor: bool | None = None, antialias: bool = False) -> Tensor:
    """Resample ``(N, C, *spatial)`` to ``size`` or by ``scale_factor``.

    Modes: ``nearest``, ``nearest-exact``, ``linear`` (3-d input), ``bilinear``/``bicubic``
    (4-d), ``trilinear`` (5-d) and ``area`` (adaptive average pooling). ``align_corners``
    applies to the interpolating modes only. ``antialias`` (bilinear/bicubic, 4-d) widens the
    kernel when downsampling, as PIL does.
    """
    check(isinstance(input, Tensor), "interpolate", f"argument 'input' must be Tensor, not "
                                                    f"{type(input).__name__}", TypeError)
    modes = ("nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear", "area")
    if mode not in modes:
        raise _NotImpl(f"[interpolate] Input Error: unsupported mode {mode!r}; expected one of "
                       f"{', '.join(modes)}")
    if mode in ("nearest", "area", "nearest-exact"):
        if align_corners is not None:
            raise make(ValueError, "interpolate",
                       "align_corners option can only be set with the interpolating modes: "
                       "linear | bilinear | bicubic | trilinear")
    elif align_corners is None:
        align_corners = False
    if antialias and not (mode in ("bilinear", "bicubic") and input.ndim == 4):
        raise _NotImpl(f"[interpolate] Anti-alias option is restricted to bilinear and bicubic "
                       f"modes and requires a 4-D tensor as input (got mode {mode!r} and "
                       f"{input.ndim}-D input)")
    check(input.ndim >= 3, "interpolate", f"expected (N, C, *spatial) input, got shape "
                                          f"{tuple(input.shape)}")
    nd = input.ndim - 2
    need = _DIMS.get(mode)
    if need is not None and need != nd:
        raise _NotImpl(f"[interpolate] Got {input.ndim}D input, but {mode} mode needs "
                       f"{need + 2}D input")
    check(nd <= 3, "interpolate", f"Input Error: Only 3D, 4D and 5D input Tensors supported (got "
                                  f"{input.ndim}D) for the modes: nearest | linear | bilinear | "
                                  f"bicubic | trilinear | area | nearest-exact")
    out, scales = _out_sizes(input, size, scale_factor, recompute_scale_factor)
    check(all(o > 0 for o in out), "interpolate",
          f"Input and output sizes should be greater than 0, but got input "
          f"({', '.join(map(str, input.shape[2:]))}) and output ({', '.join(map(str, out))})")
    if mode == "area":
        from ember.nn.functional.pooling import _adaptive_avg
        return _adaptive_avg("interpolate", nd, input, out)
    x = input
    for i in range(nd):
        dim = 2 + i
        if mode in ("nearest", "nearest-exact"):
            if out[i] == x.shape[dim] and scales[i] in (None, 1.0):
                continue
            x = _take(x, dim, _nearest_index(x.shape[dim], out[i], scales[i],
                                             mode == "nearest-exact"))
        elif antialias:
            x = _antialias_dim(x, dim, out[i], align_corners, scales[i], mode == "bicubic")
        elif mode == "bicubic":
            x = _cubic_dim(x, dim, out[i], align_corners, scales[i])
        else:
            x = _linear_dim(x, dim, out[i], align_corners, scales[i])
    return x if x is not input else input.clone()


def upsample(input: Tensor, size: Any = None, scale_factor: Any = None, mode: str = "nearest",
             align_corners: bool | None = None) -> Tensor:
    """Deprecated alias of :func:`interpolate`."""
    return interpolate(input, size, scale_factor, mode, align_corners)


def upsample_nearest(input: Tensor, size: Any = None, scale_factor: Any = None) -> Tensor:
    """Nearest-neighbour upsampling (deprecated alias of ``interpolate(mode='nearest')``)."""
    return interpolate(input, size, scale_factor, mode="nearest")


def upsample_bilinear(input: Tensor, size: Any = None, scale_factor: Any = None) -> Tensor:
    """Bilinear upsampling with ``align_corners=True`` (deprecated alias)."""
    return interpolate(input, size, scale_factor, mode="bilinear", align_corners=True)


# ---------------------------------------------------------------------- grid sampling
def _unnormalize(coord: Tensor, size: int, align_corners: bool) -> Tensor:
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


def _reflect(coord: Tensor, twice_low: int, twice_high: int) -> Tensor:
    if twice_low == twice_high:
        return coord * 0
    lo = twice_low / 2
    span = (twice_high - twice_low) / 2
    c = (coord - lo).abs()
    extra = ember.fmod(c, span)
    flips = (c / span).floor()
    even = ember.fmod(flips, 2) == 0
    return ember.where(even, extra + lo, span - extra + lo)


def _pad_coord(c: Tensor, size: int, padding_mode: str, align_corners: bool) -> Tensor:
    """Apply border/reflection padding to (unnormalized) source coordinates."""
    if padding_mode == "border":
        c = c.clamp(0, size - 1)
    elif padding_mode == "reflection":
        c = _reflect(c, 0, 2 * (size - 1)) if align_corners else _reflect(c, -1, 2 * size - 1)
        c = c.clamp(0, size - 1)
    return c


def grid_sample(input: Tensor, grid: Tensor, mode: str = "bilinear",
                padding_mode: str = "zeros", align_corners: bool | None = None) -> Tensor:
    """Sample ``input`` at the normalized ``grid`` locations (coordinates in [-1, 1]).

    4-d: ``input (N, C, H, W)``, ``grid (N, H_out, W_out, 2)`` holding (x, y).
    5-d: ``input (N, C, D, H, W)``, ``grid (N, D_out, H_out, W_out, 3)`` holding (x, y, z).

    ``mode``: ``'bilinear'`` (trilinear for 5-d), ``'nearest'`` or ``'bicubic'`` (4-d);
    ``padding_mode``: ``'zeros'``, ``'border'`` or ``'reflection'``. Gradients flow to both
    ``input`` and ``grid``.
    """
    for name, t in (("input", input), ("grid", grid)):
        check(isinstance(t, Tensor), "grid_sample", f"argument '{name}' must be Tensor, not "
                                                    f"{type(t).__name__}", TypeError)
    if mode not in ("bilinear", "nearest", "bicubic"):
        raise make(ValueError, "grid_sample",
                   f"nn.functional.grid_sample(): expected mode to be 'bilinear', 'nearest' or "
                   f"'bicubic', but got: '{mode}'")
    if padding_mode not in ("zeros", "border", "reflection"):
        raise make(ValueError, "grid_sample",
                   f"nn.functional.grid_sample(): expected padding_mode to be 'zeros', 'border', "
                   f"or 'reflection', but got: '{padding_mode}'")
    nd = input.ndim - 2
    check(nd in (2, 3) and grid.ndim == nd + 2 and grid.shape[-1] == nd, "grid_sample",
          f"expected input (N, C, H, W) with grid (N, H_out, W_out, 2), or input (N, C, D, H, W) "
          f"with grid (N, D_out, H_out, W_out, 3); got input {tuple(input.shape)} and grid "
          f"{tuple(grid.shape)}")
    check(input.shape[0] == grid.shape[0], "grid_sampler",
          f"grid_sampler(): expected grid and input to have same batch size, but got input with "
          f"sizes {list(input.shape)} and grid with sizes {list(grid.shape)}")
    check(mode != "bicubic" or nd == 2, "grid_sampler",
          "grid_sampler(): bicubic interpolation only supports 4D input")
    align = bool(align_corners)
    n = input.shape[0]
    sizes = tuple(input.shape[2:])  # (H, W) or (D, H, W); grid's last dim lists x first
    unnorm = [_unnormalize(grid[..., nd - 1 - j], sizes[j], align) for j in range(nd)]
    batch = ember.arange(n, device=input.device).reshape((n,) + (1,) * nd)
    channels_last = input.movedim(1, -1)

    def gather(idx: list) -> Tensor:
        """``input[n, :, idx...]`` as ``(N, C, *out)``, zero where out of bounds."""
        valid = None
        clamped = []
        for j, i in enumerate(idx):
            ok = (i >= 0) & (i <= sizes[j] - 1)
            valid = ok if valid is None else valid & ok
            clamped.append(i.clamp(0, sizes[j] - 1))
        vals = channels_last[(batch,) + tuple(clamped)]
        vals = vals * valid.unsqueeze(-1).to(input.dtype)
        return vals.movedim(-1, 1)

    if mode == "bicubic":
        out = None
        base = [c.detach().floor() for c in unnorm]
        frac = [c - b for c, b in zip(unnorm, base)]
        coeffs = [_cubic_weights(t) for t in frac]
        for ty in range(4):
            cy = _pad_coord(base[0] - 1 + ty, sizes[0], padding_mode, align).long()
            for tx in range(4):
                cx = _pad_coord(base[1] - 1 + tx, sizes[1], padding_mode, align).long()
                term = gather([cy, cx]) * (coeffs[0][ty] * coeffs[1][tx]).unsqueeze(1)
                out = term if out is None else out + term
        return out
    src = [_pad_coord(c, sizes[j], padding_mode, align) for j, c in enumerate(unnorm)]
    if mode == "nearest":
        return gather([c.detach().round().long() for c in src])
    lo = [c.detach().floor() for c in src]
    w_hi = [c - f for c, f in zip(src, lo)]
    lo_i = [f.long() for f in lo]
    out = None
    for corner in np.ndindex(*([2] * nd)):
        idx = [lo_i[j] + corner[j] for j in range(nd)]
        weight = None
        for j in range(nd):
            wj = w_hi[j] if corner[j] else 1 - w_hi[j]
            weight = wj if weight is None else weight * wj
        term = gather(idx) * weight.unsqueeze(1)
        out = term if out is None else out + term
    return out


def _cubic_weights(t: Tensor, a: float = -0.75) -> list:
    """torch's cubic convolution coefficients for the 4 taps around ``t`` in [0, 1)."""
    def cc1(v: Tensor) -> Tensor:
        return ((a + 2) * v - (a + 3)) * v * v + 1

    def cc2(v: Tensor) -> Tensor:
        return ((a * v - 5 * a) * v + 8 * a) * v - 4 * a
    return [cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2(2.0 - t)]


def _linspace(steps: int, align_corners: bool, dtype: Any, device: Any) -> Tensor:
    if steps <= 1:
        return ember.zeros(max(steps, 0), dtype=dtype, device=device)
    r = ember.linspace(-1, 1, steps, dtype=dtype, device=device)
    return r if align_corners else r * ((steps - 1) / steps)


def affine_grid(theta: Tensor, size: Sequence[int], align_corners: bool | None = None) -> Tensor:
    """Sampling grid ``(N, H, W, 2)`` (or ``(N, D, H, W, 3)``) for the affine maps ``theta``
    ``(N, 2, 3)`` (or ``(N, 3, 4)``), to be used with :func:`grid_sample`."""
    check(isinstance(theta, Tensor), "affine_grid", f"argument 'theta' must be Tensor, not "
                                                    f"{type(theta).__name__}", TypeError)
    check(theta.is_floating_point(), "affine_grid",
          f"Expected theta to have floating point type, but got {theta.dtype}", ValueError)
    size = tuple(int(s) for s in size)
    align = bool(align_corners)
    if len(size) == 4:
        check(theta.ndim == 3 and tuple(theta.shape[1:]) == (2, 3), "affine_grid",
              f"Expected a batch of 2D affine matrices of shape Nx2x3 for size {list(size)}. Got "
              f"{list(theta.shape)}.", ValueError)
        n, _, h, w = size
        xs = _linspace(w, align, theta.dtype, theta.device)
        ys = _linspace(h, align, theta.dtype, theta.device)
        base = ember.stack([xs.reshape(1, w).expand(h, w), ys.reshape(h, 1).expand(h, w),
                            ember.ones(h, w, dtype=theta.dtype, device=theta.device)], -1)
        grid = base.reshape(1, h * w, 3) @ theta.transpose(1, 2)
        return grid.reshape(n, h, w, 2)
    if len(size) == 5:
        check(theta.ndim == 3 and tuple(theta.shape[1:]) == (3, 4), "affine_grid",
              f"Expected a batch of 3D affine matrices of shape Nx3x4 for size {list(size)}. Got "
              f"{list(theta.shape)}.", ValueError)
        n, _, d, h, w = size
        xs = _linspace(w, align, theta.dtype, theta.device).reshape(1, 1, w).expand(d, h, w)
        ys = _linspace(h, align, theta.dtype, theta.device).reshape(1, h, 1).expand(d, h, w)
        zs = _linspace(d, align, theta.dtype, theta.device).reshape(d, 1, 1).expand(d, h, w)
        base = ember.stack([xs, ys, zs, ember.ones(d, h, w, dtype=theta.dtype,
                                                   device=theta.device)], -1)
        grid = base.reshape(1, d * h * w, 4) @ theta.transpose(1, 2)
        return grid.reshape(n, d, h, w, 3)
    raise _NotImpl(f"[affine_grid] affine_grid only supports 4D and 5D sizes, for 2D and 3D affine transforms, "
               f"respectively. Got size {list(size)}.")
