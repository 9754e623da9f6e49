"""The user's ``weights_only`` allowlist: :func:`add_safe_globals` and friends.

Kept apart from the unpickler so that ``import ember`` does not load the unpickler.
"""
from __future__ import annotations

from typing import Any

__all__ = ["add_safe_globals", "get_safe_globals", "clear_safe_globals", "safe_globals",
           "user_allowed"]

_user_globals: set = set()


# ---------------------------------------------------------------------- public allowlist API
def add_safe_globals(safe_globals: list) -> None:
    """Mark globals as safe for ``weights_only`` loading.

    Args:
        safe_globals: classes or functions, or ``(obj, "module.qualname")`` pairs naming the
            global as the checkpoint spells it (e.g. a torch name that maps to ``obj``).

    Example::

        >>> ember.serialization.add_safe_globals([MyConfig])
        >>> ember.load("ckpt.pt")  # may now rebuild MyConfig instances
    """
    for g in safe_globals:
        _check_safe_entry(g)
    _user_globals.update(safe_globals)


def get_safe_globals() -> list:
    """The globals the user marked safe with :func:`add_safe_globals`."""
    return list(_user_globals)


def clear_safe_globals() -> None:
    """Forget every global marked safe with :func:`add_safe_globals`."""
    _user_globals.clear()


class safe_globals:
    """Context manager marking ``safe_globals`` as safe inside the ``with`` block only."""

    def __init__(self, safe_globals: list) -> None:
        self.safe_globals = list(safe_globals)
        self._added: list = []

    def __enter__(self) -> None:
        self._added = [g for g in self.safe_globals if g not in _user_globals]
        add_safe_globals(self.safe_globals)

    def __exit__(self, *exc: Any) -> None:
        _user_globals.difference_update(self._added)


def _check_safe_entry(g: Any) -> None:
    if isinstance(g, tuple):
        if len(g) != 2:
            raise ValueError(f"Expected tuple of length 2 (global, str of callable full path), "
                             f"but got tuple of length: {len(g)}")
        if type(g[1]) is not str:
            raise TypeError(f"Expected second item in tuple to be str of callable full path, "
                            f"but got: {type(g[1])}")


def user_allowed() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for g in _user_globals:
        if isinstance(g, tuple):
            out[g[1]] = g[0]
        else:
            out[f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', repr(g))}"] = g
    return out
