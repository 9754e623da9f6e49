"""The names torch writes into checkpoints, and ember's counterparts.

A torch checkpoint refers to classes and functions by their torch names
(``torch._utils._rebuild_tensor_v2``, ``torch FloatStorage``, ``torch float16`` ...).
ember never imports torch: these tables translate the names both ways, so ember writes the
names torch expects and reads them back into ember objects.
"""
from __future__ import annotations

import pickle
from typing import Any

from ember import dtypes as _dt

__all__ = ["CheckpointError", "WeightsOnlyError", "StorageType", "STORAGE_TYPES", "STORAGE_NAME_OF_DTYPE",
           "TORCH_DTYPE_NAMES", "KNOWN_UNSUPPORTED_DTYPES"]


class CheckpointError(pickle.UnpicklingError, RuntimeError):
    """A checkpoint that ember refuses to load: malformed, truncated, unsafe or unsupported.

    It is a :class:`pickle.UnpicklingError` (what a rejected unsafe file raises) and a
    :class:`RuntimeError` (what torch raises for a corrupt archive), so code written for
    either keeps working.
    """


class WeightsOnlyError(CheckpointError):
    """A ``weights_only`` refusal: the file names a global, call or opcode outside the
    allowlist (as opposed to a corrupt file). ``weights_only=False`` would load it."""


class StorageType:
    """What ``torch.FloatStorage`` (and friends) become when a checkpoint is read.

    Only the element type matters to ember: it tells how to interpret a storage's bytes.
    ``dtype`` is ``None`` for ``torch.UntypedStorage`` (raw bytes; the dtype comes from
    ``_rebuild_tensor_v3``).
    """

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: _dt.dtype | None) -> None:
        self.name = name
        self.dtype = dtype

    @property
    def itemsize(self) -> int:
        return 1 if self.dtype is None else self.dtype.itemsize

    def __repr__(self) -> str:
        return f"StorageType(torch.{self.name})"


# torch's legacy typed-storage class names, one per dtype (torch/storage.py).
STORAGE_NAME_OF_DTYPE: dict[_dt.dtype, str] = {
    _dt.float64: "DoubleStorage",
    _dt.float32: "FloatStorage",
    _dt.float16: "HalfStorage",
    _dt.bfloat16: "BFloat16Storage",
    _dt.int64: "LongStorage",
    _dt.int32: "IntStorage",
    _dt.int16: "ShortStorage",
    _dt.int8: "CharStorage",
    _dt.uint8: "ByteStorage",
    _dt.bool: "BoolStorage",
    _dt.complex64: "ComplexFloatStorage",
    _dt.complex128: "ComplexDoubleStorage",
}

STORAGE_TYPES: dict[str, StorageType] = {
    name: StorageType(name, d) for d, name in STORAGE_NAME_OF_DTYPE.items()}
STORAGE_TYPES["UntypedStorage"] = StorageType("UntypedStorage", None)

# Storage classes torch can write but ember has no dtype for (quantized types).
UNSUPPORTED_STORAGES = ("QInt8Storage", "QUInt8Storage", "QInt32Storage", "QUInt4x2Storage",
                        "QUInt2x4Storage")

# ``torch.<name>`` -> ember dtype, for dtype objects pickled inside a checkpoint.
TORCH_DTYPE_NAMES: dict[str, _dt.dtype] = {d.name: d for d in _dt.ALL_DTYPES}

# dtypes torch has and ember does not: loading one gives a clear error, not a KeyError.
KNOWN_UNSUPPORTED_DTYPES = frozenset({
    "uint16", "uint32", "uint64", "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7",
    "int1", "int2", "int3", "int4", "int5", "int6", "int7", "float8_e4m3fn", "float8_e5m2",
    "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "complex32",
    "qint8", "quint8", "qint32", "quint4x2", "quint2x4", "bits1x8", "bits2x4", "bits4x2",
    "bits8", "bits16", "chalf"})


def unsupported_dtype(name: str) -> CheckpointError:
    return CheckpointError(
        f"[load] the checkpoint holds a torch.{name} tensor or dtype, which ember does not "
        f"support (supported: {', '.join(d.name for d in _dt.ALL_DTYPES)})")


class TorchGlobal:
    """A stand-in written into checkpoints under a torch name (``module``, ``name``).

    The pickler writes it as ``GLOBAL module name``; nothing is ever imported.
    """

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __call__(self, *args: Any) -> Any:
        # pickle insists that a reduce function be callable; this one is only ever written.
        raise RuntimeError(f"{self!r} is a name written into checkpoints, not a function")

    def __repr__(self) -> str:
        return f"<torch global {self.module}.{self.name}>"


def torch_name_of(obj: Any) -> str:
    """``module.name`` of an allowed global, for error messages."""
    mod = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", repr(obj))
    return f"{mod}.{name}" if mod else name
