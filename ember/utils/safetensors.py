"""safetensors files for ember tensors, through the ``safetensors`` package's NumPy API.

The functions mirror ``safetensors.torch``: :func:`save_file` / :func:`load_file` for paths,
:func:`save` / :func:`load` for bytes, :func:`safe_open` for lazy access to single tensors
and metadata, and :func:`save_model` / :func:`load_model` for modules. Files are
interchangeable with those written and read by ``safetensors.torch``; bfloat16 travels
through ``ml_dtypes``. safetensors stores no code, so loading is always safe.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from ember import dtypes as _dt
from ember.backend.device import device as _device
from ember.serialization._pickler import root_of
from ember.tensor import Tensor, _array_address, _make

__all__ = ["save", "save_file", "load", "load_file", "safe_open", "save_model", "load_model"]

# safetensors has no complex128 (its C64 is complex64).
_UNSUPPORTED = {_dt.complex128}


def _st() -> Any:
    try:
        import safetensors
        import safetensors.numpy  # noqa: F401
    except ImportError:
        raise ImportError("ember.utils.safetensors needs the `safetensors` package: "
                          "pip install 'safetensors>=0.4'") from None
    return safetensors


def _check_shared(tensors: dict[str, Tensor]) -> None:
    """safetensors.torch refuses tensors whose memory overlaps (they would be written twice
    and come back as independent copies); the same check, on the NumPy view chain."""
    groups: dict[int, list[tuple[int, int, str]]] = {}
    for name, t in tensors.items():
        if t.numel() == 0:
            continue
        data = t._data
        start = _array_address(data)
        groups.setdefault(id(root_of(data)), []).append((start, start + data.nbytes, name))
    shared = []
    for spans in groups.values():
        spans.sort()
        for (s0, e0, n0), (s1, _, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                shared.append({n0, n1})
    if shared:
        raise RuntimeError(
            f"Some tensors share memory, this will lead to duplicate memory on disk and "
            f"potential differences when loading them again: {shared}.\nA potential way to "
            "correctly save your model is to use `save_model`.\nMore information at "
            "https://huggingface.co/docs/safetensors/torch_shared_tensors")


def _flatten(tensors: Any) -> dict[str, np.ndarray]:
    if not isinstance(tensors, dict):
        raise ValueError(f"Expected a dict of [str, Tensor] but received {type(tensors)}")
    for k, v in tensors.items():
        if not isinstance(k, str):
            raise ValueError(f"Key `{k}` is invalid, expected str but received {type(k)}")
        if not isinstance(v, Tensor):
            raise ValueError(f"Key `{k}` is invalid, expected torch.Tensor but received "
                             f"{type(v)}")
        if v._dtype in _UNSUPPORTED:
            raise ValueError(f"Key `{k}`: safetensors cannot store dtype {v._dtype}")
        if not v.is_contiguous():
            raise ValueError(
                f"You are trying to save a non contiguous tensor: `{k}` which is not allowed. It "
                "either means you are trying to save tensors which are reference of each other "
                "in which case it's recommended to save only the full tensors, and reslice at "
                "load time, or simply call `.contiguous()` on your tensor to pack it before "
                "saving.")
    _check_shared(tensors)
    return {k: np.ascontiguousarray(v._host()) for k, v in tensors.items()}


def _check_metadata(metadata: Any) -> Any:
    if metadata is not None and (not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise ValueError("metadata must be a dict[str, str]")
    return metadata


def _to_tensor(arr: np.ndarray, dev: Any = "cpu") -> Tensor:
    if not arr.flags.writeable:
        arr = arr.copy()  # ember tensors are writable, as torch's are
    t = _make(arr, _dt.from_numpy_dtype(arr.dtype), _device("cpu"))
    target = _device(dev) if not isinstance(dev, int) else _device("cuda", dev)
    return t if target.type == "cpu" else t.to(target)


def save(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialize ``tensors`` to safetensors bytes.

    Args:
        tensors: names to contiguous tensors that do not share memory.
        metadata: optional text annotations stored in the header.

    Returns:
        The file's bytes.

    Example::

        >>> data = ember.utils.safetensors.save({"w": ember.ones(2)})
        >>> ember.utils.safetensors.load(data)["w"]
        tensor([1., 1.])
    """
    st = _st()
    return bytes(st.numpy.save(_flatten(tensors), metadata=_check_metadata(metadata)))


def save_file(tensors: dict[str, Tensor], filename: str | os.PathLike,
              metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (and optional ``metadata``) to a safetensors file."""
    st = _st()
    st.numpy.save_file(_flatten(tensors), filename, metadata=_check_metadata(metadata))


def load(data: bytes) -> dict[str, Tensor]:
    """The tensors of safetensors ``data`` (bytes), as ember tensors on the CPU."""
    st = _st()
    return {k: _to_tensor(v) for k, v in st.numpy.load(bytes(data)).items()}


def load_file(filename: str | os.PathLike, device: Any = "cpu") -> dict[str, Tensor]:
    """The tensors of a safetensors file, on ``device`` (default CPU)."""
    with safe_open(filename, framework="pt", device=device) as f:
        return {k: f.get_tensor(k) for k in f.keys()}


class _Slice:
    """A lazily read tensor: index it to read only that part of the file."""

    def __init__(self, inner: Any, dev: Any) -> None:
        self._inner = inner
        self._device = dev

    def get_shape(self) -> list[int]:
        return list(self._inner.get_shape())

    def get_dtype(self) -> str:
        return self._inner.get_dtype()

    def __getitem__(self, index: Any) -> Tensor:
        return _to_tensor(np.asarray(self._inner[index]), self._device)


class safe_open:
    """Open a safetensors file for lazy access, like ``safetensors.safe_open``.

    Args:
        filename: the file.
        framework: accepted for compatibility (``"pt"``, ``"ember"``, ``"np"``); tensors are
            always ember tensors.
        device: where :meth:`get_tensor` puts tensors.

    Example::

        >>> with ember.utils.safetensors.safe_open("model.safetensors") as f:
        ...     names = f.keys(); first = f.get_tensor(names[0]); meta = f.metadata()
    """

    def __init__(self, filename: str | os.PathLike, framework: str = "pt",
                 device: Any = "cpu") -> None:
        st = _st()
        self._device = device
        self._handle = st.safe_open(os.fspath(filename), framework="numpy")
        self._file = self._handle.__enter__()

    def __enter__(self) -> "safe_open":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.__exit__(*exc)

    def keys(self) -> list[str]:
        """Tensor names, in file order."""
        return list(self._file.keys())

    def offset_keys(self) -> list[str]:
        return list(self._file.offset_keys()) if hasattr(self._file, "offset_keys") \
            else self.keys()

    def metadata(self) -> dict[str, str] | None:
        """The header's text metadata (``None`` when the file has none)."""
        return self._file.metadata()

    def get_tensor(self, name: str) -> Tensor:
        """Read one tensor."""
        return _to_tensor(self._file.get_tensor(name), self._device)

    def get_slice(self, name: str) -> _Slice:
        """A handle reading only the indexed part of one tensor."""
        return _Slice(self._file.get_slice(name), self._device)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


def _dedupe_shared(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Keep one name per group of tensors sharing memory (safetensors' save_model rule:
    the first in state-dict order); the others are recorded in the metadata."""
    seen: dict[tuple[int, int, int], str] = {}
    kept: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    for name, t in state.items():
        key = (id(root_of(t._data)), _array_address(t._data), t._data.nbytes)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        kept[name] = t
    return kept, aliases


def save_model(model: Any, filename: str | os.PathLike, metadata: dict[str, str] | None = None,
               force_contiguous: bool = False) -> None:
    """Save a module's ``state_dict``, writing tied (shared) tensors once."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if force_contiguous:
        state = {k: v.contiguous() for k, v in state.items()}
    kept, aliases = _dedupe_shared(state)
    meta = dict(_check_metadata(metadata) or {})
    meta.update({alias: target for alias, target in aliases.items()})
    if not meta:
        meta = {"format": "pt"}
    save_file(kept, filename, metadata=meta)


def load_model(model: Any, filename: str | os.PathLike, strict: bool = True,
               device: Any = "cpu") -> tuple[list[str], list[str]]:
    """Load a safetensors file into ``model``; returns ``(missing, unexpected)`` keys.

    Tied tensors written once by :func:`save_model` are restored through the module's own
    sharing, so a name missing from the file is fine when it aliases a loaded one.
    """
    state = load_file(filename, device=device)
    expected = model.state_dict()
    with safe_open(filename) as f:
        meta = f.metadata() or {}
    aliases = {k: v for k, v in meta.items() if k in expected and v in state}
    missing = sorted(k for k in expected if k not in state and k not in aliases)
    unexpected = sorted(k for k in state if k not in expected)
    if strict and (missing or unexpected):
        raise RuntimeError(f"Error(s) in loading state_dict for {type(model).__name__}:\n"
                           f"    Missing key(s): {missing}\n    Unexpected key(s): {unexpected}")
    for alias, target in aliases.items():
        state[alias] = state[target]
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return missing, unexpected
