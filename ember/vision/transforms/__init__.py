"""Image transforms (``torchvision.transforms``): classes here, kernels in ``functional``."""
from ember.vision.transforms.transforms import *  # noqa: F401,F403
from ember.vision.transforms.transforms import __all__ as _t_all
from ember.vision.transforms.autoaugment import (  # noqa: F401
    AutoAugment, AutoAugmentPolicy, RandAugment, TrivialAugmentWide)
from ember.vision.transforms import functional  # noqa: F401

__all__ = list(_t_all) + ["AutoAugment", "AutoAugmentPolicy", "RandAugment",
                          "TrivialAugmentWide", "functional"]
