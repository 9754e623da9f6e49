"""Discrete Fourier transforms: three primitives, as in torch (``_fft_c2c``, ``_fft_r2c``,
``_fft_c2r``), and the ``ember.fft`` front ends written over them (padding/trimming to ``n``/
``s``, dims, normalisation), plus fftfreq/rfftfreq and fftshift/ifftshift.

Normalisation is an integer mode, as in ATen: 0 = none, 1 = 1/sqrt(n), 2 = 1/n. A primitive
computes the unnormalised transform and scales it; its backward is the opposite-direction
transform with the same mode (torch's formulas, including the doubled bins of c2r's adjoint).
"""
from __future__ import annotations

import math
from typing import Any

from ember import dtypes as _dt
from ember.errors import check, make
from ember.ops import meta as M
from ember.ops.linalg_solve import real
from ember.ops.registry import OpDef, TensorMeta, _torch_name, composite, register
from ember.tensor import Tensor


def _scale(xp: Any, y: Any, mode: int, n: int) -> Any:
    if mode == 0 or n == 0:
        return y
    f = 1.0 / math.sqrt(n) if mode == 1 else 1.0 / n
    return y * y.real.dtype.type(f)


def _cdt(xp: Any, dt: Any) -> Any:
    return xp.complex64 if xp.dtype(dt) in (xp.float32, xp.complex64) else xp.complex128


def _dims_meta(name: str, x: Tensor, dim: tuple) -> tuple:
    return tuple(M.wrap_dim(name, d, x.ndim) for d in dim)


# ---------------------------------------------------------------------- primitives
def _c2c_meta(op: Any, x: Any, dim: tuple, norm: int, forward: bool) -> TensorMeta:
    _dims_meta("fft", x, dim)
    return TensorMeta(x.shape)


@register("_fft_c2c", meta=_c2c_meta, method=False,
          function=False, node_name="FftC2C")
class FftC2C(OpDef):
    """Complex-to-complex DFT over ``dim`` (forward: e^{-2 pi i jk/n}; inverse unscaled)."""

    def forward(ctx, xp, x, dim, norm, forward):
        axes = tuple(d % x.ndim for d in dim)
        n = math.prod(x.shape[a] for a in axes)
        if x.size == 0:
            y = x.copy()
        elif forward:
            y = xp.fft.fftn(x, axes=axes, norm="backward")
        else:
            y = xp.fft.ifftn(x, axes=axes, norm="forward")
        ctx.args = (dim, norm, forward)
        return _scale(xp, y, norm, n).astype(x.dtype, copy=False)

    def backward(ctx, g):
        dim, norm, forward = ctx.args
        return fft_c2c(g, dim, norm, not forward), None, None, None


def _r2c_meta(op: Any, x: Any, dim: tuple, norm: int, onesided: bool) -> TensorMeta:
    dims = _dims_meta("rfft", x, dim)
    shape = list(x.shape)
    if onesided:
        shape[dims[-1]] = shape[dims[-1]] // 2 + 1
    cdt = _dt.complex64 if x.dtype is _dt.float32 else _dt.complex128
    return TensorMeta(tuple(shape), cdt)


@register("_fft_r2c", meta=_r2c_meta, method=False,
          function=False, node_name="FftR2C")
class FftR2C(OpDef):
    """Real-to-complex forward DFT over ``dim``; ``onesided`` keeps the last dim's
    non-redundant half (n // 2 + 1 bins)."""

    def forward(ctx, xp, x, dim, norm, onesided):
        axes = tuple(d % x.ndim for d in dim)
        n = math.prod(x.shape[a] for a in axes)
        cdt = _cdt(xp, x.dtype)
        if x.size == 0:
            shape = list(x.shape)
            if onesided:
                shape[axes[-1]] = shape[axes[-1]] // 2 + 1
            y = xp.zeros(tuple(shape), cdt)
        elif onesided:
            y = xp.fft.rfftn(x, axes=axes, norm="backward")
        else:
            y = xp.fft.fftn(x, axes=axes, norm="backward")
        ctx.args = (dim, norm, onesided, x.shape[axes[-1]], axes[-1])
        return _scale(xp, y, norm, n).astype(cdt, copy=False)

    def backward(ctx, g):
        import ember
        dim, norm, onesided, last, ax = ctx.args
        if onesided and last > g.shape[ax]:
            # fill the dropped half with zeros, then the inverse c2c; keep the real part
            pad = list(g.shape)
            pad[ax] = last - g.shape[ax]
            g = ember.cat([g, ember.zeros(pad, dtype=g.dtype, device=g.device)], ax)
        return real(fft_c2c(g, dim, norm, False)), None, None, None


def _c2r_meta(op: Any, x: Any, dim: tuple, norm: int, last_dim_size: int) -> TensorMeta:
    dims = _dims_meta("irfft", x, dim)
    shape = list(x.shape)
    shape[dims[-1]] = last_dim_size
    rdt = _dt.float32 if x.dtype is _dt.complex64 else _dt.float64
    return TensorMeta(tuple(shape), rdt)


@register("_fft_c2r", meta=_c2r_meta,
          method=False, function=False, node_name="FftC2R")
class FftC2R(OpDef):
    """Complex-to-real inverse DFT over ``dim`` of a one-sided Hermitian spectrum; the last
    dim of the output has ``last_dim_size`` points."""

    def forward(ctx, xp, x, dim, norm, last_dim_size):
        axes = tuple(d % x.ndim for d in dim)
        s = [x.shape[a] for a in axes]
        s[-1] = last_dim_size
        n = math.prod(s)
        rdt = xp.float32 if x.dtype == xp.complex64 else xp.float64
        if n == 0 or x.size == 0:
            shape = list(x.shape)
            shape[axes[-1]] = last_dim_size
            y = xp.zeros(tuple(shape), rdt)
        else:
            y = xp.fft.irfftn(x, s=s, axes=axes, norm="forward")
        ctx.args = (dim, norm, axes[-1])
        return _scale(xp, y, norm, n).astype(rdt, copy=False)

    def backward(ctx, g):
        import ember
        dim, norm, ax = ctx.args
        gI = fft_r2c(g, dim, norm, True)
        # bins 1 .. n - onesided_length stand for two conjugate-symmetric bins each
        double = g.shape[ax] - gI.shape[ax]
        if double > 0:
            w = [1.0] * gI.shape[ax]
            for i in range(1, 1 + double):
                w[i] = 2.0
            shape = [1] * gI.ndim
            shape[ax] = len(w)
            gI = gI * ember.tensor(w, dtype=g.dtype, device=g.device).reshape(shape)
        return gI, None, None, None


from ember.ops.registry import OPS  # noqa: E402

fft_c2c = OPS["_fft_c2c"].function
fft_r2c = OPS["_fft_r2c"].function
fft_c2r = OPS["_fft_c2r"].function


# ---------------------------------------------------------------------- front-end helpers
def _norm_mode(norm: str | None, forward: bool) -> int:
    if norm is None or norm == "backward":
        return 0 if forward else 2
    if norm == "forward":
        return 2 if forward else 0
    if norm == "ortho":
        return 1
    raise make(RuntimeError, "fft", f'Invalid normalization mode: "{norm}"')


def _float_input(name: str, x: Tensor, allow_complex: bool = True) -> Tensor:
    check(isinstance(x, Tensor), name, f"argument 'input' must be Tensor, not "
                                       f"{type(x).__name__}", TypeError)
    if x.dtype.category < 2:
        return x.to(_dt.get_default_dtype())
    check(x.dtype.itemsize >= 4 or x.dtype.category == 3, name,
          f"Unsupported dtype {_torch_name(x.dtype)}")
    if not allow_complex:
        check(not x.is_complex(), name, f"{name} expects a real input tensor, but got "
                                        f"{_torch_name(x.dtype)}")
    return x


def _to_complex(x: Tensor) -> Tensor:
    if x.is_complex():
        return x
    return x.to(_dt.complex64 if x.dtype is _dt.float32 else _dt.complex128)


def _resize(name: str, x: Tensor, dim: int, n: int) -> Tensor:
    """Trim or zero-pad ``x`` along ``dim`` to ``n`` points (torch's fft_resize)."""
    import ember
    check(n >= 1, name, f"Invalid number of data points ({n}) specified")
    size = x.shape[dim]
    if n == size:
        return x
    if n < size:
        return x.narrow(dim, 0, n)
    pad = list(x.shape)
    pad[dim] = n - size
    return ember.cat([x, ember.zeros(pad, dtype=x.dtype, device=x.device)], dim)


def _dims_and_sizes(name: str, x: Tensor, s: Any, dim: Any) -> tuple:
    """torch's canonicalisation of (s, dim): dim None → all dims, or the last len(s) ones."""
    if isinstance(dim, int):
        dim = (dim,)
    if isinstance(s, int):
        s = (s,)
    if dim is None:
        dims = list(range(x.ndim)) if s is None else list(range(x.ndim - len(s), x.ndim))
    else:
        dims = [M.wrap_dim(name, d, x.ndim) for d in dim]
        check(len(set(dims)) == len(dims), name, "dims must be unique")
    if s is not None:
        check(len(s) == len(dims), name, "When given, dim and shape arguments must have the "
                                         "same length")
        check(len(s) <= x.ndim, name, f"Got shape with {len(s)} values but input tensor only "
                                      f"has {x.ndim} dimensions.")
        sizes = [x.shape[d] if n == -1 else n for d, n in zip(dims, s)]
    else:
        sizes = [x.shape[d] for d in dims]
    return dims, sizes


def _c2c_front(name: str, x: Tensor, s: Any, dim: Any, norm: Any, forward: bool) -> Tensor:
    x = _float_input(name, x)
    dims, sizes = _dims_and_sizes(name, x, s, dim)
    for d, n in zip(dims, sizes):
        x = _resize(name, x, d, n)
    mode = _norm_mode(norm, forward)
    if not dims:
        return _to_complex(x).clone()
    if x.is_complex():
        return fft_c2c(x, tuple(dims), mode, forward)
    y = fft_r2c(x, tuple(dims), mode, False)
    # the inverse of a real signal is the conjugate of the forward transform
    return y if forward else y.conj()


def _r2c_front(name: str, x: Tensor, s: Any, dim: Any, norm: Any, forward: bool) -> Tensor:
    x = _float_input(name, x, allow_complex=False)
    dims, sizes = _dims_and_sizes(name, x, s, dim)
    check(len(dims) > 0, name, "must transform at least one axis")
    for d, n in zip(dims, sizes):
        x = _resize(name, x, d, n)
    y = fft_r2c(x, tuple(dims), _norm_mode(norm, forward), True)
    return y if forward else y.conj()


def _c2r_front(name: str, x: Tensor, s: Any, dim: Any, norm: Any, forward: bool) -> Tensor:
    x = _float_input(name, x)
    dims, sizes = _dims_and_sizes(name, x, s, dim)
    check(len(dims) > 0, name, "must transform at least one axis")
    last = sizes[-1] if s is not None and s[-1] != -1 else 2 * (x.shape[dims[-1]] - 1)
    check(last >= 1, name, f"Invalid number of data points ({last}) specified")
    sizes[-1] = last // 2 + 1
    for d, n in zip(dims, sizes):
        x = _resize(name, x, d, n)
    x = _to_complex(x)
    if forward:
        x = x.conj()
    return fft_c2r(x, tuple(dims), _norm_mode(norm, forward), last)


# ---------------------------------------------------------------------- public functions
def _one(n: Any) -> Any:
    return None if n is None else (n,)


@composite("fft_fft", method=False, function=False)
def fft(input: Tensor, n: int | None = None, dim: int = -1, norm: str | None = None, *,
        out: Any = None) -> Tensor:
    """1-D DFT along ``dim`` (``n`` trims or zero-pads first)."""
    return _c2c_front("fft.fft", input, _one(n), (dim,), norm, True)


@composite("fft_ifft", method=False, function=False)
def ifft(input: Tensor, n: int | None = None, dim: int = -1, norm: str | None = None, *,
         out: Any = None) -> Tensor:
    """1-D inverse DFT along ``dim``."""
    return _c2c_front("fft.ifft", input, _one(n), (dim,), norm, False)


@composite("fft_rfft", method=False, function=False)
def rfft(input: Tensor, n: int | None = None, dim: int = -1, norm: str | None = None, *,
         out: Any = None) -> Tensor:
    """1-D DFT of a real signal: the ``n // 2 + 1`` non-negative frequencies."""
    return _r2c_front("fft.rfft", input, _one(n), (dim,), norm, True)


@composite("fft_irfft", method=False, function=False)
def irfft(input: Tensor, n: int | None = None, dim: int = -1, norm: str | None = None, *,
          out: Any = None) -> Tensor:
    """Inverse of :func:`rfft`: a real signal of ``n`` points (default ``2 * (m - 1)``)."""
    return _c2r_front("fft.irfft", input, _one(n), (dim,), norm, False)


@composite("fft_hfft", method=False, function=False)
def hfft(input: Tensor, n: int | None = None, dim: int = -1, norm: str | None = None, *,
         out: Any = None) -> Tensor:
    """DFT of a Hermitian-symmetric signal given by its first half: a real spectrum."""
    return _c2r_front("fft.hfft", input, _one(n), (dim,), norm, True)


@composite("fft_ihfft", method=False, function=False)
def ihfft(input: Tensor, n: int | None = None, dim: int = -1, norm: str | None = None, *,
          out: Any = None) -> Tensor:
    """Inverse of :func:`hfft`: the one-sided inverse DFT of a real signal."""
    return _r2c_front("fft.ihfft", input, _one(n), (dim,), norm, False)


def _nd(name: str, front: Any, forward: bool, default_dim: Any) -> Any:
    def fn(input: Tensor, s: Any = None, dim: Any = default_dim, norm: str | None = None, *,
           out: Any = None) -> Tensor:
        return front(f"fft.{name}", input, s, dim, norm, forward)
    fn.__name__ = name
    kind = "inverse " if not forward else ""
    fn.__doc__ = (f"{'2-D' if default_dim else 'N-D'} {kind}DFT ({name}) over ``dim`` with "
                  "sizes ``s``.")
    return composite(f"fft_{name}", method=False, function=False)(fn)


fft2 = _nd("fft2", _c2c_front, True, (-2, -1))
ifft2 = _nd("ifft2", _c2c_front, False, (-2, -1))
rfft2 = _nd("rfft2", _r2c_front, True, (-2, -1))
irfft2 = _nd("irfft2", _c2r_front, False, (-2, -1))
hfft2 = _nd("hfft2", _c2r_front, True, (-2, -1))
ihfft2 = _nd("ihfft2", _r2c_front, False, (-2, -1))
fftn = _nd("fftn", _c2c_front, True, None)
ifftn = _nd("ifftn", _c2c_front, False, None)
rfftn = _nd("rfftn", _r2c_front, True, None)
irfftn = _nd("irfftn", _c2r_front, False, None)
hfftn = _nd("hfftn", _c2r_front, True, None)
ihfftn = _nd("ihfftn", _r2c_front, False, None)


@composite("fft_fftfreq", method=False, function=False)
def fftfreq(n: int, d: float = 1.0, *, out: Any = None, dtype: Any = None, layout: Any = None,
            device: Any = None, requires_grad: bool = False) -> Tensor:
    """Sample frequencies ``[0, 1, ..., ceil(n/2)-1, -floor(n/2), ..., -1] / (d * n)``."""
    import ember
    dtype = dtype or _dt.get_default_dtype()
    k = ember.arange(n, device=device)
    k = ember.where(k < (n + 1) // 2, k, k - n)
    return (k.to(dtype) / (d * n)).requires_grad_(requires_grad)


@composite("fft_rfftfreq", method=False, function=False)
def rfftfreq(n: int, d: float = 1.0, *, out: Any = None, dtype: Any = None, layout: Any = None,
             device: Any = None, requires_grad: bool = False) -> Tensor:
    """Non-negative sample frequencies ``[0, 1, ..., n // 2] / (d * n)`` (for :func:`rfft`)."""
    import ember
    dtype = dtype or _dt.get_default_dtype()
    k = ember.arange(n // 2 + 1, device=device)
    return (k.to(dtype) / (d * n)).requires_grad_(requires_grad)


def _roll(x: Tensor, shift: int, dim: int) -> Tensor:
    import ember
    n = x.shape[dim]
    if n == 0:
        return x.clone()
    shift %= n
    if shift == 0:
        return x.clone()
    return ember.cat([x.narrow(dim, n - shift, shift), x.narrow(dim, 0, n - shift)], dim)


def _shift(name: str, x: Tensor, dim: Any, sign: int) -> Tensor:
    if dim is None:
        dims = list(range(x.ndim))
    elif isinstance(dim, int):
        dims = [dim]
    else:
        dims = list(dim)
    check(len(dims) > 0, name, "`shifts` required")
    dims = [M.wrap_dim(name, d, x.ndim) for d in dims]
    out = x
    for d in dims:
        n = x.shape[d]
        out = _roll(out, n // 2 if sign > 0 else -(n // 2), d)
    return out


@composite("fft_fftshift", method=False, function=False)
def fftshift(input: Tensor, dim: Any = None) -> Tensor:
    """Move the zero-frequency term to the centre (roll by ``n // 2`` along ``dim``)."""
    return _shift("fft.fftshift", input, dim, 1)


@composite("fft_ifftshift", method=False, function=False)
def ifftshift(input: Tensor, dim: Any = None) -> Tensor:
    """Inverse of :func:`fftshift`."""
    return _shift("fft.ifftshift", input, dim, -1)


FFT_NAMES = {
    "fft": fft, "ifft": ifft, "rfft": rfft, "irfft": irfft, "hfft": hfft, "ihfft": ihfft,
    "fft2": fft2, "ifft2": ifft2, "rfft2": rfft2, "irfft2": irfft2, "hfft2": hfft2,
    "ihfft2": ihfft2, "fftn": fftn, "ifftn": ifftn, "rfftn": rfftn, "irfftn": irfftn,
    "hfftn": hfftn, "ihfftn": ihfftn, "fftfreq": fftfreq, "rfftfreq": rfftfreq,
    "fftshift": fftshift, "ifftshift": ifftshift,
}
