"""EfficientNet B0-B7 (Tan & Le, 2019)."""
from __future__ import annotations

import copy
import math
from functools import partial
from typing import Any, Callable

import ember
from ember import Tensor, nn
from ember.vision.models._api import WeightsEnum, _ovewrite_named_param, register_model
from ember.vision.models._meta import imagenet_weights
from ember.vision.models._utils import _make_divisible
from ember.vision.ops.misc import Conv2dNormActivation, SqueezeExcitation
from ember.vision.ops.misc import StochasticDepth
from ember.vision.transforms.functional import InterpolationMode

__all__ = ["EfficientNet", "EfficientNet_B0_Weights", "EfficientNet_B1_Weights",
           "EfficientNet_B2_Weights", "EfficientNet_B3_Weights", "EfficientNet_B4_Weights",
           "EfficientNet_B5_Weights", "EfficientNet_B6_Weights", "EfficientNet_B7_Weights",
           "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
           "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
           "MBConvConfig", "MBConv"]


class MBConvConfig:
    """One stage: expand ratio, kernel, stride, channels in/out, layers (width/depth scaled)."""

    def __init__(self, expand_ratio: float, kernel: int, stride: int, input_channels: int,
                 out_channels: int, num_layers: int, width_mult: float = 1.0,
                 depth_mult: float = 1.0, block: Callable[..., nn.Module] | None = None) -> None:
        self.expand_ratio = expand_ratio
        self.kernel = kernel
        self.stride = stride
        self.input_channels = self.adjust_channels(input_channels, width_mult)
        self.out_channels = self.adjust_channels(out_channels, width_mult)
        self.num_layers = self.adjust_depth(num_layers, depth_mult)
        self.block = MBConv if block is None else block

    @staticmethod
    def adjust_channels(channels: int, width_mult: float, min_value: int | None = None) -> int:
        return _make_divisible(channels * width_mult, 8, min_value)

    @staticmethod
    def adjust_depth(num_layers: int, depth_mult: float) -> int:
        return int(math.ceil(num_layers * depth_mult))


class MBConv(nn.Module):
    def __init__(self, cnf: MBConvConfig, stochastic_depth_prob: float,
                 norm_layer: Callable[..., nn.Module],
                 se_layer: Callable[..., nn.Module] = SqueezeExcitation) -> None:
        super().__init__()
        if not (1 <= cnf.stride <= 2):
            raise ValueError("illegal stride value")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        layers: list[nn.Module] = []
        activation_layer = nn.SiLU
        expanded_channels = cnf.adjust_channels(cnf.input_channels, cnf.expand_ratio)
        if expanded_channels != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, expanded_channels,
                                               kernel_size=1, norm_layer=norm_layer,
                                               activation_layer=activation_layer))
        layers.append(Conv2dNormActivation(expanded_channels, expanded_channels,
                                           kernel_size=cnf.kernel, stride=cnf.stride,
                                           groups=expanded_channels, norm_layer=norm_layer,
                                           activation_layer=activation_layer))
        squeeze_channels = max(1, cnf.input_channels // 4)
        layers.append(se_layer(expanded_channels, squeeze_channels,
                               activation=partial(nn.SiLU, inplace=True)))
        layers.append(Conv2dNormActivation(expanded_channels, cnf.out_channels, kernel_size=1,
                                           norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.out_channels = cnf.out_channels

    def forward(self, input: Tensor) -> Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += input
        return result


class EfficientNet(nn.Module):
    def __init__(self, inverted_residual_setting: list[MBConvConfig], dropout: float,
                 stochastic_depth_prob: float = 0.2, num_classes: int = 1000,
                 norm_layer: Callable[..., nn.Module] | None = None,
                 last_channel: int | None = None) -> None:
        super().__init__()
        if not inverted_residual_setting:
            raise ValueError("The inverted_residual_setting should not be empty")
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        layers: list[nn.Module] = []
        firstconv_output_channels = inverted_residual_setting[0].input_channels
        layers.append(Conv2dNormActivation(3, firstconv_output_channels, kernel_size=3,
                                           stride=2, norm_layer=norm_layer,
                                           activation_layer=nn.SiLU))
        total_stage_blocks = sum(cnf.num_layers for cnf in inverted_residual_setting)
        stage_block_id = 0
        for cnf in inverted_residual_setting:
            stage: list[nn.Module] = []
            for _ in range(cnf.num_layers):
                block_cnf = copy.copy(cnf)
                if stage:
                    block_cnf.input_channels = block_cnf.out_channels
                    block_cnf.stride = 1
                # the drop probability grows linearly with depth
                sd_prob = stochastic_depth_prob * float(stage_block_id) / total_stage_blocks
                stage.append(block_cnf.block(block_cnf, sd_prob, norm_layer))
                stage_block_id += 1
            layers.append(nn.Sequential(*stage))
        lastconv_input_channels = inverted_residual_setting[-1].out_channels
        lastconv_output_channels = (last_channel if last_channel is not None
                                    else 4 * lastconv_input_channels)
        layers.append(Conv2dNormActivation(lastconv_input_channels, lastconv_output_channels,
                                           kernel_size=1, norm_layer=norm_layer,
                                           activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True),
                                        nn.Linear(lastconv_output_channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                init_range = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -init_range, init_range)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(ember.flatten(x, 1))


def _efficientnet_conf(width_mult: float, depth_mult: float) -> list[MBConvConfig]:
    bneck_conf = partial(MBConvConfig, width_mult=width_mult, depth_mult=depth_mult)
    return [
        bneck_conf(1, 3, 1, 32, 16, 1),
        bneck_conf(6, 3, 2, 16, 24, 2),
        bneck_conf(6, 5, 2, 24, 40, 2),
        bneck_conf(6, 3, 2, 40, 80, 3),
        bneck_conf(6, 5, 1, 80, 112, 3),
        bneck_conf(6, 5, 2, 112, 192, 4),
        bneck_conf(6, 3, 1, 192, 320, 1),
    ]


def _w(file: str, params: int, acc1: float, acc5: float, crop: int, resize: int) -> Any:
    return imagenet_weights(file, params, acc1, acc5, crop_size=crop, resize_size=resize,
                            interpolation=InterpolationMode.BICUBIC)


class EfficientNet_B0_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("efficientnet_b0_rwightman-7f5810bc.pth", 5288548, 77.692, 93.532,
                       224, 256)
    DEFAULT = IMAGENET1K_V1


class EfficientNet_B1_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("efficientnet_b1_rwightman-bac287d4.pth", 7794184, 78.642, 94.186,
                       240, 256)
    DEFAULT = IMAGENET1K_V1


class EfficientNet_B2_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("efficientnet_b2_rwightman-c35c1473.pth", 9109994, 80.608, 95.310,
                       288, 288)
    DEFAULT = IMAGENET1K_V1


class EfficientNet_B3_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("efficientnet_b3_rwightman-b3899882.pth", 12233232, 82.008, 96.054,
                       300, 320)
    DEFAULT = IMAGENET1K_V1


class EfficientNet_B4_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("efficientnet_b4_rwightman-23ab8bcd.pth", 19341616, 83.384, 96.594,
                       380, 384)
    DEFAULT = IMAGENET1K_V1


class EfficientNet_B5_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("efficientnet_b5_lukemelas-1a07897c.pth", 30389784, 83.444, 96.628,
                       456, 456)
    DEFAULT = IMAGENET1K_V1


class EfficientNet_B6_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("efficientnet_b6_lukemelas-24a108a5.pth", 43040704, 84.008, 96.916,
                       528, 528)
    DEFAULT = IMAGENET1K_V1


class EfficientNet_B7_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("efficientnet_b7_lukemelas-c5b4e57e.pth", 66347960, 84.122, 96.908,
                       600, 600)
    DEFAULT = IMAGENET1K_V1


# (width_mult, depth_mult, dropout, BN eps/momentum from the TF ports for b5-b7)
_SCALES = {"b0": (1.0, 1.0, 0.2, False), "b1": (1.0, 1.1, 0.2, False),
           "b2": (1.1, 1.2, 0.3, False), "b3": (1.2, 1.4, 0.3, False),
           "b4": (1.4, 1.8, 0.4, False), "b5": (1.6, 2.2, 0.4, True),
           "b6": (1.8, 2.6, 0.5, True), "b7": (2.0, 3.1, 0.5, True)}


def _efficientnet(variant: str, weights: WeightsEnum | None, progress: bool,
                  **kwargs: Any) -> EfficientNet:
    width, depth, dropout, tf_bn = _SCALES[variant]
    if weights is not None:
        _ovewrite_named_param(kwargs, "num_classes", weights.meta["num_classes"])
    if tf_bn:
        kwargs.setdefault("norm_layer", partial(nn.BatchNorm2d, eps=0.001, momentum=0.01))
    setting = _efficientnet_conf(width, depth)
    model = EfficientNet(setting, kwargs.pop("dropout", dropout), **kwargs)
    if weights is not None:
        model.load_state_dict(weights.get_state_dict(progress=progress, check_hash=True))
    return model


def _builder(variant: str, enum: type) -> Any:
    def build(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> EfficientNet:
        return _efficientnet(variant, enum.verify(weights), progress, **kwargs)
    build.__name__ = build.__qualname__ = f"efficientnet_{variant}"
    build.__doc__ = (f"EfficientNet-{variant.upper()} from `EfficientNet: Rethinking Model "
                     f"Scaling <https://arxiv.org/abs/1905.11946>`_.")
    return register_model(weights=enum)(build)


efficientnet_b0 = _builder("b0", EfficientNet_B0_Weights)
efficientnet_b1 = _builder("b1", EfficientNet_B1_Weights)
efficientnet_b2 = _builder("b2", EfficientNet_B2_Weights)
efficientnet_b3 = _builder("b3", EfficientNet_B3_Weights)
efficientnet_b4 = _builder("b4", EfficientNet_B4_Weights)
efficientnet_b5 = _builder("b5", EfficientNet_B5_Weights)
efficientnet_b6 = _builder("b6", EfficientNet_B6_Weights)
efficientnet_b7 = _builder("b7", EfficientNet_B7_Weights)
