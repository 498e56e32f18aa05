"""Average precision at one low IoU threshold and the best F-score: DeepPCB's own measure.

DeepPCB's authors count a detection as correct at IoU > 0.33 with its box's class, and report the
mean AP over the six classes and the F-score. :class:`IoUThresholdEvaluator` computes both beside
COCOEvaluator, with COCO's conventions so that the AP equals pycocotools run with
``iouThrs = [0.33]`` (tested): per image and class, detections by descending score each take the
unmatched ground-truth box they overlap most at IoU >= the threshold; precision is made monotone
and read at 101 recall points; at most ``max_dets`` detections per image.
"""
import itertools
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of XYXY boxes a (N, 4) and b (M, 4), areas without COCO's old +1."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_image(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray, iou: float) -> np.ndarray:
    """Whether each detection (one image, one class) is a true positive: by descending score,
    each takes the unmatched ground-truth box of highest IoU, if that IoU >= ``iou``.
    Returns a bool array aligned with the inputs."""
    tp = np.zeros(len(det_scores), dtype=bool)
    if len(gt_boxes) == 0 or len(det_scores) == 0:
        return tp
    ious = box_iou_xyxy(det_boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for d in np.argsort(-det_scores, kind="mergesort"):
        cand = np.where(taken, -1.0, ious[d])
        g = int(np.argmax(cand))
        if cand[g] >= iou:
            taken[g] = tp[d] = True
    return tp


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """COCO's 101-point interpolated AP of detections (``scores``, ``tp`` flags) of one class
    over ``num_gt`` ground-truth boxes; NaN without ground truth."""
    if num_gt == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    tps = np.cumsum(tp[order])
    fps = np.cumsum(~tp[order])
    recall = tps / num_gt
    precision = tps / np.maximum(tps + fps, np.finfo(np.float64).eps)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in idx]))


def best_f_score(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> Tuple[float, float, float, float]:
    """(F, score threshold, precision, recall) at the score threshold of highest F-score, over
    detections of every class pooled; all zero without true positives."""
    order = np.argsort(-scores, kind="mergesort")
    tps = np.cumsum(tp[order])
    n = np.arange(1, len(order) + 1)
    precision, recall = tps / n, tps / max(num_gt, 1)
    f = np.where(tps > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    if len(f) == 0 or f.max() == 0:
        return 0.0, 0.0, 0.0, 0.0
    # a threshold keeps every detection of equal score: read F at the last of a run of ties
    s = scores[order]
    last_of_tie = np.append(s[1:] != s[:-1], True)
    k = int(np.argmax(np.where(last_of_tie, f, -1)))
    return float(f[k]), float(s[k]), float(precision[k]), float(recall[k])


def evaluate_detections(gts: Dict[object, List[Tuple[Sequence[float], int]]],
                        dets: Dict[object, List[Tuple[Sequence[float], float, int]]],
                        class_names: Sequence[str], iou: float, max_dets: int = 100) -> Dict[str, float]:
    """The measure over images: ``gts[image] = [(XYXY box, class)]``, ``dets[image] = [(XYXY box,
    score, class)]``. Returns ``{"mAP", "AP-<class>", "F", "F_score_thresh", "precision",
    "recall"}`` in percent (thresholds as scores)."""
    per_class = defaultdict(lambda: ([], []))  # class -> (scores, tp flags)
    num_gt = defaultdict(int)
    for image in set(gts) | set(dets):
        g_all = gts.get(image, [])
        d_all = sorted(dets.get(image, []), key=lambda d: -d[1])[:max_dets]
        for c in range(len(class_names)):
            g = np.array([b for b, k in g_all if k == c], dtype=np.float64).reshape(-1, 4)
            d = [(b, s) for b, s, k in d_all if k == c]
            boxes = np.array([b for b, _ in d], dtype=np.float64).reshape(-1, 4)
            scores = np.array([s for _, s in d], dtype=np.float64)
            num_gt[c] += len(g)
            per_class[c][0].append(scores)
            per_class[c][1].append(match_image(boxes, scores, g, iou))
    out, aps = {}, []
    all_scores, all_tp = [], []
    for c, name in enumerate(class_names):
        scores = np.concatenate(per_class[c][0]) if per_class[c][0] else np.zeros(0)
        tp = np.concatenate(per_class[c][1]) if per_class[c][1] else np.zeros(0, dtype=bool)
        ap = average_precision(scores, tp, num_gt[c])
        out[f"AP-{name}"] = 100 * ap
        if not np.isnan(ap):
            aps.append(ap)
        all_scores.append(scores)
        all_tp.append(tp)
    out["mAP"] = 100 * float(np.mean(aps)) if aps else float("nan")
    f, thresh, p, r = best_f_score(np.concatenate(all_scores), np.concatenate(all_tp), sum(num_gt.values()))
    out.update({"F": 100 * f, "F_score_thresh": thresh, "precision": 100 * p, "recall": 100 * r})
    return out


class IoUThresholdEvaluator(DatasetEvaluator):
    """Detectron2 evaluator of :func:`evaluate_detections` on a registered dataset; its results
    are ``{task: {"mAP", "AP-<class>", "F", ...}}`` (``metrics.json``: ``deeppcb/mAP`` ...)."""

    def __init__(self, dataset_name: str, iou: float = 0.33, max_dets: int = 100, task: str = "deeppcb"):
        self._dataset_name, self._iou, self._max_dets, self._task = dataset_name, iou, max_dets, task
        self._classes = MetadataCatalog.get(dataset_name).thing_classes
        self.reset()

    def reset(self):
        self._dets = {}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            self._dets[inp["image_id"]] = list(zip(inst.pred_boxes.tensor.tolist(), inst.scores.tolist(),
                                                   inst.pred_classes.tolist()))

    def evaluate(self):
        comm.synchronize()
        gathered = comm.gather(self._dets, dst=0)
        if not comm.is_main_process():
            return {}
        dets = dict(itertools.chain.from_iterable(d.items() for d in gathered))
        gts = {}
        for d in DatasetCatalog.get(self._dataset_name):
            if d["image_id"] in dets:
                gts[d["image_id"]] = [(BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS), a["category_id"])
                                      for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
        return {self._task: evaluate_detections(gts, dets, self._classes, self._iou, self._max_dets)}
