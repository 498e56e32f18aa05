"""Registered models: importing this package registers every component."""
from .focal_retinanet import FocalRetinaNet

__all__ = ["FocalRetinaNet"]
