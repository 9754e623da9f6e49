"""Functional image transforms (``torchvision.transforms.functional``).

Every function takes a PIL image or an ember tensor image ``(..., C, H, W)``. PIL images go
through Pillow's own kernels (as torchvision does, so results match torchvision's PIL path);
tensors through :mod:`ember.vision.transforms._functional_tensor`.
"""
from __future__ import annotations

import math
import numbers
from enum import Enum
from typing import Any, Sequence

import numpy as np

import ember
from ember import Tensor
from ember.vision.transforms import _functional_tensor as F_t

try:
    from PIL import Image, ImageEnhance, ImageOps
except ImportError:  # pragma: no cover - pillow is the vision extra
    Image = ImageEnhance = ImageOps = None


class InterpolationMode(Enum):
    """Interpolation modes; the values are the tensor (``interpolate``) mode names."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _pil_modes() -> dict:
    return {InterpolationMode.NEAREST: 0, InterpolationMode.NEAREST_EXACT: 0,
            InterpolationMode.BILINEAR: 2, InterpolationMode.BICUBIC: 3,
            InterpolationMode.BOX: 4, InterpolationMode.HAMMING: 5,
            InterpolationMode.LANCZOS: 1}


pil_modes_mapping = _pil_modes()


def _interpolation_modes_from_int(i: int) -> InterpolationMode:
    inverse = {0: InterpolationMode.NEAREST, 2: InterpolationMode.BILINEAR,
               3: InterpolationMode.BICUBIC, 4: InterpolationMode.BOX,
               5: InterpolationMode.HAMMING, 1: InterpolationMode.LANCZOS}
    return inverse[i]


def _is_pil_image(img: Any) -> bool:
    return Image is not None and isinstance(img, Image.Image)


def _check_img(img: Any) -> None:
    if not (_is_pil_image(img) or isinstance(img, Tensor)):
        raise TypeError(f"img should be PIL Image or Tensor. Got {type(img)}")


def get_dimensions(img: Any) -> list[int]:
    """``[channels, height, width]`` of an image."""
    if isinstance(img, Tensor):
        return F_t.get_dimensions(img)
    if _is_pil_image(img):
        return [len(img.getbands()), img.height, img.width]
    raise TypeError(f"Unexpected type {type(img)}")


def get_image_size(img: Any) -> list[int]:
    """``[width, height]`` of an image."""
    _, h, w = get_dimensions(img)
    return [w, h]


def get_image_num_channels(img: Any) -> int:
    return get_dimensions(img)[0]


def to_tensor(pic: Any) -> Tensor:
    """PIL image or ``(H, W, C)`` ndarray -> ``(C, H, W)`` tensor; uint8 is scaled to [0, 1]."""
    if not (_is_pil_image(pic) or isinstance(pic, np.ndarray)):
        raise TypeError(f"pic should be PIL Image or ndarray. Got {type(pic)}")
    if isinstance(pic, np.ndarray):
        if pic.ndim not in (2, 3):
            raise ValueError(f"pic should be 2/3 dimensional. Got {pic.ndim} dimensions.")
        if pic.ndim == 2:
            pic = pic[:, :, None]
        img = ember.from_numpy(np.ascontiguousarray(pic.transpose((2, 0, 1))))
        if img.dtype == ember.uint8:
            return img.to(ember.get_default_dtype()).div(255)
        return img
    mode_to_nptype = {"I": np.int32, "I;16": np.int16, "F": np.float32}
    arr = np.array(pic, mode_to_nptype.get(pic.mode, np.uint8), copy=True)
    if pic.mode == "1":
        arr = 255 * arr
    arr = arr.reshape(pic.size[1], pic.size[0], len(pic.getbands()))
    img = ember.from_numpy(np.ascontiguousarray(arr.transpose((2, 0, 1))))
    if img.dtype == ember.uint8:
        return img.to(ember.get_default_dtype()).div(255)
    return img


def pil_to_tensor(pic: Any) -> Tensor:
    """PIL image -> ``(C, H, W)`` tensor of the same dtype (no scaling)."""
    if not _is_pil_image(pic):
        raise TypeError(f"pic should be PIL Image. Got {type(pic)}")
    arr = np.array(pic, copy=True)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    return ember.from_numpy(np.ascontiguousarray(arr.transpose((2, 0, 1))))


def to_pil_image(pic: Any, mode: str | None = None) -> Any:
    """Tensor ``(C, H, W)`` or ndarray ``(H, W, C)`` -> PIL image."""
    if isinstance(pic, Tensor):
        if pic.ndim not in (2, 3):
            raise ValueError(f"pic should be 2/3 dimensional. Got {pic.ndim} dimensions.")
        if pic.ndim == 2:
            pic = pic.unsqueeze(0)
        if pic.shape[-3] > 4:
            raise ValueError(f"pic should not have > 4 channels. Got {pic.shape[-3]} channels.")
        npimg = pic.detach().cpu().numpy()
        if pic.is_floating_point() and mode != "F":
            npimg = (npimg * 255).astype(np.uint8)
        npimg = np.transpose(npimg, (1, 2, 0))
    elif isinstance(pic, np.ndarray):
        if pic.ndim not in (2, 3):
            raise ValueError(f"pic should be 2/3 dimensional. Got {pic.ndim} dimensions.")
        npimg = pic[:, :, None] if pic.ndim == 2 else pic
        if npimg.shape[-1] > 4:
            raise ValueError(f"pic should not have > 4 channels. Got {npimg.shape[-1]} "
                             f"channels.")
    else:
        raise TypeError(f"pic should be Tensor or ndarray. Got {type(pic)}.")
    if npimg.shape[2] == 1:
        expected_mode = None
        npimg = npimg[:, :, 0]
        expected_mode = {np.dtype(np.uint8): "L", np.dtype(np.int16): "I;16",
                         np.dtype(np.int32): "I", np.dtype(np.float32): "F"}.get(npimg.dtype)
        if mode is not None and mode != expected_mode:
            raise ValueError(f"Incorrect mode ({mode}) supplied for input type {npimg.dtype}. "
                             f"Should be {expected_mode}")
        mode = expected_mode
    elif npimg.shape[2] == 2:
        if mode is not None and mode != "LA":
            raise ValueError("Only modes ['LA'] are supported for 2D inputs")
        mode = "LA"
    elif npimg.shape[2] == 4:
        if mode is not None and mode not in ("RGBA", "CMYK", "RGBX"):
            raise ValueError("Only modes ['RGBA', 'CMYK', 'RGBX'] are supported for 4D inputs")
        mode = mode or "RGBA"
    else:
        if mode is not None and mode not in ("RGB", "YCbCr", "HSV"):
            raise ValueError("Only modes ['RGB', 'YCbCr', 'HSV'] are supported for 3D inputs")
        mode = mode or "RGB"
    if mode is None:
        raise TypeError(f"Input type {npimg.dtype} is not supported")
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK", "RGBX", "YCbCr", "HSV"):
        npimg = npimg.astype(np.uint8, copy=False)
    return Image.fromarray(np.ascontiguousarray(npimg), mode=mode)


def convert_image_dtype(image: Tensor, dtype: Any = ember.float32) -> Tensor:
    if not isinstance(image, Tensor):
        raise TypeError("Input img should be Tensor Image")
    return F_t.convert_image_dtype(image, dtype)


def normalize(tensor: Tensor, mean: Sequence[float], std: Sequence[float],
              inplace: bool = False) -> Tensor:
    """``(tensor - mean) / std`` per channel."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"img should be Tensor Image. Got {type(tensor)}")
    return F_t.normalize(tensor, mean=mean, std=std, inplace=inplace)


def _compute_resized_output_size(image_size: tuple[int, int], size: Any,
                                 max_size: int | None = None) -> list[int]:
    h, w = image_size
    short, long = (w, h) if w <= h else (h, w)
    if size is None or len(size) == 1:
        if size is None:
            if max_size is None:
                raise ValueError("If size is None, max_size must be set")
            new_short, new_long = int(max_size * short / long), max_size
        else:
            requested = size[0]
            new_short, new_long = requested, int(requested * long / short)
            if max_size is not None:
                if max_size <= requested:
                    raise ValueError(f"max_size = {max_size} must be strictly greater than the "
                                     f"requested size for the smaller edge size = {size}")
                if new_long > max_size:
                    new_short, new_long = int(max_size * new_short / new_long), max_size
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        return [new_h, new_w]
    return [size[0], size[1]]


def _interp(interpolation: Any) -> InterpolationMode:
    if isinstance(interpolation, int):
        return _interpolation_modes_from_int(interpolation)
    if not isinstance(interpolation, InterpolationMode):
        raise TypeError("Argument interpolation should be a InterpolationMode or a "
                        "corresponding Pillow integer constant")
    return interpolation


def resize(img: Any, size: Any, interpolation: Any = InterpolationMode.BILINEAR,
           max_size: int | None = None, antialias: bool | None = True) -> Any:
    """Resize; an int ``size`` matches the smaller edge, keeping the aspect ratio."""
    interpolation = _interp(interpolation)
    if isinstance(size, (list, tuple)):
        if len(size) not in (1, 2):
            raise ValueError(f"Size must be an int or a 1 or 2 element tuple/list, not a "
                             f"{len(size)} element tuple/list")
        if max_size is not None and len(size) != 1:
            raise ValueError("max_size should only be passed if size specifies the length of "
                             "the smaller edge, i.e. size should be an int or a sequence of "
                             "length 1 in torchscript mode.")
    elif isinstance(size, int):
        size = [size]
    elif size is not None:
        raise TypeError(f"Size should be int or sequence. Got {type(size)}")
    _, h, w = get_dimensions(img)
    output_size = _compute_resized_output_size((h, w), size, max_size)
    if [h, w] == output_size:
        return img
    if not isinstance(img, Tensor):
        _check_img(img)
        return img.resize(tuple(output_size[::-1]), pil_modes_mapping[interpolation])
    if interpolation in (InterpolationMode.BOX, InterpolationMode.HAMMING,
                         InterpolationMode.LANCZOS):
        raise ValueError(f"Interpolation mode {interpolation} is not supported for tensors; "
                         f"use a PIL image")
    return F_t.resize(img, output_size, interpolation.value, antialias=antialias)


def _parse_fill(fill: Any, img: Any, name: str = "fillcolor") -> dict:
    num_channels = len(img.getbands())
    if fill is None:
        fill = 0
    if isinstance(fill, (int, float)) and num_channels > 1:
        fill = tuple([fill] * num_channels)
    if isinstance(fill, (list, tuple)):
        if len(fill) == 1:
            fill = fill * num_channels
        elif len(fill) != num_channels:
            raise ValueError(f"The number of elements in 'fill' does not match the number of "
                             f"channels of the image ({len(fill)} != {num_channels})")
        fill = tuple(int(v) if img.mode != "F" else v for v in fill)
    if img.mode != "F":
        fill = tuple(int(v) for v in fill) if isinstance(fill, tuple) else int(fill)
    return {name: fill}


def _pad_args(padding: Any) -> list[int]:
    if isinstance(padding, numbers.Number):
        return [int(padding)] * 4
    padding = list(padding)
    if len(padding) == 1:
        return padding * 4
    if len(padding) == 2:
        return [padding[0], padding[1], padding[0], padding[1]]
    if len(padding) == 4:
        return padding
    raise ValueError(f"Padding must be an int or a 1, 2, or 4 element tuple, not a "
                     f"{len(padding)} element tuple")


def pad(img: Any, padding: Any, fill: Any = 0, padding_mode: str = "constant") -> Any:
    """Pad all sides; modes ``constant``, ``edge``, ``reflect``, ``symmetric``."""
    if isinstance(img, Tensor):
        return F_t.pad(img, padding=padding, fill=fill, padding_mode=padding_mode)
    _check_img(img)
    if not isinstance(padding, (numbers.Number, tuple, list)):
        raise TypeError("Got inappropriate padding arg")
    if fill is not None and not isinstance(fill, (numbers.Number, tuple, list)):
        raise TypeError("Got inappropriate fill arg")
    if padding_mode not in ("constant", "edge", "reflect", "symmetric"):
        raise ValueError("Padding mode should be either constant, edge, reflect or symmetric")
    left, top, right, bottom = _pad_args(padding)
    if padding_mode == "constant" and min(left, top, right, bottom) >= 0:
        opts = _parse_fill(fill, img, name="fill")
        if img.mode == "P":
            palette = img.getpalette()
            image = ImageOps.expand(img, border=(left, top, right, bottom), **opts)
            image.putpalette(palette)
            return image
        return ImageOps.expand(img, border=(left, top, right, bottom), **opts)
    # negative padding crops; the rest goes through NumPy's pad as torchvision does
    p_left, p_top, p_right, p_bottom = (max(v, 0) for v in (left, top, right, bottom))
    c_left, c_top, c_right, c_bottom = (max(-v, 0) for v in (left, top, right, bottom))
    if any((c_left, c_top, c_right, c_bottom)):
        img = img.crop((c_left, c_top, img.width - c_right, img.height - c_bottom))
    palette = img.getpalette() if img.mode == "P" else None
    arr = np.asarray(img)
    widths = [(p_top, p_bottom), (p_left, p_right)] + ([(0, 0)] if arr.ndim == 3 else [])
    if padding_mode == "constant":
        arr = np.pad(arr, widths, mode="constant", constant_values=fill or 0)
    else:
        arr = np.pad(arr, widths, mode=padding_mode)
    out = Image.fromarray(arr)
    if palette is not None:
        out.putpalette(palette)
    return out


def crop(img: Any, top: int, left: int, height: int, width: int) -> Any:
    """Crop the box with top-left corner ``(top, left)``; outside pixels are zero."""
    if isinstance(img, Tensor):
        return F_t.crop(img, top, left, height, width)
    _check_img(img)
    return img.crop((left, top, left + width, top + height))


def _setup_size(size: Any, error_msg: str) -> tuple[int, int]:
    if isinstance(size, numbers.Number):
        return int(size), int(size)
    if isinstance(size, Sequence) and len(size) == 1:
        return size[0], size[0]
    if len(size) != 2:
        raise ValueError(error_msg)
    return size[0], size[1]


def center_crop(img: Any, output_size: Any) -> Any:
    """Crop the centre; an image smaller than ``output_size`` is zero padded first."""
    if isinstance(output_size, numbers.Number):
        output_size = (int(output_size), int(output_size))
    elif isinstance(output_size, (tuple, list)) and len(output_size) == 1:
        output_size = (output_size[0], output_size[0])
    _, image_height, image_width = get_dimensions(img)
    crop_height, crop_width = output_size
    if crop_width > image_width or crop_height > image_height:
        padding_ltrb = [
            (crop_width - image_width) // 2 if crop_width > image_width else 0,
            (crop_height - image_height) // 2 if crop_height > image_height else 0,
            (crop_width - image_width + 1) // 2 if crop_width > image_width else 0,
            (crop_height - image_height + 1) // 2 if crop_height > image_height else 0,
        ]
        img = pad(img, padding_ltrb, fill=0)
        _, image_height, image_width = get_dimensions(img)
        if crop_width == image_width and crop_height == image_height:
            return img
    crop_top = int(round((image_height - crop_height) / 2.0))
    crop_left = int(round((image_width - crop_width) / 2.0))
    return crop(img, crop_top, crop_left, crop_height, crop_width)


def resized_crop(img: Any, top: int, left: int, height: int, width: int, size: list[int],
                 interpolation: Any = InterpolationMode.BILINEAR,
                 antialias: bool | None = True) -> Any:
    img = crop(img, top, left, height, width)
    return resize(img, size, interpolation, antialias=antialias)


def hflip(img: Any) -> Any:
    if isinstance(img, Tensor):
        return F_t.hflip(img)
    _check_img(img)
    return img.transpose(Image.FLIP_LEFT_RIGHT)


def vflip(img: Any) -> Any:
    if isinstance(img, Tensor):
        return F_t.vflip(img)
    _check_img(img)
    return img.transpose(Image.FLIP_TOP_BOTTOM)


def five_crop(img: Any, size: Any) -> tuple:
    """Four corner crops and the centre crop."""
    if isinstance(size, numbers.Number):
        size = (int(size), int(size))
    elif isinstance(size, (tuple, list)) and len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2:
        raise ValueError("Please provide only two dimensions (h, w) for size.")
    _, image_height, image_width = get_dimensions(img)
    crop_height, crop_width = size
    if crop_width > image_width or crop_height > image_height:
        raise ValueError(f"Requested crop size {size} is bigger than input size "
                         f"{(image_height, image_width)}")
    tl = crop(img, 0, 0, crop_height, crop_width)
    tr = crop(img, 0, image_width - crop_width, crop_height, crop_width)
    bl = crop(img, image_height - crop_height, 0, crop_height, crop_width)
    br = crop(img, image_height - crop_height, image_width - crop_width, crop_height,
              crop_width)
    center = center_crop(img, [crop_height, crop_width])
    return tl, tr, bl, br, center


def ten_crop(img: Any, size: Any, vertical_flip: bool = False) -> tuple:
    """``five_crop`` of the image and of its flipped version."""
    if isinstance(size, numbers.Number):
        size = (int(size), int(size))
    elif isinstance(size, (tuple, list)) and len(size) == 1:
        size = (size[0], size[0])
    first_five = five_crop(img, size)
    img = vflip(img) if vertical_flip else hflip(img)
    return first_five + five_crop(img, size)


def _get_inverse_affine_matrix(center: list[float], angle: float, translate: list[float],
                               scale: float, shear: list[float],
                               inverted: bool = True) -> list[float]:
    # M = T * C * RotateScaleShear * C^-1 with C the centre translation; this returns M^-1
    # (the map from output to input pixels) unless inverted=False.
    rot = math.radians(angle)
    sx = math.radians(shear[0])
    sy = math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    if inverted:
        matrix = [d, -b, 0.0, -c, a, 0.0]
        matrix = [x / scale for x in matrix]
        matrix[2] += matrix[0] * (-cx - tx) + matrix[1] * (-cy - ty)
        matrix[5] += matrix[3] * (-cx - tx) + matrix[4] * (-cy - ty)
        matrix[2] += cx
        matrix[5] += cy
    else:
        matrix = [a, b, 0.0, c, d, 0.0]
        matrix = [x * scale for x in matrix]
        matrix[2] += matrix[0] * (-cx) + matrix[1] * (-cy)
        matrix[5] += matrix[3] * (-cx) + matrix[4] * (-cy)
        matrix[2] += cx + tx
        matrix[5] += cy + ty
    return matrix


def rotate(img: Any, angle: float, interpolation: Any = InterpolationMode.NEAREST,
           expand: bool = False, center: list[int] | None = None, fill: Any = None) -> Any:
    """Rotate counter-clockwise by ``angle`` degrees about ``center`` (default the middle)."""
    interpolation = _interp(interpolation)
    if not isinstance(angle, (int, float)):
        raise TypeError("Argument angle should be int or float")
    if center is not None and not isinstance(center, (list, tuple)):
        raise TypeError("Argument center should be a sequence")
    if not isinstance(img, Tensor):
        _check_img(img)
        opts = _parse_fill(fill, img)
        return img.rotate(angle, pil_modes_mapping[interpolation], expand, center, **opts)
    center_f = [0.0, 0.0]
    if center is not None:
        _, height, width = get_dimensions(img)
        center_f = [1.0 * (c - s * 0.5) for c, s in zip(center, [width, height])]
    # the tensor grid's y axis points down, so the rotation angle flips sign
    matrix = _get_inverse_affine_matrix(center_f, -angle, [0.0, 0.0], 1.0, [0.0, 0.0])
    return F_t.rotate(img, matrix=matrix, interpolation=interpolation.value, expand=expand,
                      fill=fill)


def affine(img: Any, angle: float, translate: list[int], scale: float, shear: Any,
           interpolation: Any = InterpolationMode.NEAREST, fill: Any = None,
           center: list[int] | None = None) -> Any:
    """Rotation, translation, scale and shear keeping the centre invariant."""
    interpolation = _interp(interpolation)
    if not isinstance(angle, (int, float)):
        raise TypeError("Argument angle should be int or float")
    if not isinstance(translate, (list, tuple)):
        raise TypeError("Argument translate should be a sequence")
    if len(translate) != 2:
        raise ValueError("Argument translate should be a sequence of length 2")
    if scale <= 0.0:
        raise ValueError("Argument scale should be positive")
    if not isinstance(shear, (numbers.Number, list, tuple)):
        raise TypeError("Shear should be either a single value or a sequence of two values")
    if isinstance(shear, numbers.Number):
        shear = [shear, 0.0]
    shear = list(shear)
    if len(shear) == 1:
        shear = [shear[0], shear[0]]
    if len(shear) != 2:
        raise ValueError(f"Shear should be a sequence containing two values. Got {shear}")
    _, height, width = get_dimensions(img)
    if not isinstance(img, Tensor):
        if center is None:
            center = [width * 0.5, height * 0.5]
        matrix = _get_inverse_affine_matrix(center, angle, translate, scale, shear)
        opts = _parse_fill(fill, img)
        return img.transform((width, height), Image.AFFINE, matrix,
                             pil_modes_mapping[interpolation], **opts)
    center_f = [0.0, 0.0]
    if center is not None:
        center_f = [1.0 * (c - s * 0.5) for c, s in zip(center, [width, height])]
    translate_f = [1.0 * t for t in translate]
    matrix = _get_inverse_affine_matrix(center_f, angle, translate_f, scale, shear)
    return F_t.affine(img, matrix=matrix, interpolation=interpolation.value, fill=fill)


def _get_perspective_coeffs(startpoints: Sequence, endpoints: Sequence) -> list[float]:
    # solve the 8 homography coefficients that map endpoints onto startpoints
    if len(startpoints) != 4 or len(endpoints) != 4:
        raise ValueError(f"Please provide exactly four corners, got {len(startpoints)} "
                         f"startpoints and {len(endpoints)} endpoints.")
    a = np.zeros((8, 8))
    for i, (p1, p2) in enumerate(zip(endpoints, startpoints)):
        a[2 * i] = [p1[0], p1[1], 1, 0, 0, 0, -p2[0] * p1[0], -p2[0] * p1[1]]
        a[2 * i + 1] = [0, 0, 0, p1[0], p1[1], 1, -p2[1] * p1[0], -p2[1] * p1[1]]
    b = np.asarray(startpoints, np.float64).reshape(8)
    res = np.linalg.lstsq(a, b, rcond=None)[0].astype(np.float32)
    return [float(v) for v in res]


def perspective(img: Any, startpoints: list[list[int]], endpoints: list[list[int]],
                interpolation: Any = InterpolationMode.BILINEAR, fill: Any = None) -> Any:
    """Perspective transform moving the four ``startpoints`` corners to ``endpoints``."""
    coeffs = _get_perspective_coeffs(startpoints, endpoints)
    interpolation = _interp(interpolation)
    if not isinstance(img, Tensor):
        _check_img(img)
        opts = _parse_fill(fill, img)
        return img.transform(img.size, Image.PERSPECTIVE, coeffs,
                             pil_modes_mapping[interpolation], **opts)
    return F_t.perspective(img, coeffs, interpolation=interpolation.value, fill=fill)


def rgb_to_grayscale(img: Any, num_output_channels: int = 1) -> Any:
    """ITU-R 601-2 luma (``L = 0.2989 R + 0.587 G + 0.114 B``)."""
    if isinstance(img, Tensor):
        return F_t.rgb_to_grayscale(img, num_output_channels)
    return to_grayscale(img, num_output_channels)


def to_grayscale(img: Any, num_output_channels: int = 1) -> Any:
    if isinstance(img, Tensor):
        return F_t.rgb_to_grayscale(img, num_output_channels)
    _check_img(img)
    if num_output_channels == 1:
        return img.convert("L")
    if num_output_channels == 3:
        np_img = np.array(img.convert("L"), dtype=np.uint8)
        return Image.fromarray(np.dstack([np_img, np_img, np_img]), "RGB")
    raise ValueError("num_output_channels should be either 1 or 3")


def _pil_enhance(img: Any, cls_name: str, factor: float) -> Any:
    _check_img(img)
    return getattr(ImageEnhance, cls_name)(img).enhance(factor)


def adjust_brightness(img: Any, brightness_factor: float) -> Any:
    if isinstance(img, Tensor):
        return F_t.adjust_brightness(img, brightness_factor)
    return _pil_enhance(img, "Brightness", brightness_factor)


def adjust_contrast(img: Any, contrast_factor: float) -> Any:
    if isinstance(img, Tensor):
        return F_t.adjust_contrast(img, contrast_factor)
    return _pil_enhance(img, "Contrast", contrast_factor)


def adjust_saturation(img: Any, saturation_factor: float) -> Any:
    if isinstance(img, Tensor):
        return F_t.adjust_saturation(img, saturation_factor)
    return _pil_enhance(img, "Color", saturation_factor)


def adjust_sharpness(img: Any, sharpness_factor: float) -> Any:
    if isinstance(img, Tensor):
        return F_t.adjust_sharpness(img, sharpness_factor)
    return _pil_enhance(img, "Sharpness", sharpness_factor)


def adjust_hue(img: Any, hue_factor: float) -> Any:
    """Shift the hue by ``hue_factor`` (a fraction of the colour wheel, in [-0.5, 0.5])."""
    if isinstance(img, Tensor):
        return F_t.adjust_hue(img, hue_factor)
    _check_img(img)
    if not (-0.5 <= hue_factor <= 0.5):
        raise ValueError(f"hue_factor ({hue_factor}) is not in [-0.5, 0.5].")
    input_mode = img.mode
    if input_mode in {"L", "1", "I", "F"}:
        return img
    h, s, v = img.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    # uint8 wrap-around is the hue rotation
    with np.errstate(over="ignore"):
        np_h += np.array(hue_factor * 255).astype(np.uint8)
    h = Image.fromarray(np_h, "L")
    return Image.merge("HSV", (h, s, v)).convert(input_mode)


def adjust_gamma(img: Any, gamma: float, gain: float = 1) -> Any:
    if isinstance(img, Tensor):
        return F_t.adjust_gamma(img, gamma, gain)
    _check_img(img)
    if gamma < 0:
        raise ValueError("Gamma should be a non-negative real number")
    input_mode = img.mode
    img = img.convert("RGB")
    gamma_map = [int((255 + 1 - 1e-3) * gain * pow(ele / 255.0, gamma)) for ele in range(256)]
    gamma_map = gamma_map * 3
    return img.point(gamma_map).convert(input_mode)


def invert(img: Any) -> Any:
    if isinstance(img, Tensor):
        return F_t.invert(img)
    _check_img(img)
    return ImageOps.invert(img)


def posterize(img: Any, bits: int) -> Any:
    if not (0 <= bits <= 8):
        raise ValueError(f"The number if bits should be between 0 and 8. Got {bits}")
    if isinstance(img, Tensor):
        return F_t.posterize(img, bits)
    _check_img(img)
    return ImageOps.posterize(img, bits)


def solarize(img: Any, threshold: float) -> Any:
    if isinstance(img, Tensor):
        return F_t.solarize(img, threshold)
    _check_img(img)
    return ImageOps.solarize(img, threshold)


def autocontrast(img: Any) -> Any:
    if isinstance(img, Tensor):
        return F_t.autocontrast(img)
    _check_img(img)
    return ImageOps.autocontrast(img)


def equalize(img: Any) -> Any:
    if isinstance(img, Tensor):
        return F_t.equalize(img)
    _check_img(img)
    return ImageOps.equalize(img)


def gaussian_blur(img: Any, kernel_size: Any, sigma: Any = None) -> Any:
    """Blur with a separable Gaussian kernel, reflect-padded at the borders."""
    if not isinstance(kernel_size, (int, list, tuple)):
        raise TypeError(f"kernel_size should be int or a sequence of integers. Got "
                        f"{type(kernel_size)}")
    if isinstance(kernel_size, int):
        kernel_size = [kernel_size, kernel_size]
    if len(kernel_size) != 2:
        raise ValueError(f"If kernel_size is a sequence its length should be 2. Got "
                         f"{len(kernel_size)}")
    for ksize in kernel_size:
        if ksize % 2 == 0 or ksize < 0:
            raise ValueError(f"kernel_size should have odd and positive integers. Got "
                             f"{kernel_size}")
    if sigma is None:
        sigma = [ksize * 0.15 + 0.35 for ksize in kernel_size]
    if isinstance(sigma, (int, float)):
        sigma = [float(sigma), float(sigma)]
    if isinstance(sigma, (list, tuple)) and len(sigma) == 1:
        sigma = [sigma[0], sigma[0]]
    if len(sigma) != 2:
        raise ValueError(f"If sigma is a sequence, its length should be 2. Got {len(sigma)}")
    for s in sigma:
        if s <= 0.0:
            raise ValueError(f"sigma should have positive values. Got {sigma}")
    if isinstance(img, Tensor):
        return F_t.gaussian_blur(img, kernel_size, sigma)
    _check_img(img)
    # torchvision blurs PIL images through the tensor kernel too
    out = F_t.gaussian_blur(pil_to_tensor(img), kernel_size, sigma)
    return to_pil_image(out, mode=img.mode)


def erase(img: Tensor, i: int, j: int, h: int, w: int, v: Tensor, inplace: bool = False) -> Tensor:
    """Set the box ``[i:i+h, j:j+w]`` of a tensor image to ``v``."""
    if not isinstance(img, Tensor):
        raise TypeError(f"img should be Tensor Image. Got {type(img)}")
    return F_t.erase(img, i, j, h, w, v, inplace=inplace)
