"""The op database: one record per op, driving the generic tests in test_opdb.py.

A record names the op, how to call it on either framework (``call(m, *args, **kw)`` where
``m`` is ``ember`` or ``torch``), a NumPy float64 reference, sample inputs, dtypes to check
against torch, tolerances and error inputs. Records live in family modules
(``opdb/core.py``, ...); ``ALL`` collects them.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

FLOATS = ("float32", "float64")
ALL_FLOATS = ("float16", "bfloat16", "float32", "float64")
INTS = ("int32", "int64")
NUMERIC = ("uint8", "int32", "int64", "float32", "float64")
ALL = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")


@dataclass
class Sample:
    """Positional args (NumPy arrays become tensors; anything else passes as is) and kwargs.

    ``noncontig`` makes every array input a non-contiguous view with the same values.
    """

    args: tuple
    kwargs: dict = field(default_factory=dict)
    noncontig: bool = False
    name: str = ""

    def __repr__(self) -> str:
        shapes = [getattr(a, "shape", a) for a in self.args]
        return self.name or f"{shapes}{' nc' if self.noncontig else ''}{self.kwargs or ''}"


@dataclass
class ErrorInput:
    sample: Sample
    exc: type
    match: str = ""


@dataclass
class OpEntry:
    name: str
    call: Callable                      # call(m, *args, **kwargs) for m in (ember, torch)
    samples: Callable[[np.random.Generator], list]
    ref: Callable | None = None         # NumPy float64 reference: ref(*arrays, **kwargs)
    dtypes: Sequence[str] = FLOATS      # checked against torch for dtype/shape
    grad: bool = True
    gradgrad: bool = True
    torch_grad: bool = True             # compare gradients with torch
    atol: float = 1e-6
    rtol: float = 1e-6
    errors: Sequence[ErrorInput] = ()
    grad_samples: Callable | None = None  # smaller inputs for gradcheck (default: samples)
    positive: bool = False              # samples must be positive (log, sqrt ...)
    covers: Sequence[str] = ()          # other registry names this record exercises
    skip_torch_dtype: Sequence[str] = ()

    def __repr__(self) -> str:
        return self.name


def unary_samples(rng: np.random.Generator, positive: bool = False, low: float = -2.0,
                  high: float = 2.0) -> list:
    lo = 0.1 if positive else low
    def arr(*shape):
        return rng.uniform(lo, high, size=shape)
    return [
        Sample((arr(),), name="0-dim"),
        Sample((arr(0),), name="empty"),
        Sample((arr(5),)),
        Sample((arr(3, 4),)),
        Sample((arr(4, 3),), noncontig=True),
        Sample((arr(2, 1, 3),)),
    ]


def binary_samples(rng: np.random.Generator, positive: bool = False) -> list:
    lo = 0.5 if positive else -2.0
    def arr(*shape):
        return rng.uniform(lo, 2.0, size=shape)
    return [
        Sample((arr(), arr()), name="0-dim"),
        Sample((arr(3, 4), arr(3, 4))),
        Sample((arr(3, 4), arr(4)), name="broadcast"),
        Sample((arr(2, 1, 4), arr(3, 1)), name="broadcast-both"),
        Sample((arr(4, 3), arr(4, 3)), noncontig=True),
        Sample((arr(0, 3), arr(3)), name="empty"),
        Sample((arr(3), 1.5), name="scalar"),
    ]


def collect() -> list:
    entries = []
    pkg = importlib.import_module("opdb")
    for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)):
        module = importlib.import_module(f"opdb.{mod}")
        entries.extend(getattr(module, "ENTRIES", []))
    return entries
