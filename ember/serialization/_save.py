"""``ember.save``: torch's zip (or legacy) checkpoint format, written atomically to paths."""
from __future__ import annotations

import io
import os
import pickle
import stat
import sys
from typing import IO, Any

from ember.serialization._pickler import StorageRegistry, make_pickler
from ember.serialization._zip import ZipWriter

__all__ = ["save", "DEFAULT_PROTOCOL", "MAGIC_NUMBER", "PROTOCOL_VERSION"]

DEFAULT_PROTOCOL = 2
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch's legacy-format magic
PROTOCOL_VERSION = 1001


def save(obj: Any, f: Any, pickle_module: Any = pickle, pickle_protocol: int = DEFAULT_PROTOCOL,
         _use_new_zipfile_serialization: bool = True,
         _disable_byteorder_record: bool = False) -> None:
    """Implementation of :func:`ember.serialization.save` (documented there)."""
    if isinstance(f, (str, bytes, os.PathLike)):
        path = os.fsdecode(f)
        _atomic_write(path, lambda stream: _write(obj, stream, _archive_name(path), pickle_module,
                                                  pickle_protocol,
                                                  _use_new_zipfile_serialization,
                                                  _disable_byteorder_record))
        return
    if not hasattr(f, "write"):
        raise AttributeError(f"[save] expected a file path or a writable file object, got "
                             f"{type(f).__name__}")
    _write(obj, f, "archive", pickle_module, pickle_protocol, _use_new_zipfile_serialization,
           _disable_byteorder_record)


def _archive_name(path: str) -> str:
    """torch's archive folder for a path: the file name without its last extension."""
    base = os.path.basename(path.replace("\\", "/"))
    stem = base.rsplit(".", 1)[0] if "." in base else base
    return stem or "archive"


def _write(obj: Any, stream: IO[bytes], archive_name: str, pickle_module: Any, protocol: int,
           zip_format: bool, no_byteorder: bool) -> None:
    if zip_format:
        _write_zip(obj, stream, archive_name, pickle_module, protocol, no_byteorder)
    else:
        _write_legacy(obj, stream, pickle_module, protocol)


def _write_zip(obj: Any, stream: IO[bytes], archive_name: str, pickle_module: Any,
               protocol: int, no_byteorder: bool) -> None:
    registry = StorageRegistry()
    buf = io.BytesIO()
    make_pickler(pickle_module, buf, protocol, registry).dump(obj)
    writer = ZipWriter(stream, archive_name)
    writer.write_record("data.pkl", buf.getvalue())
    writer.write_record(".format_version", "1")
    writer.write_record(".storage_alignment", "64")
    if not no_byteorder:
        writer.write_record("byteorder", sys.byteorder)
    for key, ref in registry.storages.items():
        writer.write_record(f"data/{key}", ref.host_bytes())
    writer.finish()


def _write_legacy(obj: Any, stream: IO[bytes], pickle_module: Any, protocol: int) -> None:
    sys_info = dict(protocol_version=PROTOCOL_VERSION, little_endian=sys.byteorder == "little",
                    type_sizes=dict(short=2, int=4, long=4))
    pickle_module.dump(MAGIC_NUMBER, stream, protocol=protocol)
    pickle_module.dump(PROTOCOL_VERSION, stream, protocol=protocol)
    pickle_module.dump(sys_info, stream, protocol=protocol)
    registry = StorageRegistry(legacy=True)
    make_pickler(pickle_module, stream, protocol, registry).dump(obj)
    keys = sorted(registry.storages)
    pickle_module.dump(keys, stream, protocol=protocol)
    for key in keys:
        ref = registry.storages[key]
        stream.write(ref.numel.to_bytes(8, "little", signed=True))
        stream.write(ref.host_bytes())


def _atomic_write(path: str, write: Any) -> None:
    """Run ``write(stream)`` into a temporary sibling of ``path``, fsync, and rename it over
    ``path``; on any failure the temporary file is removed and ``path`` is untouched."""
    target = os.path.realpath(path) if os.path.islink(path) else path
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        # A device, FIFO or similar: renaming over it would be wrong; write through it.
        with open(target, "wb") as stream:
            write(stream)
        return
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise RuntimeError(f"Parent directory {directory} does not exist.")
    # O_EXCL with a fresh name; mode 0o666 lets the umask decide permissions, as open() does.
    for _ in range(100):
        tmp = os.path.join(directory, f".{os.path.basename(target)}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(f"[save] could not create a temporary file in {directory}")
    try:
        with os.fdopen(fd, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        if st is not None:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    # Make the rename itself durable; not possible on every platform, so best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

