"""Registered models: importing this package registers every component."""
from .backbone import build_narrow_resnet_fpn_backbone
from .focal_faster_rcnn import FocalFasterRCNN
from .focal_retinanet import FocalRetinaNet
from .focal_roi_heads import FocalROIHeads
from .focal_rpn import FocalRPN
from .ohem_roi_heads import OHEMROIHeads
from .softmax_rpn_head import SoftmaxRPNHead

__all__ = [
    "FocalFasterRCNN", "FocalRetinaNet", "FocalROIHeads", "FocalRPN", "OHEMROIHeads", "SoftmaxRPNHead",
    "build_narrow_resnet_fpn_backbone",
]
