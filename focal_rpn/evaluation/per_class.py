"""COCOEvaluator with per-class AP50 beside its per-class AP."""
import numpy as np
from detectron2.evaluation import COCOEvaluator


class PerClassCOCOEvaluator(COCOEvaluator):
    """Detectron2's COCOEvaluator whose results also hold ``AP50-<class>`` for datasets of more
    than one class: with imbalanced classes the rare ones' AP50 is what a user asks first, and COCO's
    summary has it only over all classes."""

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        if coco_eval is None or class_names is None or len(class_names) <= 1:
            return results
        # precision: (IoU thresholds, recall points, classes, area ranges, max dets); IoU 0.5 is
        # the first threshold, area range 0 all sizes, the last max-dets setting as COCO's AP uses
        assert abs(coco_eval.params.iouThrs[0] - 0.5) < 1e-9
        precision = coco_eval.eval["precision"][0, :, :, 0, -1]
        for k, name in enumerate(class_names):
            p = precision[:, k]
            p = p[p > -1]
            results[f"AP50-{name}"] = float(np.mean(p) * 100) if p.size else float("nan")
        return results
