"""ember's error helpers: messages that name the op, the argument and the shapes.

Errors keep torch's exception types (RuntimeError, IndexError, TypeError, ValueError) so
``except RuntimeError`` in user code still works; the subclasses below only mark an error as
ember's own, so the dispatcher passes it through unchanged instead of re-wrapping it.
"""
from __future__ import annotations

from typing import Any


class EmberError(Exception):
    """Mixin marking an exception raised deliberately by ember."""


class EmberRuntimeError(EmberError, RuntimeError):
    pass


class EmberIndexError(EmberError, IndexError):
    pass


class EmberTypeError(EmberError, TypeError):
    pass


class EmberValueError(EmberError, ValueError):
    pass


class EmberNotImplementedError(EmberError, NotImplementedError):
    """torch raises NotImplementedError for some dtype/op combinations; so does ember."""


_KINDS = {NotImplementedError: EmberNotImplementedError, RuntimeError: EmberRuntimeError, IndexError: EmberIndexError,
          TypeError: EmberTypeError, ValueError: EmberValueError}


def check(cond: bool, op: str, msg: str, kind: type = RuntimeError, hint: str | None = None) -> None:
    """Raise ``kind`` with ``[op] msg`` (and a hint line) unless ``cond`` holds."""
    if not cond:
        raise make(kind, op, msg, hint)


def make(kind: type, op: str, msg: str, hint: str | None = None) -> Exception:
    text = f"[{op}] {msg}"
    if hint:
        text += f"\n  hint: {hint}"
    return _KINDS.get(kind, EmberRuntimeError)(text)


def describe(args: Any) -> str:
    """A short description of an op's tensor arguments: shapes, dtypes, devices."""
    from ember.tensor import Tensor
    parts = []
    for a in args if isinstance(args, (tuple, list)) else (args,):
        if isinstance(a, Tensor):
            parts.append(f"Tensor{tuple(a._data.shape)} {a._dtype.name} on {a._device}")
        elif isinstance(a, (tuple, list)) and a and isinstance(a[0], Tensor):
            parts.append("[" + ", ".join(str(tuple(t._data.shape)) for t in a) + "]")
    return "; ".join(parts)


def op_error(op: str, exc: BaseException, args: Any) -> Exception:
    """Turn a NumPy/CuPy exception inside an op into ember's error of torch's type."""
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        from ember.cuda.memory import OutOfMemoryError
        return OutOfMemoryError(f"[{op}] out of memory: {exc} (inputs: {describe(args)}). "
                                "Free tensors or call ember.cuda.empty_cache() and retry.")
    if isinstance(exc, IndexError):
        kind = IndexError
    elif isinstance(exc, TypeError):
        kind = TypeError
    else:
        kind = RuntimeError
    detail = str(exc).replace("axis", "dimension").replace("numpy.", "")
    return make(kind, op, f"{detail} (inputs: {describe(args)})")
