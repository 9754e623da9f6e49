"""``ember.save`` / ``ember.load`` in torch's checkpoint format, and the weights-only allowlist.

Files written by ``torch.save`` load into ember tensors, and files written by
:func:`ember.save` load in torch, both ways bit for bit. Loading is safe by default
(``weights_only=True``): nothing in the file can run code. See ``docs/architecture.md``.
"""
from __future__ import annotations

from ember.serialization._load import load
from ember.serialization._names import CheckpointError, WeightsOnlyError
from ember.serialization._rebuild import LoadedStorage
from ember.serialization._save import DEFAULT_PROTOCOL, save
from ember.serialization._unpickler import (
    add_safe_globals, clear_safe_globals, get_safe_globals, safe_globals)

__all__ = ["save", "load", "add_safe_globals", "get_safe_globals", "clear_safe_globals",
           "safe_globals", "get_unsafe_globals_in_checkpoint", "DEFAULT_PROTOCOL",
           "CheckpointError", "WeightsOnlyError", "LoadedStorage"]


def get_unsafe_globals_in_checkpoint(f: object) -> list[str]:
    """The globals in a checkpoint that ``weights_only=True`` loading would refuse.

    Args:
        f: a path or a seekable binary file object holding a zip checkpoint.

    Returns:
        ``module.name`` strings, in order of first appearance.
    """
    import io
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
    reader = ZipReader(f)
    return get_unsafe_globals_in_pickle(io.BytesIO(reader.read_record("data.pkl")).getvalue())
