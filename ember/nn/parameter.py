"""``Parameter``, ``Buffer`` and the lazy ``UninitializedParameter``/``UninitializedBuffer``.

A :class:`Parameter` is a Tensor subclass that a :class:`~ember.nn.Module` registers as a
learnable weight when it is assigned as an attribute. It shares memory with the tensor it
wraps (as torch's ``_make_subclass`` does), and results of ops on it are plain Tensors.
"""
from __future__ import annotations

from typing import Any

from ember import dtypes as _dt
from ember.tensor import Tensor, _copy_state

__all__ = ["Parameter", "Buffer", "UninitializedParameter", "UninitializedBuffer",
           "is_lazy"]


def _wrap(cls: type, data: Tensor, requires_grad: bool) -> Tensor:
    """A ``cls`` instance that shares ``data``'s array and version counter."""
    t = Tensor.__new__(cls, data)
    _copy_state(t, data._data, data._dtype, data._device, False)
    t._version = data._version
    if requires_grad:
        t.requires_grad_(True)  # raises torch's error for integer dtypes
    return t


class Parameter(Tensor):
    """A Tensor that is a module parameter: assigning one to a Module attribute registers it.

    Args:
        data: the parameter tensor (shared, not copied). Default: an empty float tensor.
        requires_grad: whether the parameter requires gradient. Default: ``True``.

    Example::

        >>> p = ember.nn.Parameter(ember.zeros(3))
        >>> p
        Parameter containing:
        tensor([0., 0., 0.], requires_grad=True)
    """

    def __new__(cls, data: Tensor | None = None, requires_grad: bool = True) -> "Parameter":
        if data is None:
            from ember import _factory
            data = _factory.empty(0)
        if not isinstance(data, Tensor):
            raise TypeError(f"[Parameter] data must be a Tensor, got {type(data).__name__}")
        return _wrap(cls, data, requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

    def __reduce_ex__(self, protocol: int) -> Any:
        return (_rebuild_parameter, (self._host().copy(), self._dtype.name, str(self._device),
                                     self._requires_grad, type(self)))



def _rebuild_parameter(data: Any, dtype_name: str, dev: str, requires_grad: bool,
                       cls: type) -> Parameter:
    from ember.tensor import _rebuild
    t = _rebuild(data, dtype_name, dev, False)
    return cls(t, requires_grad) if cls is not Parameter else Parameter(t, requires_grad)


class _BufferMeta(type):
    # ``isinstance(t, Buffer)`` is true for tensors made by ``Buffer(...)`` (torch's design:
    # a buffer is a plain Tensor carrying a flag, so ops and state_dict see a Tensor).
    def __instancecheck__(cls, instance: Any) -> bool:
        if cls is Buffer:
            return isinstance(instance, Tensor) and instance.__dict__.get("_is_buffer", False)
        return super().__instancecheck__(instance)


class Buffer(Tensor, metaclass=_BufferMeta):
    """Marks a tensor as a module buffer: assigning one to a Module attribute registers it.

    Args:
        data: the buffer tensor.
        persistent: whether the buffer is part of the module's ``state_dict``. Default: ``True``.

    Example::

        >>> m = ember.nn.Module()
        >>> m.running = ember.nn.Buffer(ember.zeros(3))
        >>> list(m.state_dict())
        ['running']
    """

    def __new__(cls, data: Tensor | None = None, *, persistent: bool = True) -> Tensor:  # type: ignore[misc]
        if data is None:
            from ember import _factory
            data = _factory.empty(0)
        t = data.detach().requires_grad_(data.requires_grad)
        t.__dict__["persistent"] = persistent
        t.__dict__["_is_buffer"] = True
        return t


class UninitializedTensorMixin:
    """Behaviour shared by uninitialized parameters and buffers: no data until
    :meth:`materialize`, and a clear error when used before that."""

    cls_to_become: type = Tensor

    def materialize(self, shape: Any, device: Any = None, dtype: Any = None) -> None:
        """Create the data with ``shape`` (on ``device``, of ``dtype``) and become a
        ``cls_to_become`` (Parameter or Tensor)."""
        from ember import _factory
        if isinstance(shape, int):
            shape = (shape,)
        dev = device if device is not None else self._device
        dt = dtype if dtype is not None else self._dtype
        data = _factory.empty(tuple(shape), dtype=dt, device=dev)
        self._data = data._data
        self._dtype = data._dtype
        self._device = data._device
        self._version = [0]
        self.__class__ = self.cls_to_become

    @property
    def shape(self) -> Any:  # type: ignore[override]
        raise RuntimeError(
            "Can't access the shape of an uninitialized parameter or buffer. This error usually "
            "happens in `load_state_dict` when trying to load an uninitialized parameter into an "
            "initialized one. Call `forward` to initialize the parameters before accessing their "
            "attributes.")

    def share_memory_(self) -> Any:
        raise RuntimeError("Can't share memory on an uninitialized parameter or buffer. Call "
                           "`forward` to initialize the parameters before calling "
                           "`module.share_memory()`.")

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__}>"

    def __reduce_ex__(self, proto: int) -> Any:
        return (self.__class__, (self._requires_grad,))


class UninitializedParameter(UninitializedTensorMixin, Parameter):
    """A parameter whose shape is not known yet (used by ``Lazy*`` modules); becomes a
    :class:`Parameter` on :meth:`materialize`."""

    cls_to_become = Parameter

    def __new__(cls, requires_grad: bool = True, device: Any = None,
                dtype: Any = None) -> "UninitializedParameter":
        from ember import _factory
        data = _factory.empty(0, dtype=dtype or _dt.get_default_dtype(), device=device)
        return _wrap(cls, data, requires_grad)

    def __deepcopy__(self, memo: dict) -> "UninitializedParameter":
        out = type(self)(self._requires_grad, self._device, self._dtype)
        memo[id(self)] = out
        return out


class UninitializedBuffer(UninitializedTensorMixin, Tensor):
    """A buffer whose shape is not known yet; becomes a plain Tensor on :meth:`materialize`."""

    cls_to_become = Tensor

    def __new__(cls, requires_grad: bool = False, device: Any = None,
                dtype: Any = None, persistent: bool = True) -> "UninitializedBuffer":
        from ember import _factory
        data = _factory.empty(0, dtype=dtype or _dt.get_default_dtype(), device=device)
        t = _wrap(cls, data, requires_grad)
        t.__dict__["persistent"] = persistent
        return t


def is_lazy(param: Any) -> bool:
    """Whether ``param`` is an uninitialized parameter or buffer."""
    return isinstance(param, UninitializedTensorMixin)
