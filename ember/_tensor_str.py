"""Tensor printing, laid out exactly as torch prints (``tensor([1., 2.], requires_grad=True)``).

The rules follow torch's ``_tensor_str``: one formatter per tensor decides integer mode,
scientific mode and the column width from the finite non-zero values; large tensors are
summarised with ``...`` beyond ``threshold`` elements; suffixes wrap at ``linewidth``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ember import dtypes as _dt


@dataclass
class _PrintOptions:
    precision: int = 4
    threshold: float = 1000
    edgeitems: int = 3
    linewidth: int = 80
    sci_mode: bool | None = None


PRINT_OPTS = _PrintOptions()


def set_printoptions(precision: int | None = None, threshold: float | None = None,
                     edgeitems: int | None = None, linewidth: int | None = None,
                     profile: str | None = None, sci_mode: bool | None = None) -> None:
    """Set printing options, as ``torch.set_printoptions``."""
    if profile == "default":
        PRINT_OPTS.precision, PRINT_OPTS.threshold = 4, 1000
        PRINT_OPTS.edgeitems, PRINT_OPTS.linewidth = 3, 80
    elif profile == "short":
        PRINT_OPTS.precision, PRINT_OPTS.threshold = 2, 1000
        PRINT_OPTS.edgeitems, PRINT_OPTS.linewidth = 2, 80
    elif profile == "full":
        PRINT_OPTS.precision, PRINT_OPTS.threshold = 4, math.inf
        PRINT_OPTS.edgeitems, PRINT_OPTS.linewidth = 3, 80
    if precision is not None:
        PRINT_OPTS.precision = precision
    if threshold is not None:
        PRINT_OPTS.threshold = threshold
    if edgeitems is not None:
        PRINT_OPTS.edgeitems = edgeitems
    if linewidth is not None:
        PRINT_OPTS.linewidth = linewidth
    PRINT_OPTS.sci_mode = sci_mode


def get_printoptions() -> dict:
    return dict(PRINT_OPTS.__dict__)


class _Formatter:
    def __init__(self, values: np.ndarray, floating: bool) -> None:
        self.floating = floating
        self.int_mode = True
        self.sci_mode = False
        self.max_width = 1
        flat = values.reshape(-1)
        p = PRINT_OPTS.precision
        if not floating:
            for v in flat.tolist():
                self.max_width = max(self.max_width, len(str(v)))
            return
        finite = flat[np.isfinite(flat) & (flat != 0)].astype(np.float64)
        if finite.size == 0:
            return
        absv = np.abs(finite)
        mn, mx = float(absv.min()), float(absv.max())
        self.int_mode = bool(np.all(finite == np.ceil(finite)))
        if self.int_mode:
            if mx / mn > 1000.0 or mx > 1.0e8:
                self.sci_mode = True
                for v in finite.tolist():
                    self.max_width = max(self.max_width, len(f"{v:.{p}e}"))
            else:
                for v in finite.tolist():
                    self.max_width = max(self.max_width, len(f"{v:.0f}") + 1)
        else:
            if mx / mn > 1000.0 or mx > 1.0e8 or mn < 1.0e-4:
                self.sci_mode = True
                for v in finite.tolist():
                    self.max_width = max(self.max_width, len(f"{v:.{p}e}"))
            else:
                for v in finite.tolist():
                    self.max_width = max(self.max_width, len(f"{v:.{p}f}"))
        if PRINT_OPTS.sci_mode is not None:
            self.sci_mode = PRINT_OPTS.sci_mode

    def width(self) -> int:
        return self.max_width

    def format(self, value: Any) -> str:
        p = PRINT_OPTS.precision
        if self.floating:
            if self.sci_mode:
                ret = f"{value:{self.max_width}.{p}e}"
            elif self.int_mode:
                ret = f"{value:.0f}"
                if not (math.isinf(value) or math.isnan(value)):
                    ret += "."
            else:
                ret = f"{value:.{p}f}"
        else:
            ret = f"{value}"
        return (self.max_width - len(ret)) * " " + ret


def _summarized(a: np.ndarray) -> np.ndarray:
    e = PRINT_OPTS.edgeitems
    if a.ndim == 0:
        return a
    if a.ndim == 1:
        if a.shape[0] > 2 * e:
            return np.concatenate([a[:e], a[-e:]])
        return a
    if a.shape[0] > 2 * e:
        rows = [_summarized(a[i]) for i in list(range(e)) + list(range(len(a) - e, len(a)))]
    else:
        rows = [_summarized(x) for x in a]
    return np.stack(rows)


def _vector_str(a: np.ndarray, indent: int, summarize: bool, fmt: Any, fmt2: Any = None) -> str:
    element_length = fmt.width() + 2
    if fmt2 is not None:
        element_length += fmt2.width() + 1
    per_line = max(1, int(math.floor((PRINT_OPTS.linewidth - indent) / element_length)))
    e = PRINT_OPTS.edgeitems

    def f(v: Any) -> str:
        if fmt2 is not None:
            real = fmt.format(v.real)
            imag = fmt2.format(v.imag) + "j"
            if imag.lstrip()[0] in "+-":
                return real + imag
            return real + "+" + imag.lstrip()
        return fmt.format(v)

    vals = a.tolist()
    if summarize and not e:
        data = ["..."]
    elif summarize and a.shape[0] > 2 * e:
        data = [f(v) for v in vals[:e]] + [" ..."] + [f(v) for v in vals[-e:]]
    else:
        data = [f(v) for v in vals]
    lines = [", ".join(data[i:i + per_line]) for i in range(0, len(data), per_line)]
    return "[" + ("," + "\n" + " " * (indent + 1)).join(lines) + "]"


def _tensor_str_fmt(a: np.ndarray, indent: int, summarize: bool, fmt: Any, fmt2: Any = None) -> str:
    dim = a.ndim
    if dim == 0:
        v = a.item()
        if fmt2 is not None:
            real = fmt.format(v.real)
            imag = fmt2.format(v.imag) + "j"
            return real + ("" if imag.lstrip()[0] in "+-" else "+") + imag.lstrip()
        return fmt.format(v)
    if dim == 1:
        return _vector_str(a, indent, summarize, fmt, fmt2)
    e = PRINT_OPTS.edgeitems
    if summarize and a.shape[0] > 2 * e:
        slices = ([_tensor_str_fmt(a[i], indent + 1, summarize, fmt, fmt2) for i in range(e)]
                  + ["..."]
                  + [_tensor_str_fmt(a[i], indent + 1, summarize, fmt, fmt2)
                     for i in range(len(a) - e, len(a))])
    else:
        slices = [_tensor_str_fmt(a[i], indent + 1, summarize, fmt, fmt2) for i in range(len(a))]
    return "[" + ("," + "\n" * (dim - 1) + " " * (indent + 1)).join(slices) + "]"


def _tensor_str(t: Any, indent: int) -> str:
    a = t._host()
    if a.size == 0:
        return "[]"
    summarize = a.size > PRINT_OPTS.threshold
    if t._dtype in (_dt.float16, _dt.bfloat16):
        a = a.astype(np.float32)
    if t._dtype.is_complex:
        src = _summarized(a) if summarize else a
        fr = _Formatter(src.real, True)
        fi = _Formatter(src.imag, True)
        return _tensor_str_fmt(a, indent, summarize, fr, fi)
    floating = t._dtype.category >= 2
    fmt = _Formatter(_summarized(a) if summarize else a, floating)
    return _tensor_str_fmt(a, indent, summarize, fmt)


def _add_suffixes(s: str, suffixes: list, indent: int) -> str:
    parts = [s]
    last_line_len = len(s) - s.rfind("\n") + 1
    for suffix in suffixes:
        if last_line_len + len(suffix) + 2 > PRINT_OPTS.linewidth:
            parts.append(",\n" + " " * indent + suffix)
            last_line_len = indent + len(suffix)
        else:
            parts.append(", " + suffix)
            last_line_len += len(suffix) + 2
    parts.append(")")
    return "".join(parts)


def tensor_repr(t: Any, prefix: str = "tensor(") -> str:
    """``repr(tensor)`` in torch's layout."""
    indent = len(prefix)
    suffixes = []
    if t._device.type != "cpu":
        suffixes.append(f"device='{t._device}'")
    default = _dt.get_default_dtype()
    default_complex = _dt.complex128 if default is _dt.float64 else _dt.complex64
    has_default = t._dtype in (default, default_complex, _dt.int64, _dt.bool)
    if t._data.size == 0:
        if t._data.ndim != 1:
            suffixes.append(f"size={tuple(t._data.shape)}")
        if t._dtype is not default:
            suffixes.append(f"dtype={t._dtype}")
        body = "[]"
    else:
        if not PRINT_OPTS.edgeitems:
            suffixes.append(f"size={tuple(t._data.shape)}")
        if not has_default:
            suffixes.append(f"dtype={t._dtype}")
        body = _tensor_str(t, indent)
    if t._grad_fn is not None:
        suffixes.append(f"grad_fn=<{t._grad_fn.name()}>")
    elif t._requires_grad:
        suffixes.append("requires_grad=True")
    return _add_suffixes(prefix + body, suffixes, indent)
