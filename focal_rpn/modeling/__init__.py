"""Registered models: importing this package registers every component."""
from .backbone import build_narrow_resnet_fpn_backbone
from .focal_faster_rcnn import FocalFasterRCNN
from .focal_retinanet import FocalRetinaNet
from .focal_rpn import FocalRPN
from .softmax_rpn_head import SoftmaxRPNHead

__all__ = ["FocalFasterRCNN", "FocalRetinaNet", "FocalRPN", "SoftmaxRPNHead", "build_narrow_resnet_fpn_backbone"]
