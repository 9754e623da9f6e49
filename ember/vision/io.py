"""Image file I/O (``torchvision.io`` image functions) through Pillow.

Images come back as uint8 ``(C, H, W)`` tensors; ``ImageReadMode`` converts the colour space.
"""
from __future__ import annotations

import io as _io
import os
from enum import Enum
from typing import Any

import numpy as np

import ember
from ember import Tensor

__all__ = ["ImageReadMode", "read_file", "write_file", "decode_image", "decode_png",
           "decode_jpeg", "encode_png", "encode_jpeg", "read_image", "write_png", "write_jpeg"]


class ImageReadMode(Enum):
    UNCHANGED = 0
    GRAY = 1
    GRAY_ALPHA = 2
    RGB = 3
    RGB_ALPHA = 4
    RGBA = 4


_PIL_MODE = {ImageReadMode.GRAY: "L", ImageReadMode.GRAY_ALPHA: "LA",
             ImageReadMode.RGB: "RGB", ImageReadMode.RGB_ALPHA: "RGBA"}


def read_file(path: str) -> Tensor:
    """The file's bytes as a 1-d uint8 tensor."""
    with open(os.fspath(path), "rb") as f:
        data = f.read()
    return ember.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())


def write_file(filename: str, data: Tensor) -> None:
    with open(os.fspath(filename), "wb") as f:
        f.write(data.cpu().numpy().astype(np.uint8).tobytes())


def _mode(mode: Any) -> ImageReadMode:
    if isinstance(mode, str):
        mode = ImageReadMode[mode.upper()]
    if not isinstance(mode, ImageReadMode):
        raise TypeError(f"mode should be an ImageReadMode, got {type(mode).__name__}")
    return mode


def _decode(data: bytes, mode: ImageReadMode, expect: str | None = None) -> Tensor:
    from PIL import Image
    try:
        img = Image.open(_io.BytesIO(data))
        img.load()
    except Exception as e:  # Pillow raises several types for bad data
        raise RuntimeError(f"[decode_image] could not decode the image: {e}") from None
    if expect is not None and img.format != expect:
        raise RuntimeError(f"[decode_{expect.lower()}] the data is a {img.format}, not a "
                           f"{expect}")
    if mode != ImageReadMode.UNCHANGED:
        img = img.convert(_PIL_MODE[mode])
    elif img.mode not in ("L", "LA", "RGB", "RGBA"):
        # palette, 1-bit or CMYK images come back in their natural colour space
        img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info
                          else "RGB")
    arr = np.array(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return ember.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _bytes(input: Any) -> bytes:
    if isinstance(input, (str, os.PathLike)):
        with open(os.fspath(input), "rb") as f:
            return f.read()
    if not isinstance(input, Tensor) or input.dtype != ember.uint8 or input.ndim != 1:
        raise RuntimeError("Expected a non empty 1-dimensional uint8 tensor of encoded bytes")
    return input.cpu().numpy().tobytes()


def decode_image(input: Any, mode: Any = ImageReadMode.UNCHANGED,
                 apply_exif_orientation: bool = False) -> Tensor:
    """Decode JPEG/PNG/GIF/WEBP/BMP bytes (or a path) to a uint8 ``(C, H, W)`` tensor."""
    data = _bytes(input)
    if apply_exif_orientation:
        from PIL import Image, ImageOps
        img = ImageOps.exif_transpose(Image.open(_io.BytesIO(data)))
        buf = _io.BytesIO()
        img.save(buf, format="PNG")
        data = buf.getvalue()
    return _decode(data, _mode(mode))


def decode_png(input: Tensor, mode: Any = ImageReadMode.UNCHANGED,
               apply_exif_orientation: bool = False) -> Tensor:
    return _decode(_bytes(input), _mode(mode), expect="PNG")


def decode_jpeg(input: Tensor, mode: Any = ImageReadMode.UNCHANGED, device: Any = "cpu",
                apply_exif_orientation: bool = False) -> Tensor:
    return _decode(_bytes(input), _mode(mode), expect="JPEG").to(device)


def read_image(path: str, mode: Any = ImageReadMode.UNCHANGED,
               apply_exif_orientation: bool = False) -> Tensor:
    """Read a JPEG/PNG/... file into a uint8 ``(C, H, W)`` tensor."""
    return decode_image(read_file(path), mode, apply_exif_orientation)


def _to_pil(input: Tensor, name: str) -> Any:
    from PIL import Image
    if not isinstance(input, Tensor) or input.dtype != ember.uint8 or input.ndim != 3:
        raise RuntimeError(f"[{name}] input should be a uint8 (C, H, W) tensor")
    c = input.shape[0]
    if c not in (1, 3) and not (name == "encode_png" and c in (2, 4)):
        raise RuntimeError(f"[{name}] unsupported number of channels {c}")
    arr = input.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr[:, :, 0] if c == 1 else np.ascontiguousarray(arr),
                           {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c])


def encode_png(input: Tensor, compression_level: int = 6) -> Tensor:
    if not 0 <= compression_level <= 9:
        raise ValueError("Compression level should be between 0 and 9")
    buf = _io.BytesIO()
    _to_pil(input, "encode_png").save(buf, format="PNG", compress_level=compression_level)
    return ember.from_numpy(np.frombuffer(buf.getvalue(), np.uint8).copy())


def encode_jpeg(input: Tensor, quality: int = 75) -> Tensor:
    if not 1 <= quality <= 100:
        raise ValueError("Image quality should be a positive number between 1 and 100")
    buf = _io.BytesIO()
    _to_pil(input, "encode_jpeg").save(buf, format="JPEG", quality=quality)
    return ember.from_numpy(np.frombuffer(buf.getvalue(), np.uint8).copy())


def write_png(input: Tensor, filename: str, compression_level: int = 6) -> None:
    write_file(filename, encode_png(input, compression_level))


def write_jpeg(input: Tensor, filename: str, quality: int = 75) -> None:
    write_file(filename, encode_jpeg(input, quality))
