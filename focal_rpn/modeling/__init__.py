"""Registered models: importing this package registers every component."""
from .backbone import build_narrow_resnet_fpn_backbone
from .focal_retinanet import FocalRetinaNet

__all__ = ["FocalRetinaNet", "build_narrow_resnet_fpn_backbone"]
