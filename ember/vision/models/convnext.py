"""ConvNeXt tiny/small/base/large (Liu et al., 2022)."""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import ember
from ember import Tensor, nn
from ember.nn import functional as F
from ember.vision.models._api import WeightsEnum, _ovewrite_named_param, register_model
from ember.vision.models._meta import imagenet_weights as _w
from ember.vision.ops.misc import Conv2dNormActivation, Permute, StochasticDepth

__all__ = ["ConvNeXt", "ConvNeXt_Tiny_Weights", "ConvNeXt_Small_Weights",
           "ConvNeXt_Base_Weights", "ConvNeXt_Large_Weights", "convnext_tiny",
           "convnext_small", "convnext_base", "convnext_large", "CNBlockConfig"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of ``(N, C, H, W)``."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim: int, layer_scale: float, stochastic_depth_prob: float,
                 norm_layer: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            norm_layer(dim),
            nn.Linear(in_features=dim, out_features=4 * dim, bias=True),
            nn.GELU(),
            nn.Linear(in_features=4 * dim, out_features=dim, bias=True),
            Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(ember.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, input: Tensor) -> Tensor:
        result = self.layer_scale * self.block(input)
        result = self.stochastic_depth(result)
        result += input
        return result


class CNBlockConfig:
    def __init__(self, input_channels: int, out_channels: int | None, num_layers: int) -> None:
        self.input_channels = input_channels
        self.out_channels = out_channels
        self.num_layers = num_layers

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(input_channels={self.input_channels}, "
                f"out_channels={self.out_channels}, num_layers={self.num_layers})")


class ConvNeXt(nn.Module):
    def __init__(self, block_setting: list[CNBlockConfig], stochastic_depth_prob: float = 0.0,
                 layer_scale: float = 1e-6, num_classes: int = 1000,
                 block: Callable[..., nn.Module] | None = None,
                 norm_layer: Callable[..., nn.Module] | None = None, **kwargs: Any) -> None:
        super().__init__()
        if not block_setting:
            raise ValueError("The block_setting should not be empty")
        if block is None:
            block = CNBlock
        if norm_layer is None:
            norm_layer = partial(LayerNorm2d, eps=1e-6)
        layers: list[nn.Module] = []
        firstconv_output_channels = block_setting[0].input_channels
        layers.append(Conv2dNormActivation(3, firstconv_output_channels, kernel_size=4,
                                           stride=4, padding=0, norm_layer=norm_layer,
                                           activation_layer=None, bias=True))
        total_stage_blocks = sum(cnf.num_layers for cnf in block_setting)
        stage_block_id = 0
        for cnf in block_setting:
            stage: list[nn.Module] = []
            for _ in range(cnf.num_layers):
                sd_prob = stochastic_depth_prob * stage_block_id / (total_stage_blocks - 1.0)
                stage.append(block(cnf.input_channels, layer_scale, sd_prob))
                stage_block_id += 1
            layers.append(nn.Sequential(*stage))
            if cnf.out_channels is not None:
                layers.append(nn.Sequential(
                    norm_layer(cnf.input_channels),
                    nn.Conv2d(cnf.input_channels, cnf.out_channels, kernel_size=2, stride=2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        lastblock = block_setting[-1]
        last_channels = (lastblock.out_channels if lastblock.out_channels is not None
                         else lastblock.input_channels)
        self.classifier = nn.Sequential(norm_layer(last_channels), nn.Flatten(1),
                                        nn.Linear(last_channels, num_classes))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def _convnext(block_setting: list[CNBlockConfig], stochastic_depth_prob: float,
              weights: WeightsEnum | None, progress: bool, **kwargs: Any) -> ConvNeXt:
    if weights is not None:
        _ovewrite_named_param(kwargs, "num_classes", weights.meta["num_classes"])
    model = ConvNeXt(block_setting, stochastic_depth_prob=stochastic_depth_prob, **kwargs)
    if weights is not None:
        model.load_state_dict(weights.get_state_dict(progress=progress, check_hash=True))
    return model


class ConvNeXt_Tiny_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("convnext_tiny-983f1562.pth", 28589128, 82.520, 96.146, resize_size=236,
                       min_size=(32, 32))
    DEFAULT = IMAGENET1K_V1


class ConvNeXt_Small_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("convnext_small-0c510722.pth", 50223688, 83.616, 96.650,
                       resize_size=230, min_size=(32, 32))
    DEFAULT = IMAGENET1K_V1


class ConvNeXt_Base_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("convnext_base-6075fbad.pth", 88591464, 84.062, 96.870, resize_size=232,
                       min_size=(32, 32))
    DEFAULT = IMAGENET1K_V1


class ConvNeXt_Large_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("convnext_large-ea097f82.pth", 197767336, 84.414, 96.976,
                       resize_size=232, min_size=(32, 32))
    DEFAULT = IMAGENET1K_V1


def _stages(widths: tuple[int, int, int, int], depths: tuple[int, int, int, int]) -> list:
    outs = list(widths[1:]) + [None]
    return [CNBlockConfig(w, o, d) for w, o, d in zip(widths, outs, depths)]


@register_model(weights=ConvNeXt_Tiny_Weights)
def convnext_tiny(*, weights: ConvNeXt_Tiny_Weights | None = None, progress: bool = True,
                  **kwargs: Any) -> ConvNeXt:
    """ConvNeXt Tiny from `A ConvNet for the 2020s <https://arxiv.org/abs/2201.03545>`_."""
    weights = ConvNeXt_Tiny_Weights.verify(weights)
    sd = kwargs.pop("stochastic_depth_prob", 0.1)
    return _convnext(_stages((96, 192, 384, 768), (3, 3, 9, 3)), sd, weights, progress,
                     **kwargs)


@register_model(weights=ConvNeXt_Small_Weights)
def convnext_small(*, weights: ConvNeXt_Small_Weights | None = None, progress: bool = True,
                   **kwargs: Any) -> ConvNeXt:
    weights = ConvNeXt_Small_Weights.verify(weights)
    sd = kwargs.pop("stochastic_depth_prob", 0.4)
    return _convnext(_stages((96, 192, 384, 768), (3, 3, 27, 3)), sd, weights, progress,
                     **kwargs)


@register_model(weights=ConvNeXt_Base_Weights)
def convnext_base(*, weights: ConvNeXt_Base_Weights | None = None, progress: bool = True,
                  **kwargs: Any) -> ConvNeXt:
    weights = ConvNeXt_Base_Weights.verify(weights)
    sd = kwargs.pop("stochastic_depth_prob", 0.5)
    return _convnext(_stages((128, 256, 512, 1024), (3, 3, 27, 3)), sd, weights, progress,
                     **kwargs)


@register_model(weights=ConvNeXt_Large_Weights)
def convnext_large(*, weights: ConvNeXt_Large_Weights | None = None, progress: bool = True,
                   **kwargs: Any) -> ConvNeXt:
    weights = ConvNeXt_Large_Weights.verify(weights)
    sd = kwargs.pop("stochastic_depth_prob", 0.5)
    return _convnext(_stages((192, 384, 768, 1536), (3, 3, 27, 3)), sd, weights, progress,
                     **kwargs)
