"""Tensor kernels of the image transforms (torchvision's ``_functional_tensor``).

Images are ember tensors ``(..., C, H, W)``. Everything is written in ember ops, so the same
code runs on the CPU and on CUDA. Small geometry (affine matrices, sampling grids) is computed
on the host with NumPy and moved to the image's device once.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

import ember
from ember import Tensor
from ember.nn import functional as F

def _int_dtypes() -> tuple:
    return (ember.uint8, ember.int8, ember.int16, ember.int32, ember.int64)


def is_tensor_a_torch_image(x: Any) -> bool:
    return isinstance(x, Tensor) and x.ndim >= 2


def _assert_image_tensor(img: Any) -> None:
    if not is_tensor_a_torch_image(img):
        raise TypeError("Tensor is not a torch image.")


def get_dimensions(img: Tensor) -> list[int]:
    _assert_image_tensor(img)
    channels = 1 if img.ndim == 2 else img.shape[-3]
    height, width = img.shape[-2:]
    return [channels, height, width]


def _max_value(dtype: Any) -> float:
    if dtype.is_floating_point:
        return 1.0
    return ember.iinfo(dtype).max


def convert_image_dtype(image: Tensor, dtype: Any = ember.float32) -> Tensor:
    """Convert an image to ``dtype`` and rescale its values ([0, 1] for floats, [0, max] ints)."""
    if image.dtype == dtype:
        return image
    if image.is_floating_point():
        if dtype.is_floating_point:
            return image.to(dtype)
        if (image.dtype == ember.float32 and dtype in (ember.int32, ember.int64)) or (
                image.dtype == ember.float64 and dtype == ember.int64):
            raise RuntimeError(f"The cast from {image.dtype} to {dtype} cannot be performed "
                               f"safely.")
        # eps keeps 1.0 strictly below max + 1, so truncation maps [0, 1] onto [0, max]
        eps = 1e-3
        max_val = float(_max_value(dtype))
        return image.mul(max_val + 1.0 - eps).to(dtype)
    input_max = float(_max_value(image.dtype))
    if dtype.is_floating_point:
        return image.to(dtype) / input_max
    output_max = float(_max_value(dtype))
    if input_max > output_max:
        factor = int((input_max + 1) // (output_max + 1))
        return ember.div(image, factor, rounding_mode="floor").to(dtype)
    factor = int((output_max + 1) // (input_max + 1))
    return image.to(dtype) * factor


def _cast_squeeze_in(img: Tensor, req_dtypes: Sequence[Any]) -> tuple:
    need_squeeze = False
    if img.ndim < 4:
        img = img.unsqueeze(0)
        need_squeeze = True
    out_dtype = img.dtype
    need_cast = False
    if out_dtype not in req_dtypes:
        need_cast = True
        img = img.to(req_dtypes[0])
    return img, need_cast, need_squeeze, out_dtype


def _cast_squeeze_out(img: Tensor, need_cast: bool, need_squeeze: bool, out_dtype: Any) -> Tensor:
    if need_squeeze:
        img = img.squeeze(0)
    if need_cast:
        if out_dtype in _int_dtypes():
            # round before the cast: truncation would bias every value down
            img = ember.round(img)
        img = img.to(out_dtype)
    return img


def vflip(img: Tensor) -> Tensor:
    return img.flip(-2)


def hflip(img: Tensor) -> Tensor:
    return img.flip(-1)


def crop(img: Tensor, top: int, left: int, height: int, width: int) -> Tensor:
    """Crop; regions outside the image are zero padded (torchvision's behaviour)."""
    _, h, w = get_dimensions(img)
    right = left + width
    bottom = top + height
    if left < 0 or top < 0 or right > w or bottom > h:
        padding_ltrb = [max(-left + min(0, right), 0), max(-top + min(0, bottom), 0),
                        max(right - max(w, left), 0), max(bottom - max(h, top), 0)]
        return pad(img[..., max(top, 0):bottom, max(left, 0):right], padding_ltrb, fill=0)
    return img[..., top:bottom, left:right]


def rgb_to_grayscale(img: Tensor, num_output_channels: int = 1) -> Tensor:
    if img.ndim < 3:
        raise TypeError(f"Input image tensor should have at least 3 dimensions, but found "
                        f"{img.ndim}")
    c = get_dimensions(img)[0]
    if c not in (1, 3):
        raise TypeError(f"Input image tensor permitted channel values are [1, 3], but found {c}")
    if num_output_channels not in (1, 3):
        raise ValueError("num_output_channels should be either 1 or 3")
    if c == 3:
        r, g, b = img.unbind(dim=-3)
        # ITU-R 601-2 luma, the weights PIL's convert("L") uses
        l_img = (0.2989 * r + 0.587 * g + 0.114 * b).to(img.dtype)
        l_img = l_img.unsqueeze(dim=-3)
    else:
        l_img = img.clone()
    if num_output_channels == 3:
        return l_img.expand(img.shape)
    return l_img


def _blend(img1: Tensor, img2: Tensor, ratio: float) -> Tensor:
    ratio = float(ratio)
    bound = _max_value(img1.dtype)
    return (ratio * img1 + (1.0 - ratio) * img2).clamp(0, bound).to(img1.dtype)


def adjust_brightness(img: Tensor, brightness_factor: float) -> Tensor:
    if brightness_factor < 0:
        raise ValueError(f"brightness_factor ({brightness_factor}) is not non-negative.")
    return _blend(img, ember.zeros_like(img), brightness_factor)


def adjust_contrast(img: Tensor, contrast_factor: float) -> Tensor:
    if contrast_factor < 0:
        raise ValueError(f"contrast_factor ({contrast_factor}) is not non-negative.")
    c = get_dimensions(img)[0]
    dtype = img.dtype if img.is_floating_point() else ember.float32
    src = rgb_to_grayscale(img) if c == 3 else img
    mean = ember.mean(src.to(dtype), dim=(-3, -2, -1), keepdim=True)
    return _blend(img, mean, contrast_factor)


def adjust_saturation(img: Tensor, saturation_factor: float) -> Tensor:
    if saturation_factor < 0:
        raise ValueError(f"saturation_factor ({saturation_factor}) is not non-negative.")
    if get_dimensions(img)[0] == 1:
        return img
    return _blend(img, rgb_to_grayscale(img), saturation_factor)


def _rgb2hsv(img: Tensor) -> Tensor:
    r, g, b = img.unbind(dim=-3)
    maxc = ember.max(img, dim=-3).values
    minc = ember.min(img, dim=-3).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = ember.ones_like(maxc)
    s = cr / ember.where(eqc, ones, maxc)
    cr_divisor = ember.where(eqc, ones, cr)
    rc = (maxc - r) / cr_divisor
    gc = (maxc - g) / cr_divisor
    bc = (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = hr + hg + hb
    h = ember.fmod((h / 6.0 + 1.0), 1.0)
    return ember.stack((h, s, maxc), dim=-3)


def _hsv2rgb(img: Tensor) -> Tensor:
    h, s, v = img.unbind(dim=-3)
    i = ember.floor(h * 6.0)
    f = (h * 6.0) - i
    i = i.to(ember.int32)
    p = ember.clamp((v * (1.0 - s)), 0.0, 1.0)
    q = ember.clamp((v * (1.0 - s * f)), 0.0, 1.0)
    t = ember.clamp((v * (1.0 - s * (1.0 - f))), 0.0, 1.0)
    i = i % 6
    mask = i.unsqueeze(dim=-3) == ember.arange(6, device=i.device).view(-1, 1, 1)
    a1 = ember.stack((v, q, p, p, t, v), dim=-3)
    a2 = ember.stack((t, v, v, q, p, p), dim=-3)
    a3 = ember.stack((p, p, t, v, v, q), dim=-3)
    a4 = ember.stack((a1, a2, a3), dim=-4)
    return ember.einsum("...ijk, ...xijk -> ...xjk", mask.to(img.dtype), a4)


def adjust_hue(img: Tensor, hue_factor: float) -> Tensor:
    if not (-0.5 <= hue_factor <= 0.5):
        raise ValueError(f"hue_factor ({hue_factor}) is not in [-0.5, 0.5].")
    if get_dimensions(img)[0] == 1:
        return img
    orig_dtype = img.dtype
    img = convert_image_dtype(img, ember.float32)
    h, s, v = _rgb2hsv(img).unbind(dim=-3)
    h = (h + hue_factor) % 1.0
    out = _hsv2rgb(ember.stack((h, s, v), dim=-3))
    return convert_image_dtype(out, orig_dtype)


def adjust_gamma(img: Tensor, gamma: float, gain: float = 1) -> Tensor:
    if gamma < 0:
        raise ValueError("Gamma should be a non-negative real number")
    dtype = img.dtype
    result = img if img.is_floating_point() else convert_image_dtype(img, ember.float32)
    result = (gain * result ** gamma).clamp(0, 1)
    return convert_image_dtype(result, dtype)


def invert(img: Tensor) -> Tensor:
    return _max_value(img.dtype) - img


def posterize(img: Tensor, bits: int) -> Tensor:
    if img.dtype != ember.uint8:
        raise TypeError(f"Only torch.uint8 image tensors are supported, but found {img.dtype}")
    mask = -int(2 ** (8 - bits))
    return img & mask


def solarize(img: Tensor, threshold: float) -> Tensor:
    if threshold > _max_value(img.dtype):
        raise TypeError("Threshold should be less than bound of img.")
    return ember.where(img >= threshold, invert(img), img)


def _blurred_degenerate_image(img: Tensor) -> Tensor:
    dtype = img.dtype if img.is_floating_point() else ember.float32
    kernel = ember.ones((3, 3), dtype=dtype, device=img.device)
    kernel[1, 1] = 5.0
    kernel = kernel / kernel.sum()
    kernel = kernel.expand(img.shape[-3], 1, 3, 3)
    tmp, need_cast, need_squeeze, out_dtype = _cast_squeeze_in(img, [kernel.dtype])
    tmp = F.conv2d(tmp, kernel, groups=tmp.shape[-3])
    tmp = _cast_squeeze_out(tmp, need_cast, need_squeeze, out_dtype)
    result = img.clone()
    result[..., 1:-1, 1:-1] = tmp
    return result


def adjust_sharpness(img: Tensor, sharpness_factor: float) -> Tensor:
    if sharpness_factor < 0:
        raise ValueError(f"sharpness_factor ({sharpness_factor}) is not non-negative.")
    if img.shape[-1] <= 2 or img.shape[-2] <= 2:
        return img
    return _blend(img, _blurred_degenerate_image(img), sharpness_factor)


def autocontrast(img: Tensor) -> Tensor:
    bound = _max_value(img.dtype)
    dtype = img.dtype if img.is_floating_point() else ember.float32
    minimum = img.amin(dim=(-2, -1), keepdim=True).to(dtype)
    maximum = img.amax(dim=(-2, -1), keepdim=True).to(dtype)
    eq = maximum == minimum
    # flat channels stay as they are: offset 0, scale 1
    scale = bound / ember.where(eq, ember.ones_like(maximum), maximum - minimum)
    scale = ember.where(eq, ember.ones_like(scale), scale)
    minimum = ember.where(eq, ember.zeros_like(minimum), minimum)
    return ((img - minimum) * scale).clamp(0, bound).to(img.dtype)


def _scale_channel(img_chan: Tensor) -> Tensor:
    hist = ember.bincount(img_chan.reshape(-1).to(ember.int64), minlength=256)
    nonzero_hist = hist[hist != 0]
    step = ember.div(nonzero_hist[:-1].sum(), 255, rounding_mode="floor")
    if int(step) == 0:
        return img_chan
    lut = ember.div(ember.cumsum(hist, 0) + ember.div(step, 2, rounding_mode="floor"), step,
                    rounding_mode="floor")
    lut = F.pad(lut, [1, 0])[:-1].clamp(0, 255)
    return lut[img_chan.to(ember.int64)].to(ember.uint8)


def equalize(img: Tensor) -> Tensor:
    if img.dtype != ember.uint8:
        raise TypeError(f"Only torch.uint8 image tensors are supported, but found {img.dtype}")
    if img.ndim == 3:
        return ember.stack([_scale_channel(img[c]) for c in range(img.shape[0])])
    flat = img.reshape(-1, *img.shape[-3:])
    return ember.stack([equalize(x) for x in flat]).reshape(img.shape)


def _symmetric_index(n: int, before: int, after: int) -> np.ndarray:
    # symmetric padding repeats the edge pixel: ... 1 0 | 0 1 2 ... n-1 | n-1 n-2 ...
    idx = np.arange(-before, n + after)
    period = 2 * n
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - 1 - idx, idx)


def pad(img: Tensor, padding: Any, fill: Any = 0, padding_mode: str = "constant") -> Tensor:
    """Pad the last two dims; ``padding`` is int, (lr, tb) or (left, top, right, bottom)."""
    _assert_image_tensor(img)
    if not isinstance(padding, (int, tuple, list)):
        raise TypeError("Got inappropriate padding arg")
    if fill is not None and not isinstance(fill, (int, float)):
        raise TypeError("Got inappropriate fill arg")
    if padding_mode not in ("constant", "edge", "reflect", "symmetric"):
        raise ValueError("Padding mode should be either constant, edge, reflect or symmetric")
    if isinstance(padding, tuple):
        padding = list(padding)
    if isinstance(padding, list):
        if len(padding) not in (1, 2, 4):
            raise ValueError(f"Padding must be an int or a 1, 2, or 4 element tuple, not a "
                             f"{len(padding)} element tuple")
        if len(padding) == 1:
            padding = padding * 4
        elif len(padding) == 2:
            padding = [padding[0], padding[1], padding[0], padding[1]]
    else:
        padding = [padding] * 4
    left, top, right, bottom = [int(p) for p in padding]
    if padding_mode == "symmetric":
        # negative pads crop first, then symmetric indices extend the rest
        h, w = img.shape[-2:]
        img = img[..., max(-top, 0):h - max(-bottom, 0), max(-left, 0):w - max(-right, 0)]
        h, w = img.shape[-2:]
        rows = ember.as_tensor(_symmetric_index(h, max(top, 0), max(bottom, 0)),
                               device=img.device)
        cols = ember.as_tensor(_symmetric_index(w, max(left, 0), max(right, 0)),
                               device=img.device)
        return img.index_select(-2, rows).index_select(-1, cols)
    mode = {"constant": "constant", "edge": "replicate", "reflect": "reflect"}[padding_mode]
    need_squeeze = False
    if img.ndim < 4 and mode != "constant":
        img = img.unsqueeze(0)
        need_squeeze = True
    out_dtype = img.dtype
    need_cast = False
    if mode != "constant" and img.dtype not in (ember.float32, ember.float64):
        # replicate/reflect kernels work on floats
        need_cast = True
        img = img.to(ember.float32)
    if mode == "constant":
        out = F.pad(img, [left, right, top, bottom], mode="constant", value=float(fill or 0))
    else:
        out = F.pad(img, [left, right, top, bottom], mode=mode)
    if need_squeeze:
        out = out.squeeze(0)
    if need_cast:
        out = out.to(out_dtype)
    return out


def _aa_filter(x: np.ndarray, mode: str) -> np.ndarray:
    x = np.abs(x)
    if mode == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5  # PIL's (and torch's antialiased) bicubic coefficient
    return np.where(x < 1.0, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _aa_matrix(in_size: int, out_size: int, mode: str) -> np.ndarray:
    """(out, in) resampling weights of torch's/PIL's antialiased resize along one axis.

    The filter is stretched by the downscale factor so every input pixel contributes
    (the antialiasing), and each row is normalised to sum to one."""
    interp_size = 2 if mode == "bilinear" else 4
    scale = in_size / out_size
    support = interp_size * 0.5 * scale if scale >= 1.0 else interp_size * 0.5
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    w = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        j = np.arange(xmin, xmax)
        ws = _aa_filter((j - center + 0.5) * invscale, mode)
        total = ws.sum()
        w[i, xmin:xmax] = ws / total if total != 0 else ws
    return w


def _resize_aa(img: Tensor, size: list[int], mode: str) -> Tensor:
    # separable resampling as two matmuls: differentiable and device-agnostic
    h, w = img.shape[-2:]
    wh = ember.as_tensor(_aa_matrix(h, size[0], mode), device=img.device).to(img.dtype)
    ww = ember.as_tensor(_aa_matrix(w, size[1], mode), device=img.device).to(img.dtype)
    return ember.matmul(wh, ember.matmul(img, ww.t()))


def resize(img: Tensor, size: list[int], interpolation: str = "bilinear",
           antialias: bool | None = True) -> Tensor:
    _assert_image_tensor(img)
    if isinstance(size, tuple):
        size = list(size)
    if antialias is None:
        antialias = False
    if antialias and interpolation not in ("bilinear", "bicubic"):
        antialias = False
    img, need_cast, need_squeeze, out_dtype = _cast_squeeze_in(img, [ember.float32,
                                                                     ember.float64])
    if antialias:
        img = _resize_aa(img, size, interpolation)
    else:
        align_corners = False if interpolation in ("bilinear", "bicubic") else None
        img = F.interpolate(img, size=size, mode=interpolation, align_corners=align_corners)
    if interpolation == "bicubic" and out_dtype == ember.uint8:
        img = img.clamp(min=0, max=255)
    return _cast_squeeze_out(img, need_cast, need_squeeze, out_dtype)


def _gen_affine_grid(theta: np.ndarray, w: int, h: int, ow: int, oh: int) -> np.ndarray:
    # pixel centres of the output in coordinates centred on the image, mapped through the
    # inverse affine matrix and rescaled to grid_sample's [-1, 1] (align_corners=False)
    d = 0.5
    x = np.linspace(-ow * 0.5 + d, ow * 0.5 + d - 1, ow)
    y = np.linspace(-oh * 0.5 + d, oh * 0.5 + d - 1, oh)
    base = np.empty((oh, ow, 3))
    base[..., 0] = x[None, :]
    base[..., 1] = y[:, None]
    base[..., 2] = 1.0
    rescaled = theta.reshape(2, 3).T / np.array([0.5 * w, 0.5 * h])
    return (base.reshape(oh * ow, 3) @ rescaled).reshape(1, oh, ow, 2)


def _apply_grid_transform(img: Tensor, grid_np: np.ndarray, mode: str, fill: Any) -> Tensor:
    dtype = img.dtype if img.is_floating_point() else ember.float32
    grid = ember.as_tensor(grid_np.astype(np.float64), device=img.device).to(dtype)
    img, need_cast, need_squeeze, out_dtype = _cast_squeeze_in(img, [dtype])
    if img.shape[0] > 1:
        grid = grid.expand(img.shape[0], *grid.shape[1:])
    if fill is not None:
        # a ones channel sampled alongside the image marks the pixels that came from outside
        mask = ember.ones((img.shape[0], 1, img.shape[2], img.shape[3]), dtype=img.dtype,
                          device=img.device)
        img = ember.cat((img, mask), dim=1)
    img = F.grid_sample(img, grid, mode=mode, padding_mode="zeros", align_corners=False)
    if fill is not None:
        mask = img[:, -1:, :, :]
        img = img[:, :-1, :, :]
        mask = mask.expand_as(img)
        fill_list = list(fill) if isinstance(fill, (tuple, list)) else [float(fill)]
        fill_img = ember.tensor(fill_list, dtype=img.dtype, device=img.device).view(
            1, len(fill_list), 1, 1).expand_as(img)
        if mode == "nearest":
            img = ember.where(mask < 0.5, fill_img, img)
        else:
            img = img * mask + (1.0 - mask) * fill_img
    return _cast_squeeze_out(img, need_cast, need_squeeze, out_dtype)


def affine(img: Tensor, matrix: list[float], interpolation: str = "nearest",
           fill: Any = None) -> Tensor:
    h, w = img.shape[-2:]
    grid = _gen_affine_grid(np.asarray(matrix, np.float64), w=w, h=h, ow=w, oh=h)
    return _apply_grid_transform(img, grid, interpolation, fill)


def _compute_affine_output_size(matrix: list[float], w: int, h: int) -> tuple[int, int]:
    pts = np.array([[-0.5 * w, -0.5 * h, 1.0], [-0.5 * w, 0.5 * h, 1.0],
                    [0.5 * w, 0.5 * h, 1.0], [0.5 * w, -0.5 * h, 1.0]], np.float32)
    theta = np.asarray(matrix, np.float32).reshape(2, 3)
    new_pts = pts @ theta.T
    tol = 1e-4
    cmax = np.ceil(np.trunc(new_pts.max(0) / tol) * tol)
    cmin = np.floor(np.trunc(new_pts.min(0) / tol) * tol)
    size = cmax - cmin
    return int(size[0]), int(size[1])


def rotate(img: Tensor, matrix: list[float], interpolation: str = "nearest",
           expand: bool = False, fill: Any = None) -> Tensor:
    h, w = img.shape[-2:]
    ow, oh = _compute_affine_output_size(matrix, w, h) if expand else (w, h)
    grid = _gen_affine_grid(np.asarray(matrix, np.float64), w=w, h=h, ow=ow, oh=oh)
    return _apply_grid_transform(img, grid, interpolation, fill)


def _perspective_grid(coeffs: list[float], ow: int, oh: int) -> np.ndarray:
    theta1 = np.array([[coeffs[0], coeffs[1], coeffs[2]], [coeffs[3], coeffs[4], coeffs[5]]])
    theta2 = np.array([[coeffs[6], coeffs[7], 1.0], [coeffs[6], coeffs[7], 1.0]])
    d = 0.5
    base = np.empty((oh, ow, 3))
    base[..., 0] = np.linspace(d, ow * 1.0 + d - 1.0, ow)[None, :]
    base[..., 1] = np.linspace(d, oh * 1.0 + d - 1.0, oh)[:, None]
    base[..., 2] = 1.0
    flat = base.reshape(oh * ow, 3)
    grid1 = flat @ (theta1.T / np.array([0.5 * ow, 0.5 * oh]))
    grid2 = flat @ theta2.T
    return (grid1 / grid2 - 1.0).reshape(1, oh, ow, 2)


def perspective(img: Tensor, perspective_coeffs: list[float], interpolation: str = "bilinear",
                fill: Any = None) -> Tensor:
    _assert_image_tensor(img)
    h, w = img.shape[-2:]
    grid = _perspective_grid(perspective_coeffs, ow=w, oh=h)
    return _apply_grid_transform(img, grid, interpolation, fill)


def _get_gaussian_kernel1d(kernel_size: int, sigma: float) -> np.ndarray:
    ksize_half = (kernel_size - 1) * 0.5
    x = np.linspace(-ksize_half, ksize_half, kernel_size)
    pdf = np.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def gaussian_blur(img: Tensor, kernel_size: list[int], sigma: list[float]) -> Tensor:
    _assert_image_tensor(img)
    dtype = img.dtype if img.is_floating_point() else ember.float32
    kx = _get_gaussian_kernel1d(kernel_size[0], sigma[0])
    ky = _get_gaussian_kernel1d(kernel_size[1], sigma[1])
    kernel = ember.as_tensor(np.outer(ky, kx), device=img.device).to(dtype)
    kernel = kernel.expand(img.shape[-3], 1, kernel.shape[0], kernel.shape[1])
    img, need_cast, need_squeeze, out_dtype = _cast_squeeze_in(img, [kernel.dtype])
    padding = [kernel_size[0] // 2, kernel_size[0] // 2, kernel_size[1] // 2,
               kernel_size[1] // 2]
    img = F.pad(img, padding, mode="reflect")
    img = F.conv2d(img, kernel, groups=img.shape[-3])
    return _cast_squeeze_out(img, need_cast, need_squeeze, out_dtype)


def erase(img: Tensor, i: int, j: int, h: int, w: int, v: Tensor, inplace: bool = False) -> Tensor:
    _assert_image_tensor(img)
    if not inplace:
        img = img.clone()
    img[..., i:i + h, j:j + w] = v
    return img


def normalize(tensor: Tensor, mean: Sequence[float], std: Sequence[float],
              inplace: bool = False) -> Tensor:
    _assert_image_tensor(tensor)
    if not tensor.is_floating_point():
        raise TypeError(f"Input tensor should be a float tensor. Got {tensor.dtype}.")
    if tensor.ndim < 3:
        raise ValueError(f"Expected tensor to be a tensor image of size (..., C, H, W). Got "
                         f"tensor.size() = {tuple(tensor.shape)}")
    if not inplace:
        tensor = tensor.clone()
    dtype = tensor.dtype
    mean_t = ember.as_tensor(mean, dtype=dtype, device=tensor.device)
    std_t = ember.as_tensor(std, dtype=dtype, device=tensor.device)
    if bool((std_t == 0).any()):
        raise ValueError(f"std evaluated to zero after conversion to {dtype}, leading to "
                         f"division by zero.")
    if mean_t.ndim == 1:
        mean_t = mean_t.view(-1, 1, 1)
    if std_t.ndim == 1:
        std_t = std_t.view(-1, 1, 1)
    return tensor.sub_(mean_t).div_(std_t)
