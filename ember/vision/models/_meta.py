"""Metadata shared by the pretrained weights.

torchvision lists the 1,000 ImageNet class names under ``meta["categories"]``; ember does not
ship that list (it is data, not code), so the weights record ``meta["num_classes"]`` and the
builders size the classifier from it.
"""
from __future__ import annotations

_IMAGENET_NUM_CLASSES = 1000

from functools import partial  # noqa: E402
from typing import Any  # noqa: E402

from ember.vision.models._api import Weights  # noqa: E402
from ember.vision.transforms._presets import ImageClassification  # noqa: E402
from ember.vision.transforms.functional import InterpolationMode  # noqa: E402

TV_URL = "https://download.pytorch.org/models/"


def imagenet_weights(file: str, num_params: int, acc1: float, acc5: float,
                     crop_size: int = 224, resize_size: int = 256,
                     interpolation: InterpolationMode = InterpolationMode.BILINEAR,
                     **meta: Any) -> Weights:
    """An ImageNet-1K ``Weights`` entry at torchvision's URL with its preset transforms."""
    return Weights(
        url=TV_URL + file,
        transforms=partial(ImageClassification, crop_size=crop_size, resize_size=resize_size,
                           interpolation=interpolation),
        meta={"min_size": (1, 1), "num_classes": _IMAGENET_NUM_CLASSES,
              "num_params": num_params,
              "_metrics": {"ImageNet-1K": {"acc@1": acc1, "acc@5": acc5}}, **meta})
