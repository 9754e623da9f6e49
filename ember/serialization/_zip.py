"""The zip container of torch checkpoints: a writer laid out like torch's, and a checked reader.

torch writes its archive with miniz (caffe2/serialize/inline_container.cc): every record is
stored uncompressed under one top-level folder, its data starts on a 64-byte boundary (the
local header carries an ``FB`` extra field of ``Z`` padding), sizes and CRC follow the data in
a data descriptor, and the archive always ends with a zip64 end record. The writer here emits
the same layout, so torch (and ``mmap`` loading) read ember checkpoints as their own.

The reader trusts nothing: member names must stay inside the archive folder, records must not
overlap or run past the central directory, sizes must be plausible before anything is
allocated, and CRCs are checked.
"""
from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from typing import IO, Any

from ember.serialization._names import CheckpointError

__all__ = ["ZipWriter", "ZipReader", "is_zip_start"]

ALIGNMENT = 64
_U32_MAX = 0xFFFFFFFF
# Records at least this large, or starting this far in, use zip64 fields (as miniz does).
# A module constant so that tests can force the zip64 layout on small files.
ZIP64_LIMIT = _U32_MAX
_LOCAL_SIG = b"PK\x03\x04"
_FLAGS = 0x0808  # bit 3: sizes in a data descriptor; bit 11: UTF-8 names
_MAX_DEFLATE_RATIO = 1100  # deflate cannot expand more than ~1032:1


def is_zip_start(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a zip archive (torch's ``_is_zipfile``)."""
    return head[:4] == _LOCAL_SIG


def _hash_combine(seed: int, value: int) -> int:
    """c10::hash_combine on 64-bit size_t, used for torch's serialization id."""
    mask = (1 << 64) - 1
    return (seed ^ ((value + 0x9E3779B9 + (seed << 6) + (seed >> 2)) & mask)) & mask


def _fnv1a(text: str) -> int:
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & ((1 << 64) - 1)
    return h


class ZipWriter:
    """Writes records into a torch-layout archive on a binary stream.

    Args:
        stream: a writable binary file object (need not be seekable).
        archive_name: the top-level folder, ``archive`` for streams and the file stem for paths.
    """

    def __init__(self, stream: IO[bytes], archive_name: str = "archive") -> None:
        self._out = stream
        self._prefix = archive_name + "/"
        self._pos = 0
        self._entries: list[tuple[bytes, int, int, int]] = []  # name, crc, size, offset
        self._names: set[str] = set()
        self._crc_combined = 0
        self._closed = False

    def _write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            n = self._out.write(view)
            if n is None:  # streams that do not report a count wrote everything
                n = len(view)
            self._pos += n
            view = view[n:]

    def write_record(self, name: str, data: Any) -> None:
        """Add record ``name`` holding ``data`` (bytes, str or any C-contiguous buffer)."""
        if self._closed:
            raise RuntimeError("[save] the archive is already finalized")
        if name in self._names:
            raise RuntimeError(f"[save] tried to serialize record {name} twice")
        if isinstance(data, str):
            data = data.encode("utf-8")
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        size = len(view)
        full = (self._prefix + name).encode("utf-8")
        offset = self._pos
        big_size = size >= ZIP64_LIMIT
        big_offset = offset >= ZIP64_LIMIT
        zip64 = b""
        if big_size or big_offset:
            fields = b""
            if big_size:
                fields += struct.pack("<QQ", size, size)
            if big_offset:
                fields += struct.pack("<Q", offset)
            zip64 = struct.pack("<HH", 0x0001, len(fields)) + fields
        # Pad the extra field so the data begins on an ALIGNMENT boundary (torch's getPadding).
        start = offset + 30 + len(full) + len(zip64) + 4
        pad = (-start) % ALIGNMENT
        extra = zip64 + b"FB" + struct.pack("<H", pad) + b"Z" * pad
        size32 = _U32_MAX if big_size else 0
        header = struct.pack("<4sHHHHHIIIHH", _LOCAL_SIG, 0, _FLAGS, 0, 0, 0, 0, size32, size32,
                             len(full), len(extra))
        self._write(header + full + extra)
        crc = zlib.crc32(view) & _U32_MAX
        if size:
            self._write(view)
        if big_size:
            descriptor = struct.pack("<4sIQQ", b"PK\x07\x08", crc, size, size)
        else:
            descriptor = struct.pack("<4sIII", b"PK\x07\x08", crc, size, size)
        self._write(descriptor)
        self._crc_combined = _hash_combine(self._crc_combined, crc)
        self._entries.append((full, crc, size, offset))
        self._names.add(name)

    def serialization_id(self) -> str:
        """40 digits: a hash of the record names, then torch's combined CRC of their data."""
        names = 0
        for full, _, _, _ in self._entries:
            names = _hash_combine(names, _fnv1a(full.decode("utf-8")[len(self._prefix):]))
        return f"{names:020d}{self._crc_combined:020d}"

    def finish(self) -> None:
        """Write ``version``/``byteorder`` when missing, the serialization id, the directory."""
        if self._closed:
            return
        if "version" not in self._names and ".data/version" not in self._names:
            self.write_record("version", "3\n")
        if "byteorder" not in self._names:
            self.write_record("byteorder", "little")
        if ".data/serialization_id" not in self._names:
            self.write_record(".data/serialization_id", self.serialization_id())
        self._closed = True
        cd_start = self._pos
        parts = []
        for full, crc, size, offset in self._entries:
            fields = b""
            size32, offset32 = size, offset
            if size >= ZIP64_LIMIT:
                fields += struct.pack("<QQ", size, size)
                size32 = _U32_MAX
            if offset >= ZIP64_LIMIT:
                fields += struct.pack("<Q", offset)
                offset32 = _U32_MAX
            extra = struct.pack("<HH", 0x0001, len(fields)) + fields if fields else b""
            parts.append(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 0, 0, _FLAGS, 0, 0,
                                     0, crc, size32, size32, len(full), len(extra), 0, 0, 0, 0,
                                     offset32) + full + extra)
        directory = b"".join(parts)
        self._write(directory)
        n = len(self._entries)
        cd_size = len(directory)
        eocd64_at = self._pos
        self._write(struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 0x031E, 0x2D, 0, 0, n, n,
                                cd_size, cd_start))
        self._write(struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd64_at, 1))
        self._write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, min(n, 0xFFFF),
                                min(n, 0xFFFF), min(cd_size, _U32_MAX),
                                min(cd_start, _U32_MAX), 0))


# A record name below the archive folder: path segments of safe characters, no '..'.
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_.\-]+")


class ZipReader:
    """Reads the records of a torch archive, refusing malformed or hostile archives.

    Args:
        stream: a seekable binary file object positioned anywhere.
        path: the file's path, when it has one (needed for mmap).
    """

    def __init__(self, stream: IO[bytes], path: str | None = None) -> None:
        self._f = stream
        self.path = path
        try:
            self._zip = zipfile.ZipFile(stream)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
                struct.error, NotImplementedError) as exc:
            raise CheckpointError(f"[load] not a readable zip archive (truncated or corrupt): "
                                  f"{exc}") from None
        infos = self._zip.infolist()
        if not infos:
            raise CheckpointError("[load] the zip archive contains no records")
        stream.seek(0, io.SEEK_END)
        self._file_size = stream.tell()
        first = infos[0].filename
        if "/" not in first:
            raise CheckpointError(f"[load] record {first!r} is not inside an archive folder")
        self.archive_name = first.split("/", 1)[0]
        self._records: dict[str, tuple[zipfile.ZipInfo, int]] = {}
        self._check_entries(infos)

    # ------------------------------------------------------------------ validation
    def _check_entries(self, infos: list[zipfile.ZipInfo]) -> None:
        prefix = self.archive_name + "/"
        # The folder is torch's file stem (any characters a file name may hold); it is only
        # ever a prefix, but an empty, dot, drive-letter or backslash name is a path trick.
        folder = self.archive_name
        if folder in ("", ".", "..") or "\\" in folder or "\0" in folder or \
                re.fullmatch(r"[A-Za-z]:", folder):
            raise CheckpointError(f"[load] unsafe archive folder name {folder!r}")
        spans = []
        cd_start = self._central_directory_start()
        for info in infos:
            name = info.filename
            if not name.startswith(prefix):
                raise CheckpointError(f"[load] record {name!r} is outside the archive folder "
                                      f"{prefix!r}")
            rel = name[len(prefix):]
            segments = rel.split("/")
            if any(s in ("", ".", "..") or not _SAFE_SEGMENT.fullmatch(s) for s in segments):
                raise CheckpointError(f"[load] unsafe record name {name!r} (path traversal, "
                                      "absolute or odd characters)")
            if rel in self._records:
                raise CheckpointError(f"[load] record {name!r} appears twice in the archive")
            if info.flag_bits & 0x1:
                raise CheckpointError(f"[load] record {name!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise CheckpointError(f"[load] record {name!r} uses unsupported compression "
                                      f"method {info.compress_type}")
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise CheckpointError(f"[load] stored record {name!r} has compressed size "
                                      f"{info.compress_size} != size {info.file_size}")
            if (info.compress_type == zipfile.ZIP_DEFLATED
                    and info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024):
                raise CheckpointError(f"[load] record {name!r} claims {info.file_size} bytes "
                                      f"from {info.compress_size} compressed bytes")
            data_at = self._data_offset(info)
            end = data_at + info.compress_size
            if end > cd_start:
                raise CheckpointError(f"[load] record {name!r} runs past the end of the data "
                                      f"({end} > {cd_start}); the file is truncated or corrupt")
            spans.append((info.header_offset, end, name))
            self._records[rel] = (info, data_at)
        spans.sort()
        for (s0, e0, n0), (s1, _, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise CheckpointError(f"[load] records {n0!r} and {n1!r} overlap in the file")

    def _central_directory_start(self) -> int:
        # zipfile knows where the directory begins (start_dir), adjusted for prepended data.
        start = getattr(self._zip, "start_dir", None)
        return self._file_size if start is None else int(start)

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        at = info.header_offset
        if at < 0 or at + 30 > self._file_size:
            raise CheckpointError(f"[load] record {info.filename!r} has a header offset outside "
                                  "the file")
        self._f.seek(at)
        header = self._f.read(30)
        if len(header) != 30 or header[:4] != _LOCAL_SIG:
            raise CheckpointError(f"[load] record {info.filename!r}: bad local header")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        name = self._f.read(name_len)
        if name.decode("utf-8" if info.flag_bits & 0x800 else "cp437",
                       "replace") != info.orig_filename:
            raise CheckpointError(f"[load] record {info.filename!r}: the local header names "
                                  f"{name!r}")
        return at + 30 + name_len + extra_len

    # ------------------------------------------------------------------ access
    def has_record(self, name: str) -> bool:
        return name in self._records

    def records(self) -> list[str]:
        return list(self._records)

    def record_size(self, name: str) -> int:
        return self._records[name][0].file_size

    def is_stored(self, name: str) -> bool:
        return self._records[name][0].compress_type == zipfile.ZIP_STORED

    def data_offset(self, name: str) -> int:
        """Absolute file offset of a stored record's first byte (for mmap)."""
        return self._records[name][1]

    def read_record(self, name: str) -> bytes:
        """The whole record as bytes (small records such as ``data.pkl``)."""
        buf = bytearray(self.record_size(name))
        self.read_into(name, memoryview(buf))
        return bytes(buf)

    def read_into(self, name: str, out: memoryview) -> None:
        """Fill ``out`` (exactly the record's size) with the record's bytes and check its CRC."""
        if name not in self._records:
            raise CheckpointError(f"[load] the archive has no record {self.archive_name}/{name}")
        info, data_at = self._records[name]
        out = out.cast("B") if out.format != "B" or out.ndim != 1 else out
        if len(out) != info.file_size:
            raise CheckpointError(f"[load] record {name!r} holds {info.file_size} bytes, "
                                  f"expected {len(out)}")
        try:
            if info.compress_type == zipfile.ZIP_STORED:
                self._f.seek(data_at)
                got = 0
                while got < len(out):
                    n = self._f.readinto(out[got:])
                    if not n:
                        raise CheckpointError(f"[load] record {name!r} is truncated")
                    got += n
                crc = zlib.crc32(out)
            else:
                with self._zip.open(info) as member:
                    data = member.read(info.file_size + 1)
                if len(data) != info.file_size:
                    raise CheckpointError(f"[load] record {name!r} decompressed to "
                                          f"{len(data)} bytes, expected {info.file_size}")
                out[:] = data
                crc = zlib.crc32(data)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            raise CheckpointError(f"[load] could not read record {name!r}: {exc}") from None
        # torch may skip CRCs when saving (compute_crc32=False writes 0): only a nonzero one
        # is checked.
        if info.CRC and (crc & _U32_MAX) != info.CRC:
            raise CheckpointError(f"[load] record {name!r} fails its CRC check (corrupt file)")
