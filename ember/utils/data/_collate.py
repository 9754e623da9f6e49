"""``default_collate`` and ``default_convert``: turning samples into batches, by torch's rules.

``collate`` walks the structure of the first sample and dispatches on its type through a
``collate_fn_map`` (type -> function), so a user extends it by adding a key rather than by
rewriting the walk:

* tensors stack along a new first dimension; inside a worker process the stacked batch is
  written straight into shared memory so it reaches the main process without a pickle copy;
* NumPy arrays become tensors (arrays of strings or objects are rejected), NumPy scalars a
  tensor of their dtype;
* Python ``float`` -> float64 tensor, ``int`` -> int64, ``bool`` -> bool; ``str``/``bytes``
  stay as lists;
* mappings, namedtuples and sequences keep their structure and collate element-wise
  (tuples and other immutable sequences come back as lists, as in torch).
"""
from __future__ import annotations

import collections.abc
import copy
import re
from typing import Any, Callable

import numpy as np

import ember
from ember import Tensor
from ember.utils.data import _shm

__all__ = ["collate", "default_collate", "default_convert", "default_collate_fn_map",
           "default_collate_err_msg_format", "collate_tensor_fn", "collate_numpy_array_fn",
           "collate_numpy_scalar_fn", "collate_float_fn", "collate_int_fn", "collate_str_fn"]

# NumPy dtype codes of byte strings, unicode, void and objects: these cannot become tensors.
np_str_obj_array_pattern = re.compile(r"[SaUO]")

default_collate_err_msg_format = (
    "default_collate: batch must contain tensors, numpy arrays, numbers, "
    "dicts or lists; found {}")

CollateFnMap = dict


def default_convert(data: Any) -> Any:
    r"""Convert NumPy arrays and scalars in ``data`` to tensors, keeping the structure.

    Used as the loader's ``collate_fn`` when automatic batching is off (``batch_size=None``).
    Tensors and other objects pass through; mappings, namedtuples and sequences are converted
    element-wise (tuples become lists, as in torch).

    Example::

        >>> default_convert(np.array([0, 1]))
        tensor([0, 1])
        >>> default_convert((np.array([1]), "a"))
        [tensor([1]), 'a']
    """
    elem_type = type(data)
    if isinstance(data, Tensor):
        return data
    if elem_type.__module__ == "numpy" and elem_type.__name__ not in ("str_", "string_", "bytes_"):
        # arrays of strings and objects have no tensor dtype: pass them through unchanged
        if (elem_type.__name__ == "ndarray"
                and np_str_obj_array_pattern.search(data.dtype.str) is not None):
            return data
        return ember.as_tensor(data)
    if isinstance(data, collections.abc.Mapping):
        try:
            if isinstance(data, collections.abc.MutableMapping):
                # copy first so subclass attributes (e.g. an OrderedDict's order) survive
                clone = copy.copy(data)
                clone.update({key: default_convert(data[key]) for key in data})
                return clone
            return elem_type({key: default_convert(data[key]) for key in data})
        except TypeError:
            # the mapping type cannot be built from a dict: fall back to a plain dict
            return {key: default_convert(data[key]) for key in data}
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return elem_type(*(default_convert(d) for d in data))
    if isinstance(data, tuple):
        return [default_convert(d) for d in data]  # a list, for torch compatibility
    if isinstance(data, collections.abc.Sequence) and not isinstance(data, (str, bytes)):
        try:
            if isinstance(data, collections.abc.MutableSequence):
                clone = copy.copy(data)
                for i, d in enumerate(data):
                    clone[i] = default_convert(d)
                return clone
            return elem_type([default_convert(d) for d in data])
        except TypeError:
            return [default_convert(d) for d in data]
    return data


def collate(batch: Any, *, collate_fn_map: dict | None = None) -> Any:
    r"""Collate a batch, dispatching on the type of its first element.

    ``collate_fn_map`` maps a type (or a tuple of types) to a function
    ``fn(batch, *, collate_fn_map)``. The exact type is looked up first, then the keys are
    tried in order with ``isinstance``. Mappings, namedtuples and sequences that no key claims
    are walked recursively.

    Example::

        >>> def collate_str(batch, *, collate_fn_map=None): return "|".join(batch)
        >>> collate(["a", "b"], collate_fn_map={str: collate_str})
        'a|b'
    """
    elem = batch[0]
    elem_type = type(elem)
    if collate_fn_map is not None:
        if elem_type in collate_fn_map:
            return collate_fn_map[elem_type](batch, collate_fn_map=collate_fn_map)
        for collate_type in collate_fn_map:
            if isinstance(elem, collate_type):
                return collate_fn_map[collate_type](batch, collate_fn_map=collate_fn_map)
    if isinstance(elem, collections.abc.Mapping):
        try:
            if isinstance(elem, collections.abc.MutableMapping):
                clone = copy.copy(elem)
                clone.update({key: collate([d[key] for d in batch], collate_fn_map=collate_fn_map)
                              for key in elem})
                return clone
            return elem_type({key: collate([d[key] for d in batch], collate_fn_map=collate_fn_map)
                              for key in elem})
        except TypeError:
            return {key: collate([d[key] for d in batch], collate_fn_map=collate_fn_map)
                    for key in elem}
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # namedtuple
        return elem_type(*(collate(samples, collate_fn_map=collate_fn_map)
                           for samples in zip(*batch)))
    if isinstance(elem, collections.abc.Sequence):
        # zip would silently truncate to the shortest sample: check sizes first
        it = iter(batch)
        elem_size = len(next(it))
        if not all(len(e) == elem_size for e in it):
            raise RuntimeError("each element in list of batch should be of equal size")
        transposed = list(zip(*batch))  # accessed twice below, so a list
        if isinstance(elem, tuple):
            return [collate(samples, collate_fn_map=collate_fn_map) for samples in transposed]
        try:
            if isinstance(elem, collections.abc.MutableSequence):
                clone = copy.copy(elem)
                for i, samples in enumerate(transposed):
                    clone[i] = collate(samples, collate_fn_map=collate_fn_map)
                return clone
            return elem_type([collate(samples, collate_fn_map=collate_fn_map)
                              for samples in transposed])
        except TypeError:
            return [collate(samples, collate_fn_map=collate_fn_map) for samples in transposed]
    raise TypeError(default_collate_err_msg_format.format(elem_type))


def _stack_arrays(arrays: list) -> Tensor | None:
    """Stack NumPy arrays of one dtype and shape into a new tensor: in shared memory inside a
    worker, so the batch reaches the main process without another copy. ``None`` when the
    arrays differ, leaving ``ember.stack`` to raise torch's error."""
    first = arrays[0]
    dtype, shape = first.dtype, first.shape
    for a in arrays:
        if a.dtype != dtype or a.shape != shape:
            return None
    out = _shm.empty((len(arrays), *shape), dtype)
    np.stack(arrays, axis=0, out=out)
    return ember.from_numpy(out)


def collate_tensor_fn(batch: list, *, collate_fn_map: dict | None = None) -> Tensor:
    """Stack tensors along a new first dimension (into shared memory inside a worker)."""
    if _shm.active():
        # CPU tensors without autograd history stack as plain arrays; anything else (GPU,
        # requires_grad, mixed dtypes or shapes) goes through ember.stack's rules.
        if all(t.device.type == "cpu" and not t.requires_grad for t in batch):
            out = _stack_arrays([t.numpy() for t in batch])
            if out is not None:
                return out
    return ember.stack(list(batch), 0)


def collate_numpy_array_fn(batch: list, *, collate_fn_map: dict | None = None) -> Any:
    """NumPy arrays -> one stacked tensor; arrays of strings or objects are rejected."""
    elem = batch[0]
    if np_str_obj_array_pattern.search(elem.dtype.str) is not None:
        raise TypeError(default_collate_err_msg_format.format(elem.dtype))
    if type(elem) is np.ndarray and all(type(b) is np.ndarray for b in batch):
        # Same result as converting each array and stacking the tensors, minus one tensor
        # per sample; a dtype ember lacks falls through to the per-sample path's error.
        try:
            out = _stack_arrays(batch)
        except (TypeError, ValueError):
            out = None
        if out is not None:
            return out
    return collate([ember.as_tensor(b) for b in batch], collate_fn_map=collate_fn_map)


def collate_numpy_scalar_fn(batch: list, *, collate_fn_map: dict | None = None) -> Tensor:
    """NumPy scalars -> a 1-d tensor of their dtype (``np.float32`` stays float32)."""
    return ember.as_tensor(np.asarray(batch))


def collate_float_fn(batch: list, *, collate_fn_map: dict | None = None) -> Tensor:
    """Python floats -> a float64 tensor (a Python float is double precision)."""
    return ember.tensor(batch, dtype=ember.float64)


def collate_int_fn(batch: list, *, collate_fn_map: dict | None = None) -> Tensor:
    """Python ints (and bools) -> an int64 (bool) tensor, as ``ember.tensor`` infers."""
    return ember.tensor(batch)


def collate_str_fn(batch: list, *, collate_fn_map: dict | None = None) -> list:
    """Strings and bytes are kept as the list they came in."""
    return batch


default_collate_fn_map: dict = {Tensor: collate_tensor_fn}
default_collate_fn_map[np.ndarray] = collate_numpy_array_fn
# np.memmap is an ndarray subclass and goes through the isinstance lookup
default_collate_fn_map[(np.bool_, np.number, np.object_)] = collate_numpy_scalar_fn
default_collate_fn_map[float] = collate_float_fn
default_collate_fn_map[int] = collate_int_fn
default_collate_fn_map[str] = collate_str_fn
default_collate_fn_map[bytes] = collate_str_fn


def default_collate(batch: Any) -> Any:
    r"""Collate a list of samples into a batch with torch's rules.

    The loader's ``collate_fn`` when automatic batching is on (the default). Each field of
    the samples is stacked into a tensor with a new first dimension of size ``len(batch)``;
    see the module docstring for the type rules.

    Args:
        batch: a list of samples.

    Example::

        >>> default_collate([0, 1, 2, 3])
        tensor([0, 1, 2, 3])
        >>> default_collate([{"A": 0, "B": 1}, {"A": 100, "B": 100}])
        {'A': tensor([  0, 100]), 'B': tensor([  1, 100])}
        >>> default_collate([(1, "a"), (2, "b")])
        [tensor([1, 2]), ('a', 'b')]
    """
    return collate(batch, collate_fn_map=default_collate_fn_map)
