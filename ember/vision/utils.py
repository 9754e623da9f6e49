"""Image utilities (``torchvision.utils``): image grids, saving, drawing boxes."""
from __future__ import annotations

import math
import pathlib
from typing import Any, BinaryIO

import numpy as np

import ember
from ember import Tensor

__all__ = ["make_grid", "save_image", "draw_bounding_boxes"]


def make_grid(tensor: Tensor | list[Tensor], nrow: int = 8, padding: int = 2,
              normalize: bool = False, value_range: tuple[float, float] | None = None,
              scale_each: bool = False, pad_value: float = 0.0) -> Tensor:
    """Tile a batch ``(B, C, H, W)`` into one image, ``nrow`` images per row."""
    if not isinstance(tensor, Tensor):
        if isinstance(tensor, list):
            for t in tensor:
                if not isinstance(t, Tensor):
                    raise TypeError(f"tensor or list of tensors expected, got a list containing "
                                    f"{type(t)}")
        else:
            raise TypeError(f"tensor or list of tensors expected, got {type(tensor)}")
    if isinstance(tensor, list):
        tensor = ember.stack(tensor, dim=0)
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() == 3:
        if tensor.size(0) == 1:
            tensor = ember.cat((tensor, tensor, tensor), 0)
        tensor = tensor.unsqueeze(0)
    if tensor.dim() == 4 and tensor.size(1) == 1:
        tensor = ember.cat((tensor, tensor, tensor), 1)
    if normalize is True:
        tensor = tensor.clone()

        def norm_ip(img: Tensor, low: float, high: float) -> None:
            img.clamp_(min=low, max=high)
            img.sub_(low).div_(max(high - low, 1e-5))

        def norm_range(t: Tensor, value_range: Any) -> None:
            if value_range is not None:
                norm_ip(t, value_range[0], value_range[1])
            else:
                norm_ip(t, float(t.min()), float(t.max()))

        if scale_each is True:
            for t in tensor:
                norm_range(t, value_range)
        else:
            norm_range(tensor, value_range)
    if not isinstance(tensor, Tensor):
        raise TypeError("tensor should be of type torch.Tensor")
    if tensor.size(0) == 1:
        return tensor.squeeze(0)
    nmaps = tensor.size(0)
    xmaps = min(nrow, nmaps)
    ymaps = int(math.ceil(float(nmaps) / xmaps))
    height, width = int(tensor.size(2) + padding), int(tensor.size(3) + padding)
    num_channels = tensor.size(1)
    grid = tensor.new_full((num_channels, height * ymaps + padding, width * xmaps + padding),
                           pad_value)
    k = 0
    for y in range(ymaps):
        for x in range(xmaps):
            if k >= nmaps:
                break
            grid.narrow(1, y * height + padding, height - padding).narrow(
                2, x * width + padding, width - padding).copy_(tensor[k])
            k = k + 1
    return grid


def save_image(tensor: Tensor | list[Tensor], fp: str | pathlib.Path | BinaryIO,
               format: str | None = None, **kwargs: Any) -> None:
    """``make_grid`` then write with Pillow; floats in [0, 1] are scaled to [0, 255]."""
    from PIL import Image
    grid = make_grid(tensor, **kwargs)
    # add 0.5 before the cast: round to nearest instead of truncating
    ndarr = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to("cpu", ember.uint8)
    im = Image.fromarray(ndarr.numpy())
    im.save(fp, format=format)


def _parse_colors(colors: Any, num_objects: int) -> list:
    if colors is None:
        # torchvision's default palette: a fixed pseudo-random colour per index
        palette = ember.tensor([2 ** 25 - 1, 2 ** 15 - 1, 2 ** 21 - 1])
        return [tuple(int(v) for v in ((i * palette) % 255).tolist())
                for i in range(num_objects)]
    if isinstance(colors, list):
        if len(colors) < num_objects:
            raise ValueError(f"Number of colors must be equal or larger than the number of "
                             f"objects, but got {len(colors)} < {num_objects}.")
        return colors
    return [colors] * num_objects


def draw_bounding_boxes(image: Tensor, boxes: Tensor, labels: list[str] | None = None,
                        colors: Any = None, fill: bool = False, width: int = 1,
                        font: str | None = None, font_size: int | None = None,
                        label_colors: Any = None) -> Tensor:
    """Draw ``xyxy`` boxes (and labels) on a uint8 ``(C, H, W)`` image; returns a new one."""
    from PIL import Image, ImageColor, ImageDraw, ImageFont
    if not isinstance(image, Tensor):
        raise TypeError(f"Tensor expected, got {type(image)}")
    if image.dtype not in (ember.uint8,) and not image.is_floating_point():
        raise ValueError(f"The image dtype must be uint8 or float, got {image.dtype}")
    if image.dim() != 3:
        raise ValueError("Pass individual images, not batches")
    if image.size(0) not in {1, 3}:
        raise ValueError("Only grayscale and RGB images are supported")
    if (boxes[:, 0] > boxes[:, 2]).any() or (boxes[:, 1] > boxes[:, 3]).any():
        raise ValueError("Boxes need to be in (xmin, ymin, xmax, ymax) format. Use "
                         "torchvision.ops.box_convert to convert them")
    num_boxes = boxes.shape[0]
    if num_boxes == 0:
        return image
    if labels is None:
        labels = [None] * num_boxes
    elif len(labels) != num_boxes:
        raise ValueError(f"Number of boxes ({num_boxes}) and labels ({len(labels)}) mismatch. "
                         f"Please specify labels for each box.")
    colors = [ImageColor.getrgb(c) if isinstance(c, str) else tuple(c)
              for c in _parse_colors(colors, num_boxes)]
    label_colors = colors if label_colors is None else [
        ImageColor.getrgb(c) if isinstance(c, str) else tuple(c)
        for c in _parse_colors(label_colors, num_boxes)]
    if font is None:
        txt_font = ImageFont.load_default()
    else:
        txt_font = ImageFont.truetype(font=font, size=font_size or 10)
    original_dtype = image.dtype
    if image.is_floating_point():
        image = (image * 255).to(ember.uint8)
    if image.size(0) == 1:
        image = ember.tile(image, (3, 1, 1))
    ndarr = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
    img_to_draw = Image.fromarray(ndarr)
    img_boxes = boxes.to(ember.int64).tolist()
    draw = ImageDraw.Draw(img_to_draw, "RGBA" if fill else None)
    for bbox, color, label, label_color in zip(img_boxes, colors, labels, label_colors):
        if fill:
            draw.rectangle(bbox, width=width, outline=color, fill=color + (100,))
        else:
            draw.rectangle(bbox, width=width, outline=color)
        if label is not None:
            margin = width + 1
            draw.text((bbox[0] + margin, bbox[1] + margin), label, fill=label_color,
                      font=txt_font)
    out = ember.from_numpy(np.array(img_to_draw)).permute(2, 0, 1).contiguous()
    if original_dtype.is_floating_point:
        out = out.to(original_dtype) / 255
    return out
