"""Complex-number ops: real/imag (views), angle, conj_physical, resolve_conj/resolve_neg,
view_as_real/view_as_complex (views), complex and polar.

Gradients follow torch's convention for real-valued losses: the gradient of a complex input
is ``dL/dRe + i dL/dIm`` (the conjugate Wirtinger derivative times two), so ``abs`` gives
``grad * z / |z|`` and holomorphic ops give ``grad * conj(f'(z))``.

ember has no lazy conjugate bit: ``conj`` returns a conjugated copy, ``is_conj`` is always
False and ``resolve_conj``/``resolve_neg`` return their input.
"""
from __future__ import annotations

import math
from typing import Any

from ember import dtypes as _dt
from ember.errors import check
from ember.ops import meta as M
from ember.ops.registry import OPS, OpDef, TensorMeta, composite, register
from ember.tensor import Tensor


def _real_dtype(op: Any, input: Any) -> TensorMeta:
    check(isinstance(input, Tensor), op.name, f"argument 'input' must be Tensor, not "
                                              f"{type(input).__name__}", TypeError)
    return TensorMeta(input._data.shape, input._dtype.to_real())


@register("real", meta=_real_dtype, view=True, method=False)
class Real(OpDef):
    """The real part of a complex tensor, as a view (writes go to the complex tensor); real
    tensors are returned as a view of themselves."""

    def forward(ctx, xp, input):
        return input.real if input.dtype.kind == "c" else input.view()

    def backward(ctx, grad):
        return grad


def _imag_meta(op: Any, input: Any) -> TensorMeta:
    check(input._dtype.is_complex, "imag", f"imag is not implemented for tensors with "
                                           f"non-complex dtypes (got {input._dtype}).")
    return _real_dtype(op, input)


@register("imag", meta=_imag_meta, view=True, method=False)
class Imag(OpDef):
    """The imaginary part of a complex tensor, as a view."""

    def forward(ctx, xp, input):
        ctx.cdt = _dt._FROM_NP[input.dtype]
        return input.imag

    def backward(ctx, grad):
        return grad.to(ctx.cdt) * 1j


def _part_property(name: str) -> property:
    op = OPS[name]

    def get(self: Tensor) -> Tensor:
        return op.function(self)

    def set_(self: Tensor, value: Any) -> None:
        op.function(self).copy_(value)

    return property(get, set_, doc=op.function.__doc__)


Tensor.real = _part_property("real")
Tensor.imag = _part_property("imag")


def _angle_fwd(xp: Any, x: Any) -> Any:
    if x.dtype.kind == "c":
        return xp.angle(x)
    # torch: pi for negative numbers, 0 otherwise, NaN stays NaN
    return xp.where(x < 0, xp.asarray(math.pi, x.dtype), xp.asarray(0, x.dtype)) + x * 0


@register("angle", meta=M.unary, promote="int_to_float")
class Angle(OpDef):
    """The argument (phase) of each element: ``atan2(imag, real)``; for real tensors 0 or pi.
    Complex input gives the matching real dtype."""

    def forward(ctx, xp, input):
        ctx.save(input)
        return _angle_fwd(xp, input)

    def backward(ctx, grad):
        (z,) = ctx.saved
        if not z.is_complex():
            return grad * 0
        from ember.ops.elementwise import _where
        a2 = z.abs().pow(2)
        zero = a2 == 0
        g = grad.to(z.dtype) * z * 1j / _where(zero, a2 + 1, a2)
        return _where(zero, g * 0, g)


@register("conj_physical", meta=M.unary, inplace=True)
class ConjPhysical(OpDef):
    """The complex conjugate, materialized (real tensors: a copy)."""

    def forward(ctx, xp, input):
        return xp.conj(input) if input.dtype.kind == "c" else input.copy()

    def backward(ctx, grad):
        return grad.conj() if grad.is_complex() else grad


@composite()
def resolve_conj(input: Tensor) -> Tensor:
    """``input`` itself: ember materializes conjugates eagerly, so there is no conj bit."""
    return input


@composite()
def resolve_neg(input: Tensor) -> Tensor:
    """``input`` itself: ember has no lazy negation bit."""
    return input


def _false(self: Tensor) -> bool:
    return False


Tensor.is_conj = _false
Tensor.is_neg = _false


def _view_as_real_meta(op: Any, input: Any) -> TensorMeta:
    check(input._dtype.is_complex, "view_as_real", f"view_as_real is only supported for complex "
                                                   f"tensors, got {input._dtype}")
    return TensorMeta(tuple(input._data.shape) + (2,), input._dtype.to_real())


@register("view_as_real", meta=_view_as_real_meta, view=True, method=False)
class ViewAsReal(OpDef):
    """A real view with a trailing dim of 2 holding (real, imag)."""

    def forward(ctx, xp, input):
        real = xp.float32 if input.dtype == xp.complex64 else xp.float64
        return input[..., None].view(real)

    def backward(ctx, grad):
        return view_as_complex(grad.contiguous())


def _view_as_complex_meta(op: Any, input: Any) -> TensorMeta:
    name = "view_as_complex"
    check(input._dtype in (_dt.float32, _dt.float64), name,
          f"view_as_complex is only supported for float and double tensors, but got a tensor "
          f"of scalar type: {input._dtype}")
    shape = input._data.shape
    check(len(shape) >= 1, name, "Input tensor must have one or more dimensions")
    check(shape[-1] == 2, name, f"Tensor must have a last dimension of size 2, got shape "
                                f"{tuple(shape)}")
    st = input.stride()
    check(st[-1] == 1, name, f"Tensor must have a last dimension with stride 1, got strides "
                             f"{st}", hint="call .contiguous() first")
    check(all(s % 2 == 0 for s in st[:-1]), name,
          f"Tensor must have a stride divisible by 2 for all but last dimension, got {st}")
    check(input.storage_offset() % 2 == 0, name,
          f"Tensor must have a storage_offset divisible by 2, got {input.storage_offset()}")
    return TensorMeta(tuple(shape[:-1]), input._dtype.to_complex())


@register("view_as_complex", meta=_view_as_complex_meta, view=True, method=False)
class ViewAsComplex(OpDef):
    """A complex view of a float tensor whose last dim (size 2, stride 1) holds (real, imag)."""

    def forward(ctx, xp, input):
        cdt = xp.complex64 if input.dtype == xp.float32 else xp.complex128
        return input.view(cdt)[..., 0]

    def backward(ctx, grad):
        return view_as_real(grad)


view_as_real = OPS["view_as_real"].function
view_as_complex = OPS["view_as_complex"].function


def _complex_meta(op: Any, real: Any, imag: Any) -> TensorMeta:
    for name, t in (("real", real), ("imag", imag)):
        check(isinstance(t, Tensor), "complex", f"argument '{name}' must be Tensor, not "
                                                f"{type(t).__name__}", TypeError)
    ok = (_dt.float16, _dt.float32, _dt.float64)
    check(real._dtype in ok and imag._dtype in ok, "complex",
          f"Expected both inputs to be Half, Float or Double tensors but got {real._dtype} and "
          f"{imag._dtype}")
    check(real._dtype is imag._dtype, "complex",
          f"Expected object of scalar type {real._dtype} but got scalar type {imag._dtype} for "
          f"second argument")
    check(real._dtype is not _dt.float16, "complex", "complex32 (from float16 parts) is not "
                                                     "supported; use float32 parts")
    shape = M.broadcast_shapes("complex", real._data.shape, imag._data.shape)
    return TensorMeta(shape, real._dtype.to_complex())


@register("complex", meta=_complex_meta, method=False, sig="real, imag")
class Complex(OpDef):
    """The complex tensor ``real + 1j * imag`` (broadcast; float -> complex64,
    double -> complex128)."""

    def forward(ctx, xp, real, imag):
        cdt = xp.complex64 if real.dtype == xp.float32 else xp.complex128
        shape = xp.broadcast_shapes(real.shape, imag.shape)
        out = xp.empty(shape, cdt)
        out.real = real
        out.imag = imag
        return out

    def backward(ctx, grad):
        return grad.real, grad.imag


@composite(method=False)
def polar(abs: Tensor, angle: Tensor) -> Tensor:  # noqa: A002 - torch's names
    """The complex tensor with magnitude ``abs`` and phase ``angle``."""
    return OPS["complex"].function(abs * angle.cos(), abs * angle.sin())
