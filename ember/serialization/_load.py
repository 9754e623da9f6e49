"""``ember.load``: reads checkpoints written by ``torch.save`` (zip or legacy) or ``ember.save``."""
from __future__ import annotations

import io
import os
import pickle
import re
from typing import IO, Any, Callable

import numpy as np

from ember.serialization._names import CheckpointError, StorageType, WeightsOnlyError
from ember.serialization._rebuild import LoadedStorage, make_restore
from ember.serialization._save import MAGIC_NUMBER, PROTOCOL_VERSION
from ember.serialization._unpickler import SafeUnpickler, make_full_unpickler
from ember.serialization._zip import ZipReader, is_zip_start

__all__ = ["load"]

_KEY = re.compile(r"[A-Za-z0-9_\-]{1,128}")
_LOCATION = re.compile(r"[a-z_]{1,32}(:[0-9]{1,6})?")

UNSAFE_MESSAGE = (
    "In ember, weights_only=True (the default) refuses globals and calls that could run code "
    "from the file. Re-running with weights_only=False will likely succeed, but it can result "
    "in arbitrary code execution: do it only if you got the file from a trusted source.")


def load(f: Any, map_location: Any = None, pickle_module: Any = None, *,
         weights_only: bool = True, mmap: bool | None = None, **pickle_load_args: Any) -> Any:
    """Implementation of :func:`ember.serialization.load` (documented there)."""
    if weights_only and pickle_module is not None:
        raise RuntimeError("Can not safely load weights when explicit pickle_module is specified")
    if pickle_module is None:
        pickle_module = pickle
    pickle_load_args.setdefault("encoding", "utf-8")
    path = os.fsdecode(f) if isinstance(f, (str, bytes, os.PathLike)) else None
    if mmap and path is None:
        raise ValueError("f must be a file path in order to use the mmap argument")
    if path is not None:
        with open(path, "rb") as stream:
            return _load_stream(stream, path, map_location, pickle_module, weights_only,
                                bool(mmap), pickle_load_args)
    if isinstance(f, (bytes, bytearray, memoryview)):
        raise TypeError("[load] expected a path or a file object; wrap raw bytes in io.BytesIO")
    _check_seekable(f)
    if not (hasattr(f, "readinto") and hasattr(f, "readline")):
        f = io.BytesIO(f.read())  # a minimal reader (read/seek/tell only): buffer it once
    return _load_stream(f, None, map_location, pickle_module, weights_only, False,
                        pickle_load_args)


def _check_seekable(f: Any) -> None:
    try:
        f.seek(f.tell())
    except (io.UnsupportedOperation, AttributeError, OSError) as exc:
        raise type(exc)(f"{exc}. You can only ember.load from a file that is seekable. Please "
                        "pre-load the data into a buffer like io.BytesIO and try to load from "
                        "it instead.") from None


def _load_stream(stream: IO[bytes], path: str | None, map_location: Any, pickle_module: Any,
                 weights_only: bool, mmap: bool, args: dict) -> Any:
    start = stream.tell()
    head = stream.read(512)
    stream.seek(start)
    if not head:
        raise EOFError("Ran out of input")
    if head[257:262] == b"ustar":
        raise CheckpointError("[load] this is torch's pre-0.4 tar checkpoint format, which ember "
                              "does not read; load it with torch and save it again")
    try:
        if is_zip_start(head):
            return _load_zip(stream, path, map_location, pickle_module, weights_only, mmap, args)
        if mmap:
            raise RuntimeError("mmap can only be used with files saved with "
                               "`torch.save(_use_new_zipfile_serialization=True)`, please "
                               "torch.save your checkpoint with this option in order to use "
                               "mmap.")
        return _load_legacy(stream, map_location, pickle_module, weights_only, args)
    except WeightsOnlyError as exc:
        raise WeightsOnlyError(f"{exc}\n{UNSAFE_MESSAGE}") from None


def _unpickle(stream: IO[bytes], weights_only: bool, pickle_module: Any,
              persistent_load: Callable[[Any], Any], args: dict) -> Any:
    if weights_only:
        extra = set(args) - {"encoding", "errors"}
        if extra:
            raise TypeError(f"[load] weights_only unpickling does not take {sorted(extra)}")
        return SafeUnpickler(stream, persistent_load, encoding=args.get("encoding", "utf-8"),
                             errors=args.get("errors", "strict")).load()
    return make_full_unpickler(pickle_module, stream, persistent_load, **args).load()


def _ascii(value: Any) -> Any:
    # Python 2 checkpoints hold these names as bytes.
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            raise CheckpointError(f"[load] non-ASCII name {value[:40]!r} in a storage "
                                  "record") from None
    return value


def _check_pid(pid: Any, length: int) -> tuple:
    if type(pid) is not tuple or len(pid) != length:
        raise CheckpointError(f"[load] a persistent id must be a {length}-tuple "
                              f"('storage', type, key, location, numel...), got {pid!r:.200}")
    if _ascii(pid[0]) != "storage":
        raise CheckpointError(f"[load] only storages may be persistent ids, got {pid[0]!r:.100}")
    storage_type, key, location, numel = pid[1], _ascii(pid[2]), _ascii(pid[3]), pid[4]
    if not isinstance(storage_type, StorageType):
        raise CheckpointError(f"[load] storage type must be a torch storage class, got "
                              f"{storage_type!r:.100}")
    if type(key) is not str or not _KEY.fullmatch(key):
        raise CheckpointError(f"[load] invalid storage key {key!r:.100}")
    if type(location) is not str or not _LOCATION.fullmatch(location):
        raise CheckpointError(f"[load] invalid storage location {location!r:.100}")
    if type(numel) is not int or numel < 0:
        raise CheckpointError(f"[load] invalid storage size {numel!r:.100}")
    return storage_type, key, location, numel


# ---------------------------------------------------------------------- zip format
def _map_file(path: str | None) -> Any:
    """The whole file mapped copy-on-write (torch's default MAP_PRIVATE): writes to loaded
    tensors stay in memory and never reach the file."""
    import mmap as _mmap
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise CheckpointError("[load] cannot mmap an empty file")
        return _mmap.mmap(fh.fileno(), 0, access=_mmap.ACCESS_COPY)


def _load_zip(stream: IO[bytes], path: str | None, map_location: Any, pickle_module: Any,
              weights_only: bool, mmap: bool, args: dict) -> Any:
    reader = ZipReader(stream, path)
    if reader.has_record("constants.pkl"):
        raise CheckpointError("[load] this is a TorchScript archive (torch.jit.save), not a "
                              "torch.save checkpoint; ember cannot load TorchScript")
    if not reader.has_record("data.pkl"):
        raise CheckpointError(f"[load] the archive has no {reader.archive_name}/data.pkl record")
    byteorder = "little"
    if reader.has_record("byteorder"):
        byteorder = reader.read_record("byteorder").decode("ascii", "replace")
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"[load] unknown byteorder {byteorder!r}")
    restore = make_restore(map_location)
    mapped = _map_file(path) if mmap else None
    loaded: dict[str, tuple[LoadedStorage, StorageType, int]] = {}

    def persistent_load(pid: Any) -> LoadedStorage:
        storage_type, key, location, numel = _check_pid(pid, 5)
        if key in loaded:
            storage, first_type, first_numel = loaded[key]
            if first_type.dtype is not storage_type.dtype:
                raise CheckpointError(f"[load] storage {key} is used with two dtypes "
                                      f"({first_type.dtype} and {storage_type.dtype})")
            return storage
        name = f"data/{key}"
        if not reader.has_record(name):
            raise CheckpointError(f"[load] the archive has no record {reader.archive_name}/"
                                  f"{name}")
        nbytes = numel * storage_type.itemsize
        size = reader.record_size(name)
        if size != nbytes:
            # Checked before anything is allocated: a header cannot make us allocate more than
            # the record really holds.
            raise CheckpointError(f"[load] storage record {name} holds {size} bytes, but its "
                                  f"header says {numel} elements of {storage_type.itemsize} "
                                  f"bytes ({nbytes} bytes)")
        dtype = storage_type.dtype
        np_dtype = np.uint8 if dtype is None else dtype.np
        if mapped is not None:
            if not reader.is_stored(name):
                raise CheckpointError(f"[load] mmap needs uncompressed records; {name} is "
                                      "compressed")
            # A frombuffer array per storage: its base is the mmap object, so each storage
            # is its own root (re-saving writes storages, not the whole mapped file).
            raw = np.frombuffer(mapped, np.uint8, count=nbytes, offset=reader.data_offset(name))
        else:
            raw = np.empty(nbytes, np.uint8)
            reader.read_into(name, memoryview(raw))
        arr = raw.view(np_dtype)
        if byteorder != "little" and arr.dtype.itemsize > 1:
            arr = arr.byteswap()
        storage = restore(LoadedStorage(arr, dtype), location)
        loaded[key] = (storage, storage_type, numel)
        return storage

    data = io.BytesIO(reader.read_record("data.pkl"))
    return _unpickle(data, weights_only, pickle_module, persistent_load, args)


# ---------------------------------------------------------------------- legacy format
def _load_legacy(stream: IO[bytes], map_location: Any, pickle_module: Any, weights_only: bool,
                 args: dict) -> Any:
    start = stream.tell()
    stream.seek(0, io.SEEK_END)
    end = stream.tell()
    stream.seek(start)

    def no_pid(pid: Any) -> Any:
        raise CheckpointError("[load] unexpected persistent id in a checkpoint header")

    def header() -> Any:
        return _unpickle(stream, weights_only, pickle_module, no_pid, args)

    try:
        magic = header()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise CheckpointError(f"[load] not a checkpoint: neither a zip archive nor torch's "
                              f"legacy format ({exc})") from None
    if magic != MAGIC_NUMBER:
        raise CheckpointError("Invalid magic number; corrupt file?")
    protocol = header()
    if protocol != PROTOCOL_VERSION:
        raise CheckpointError(f"Invalid protocol version: {protocol!r:.100}")
    sys_info = header()
    if not isinstance(sys_info, dict):
        raise CheckpointError("[load] invalid system info record")
    big_endian = sys_info.get("little_endian", True) is False
    restore = make_restore(map_location)
    roots: dict[str, tuple[LoadedStorage, StorageType, int]] = {}
    views: dict[str, LoadedStorage] = {}

    def persistent_load(pid: Any) -> Any:
        if type(pid) is tuple and pid and _ascii(pid[0]) == "module":
            if weights_only:
                raise CheckpointError("[load] weights_only refuses pickled nn.Module classes "
                                      "(a 'module' persistent id)")
            return pid[1]
        storage_type, key, location, numel = _check_pid(pid, 6)
        view = pid[5]
        if key not in roots:
            nbytes = numel * storage_type.itemsize
            if nbytes > end - stream.tell():
                raise CheckpointError(f"[load] storage {key} claims {nbytes} bytes, more than "
                                      "the rest of the file holds")
            dtype = storage_type.dtype
            arr = np.empty(numel, np.uint8 if dtype is None else dtype.np)
            roots[key] = (restore(LoadedStorage(arr, dtype), location), storage_type, numel)
        root, root_type, root_numel = roots[key]
        if root_type.dtype is not storage_type.dtype:
            raise CheckpointError(f"[load] storage {key} is used with two dtypes")
        if view is None:
            return root
        if type(view) is not tuple or len(view) != 3:
            raise CheckpointError("[load] invalid storage view record")
        view_key, offset, view_size = _ascii(view[0]), view[1], view[2]
        if type(offset) is not int or type(view_size) is not int or offset < 0 or \
                view_size < 0 or offset + view_size > root_numel or type(view_key) is not str:
            raise CheckpointError(f"[load] storage view {view!r:.100} is out of range")
        if view_key not in views:
            views[view_key] = LoadedStorage(root.array[offset:offset + view_size], root.dtype,
                                            root.device)
        return views[view_key]

    result = _unpickle(stream, weights_only, pickle_module, persistent_load, args)
    keys = header()
    if not isinstance(keys, list) or not all(_ascii(k) in roots for k in keys):
        raise CheckpointError("[load] the storage key list does not match the storages")
    for key in keys:
        storage, storage_type, numel = roots[_ascii(key)]
        count = stream.read(8)
        if len(count) != 8 or int.from_bytes(count, "little", signed=True) != numel:
            raise CheckpointError(f"[load] storage {key} has a size record that does not match "
                                  "its header (truncated or corrupt file)")
        on_host = storage.device.type == "cpu"
        host = storage.array if on_host else np.empty(numel, storage.array.dtype)
        view = memoryview(host.reshape(-1).view(np.uint8))
        got = 0
        while got < len(view):
            n = stream.readinto(view[got:])
            if not n:
                raise CheckpointError(f"[load] storage {key} is truncated")
            got += n
        if big_endian and host.dtype.itemsize > 1:
            host.byteswap(inplace=True)
        if not on_host:
            storage.array.set(host)
    return result
