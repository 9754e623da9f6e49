"""``ember.device``: parsed, compared, hashed and printed like ``torch.device``."""
from __future__ import annotations

from typing import Any

_VALID = ("cpu", "cuda", "meta")


class device:
    """A device such as ``device('cpu')``, ``device('cuda:1')`` or ``device('cuda', 1)``.

    Instances are interned, so ``a is b`` holds for equal devices; the op fast path relies on it.
    """

    __slots__ = ("type", "index", "_str")
    _cache: dict = {}

    def __new__(cls, type: Any, index: int | None = None) -> "device":  # noqa: A002
        if isinstance(type, device):
            if index is not None:
                raise ValueError("device(): an index can't be given with a device object")
            return type
        key = (type, index)
        hit = cls._cache.get(key)
        if hit is not None:
            return hit
        dtype_, idx = _parse(type, index)
        canon = cls._cache.get((dtype_, idx, "canon"))
        if canon is None:
            canon = object.__new__(cls)
            object.__setattr__(canon, "type", dtype_)
            object.__setattr__(canon, "index", idx)
            object.__setattr__(canon, "_str", dtype_ if idx is None else f"{dtype_}:{idx}")
            cls._cache[(dtype_, idx, "canon")] = canon
        if isinstance(type, (str, int)) and (index is None or isinstance(index, int)):
            cls._cache[key] = canon
        return canon

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ember.device is immutable")

    def __repr__(self) -> str:
        if self.index is None:
            return f"device(type='{self.type}')"
        return f"device(type='{self.type}', index={self.index})"

    def __str__(self) -> str:
        return self._str

    def __eq__(self, other: Any) -> bool:
        # Like torch, a device never equals a string: device("cpu") == "cpu" is False.
        return self is other

    def __hash__(self) -> int:
        return hash(self._str)

    def __reduce__(self):
        return (device, (self.type, self.index))


def _parse(spec: Any, index: int | None) -> tuple[str, int | None]:
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 0:
            raise RuntimeError(f"Device index must not be negative, got {spec}")
        return "cuda", spec
    if not isinstance(spec, str):
        raise TypeError(f"device() expects a string, int or device, got {type(spec).__name__}")
    text = spec.strip()
    kind, sep, idx_text = text.partition(":")
    if kind not in _VALID:
        raise RuntimeError(
            f"Expected one of cpu, cuda, meta device type at start of device string: {spec}")
    idx: int | None = None
    if sep:
        if not idx_text.isdigit():
            raise RuntimeError(f"Invalid device string: '{spec}'")
        idx = int(idx_text)
    if index is not None:
        if sep:
            raise RuntimeError(f"type (string) must not include an index because index was "
                               f"passed explicitly: {spec}")
        if not isinstance(index, int) or index < 0:
            raise RuntimeError(f"Device index must not be negative, got {index}")
        idx = index
    if kind == "cpu" and idx not in (None, 0):
        raise RuntimeError(f"CPU device index must be -1 or zero, got {idx}")
    if kind == "cpu":
        idx = None
    return kind, idx


cpu_device = device("cpu")


def to_device(obj: Any) -> device:
    """Accept ``None`` (cpu), a string, an int (cuda index) or a device."""
    if obj is None:
        return cpu_device
    if isinstance(obj, device):
        return obj
    return device(obj)
