"""``ember.testing``: ``assert_close`` (torch's tolerances per dtype) and ``make_tensor``.

Example::

    >>> import ember
    >>> ember.testing.assert_close(ember.tensor([1.0, 2.0]), ember.tensor([1.0, 2.0 + 1e-7]))
"""
from __future__ import annotations

import collections.abc as abc
import math
from typing import Any, Callable

import numpy as np

from ember import dtypes as _dt
from ember.tensor import Tensor

__all__ = ["assert_close", "make_tensor"]

# torch.testing's defaults: (rtol, atol) by dtype; anything else compares exactly
_TOLS = {"float16": (1e-3, 1e-5), "bfloat16": (1.6e-2, 1e-5), "float32": (1.3e-6, 1e-5),
         "float64": (1e-7, 1e-7), "complex64": (1.3e-6, 1e-5), "complex128": (1e-7, 1e-7)}


def _tols(*dtypes: Any) -> tuple[float, float]:
    pairs = [_TOLS.get(getattr(d, "name", str(d)), (0.0, 0.0)) for d in dtypes]
    return max(p[0] for p in pairs), max(p[1] for p in pairs)


def _fail(text: str, msg: Any) -> AssertionError:
    if callable(msg):
        return AssertionError(msg(text))
    return AssertionError(msg if msg is not None else text)


def _torch_name(d: Any) -> str:
    return f"torch.{d.name}" if isinstance(d, _dt.dtype) else str(d)


def _is_tensor_like(x: Any) -> bool:
    return isinstance(x, (Tensor, np.ndarray))


def _as_host(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        arr = x.detach()._host()
        if x.dtype in (_dt.bfloat16, _dt.float16):
            arr = arr.astype(np.float32)
        return np.asarray(arr)
    return np.asarray(x)


def _dtype_of(x: Any) -> Any:
    return x.dtype if isinstance(x, Tensor) else _dt.from_numpy_dtype(x.dtype)


def _compare_tensors(actual: Any, expected: Any, rtol: float | None, atol: float | None,
                     equal_nan: bool, check_device: bool, check_dtype: bool,
                     check_stride: bool, msg: Any) -> None:
    if type(actual) is not type(expected) and not (
            isinstance(actual, Tensor) and isinstance(expected, Tensor)):
        raise TypeError(f"No comparison pair was able to handle inputs of type "
                        f"{type(actual)} and {type(expected)}.")
    if tuple(actual.shape) != tuple(expected.shape):
        raise _fail(f"The values for attribute 'shape' do not match: "
                    f"{_shape(actual)} != {_shape(expected)}.", msg)
    da, de = _dtype_of(actual), _dtype_of(expected)
    if isinstance(actual, Tensor):
        if check_device and actual.device != expected.device:
            raise _fail(f"The values for attribute 'device' do not match: {actual.device} != "
                        f"{expected.device}.", msg)
        if check_stride and actual.stride() != expected.stride():
            raise _fail(f"The values for attribute 'stride()' do not match: {actual.stride()} "
                        f"!= {expected.stride()}.", msg)
    if check_dtype and da is not de:
        raise _fail(f"The values for attribute 'dtype' do not match: {_torch_name(da)} != "
                    f"{_torch_name(de)}.", msg)
    if rtol is None:
        rtol, atol = _tols(da, de)
    a, e = _as_host(actual), _as_host(expected)
    ints = a.dtype.kind in "iub" and e.dtype.kind in "iub"
    kind = np.complex128 if a.dtype.kind == "c" or e.dtype.kind == "c" else np.float64
    if a.dtype.kind == "b" and e.dtype.kind == "b":
        close = a == e
        diff = (a != e).astype(np.float64)
        rel = diff
    else:
        a, e = a.astype(kind), e.astype(kind)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            diff = np.abs(a - e)
            close = (a == e) | (np.isfinite(a) & np.isfinite(e) & (diff <= atol + rtol * np.abs(e)))
            if equal_nan:
                close |= np.isnan(a) & np.isnan(e)
            rel = diff / np.abs(e)
    if close.all():
        return
    exact = rtol == 0 and atol == 0
    if a.ndim == 0:
        # torch reports 0-dim tensors like Python scalars
        head = "Scalars are not equal!" if exact else "Scalars are not close!"
        lines = [head, "", f"Expected {_num(e[()], ints)} but got {_num(a[()], ints)}.",
                 f"Absolute difference: {_num(diff[()], ints)} (up to {atol} allowed)",
                 f"Relative difference: {float(rel[()])} (up to {rtol} allowed)"]
        raise _fail("\n".join(lines), msg)
    bad = ~close
    n_bad, total = int(bad.sum()), close.size
    head = "Tensor-likes are not equal!" if exact else "Tensor-likes are not close!"
    lines = [head, "", f"Mismatched elements: {n_bad} / {total} "
                       f"({100.0 * n_bad / max(total, 1):.1f}%)"]
    for label, vals, tol in (("absolute", diff, atol), ("relative", rel, rtol)):
        vals = np.asarray(vals, dtype=np.float64)
        rank = np.where(bad, vals, -np.inf)
        rank = np.where(np.isnan(rank), np.inf, rank)  # a NaN mismatch is the worst
        idx = np.unravel_index(int(np.argmax(rank)), vals.shape)
        worst = _num(vals[idx], ints and label == "absolute")
        allowed = "" if exact else f" (up to {tol} allowed)"
        lines.append(f"Greatest {label} difference: {worst} at index "
                     f"{tuple(int(i) for i in idx)}{allowed}")
    raise _fail("\n".join(lines), msg)


def _num(v: Any, as_int: bool) -> Any:
    v = float(np.real(v))
    return int(v) if as_int and math.isfinite(v) else v


def _shape(x: Any) -> str:
    return f"torch.Size({list(x.shape)})"


def _compare_scalars(actual: Any, expected: Any, rtol: float | None, atol: float | None,
                     equal_nan: bool, check_dtype: bool, msg: Any) -> None:
    if check_dtype and type(actual) is not type(expected):
        raise _fail(f"The values for attribute 'type' do not match: {type(actual)} != "
                    f"{type(expected)}.", msg)
    if rtol is None:
        floaty = any(isinstance(v, (float, complex)) for v in (actual, expected))
        rtol, atol = (1e-7, 1e-7) if floaty else (0.0, 0.0)
    if actual == expected:
        return
    if equal_nan and _isnan(actual) and _isnan(expected):
        return
    diff = abs(actual - expected)
    if all(math.isfinite(abs(v)) for v in (actual, expected)) and \
            diff <= atol + rtol * abs(expected):
        return
    rel = diff / abs(expected) if expected != 0 else math.inf
    head = "Scalars are not equal!" if rtol == 0 and atol == 0 else "Scalars are not close!"
    lines = [head, "", f"Expected {expected} but got {actual}.",
             f"Absolute difference: {diff} (up to {atol} allowed)",
             f"Relative difference: {rel} (up to {rtol} allowed)"]
    raise _fail("\n".join(lines), msg)


def _isnan(v: Any) -> bool:
    try:
        return math.isnan(abs(v)) if isinstance(v, complex) else math.isnan(v)
    except TypeError:
        return False


def assert_close(actual: Any, expected: Any, *, allow_subclasses: bool = True,
                 rtol: float | None = None, atol: float | None = None, equal_nan: bool = False,
                 check_device: bool = True, check_dtype: bool = True, check_layout: bool = True,
                 check_stride: bool = False, msg: str | Callable[[str], str] | None = None) -> None:
    """Assert that ``actual`` and ``expected`` are close: ``|a - e| <= atol + rtol * |e|``.

    Args:
        actual, expected: tensors, NumPy arrays, Python numbers, or (nested) sequences and
            mappings of them; both sides must have the same structure.
        rtol, atol: tolerances; both or neither. Omitted, they follow the dtype like torch
            (float32: 1.3e-6 / 1e-5, float64: 1e-7 / 1e-7, float16: 1e-3 / 1e-5, bfloat16:
            1.6e-2 / 1e-5, integers and bool: exact).
        equal_nan: treat NaN as equal to NaN.
        check_device, check_dtype, check_stride: also compare these attributes.
        msg: a message to raise instead, or a callable that edits the generated one.

    Raises:
        AssertionError: values or attributes differ (the message shows the number of
            mismatches and the greatest absolute and relative differences).
        TypeError: the inputs are of types that can't be compared.
        ValueError: only one of ``rtol`` and ``atol`` is given.
    """
    if (rtol is None) != (atol is None):
        missing = "atol" if atol is None else "rtol"
        raise ValueError(f"Both 'rtol' and 'atol' must be either specified or omitted, but got "
                         f"no {missing}.")
    _compare(actual, expected, rtol, atol, equal_nan, check_device, check_dtype, check_stride,
             msg, ())


def _compare(actual: Any, expected: Any, rtol: Any, atol: Any, equal_nan: bool,
             check_device: bool, check_dtype: bool, check_stride: bool, msg: Any,
             path: tuple) -> None:
    try:
        if _is_tensor_like(actual) or _is_tensor_like(expected):
            _compare_tensors(actual, expected, rtol, atol, equal_nan, check_device, check_dtype,
                             check_stride, msg)
        elif isinstance(actual, (bool, int, float, complex)) and \
                isinstance(expected, (bool, int, float, complex)):
            _compare_scalars(actual, expected, rtol, atol, equal_nan, check_dtype, msg)
        elif isinstance(actual, abc.Mapping) and isinstance(expected, abc.Mapping):
            if set(actual) != set(expected):
                raise AssertionError(f"The keys of the mappings do not match:\n"
                                     f"{sorted(map(str, actual))} != "
                                     f"{sorted(map(str, expected))}")
            for k in actual:
                _compare(actual[k], expected[k], rtol, atol, equal_nan, check_device,
                         check_dtype, check_stride, msg, path + (repr(k),))
        elif isinstance(actual, abc.Sequence) and isinstance(expected, abc.Sequence) and \
                not isinstance(actual, str) and not isinstance(expected, str):
            if len(actual) != len(expected):
                raise AssertionError(f"The length of the sequences mismatch: {len(actual)} != "
                                     f"{len(expected)}")
            for i, (a, e) in enumerate(zip(actual, expected)):
                _compare(a, e, rtol, atol, equal_nan, check_device, check_dtype, check_stride,
                         msg, path + (str(i),))
        elif actual is None and expected is None:
            return
        else:
            raise TypeError(f"No comparison pair was able to handle inputs of type "
                            f"{type(actual)} and {type(expected)}.")
    except AssertionError as exc:
        if path and not getattr(exc, "_ember_located", False) and msg is None:
            where = "".join(f"[{p}]" for p in path)
            new = AssertionError(f"{exc}\n\nThe failure occurred for item {where}")
            new._ember_located = True  # type: ignore[attr-defined]
            raise new from None
        raise


def make_tensor(*shape: Any, dtype: Any, device: Any, low: float | None = None,
                high: float | None = None, requires_grad: bool = False,
                noncontiguous: bool = False, exclude_zero: bool = False,
                memory_format: Any = None) -> Tensor:
    """A tensor of ``shape`` with uniformly random values in ``[low, high)`` (torch's
    defaults: [-9, 9] for floats and signed ints, [0, 10) for uint8, {False, True} for bool).

    ``noncontiguous`` returns a strided view with the same values; ``exclude_zero`` replaces
    zeros by a small non-zero value.
    """
    import ember
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    dt = _dt.to_dtype(dtype)
    rng = np.random.default_rng(int(ember.randint(0, 2 ** 31 - 1, ()).item()))
    if dt is _dt.bool:
        data = rng.integers(0, 2, shape).astype(bool)
    elif dt.category == 1:
        lo = 0 if dt is _dt.uint8 else -9
        lo = int(math.ceil(low)) if low is not None else lo
        hi = int(math.ceil(high)) if high is not None else 10
        data = rng.integers(lo, max(hi, lo + 1), shape)
        if exclude_zero:
            data[data == 0] = 1
    else:
        lo = -9.0 if low is None else float(low)
        hi = 9.0 if high is None else float(high)
        check_range = lo <= hi
        if not check_range:
            raise ValueError(f"make_tensor: low must be less than or equal to high, but got "
                             f"low={lo}, high={hi}")
        data = rng.uniform(lo, hi, shape)
        if dt.is_complex:
            data = data + 1j * rng.uniform(lo, hi, shape)
        if exclude_zero:
            tiny = float(np.finfo(np.float32 if dt.itemsize <= 8 else np.float64).tiny)
            data[data == 0] = tiny
    t = ember.tensor(data, dtype=dt, device=device)
    if noncontiguous and t.numel() > 1:
        wide = ember.stack([t, ember.zeros_like(t)], -1)
        t = wide[..., 0]
    if requires_grad:
        t.requires_grad_(True)
    return t
