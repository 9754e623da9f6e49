"""Download and integrity helpers (``torchvision.datasets.utils``): urllib, md5, archives."""
from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from typing import Any

USER_AGENT = "ember/vision"


def calculate_md5(fpath: str, chunk_size: int = 1024 * 1024) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    with open(fpath, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            md5.update(chunk)
    return md5.hexdigest()


def check_md5(fpath: str, md5: str, **kwargs: Any) -> bool:
    return md5 == calculate_md5(fpath, **kwargs)


def check_integrity(fpath: str, md5: str | None = None) -> bool:
    """The file exists and, when ``md5`` is given, has that checksum."""
    if not os.path.isfile(fpath):
        return False
    if md5 is None:
        return True
    return check_md5(fpath, md5)


def download_url(url: str, root: str, filename: str | None = None, md5: str | None = None,
                 max_redirect_hops: int = 3) -> None:
    """Download ``url`` into ``root/filename`` unless a file with that md5 is there."""
    root = os.path.expanduser(root)
    if not filename:
        filename = os.path.basename(url)
    fpath = os.path.join(root, filename)
    os.makedirs(root, exist_ok=True)
    if check_integrity(fpath, md5):
        return
    tmp = fpath + ".partial"
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request) as response, open(tmp, "wb") as fh:
        shutil.copyfileobj(response, fh, length=1024 * 1024)
    # rename only a complete download, so an interrupted one never passes for the file
    os.replace(tmp, fpath)
    if not check_integrity(fpath, md5):
        raise RuntimeError("File not found or corrupted.")


def _extract_tar(from_path: str, to_path: str, compression: str | None) -> None:
    with tarfile.open(from_path, f"r:{compression[1:]}" if compression else "r") as tar:
        tar.extractall(to_path, filter="data")


def _extract_zip(from_path: str, to_path: str, compression: str | None) -> None:
    with zipfile.ZipFile(from_path, "r") as z:
        z.extractall(to_path)


_COMPRESSED_OPENERS = {".bz2": bz2.open, ".xz": lzma.open, ".gz": gzip.open}


def _archive_kind(path: str) -> tuple[str | None, str | None]:
    name = path.lower()
    for suffix, (arch, comp) in ((".tar.gz", (".tar", ".gz")), (".tgz", (".tar", ".gz")),
                                 (".tar.bz2", (".tar", ".bz2")), (".tbz", (".tar", ".bz2")),
                                 (".tar.xz", (".tar", ".xz")), (".tar", (".tar", None)),
                                 (".zip", (".zip", None)), (".gz", (None, ".gz")),
                                 (".bz2", (None, ".bz2")), (".xz", (None, ".xz"))):
        if name.endswith(suffix):
            return arch, comp
    raise RuntimeError(f"File '{path}' is neither an archive nor a compressed file.")


def extract_archive(from_path: str, to_path: str | None = None,
                    remove_finished: bool = False) -> str:
    """Extract a tar/zip archive or decompress a .gz/.bz2/.xz file; returns the target."""
    if to_path is None:
        to_path = os.path.dirname(from_path)
    archive, compression = _archive_kind(from_path)
    if archive is None:
        out = os.path.join(to_path, os.path.basename(from_path)[: -len(compression)])
        with _COMPRESSED_OPENERS[compression](from_path, "rb") as rfh, open(out, "wb") as wfh:
            shutil.copyfileobj(rfh, wfh)
        if remove_finished:
            os.remove(from_path)
        return out
    (_extract_zip if archive == ".zip" else _extract_tar)(from_path, to_path, compression)
    if remove_finished:
        os.remove(from_path)
    return to_path


def download_and_extract_archive(url: str, download_root: str,
                                 extract_root: str | None = None, filename: str | None = None,
                                 md5: str | None = None, remove_finished: bool = False) -> None:
    download_root = os.path.expanduser(download_root)
    if extract_root is None:
        extract_root = download_root
    if not filename:
        filename = os.path.basename(url)
    download_url(url, download_root, filename, md5)
    archive = os.path.join(download_root, filename)
    extract_archive(archive, extract_root, remove_finished)


def list_dir(root: str, prefix: bool = False) -> list[str]:
    root = os.path.expanduser(root)
    dirs = [p for p in os.listdir(root) if os.path.isdir(os.path.join(root, p))]
    return [os.path.join(root, d) for d in dirs] if prefix else dirs


def list_files(root: str, suffix: str, prefix: bool = False) -> list[str]:
    root = os.path.expanduser(root)
    files = [p for p in os.listdir(root)
             if os.path.isfile(os.path.join(root, p)) and p.endswith(suffix)]
    return [os.path.join(root, d) for d in files] if prefix else files


def verify_str_arg(value: Any, arg: str | None = None, valid_values: Any = None,
                   custom_msg: str | None = None) -> str:
    if not isinstance(value, str):
        msg = "Expected type str" + ("" if arg is None else f" for argument {arg}") + \
            f", but got type {type(value)}."
        raise ValueError(msg)
    if valid_values is None:
        return value
    if value not in valid_values:
        msg = custom_msg or (f"Unknown value '{value}' for argument {arg}. Valid values are "
                             f"{{{', '.join(repr(v) for v in valid_values)}}}.")
        raise ValueError(msg)
    return value
