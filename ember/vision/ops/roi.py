"""RoI Align (He et al., 2017) and RoI Pool (Girshick, 2015).

RoI Align is written as two interpolation matmuls per region, ``Wy @ feature @ Wx^T``, whose
weight matrices hold the bilinear coefficients of every sampling point; gradients with respect
to the input come from autograd, on any device. RoI Pool takes the max of each quantised bin.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

import ember
from ember import Tensor, nn

__all__ = ["roi_align", "roi_pool", "RoIAlign", "RoIPool"]


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def convert_boxes_to_roi_format(boxes: list[Tensor]) -> Tensor:
    concat_boxes = ember.cat([b for b in boxes], dim=0)
    ids = ember.cat([ember.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)
    return ember.cat([ids, concat_boxes], dim=1)


def _rois(name: str, boxes: Any) -> np.ndarray:
    if isinstance(boxes, (list, tuple)):
        for b in boxes:
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"[{name}] each box tensor should have shape (L, 4), got "
                                 f"{tuple(b.shape)}")
        boxes = convert_boxes_to_roi_format(list(boxes))
    elif not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"[{name}] boxes should be a (K, 5) tensor or a list of (L, 4) "
                         f"tensors, got {shape}")
    return boxes.detach().cpu().numpy().astype(np.float64)


def _interp_matrix(coords: np.ndarray, size: int) -> np.ndarray:
    """(S, size) bilinear weights of sample coordinates along one axis (torchvision's rule:
    samples beyond one pixel outside the map contribute zero, the rest clamp to the edge)."""
    valid = (coords >= -1.0) & (coords <= size)
    c = np.maximum(coords, 0.0)
    low = np.floor(c).astype(np.int64)
    at_end = low >= size - 1
    low = np.where(at_end, size - 1, low)
    high = np.where(at_end, size - 1, low + 1)
    frac = np.where(at_end, 0.0, c - low)
    m = np.zeros((coords.shape[0], size))
    rows = np.arange(coords.shape[0])
    np.add.at(m, (rows, low), np.where(valid, 1.0 - frac, 0.0))
    np.add.at(m, (rows, high), np.where(valid, frac, 0.0))
    return m


def roi_align(input: Tensor, boxes: Any, output_size: Any, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """Average of bilinearly sampled points in each bin of each region.

    Args:
        input: ``(N, C, H, W)``. boxes: ``(K, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` or a
            list of ``(L, 4)`` tensors, one per image.
        output_size: ``(PH, PW)``. spatial_scale: box-to-feature coordinate scale.
        sampling_ratio: samples per bin side (<= 0: ``ceil(roi_size / bins)``).
        aligned: shift boxes by -0.5 pixel (pixel-centre alignment).

    Returns:
        ``(K, C, PH, PW)``.
    """
    if input.ndim != 4:
        raise ValueError(f"[roi_align] input should be (N, C, H, W), got {tuple(input.shape)}")
    rois = _rois("roi_align", boxes)
    ph, pw = _pair(output_size)
    _, c, h, w = input.shape
    outs = []
    offset = 0.5 if aligned else 0.0
    for roi in rois:
        b = int(roi[0])
        x1, y1, x2, y2 = (roi[1:] * spatial_scale - offset)
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / ph, roi_w / pw
        gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / ph))
        gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / pw))
        count = max(gh * gw, 1)
        ys = (y1 + np.arange(ph)[:, None] * bin_h
              + (np.arange(gh)[None, :] + 0.5) * bin_h / max(gh, 1)).reshape(-1)
        xs = (x1 + np.arange(pw)[:, None] * bin_w
              + (np.arange(gw)[None, :] + 0.5) * bin_w / max(gw, 1)).reshape(-1)
        if gh == 0 or gw == 0:
            outs.append(ember.zeros((c, ph, pw), dtype=input.dtype, device=input.device))
            continue
        wy = ember.as_tensor(_interp_matrix(ys, h), device=input.device).to(input.dtype)
        wx = ember.as_tensor(_interp_matrix(xs, w), device=input.device).to(input.dtype)
        sampled = ember.matmul(wy, ember.matmul(input[b], wx.t()))  # (C, PH*gh, PW*gw)
        outs.append(sampled.reshape(c, ph, gh, pw, gw).sum(dim=(2, 4)) / count)
    if not outs:
        return ember.zeros((0, c, ph, pw), dtype=input.dtype, device=input.device)
    return ember.stack(outs)


def roi_pool(input: Tensor, boxes: Any, output_size: Any, spatial_scale: float = 1.0) -> Tensor:
    """Max over each quantised bin of each region (Fast R-CNN); empty bins give 0."""
    if input.ndim != 4:
        raise ValueError(f"[roi_pool] input should be (N, C, H, W), got {tuple(input.shape)}")
    rois = _rois("roi_pool", boxes)
    ph, pw = _pair(output_size)
    _, c, h, w = input.shape
    outs = []
    zero = ember.zeros((c,), dtype=input.dtype, device=input.device)
    for roi in rois:
        b = int(roi[0])
        # C's round() rounds halves away from zero
        sw, sh, ew, eh = (int(math.floor(v * spatial_scale + 0.5)) for v in roi[1:])
        roi_w = max(ew - sw + 1, 1)
        roi_h = max(eh - sh + 1, 1)
        bin_h, bin_w = roi_h / ph, roi_w / pw
        feat = input[b]
        cells = []
        for i in range(ph):
            hs = min(max(int(math.floor(i * bin_h)) + sh, 0), h)
            he = min(max(int(math.ceil((i + 1) * bin_h)) + sh, 0), h)
            for j in range(pw):
                ws = min(max(int(math.floor(j * bin_w)) + sw, 0), w)
                we = min(max(int(math.ceil((j + 1) * bin_w)) + sw, 0), w)
                if he <= hs or we <= ws:
                    cells.append(zero)
                else:
                    cells.append(feat[:, hs:he, ws:we].reshape(c, -1).max(dim=1).values)
        outs.append(ember.stack(cells, dim=1).reshape(c, ph, pw))
    if not outs:
        return ember.zeros((0, c, ph, pw), dtype=input.dtype, device=input.device)
    return ember.stack(outs)


class RoIAlign(nn.Module):
    def __init__(self, output_size: Any, spatial_scale: float, sampling_ratio: int,
                 aligned: bool = False) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Any) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale,
                         self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale="
                f"{self.spatial_scale}, sampling_ratio={self.sampling_ratio}, aligned="
                f"{self.aligned})")


class RoIPool(nn.Module):
    def __init__(self, output_size: Any, spatial_scale: float) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Any) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale="
                f"{self.spatial_scale})")
