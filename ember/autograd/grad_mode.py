"""Grad modes: ``no_grad``, ``enable_grad``, ``set_grad_enabled`` and ``inference_mode``.

Each works as a context manager and as a decorator. The state is a class attribute so the
op dispatcher reads it with one attribute lookup.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable


from ember._state import _State  # noqa: E402  (kept outside the package to avoid cycles)


def is_grad_enabled() -> bool:
    """Whether ops record history for autograd."""
    return _State.enabled


def is_inference_mode_enabled() -> bool:
    return _State.inference


class _Mode:
    """Base for the grad-mode context managers; subclasses set ``_target``."""

    _target: bool = True

    def __enter__(self) -> None:
        self._prev = (_State.enabled, _State.inference)
        _State.enabled = self._target

    def __exit__(self, *exc: Any) -> None:
        _State.enabled, _State.inference = self._prev

    def __call__(self, fn: Callable) -> Callable:
        if inspect.isclass(fn):
            raise TypeError(f"{type(self).__name__} can't decorate a class")
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any):
                gen = fn(*args, **kwargs)
                with self.clone():
                    value = next(gen)
                while True:
                    try:
                        with self.clone():
                            sent = yield value
                            value = gen.send(sent)
                    except StopIteration as stop:
                        return stop.value
            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any):
            with self.clone():
                return fn(*args, **kwargs)
        return wrapper

    def clone(self) -> "_Mode":
        return type(self)()


class no_grad(_Mode):
    """Disable gradient recording; ops inside make tensors with ``requires_grad=False``.

    Example::

        >>> with ember.no_grad():
        ...     y = x * 2
    """

    _target = False


class enable_grad(_Mode):
    """Enable gradient recording inside a ``no_grad`` region."""

    _target = True


class set_grad_enabled(_Mode):
    """Set gradient recording on or off: takes effect when called, and as a context manager
    or decorator restores the previous mode on exit."""

    def __init__(self, mode: bool) -> None:
        self._target = bool(mode)
        self._prev = (_State.enabled, _State.inference)
        _State.enabled = self._target

    def __call__(self, fn: Callable) -> Callable:
        _State.enabled = self._prev[0]
        return super().__call__(fn)

    def __enter__(self) -> None:
        _State.enabled = self._target

    def clone(self) -> "set_grad_enabled":
        return set_grad_enabled(self._target)


class inference_mode(_Mode):
    """Like ``no_grad``, and marks the tensors made inside as inference tensors."""

    def __init__(self, mode: bool = True) -> None:
        self._mode = bool(mode)
        self._target = not self._mode

    def __enter__(self) -> None:
        self._prev = (_State.enabled, _State.inference)
        if self._mode:
            _State.enabled = False
            _State.inference = True

    def __call__(self, fn: Any) -> Any:
        if isinstance(fn, bool):  # inference_mode(False) used as a bare call
            return inference_mode(fn)
        return super().__call__(fn)

    def clone(self) -> "inference_mode":
        return inference_mode(self._mode)
