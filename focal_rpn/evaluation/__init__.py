"""Evaluators beside Detectron2's COCOEvaluator."""
from .iou_threshold import IoUThresholdEvaluator, evaluate_detections

__all__ = ["IoUThresholdEvaluator", "evaluate_detections"]
