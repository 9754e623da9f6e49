"""Detection and model-building ops (``torchvision.ops``)."""
from ember.vision.ops.boxes import (  # noqa: F401
    batched_nms, box_area, box_convert, box_iou, clip_boxes_to_image, generalized_box_iou,
    distance_box_iou, complete_box_iou, masks_to_boxes, nms, remove_small_boxes)
from ember.vision.ops.roi import RoIAlign, RoIPool, roi_align, roi_pool  # noqa: F401
from ember.vision.ops.misc import (  # noqa: F401
    Conv2dNormActivation, Conv3dNormActivation, FrozenBatchNorm2d, MLP, Permute,
    SqueezeExcitation, StochasticDepth, stochastic_depth)
from ember.vision.ops.focal_loss import sigmoid_focal_loss  # noqa: F401
