"""Evaluators beside Detectron2's COCOEvaluator."""
from .iou_threshold import IoUThresholdEvaluator, evaluate_detections
from .per_class import PerClassCOCOEvaluator

__all__ = ["IoUThresholdEvaluator", "PerClassCOCOEvaluator", "evaluate_detections"]
