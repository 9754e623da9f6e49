"""ember's dtype objects and torch's type-promotion rules.

Each :class:`dtype` maps to one NumPy dtype (bfloat16 through ml_dtypes), which CuPy
shares. Promotion follows torch, not NumPy: int + float gives the float, float16 +
bfloat16 gives float32, Python scalars are weaker than 0-dim tensors, which are weaker
than tensors with dimensions.
"""
from __future__ import annotations

import builtins
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "dtype", "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
    "int8", "int16", "int32", "int64", "uint8", "bool",
    "half", "float", "double", "long", "int", "short", "cfloat", "cdouble",
    "get_default_dtype", "set_default_dtype", "promote_types", "result_type", "can_cast",
    "finfo", "iinfo",
]

# Category ranks used by promotion: bool < integer < floating < complex.
_BOOL, _INT, _FLOAT, _COMPLEX = 0, 1, 2, 3


class dtype:
    """A tensor element type, printed and compared like ``torch.dtype``."""

    __slots__ = ("name", "np", "itemsize", "category", "is_signed", "_rank")

    def __init__(self, name: str, np_dtype: Any, category: builtins.int, rank: builtins.int) -> None:
        self.name = name
        self.np = np.dtype(np_dtype)
        self.itemsize = self.np.itemsize
        self.category = category
        self.is_signed = name not in ("uint8", "bool")
        self._rank = rank

    @property
    def is_floating_point(self) -> builtins.bool:
        return self.category == _FLOAT

    @property
    def is_complex(self) -> builtins.bool:
        return self.category == _COMPLEX

    def to_real(self) -> "dtype":
        return {complex64: float32, complex128: float64}.get(self, self)

    def to_complex(self) -> "dtype":
        return {float64: complex128, complex128: complex128}.get(self, complex64)

    def __repr__(self) -> str:
        return "ember." + self.name

    def __reduce__(self):
        # Pickle by name so that dtypes stay singletons across processes.
        return (_by_name, (self.name,))


float16 = dtype("float16", np.float16, _FLOAT, 5)
bfloat16 = dtype("bfloat16", ml_dtypes.bfloat16, _FLOAT, 5)
float32 = dtype("float32", np.float32, _FLOAT, 6)
float64 = dtype("float64", np.float64, _FLOAT, 7)
complex64 = dtype("complex64", np.complex64, _COMPLEX, 8)
complex128 = dtype("complex128", np.complex128, _COMPLEX, 9)
uint8 = dtype("uint8", np.uint8, _INT, 1)
int8 = dtype("int8", np.int8, _INT, 1)
int16 = dtype("int16", np.int16, _INT, 2)
int32 = dtype("int32", np.int32, _INT, 3)
int64 = dtype("int64", np.int64, _INT, 4)
bool = dtype("bool", np.bool_, _BOOL, 0)  # noqa: A001 - torch's name

half, float, double = float16, float32, float64  # noqa: A001
long, int, short = int64, int32, int16  # noqa: A001
cfloat, cdouble = complex64, complex128

ALL_DTYPES = (bool, uint8, int8, int16, int32, int64, float16, bfloat16, float32, float64,
              complex64, complex128)
_NAMES = {d.name: d for d in ALL_DTYPES}
_FROM_NP = {d.np: d for d in ALL_DTYPES}


def _by_name(name: str) -> dtype:
    return _NAMES[name]


def from_numpy_dtype(np_dtype: Any) -> dtype:
    """The ember dtype for a NumPy dtype; raises TypeError for unsupported ones."""
    d = _FROM_NP.get(np.dtype(np_dtype))
    if d is None:
        raise TypeError(
            f"can't convert np.ndarray of type {np.dtype(np_dtype)}. The only supported types are: "
            "float64, float32, float16, bfloat16, complex64, complex128, int64, int32, int16, int8, "
            "uint8, and bool.")
    return d


def to_dtype(obj: Any) -> dtype:
    """Accept an ember dtype, a NumPy dtype, or a Python type (``float``, ``int``, ``bool``)."""
    if isinstance(obj, dtype):
        return obj
    if obj is builtins.float:
        return _default[0]
    if obj is builtins.int:
        return int64
    if obj is builtins.bool:
        return bool
    if obj is builtins.complex:
        return complex64 if _default[0] is not float64 else complex128
    if isinstance(obj, str) and obj in _NAMES:
        return _NAMES[obj]
    try:
        return from_numpy_dtype(obj)
    except TypeError:
        raise TypeError(f"expected an ember dtype, got {obj!r}") from None


# ---------------------------------------------------------------- default dtype
_default = [float32]


def get_default_dtype() -> dtype:
    """The dtype of float tensors made from Python floats (float32 unless changed)."""
    return _default[0]


def set_default_dtype(d: dtype) -> None:
    """Set the default floating dtype; only float16/bfloat16/float32/float64 are allowed."""
    d = to_dtype(d)
    if not d.is_floating_point:
        raise TypeError(f"only floating-point types are supported as the default type, got {d}")
    _default[0] = d


def default_complex_dtype() -> dtype:
    return complex128 if _default[0] is float64 else complex64


# ---------------------------------------------------------------- promotion
def _promote_pair(a: dtype, b: dtype) -> dtype:
    if a is b:
        return a
    if a.category == _BOOL:
        return b
    if b.category == _BOOL:
        return a
    ca, cb = a.category, b.category
    if ca == _INT and cb == _INT:
        # uint8 against a signed integer needs the next wider signed type (torch's table).
        if a is uint8 or b is uint8:
            other = b if a is uint8 else a
            return int16 if other is int8 else other
        return a if a._rank >= b._rank else b
    if ca == _COMPLEX or cb == _COMPLEX:
        if ca == _COMPLEX and cb == _COMPLEX:
            return a if a._rank >= b._rank else b
        cpx, other = (a, b) if ca == _COMPLEX else (b, a)
        return complex128 if other is float64 else cpx
    if ca == _FLOAT and cb == _FLOAT:
        if {a, b} == {float16, bfloat16}:
            return float32
        return a if a._rank >= b._rank else b
    return a if ca == _FLOAT else b


_PROMOTE = {(a, b): _promote_pair(a, b) for a in ALL_DTYPES for b in ALL_DTYPES}


def promote_types(type1: dtype, type2: dtype) -> dtype:
    """The smallest dtype that both can be cast to, by torch's promotion table."""
    return _PROMOTE[(to_dtype(type1), to_dtype(type2))]


def scalar_dtype(value: Any) -> dtype:
    """The dtype a Python scalar takes when it stands alone (wrapped-number rule)."""
    t = type(value)
    if t is builtins.bool or t is np.bool_:
        return bool
    if t is builtins.int or isinstance(value, np.integer):
        return int64
    if t is builtins.float or isinstance(value, np.floating):
        return _default[0]
    if t is builtins.complex or isinstance(value, np.complexfloating):
        return default_complex_dtype()
    raise TypeError(f"expected a Tensor or a Python number, got {t.__name__}")


def _combine(higher: dtype | None, lower: dtype | None) -> dtype | None:
    """torch's combine_categories: a weaker operand only matters if it is of a higher category."""
    if higher is None:
        return lower
    if lower is None:
        return higher
    if higher.category == _COMPLEX:
        return higher
    if lower.category == _COMPLEX:
        return higher.to_complex() if higher.category == _FLOAT else lower
    if higher.category == _FLOAT:
        return higher
    if higher is bool or lower.category == _FLOAT:
        return _PROMOTE[(higher, lower)]
    return higher


def result_type_of(operands) -> dtype:
    """Promote a sequence of Tensors and Python scalars the way torch's TensorIterator does."""
    dim_r = zero_r = wrap_r = None
    for x in operands:
        d = getattr(x, "_dtype", None)
        if d is None:
            if x is None:
                continue
            s = scalar_dtype(x)
            wrap_r = s if wrap_r is None else _PROMOTE[(wrap_r, s)]
        elif x._data.ndim:
            dim_r = d if dim_r is None else _PROMOTE[(dim_r, d)]
        else:
            zero_r = d if zero_r is None else _PROMOTE[(zero_r, d)]
    out = _combine(dim_r, _combine(zero_r, wrap_r))
    if out is None:
        raise TypeError("result_type needs at least one operand")
    return out


def result_type(tensor1: Any, tensor2: Any) -> dtype:
    """Result dtype of an arithmetic op on two operands (Tensors or Python numbers)."""
    return result_type_of((tensor1, tensor2))


def can_cast(from_: dtype, to: dtype) -> builtins.bool:
    """Whether torch's casting rules allow an in-place op to write ``from_`` into ``to``.

    Only category matters: no complex into real, no float into integer, no number into bool.
    """
    return to_dtype(from_).category <= to_dtype(to).category


# ---------------------------------------------------------------- finfo / iinfo
class finfo:
    """Machine limits of a floating dtype, with torch.finfo's attribute names."""

    def __init__(self, type: dtype | None = None) -> None:  # noqa: A002 - torch's name
        d = to_dtype(type) if type is not None else _default[0]
        if d.category not in (_FLOAT, _COMPLEX):
            raise TypeError(f"finfo expects a floating point dtype, got {d}")
        d = d.to_real()
        info = ml_dtypes.finfo(d.np) if d is bfloat16 else np.finfo(d.np)
        self.dtype = d.name
        self.bits = d.itemsize * 8
        self.eps = builtins.float(info.eps)
        self.max = builtins.float(info.max)
        self.min = builtins.float(info.min)
        self.tiny = builtins.float(info.tiny)
        self.smallest_normal = self.tiny
        self.resolution = builtins.float(info.resolution)

    def __repr__(self) -> str:
        return (f"finfo(resolution={self.resolution}, min={self.min:g}, max={self.max:g}, "
                f"eps={self.eps:g}, smallest_normal={self.tiny:g}, tiny={self.tiny:g}, "
                f"dtype={self.dtype})")


class iinfo:
    """Machine limits of an integer dtype, with torch.iinfo's attribute names."""

    def __init__(self, type: dtype) -> None:  # noqa: A002
        d = to_dtype(type)
        if d.category not in (_INT, _BOOL):
            raise TypeError(f"iinfo expects an integer dtype, got {d}")
        info = np.iinfo(np.uint8 if d is bool else d.np)
        self.dtype = d.name
        self.bits = d.itemsize * 8
        self.max = 1 if d is bool else builtins.int(info.max)
        self.min = 0 if d is bool else builtins.int(info.min)

    def __repr__(self) -> str:
        return f"iinfo(min={self.min}, max={self.max}, dtype={self.dtype})"
