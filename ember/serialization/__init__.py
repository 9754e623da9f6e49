"""``ember.save`` / ``ember.load`` in torch's checkpoint format, and the weights-only allowlist.

Files written by ``torch.save`` load into ember tensors, and files written by
:func:`ember.save` load in torch, both ways bit for bit. Loading is safe by default
(``weights_only=True``): nothing in the file can run code.

Layout: ``_zip`` (torch's archive layout, checked reader), ``_pickler`` (torch names and
storage ids when saving), ``_unpickler`` (the restricted and the full unpickler),
``_rebuild`` (storages, ``map_location``, torch's rebuild functions), ``_save``/``_load``
(the two formats and atomic writes), ``_allowlist`` (:func:`add_safe_globals`). The
implementation modules load on the first ``save``/``load``, keeping ``import ember`` light.
"""
from __future__ import annotations

import pickle
from typing import Any

from ember.serialization._allowlist import (
    add_safe_globals, clear_safe_globals, get_safe_globals, safe_globals)
from ember.serialization._names import CheckpointError, WeightsOnlyError

__all__ = ["save", "load", "add_safe_globals", "get_safe_globals", "clear_safe_globals",
           "safe_globals", "get_unsafe_globals_in_checkpoint", "DEFAULT_PROTOCOL",
           "CheckpointError", "WeightsOnlyError", "LoadedStorage"]

DEFAULT_PROTOCOL = 2


def save(obj: Any, f: Any, pickle_module: Any = pickle, pickle_protocol: int = DEFAULT_PROTOCOL,
         _use_new_zipfile_serialization: bool = True,
         _disable_byteorder_record: bool = False) -> None:
    """Save an object to a file in torch's checkpoint format (``torch.load`` reads it).

    Tensors are stored as raw little-endian storages, each once however many tensors view it,
    and pickled through ``torch._utils._rebuild_tensor_v2`` (Parameters through
    ``_rebuild_parameter``), so ``torch.load(..., weights_only=True)`` accepts the file.

    Saving to a path is atomic: the checkpoint is written to a temporary file in the same
    directory, flushed to disk, and renamed over the target, so a crash leaves either the old
    file or the new one, never a torn mix.

    Args:
        obj: the object to save (tensors, state dicts, nested containers ...).
        f: a path (str or ``os.PathLike``) or a writable binary file object.
        pickle_module: module used for pickling metadata and objects. Default: ``pickle``.
        pickle_protocol: pickle protocol. Default: 2 (as torch).
        _use_new_zipfile_serialization: ``False`` writes torch's legacy (pre-1.6) format.
        _disable_byteorder_record: omit the ``byteorder`` record (torch's private flag).

    Example::

        >>> ember.save({"w": ember.ones(3)}, "ckpt.pt")
        >>> ember.load("ckpt.pt")
        {'w': tensor([1., 1., 1.])}
    """
    from ember.serialization._save import save as _save
    _save(obj, f, pickle_module, pickle_protocol, _use_new_zipfile_serialization,
          _disable_byteorder_record)


def load(f: Any, map_location: Any = None, pickle_module: Any = None, *,
         weights_only: bool = True, mmap: bool | None = None, **pickle_load_args: Any) -> Any:
    """Load an object saved with ``torch.save`` or :func:`ember.save`.

    Args:
        f: a path (str or ``os.PathLike``) or a seekable binary file object.
        map_location: where storages go: ``None`` (where they were saved), a device or
            string (``'cpu'``, ``'cuda:0'``), a dict mapping saved locations to new ones, or a
            callable ``(storage, location) -> storage | None``.
        pickle_module: module for unpickling; only with ``weights_only=False``.
        weights_only: if ``True`` (default), refuse anything that could execute code: only
            tensors, containers, numbers, strings, ``Size``/``device``/dtypes and globals
            allowed by :func:`ember.serialization.add_safe_globals` load. Rejections raise
            :class:`pickle.UnpicklingError`.
        mmap: map the file into memory instead of reading it (zip checkpoints given by path);
            storages are copy-on-write views of the file.
        pickle_load_args: passed to the unpickler (``encoding``, ``errors`` ...).

    Returns:
        The saved object, with ember tensors in place of torch tensors.

    Example::

        >>> sd = ember.load("model.pt", map_location="cpu")
    """
    from ember.serialization._load import load as _load
    return _load(f, map_location, pickle_module, weights_only=weights_only, mmap=mmap,
                 **pickle_load_args)


def get_unsafe_globals_in_checkpoint(f: Any) -> list[str]:
    """The globals in a checkpoint that ``weights_only=True`` loading would refuse.

    Args:
        f: a path or a seekable binary file object holding a zip checkpoint.

    Returns:
        ``module.name`` strings, in order of first appearance.
    """
    import os

    from ember.serialization._unpickler import get_unsafe_globals_in_pickle
    from ember.serialization._zip import ZipReader, is_zip_start

    if isinstance(f, (str, bytes, os.PathLike)):
        with open(os.fsdecode(f), "rb") as stream:
            return get_unsafe_globals_in_checkpoint(stream)
    start = f.tell()
    head = f.read(4)
    f.seek(start)
    if not is_zip_start(head):
        raise ValueError("Expected input to be a checkpoint returned by torch.save")
    return get_unsafe_globals_in_pickle(ZipReader(f).read_record("data.pkl"))


def __getattr__(name: str) -> Any:
    if name == "LoadedStorage":  # the storage type map_location callables receive
        from ember.serialization._rebuild import LoadedStorage
        return LoadedStorage
    raise AttributeError(f"module 'ember.serialization' has no attribute '{name}'")
