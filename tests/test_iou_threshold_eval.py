"""DeepPCB's measure (AP at IoU 0.33, best F-score) against hand computations and pycocotools."""
import contextlib
import io
import math

import numpy as np
import pytest

from focal_rpn.evaluation.iou_threshold import best_f_score, evaluate_detections


def test_hand_made_case():
    # one class, 2 ground-truth boxes in one image; detections by score: a hit at IoU 0.4
    # (counts at 0.33, not at 0.5), a duplicate of it (false positive), then a hit
    gts = {1: [([0, 0, 10, 10], 0), ([20, 20, 30, 30], 0)]}
    hit_04 = [0, 0, 10, 4]  # IoU with the first box: 40 / 100
    dets = {1: [(hit_04, 0.9, 0), ([0, 0, 10, 4.1], 0.8, 0), ([20, 20, 30, 30], 0.7, 0)]}
    out = evaluate_detections(gts, dets, ["a"], iou=0.33)
    # precision after each detection: 1, 1/2, 2/3; recall 0.5, 0.5, 1. Envelope: 1 up to recall
    # 0.5 (51 of 101 points), then 2/3 (50 points).
    assert out["AP-a"] == pytest.approx(100 * (51 * 1 + 50 * 2 / 3) / 101)
    assert out["mAP"] == out["AP-a"]
    # best F: at score 0.7 (P 2/3, R 1 -> F 0.8) against 0.9 (P 1, R 0.5 -> F 2/3)
    assert out["F"] == pytest.approx(80.0) and out["F_score_thresh"] == 0.7
    assert out["precision"] == pytest.approx(200 / 3) and out["recall"] == pytest.approx(100.0)
    # at IoU 0.5 the first two are false positives: precision 0, 0, 1/3 at recall 0, 0, 0.5
    assert evaluate_detections(gts, dets, ["a"], iou=0.5)["AP-a"] == pytest.approx(100 * 51 / 3 / 101)


def test_wrong_class_and_missing_class():
    gts = {1: [([0, 0, 10, 10], 0)], 2: [([0, 0, 10, 10], 1)]}
    dets = {1: [([0, 0, 10, 10], 0.9, 1)], 2: [([0, 0, 10, 10], 0.8, 1)]}
    out = evaluate_detections(gts, dets, ["a", "b", "c"], iou=0.33)
    assert out["AP-a"] == 0.0
    # class b: a false positive (image 1) ranked above the hit: precision 1/2 at recall 1
    assert out["AP-b"] == pytest.approx(50.0)
    assert math.isnan(out["AP-c"])  # no ground truth: left out of the mean
    assert out["mAP"] == pytest.approx(25.0)


def test_f_score_ties_are_one_threshold():
    # two detections of equal score, one right and one wrong: a threshold keeps both
    f, thresh, p, r = best_f_score(np.array([0.5, 0.5]), np.array([True, False]), 1)
    assert (f, thresh, p, r) == pytest.approx((2 * 0.5 / 1.5, 0.5, 0.5, 1.0))


def _random_case(seed=0):
    """20 images of 0-5 boxes of 3 classes, jittered detections (some of the wrong class) and
    background ones: (gts, dets, COCO images, annotations, results)."""
    rng = np.random.default_rng(seed)
    gts, dets, images, anns, results = {}, {}, [], [], []
    for img in range(1, 21):
        images.append({"id": img, "width": 200, "height": 200})
        g = []
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(8, 50, 2)
            c = int(rng.integers(0, 3))
            g.append(([x, y, x + w, y + h], c))
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": c + 1, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
        d = []
        for box, c in g:  # jittered copies (IoU around the threshold), some with the wrong class
            for _ in range(int(rng.integers(0, 3))):
                x0, y0, x1, y1 = np.array(box) + rng.normal(0, 6, 4)
                d.append(([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)], float(rng.uniform()),
                          c if rng.uniform() < 0.8 else int(rng.integers(0, 3))))
        for _ in range(int(rng.integers(0, 3))):  # background detections
            x, y = rng.uniform(0, 150, 2)
            d.append(([x, y, x + 20, y + 20], float(rng.uniform()), int(rng.integers(0, 3))))
        gts[img], dets[img] = g, d
        results += [{"image_id": img, "category_id": c + 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                     "score": s} for b, s, c in d]
    return gts, dets, images, anns, results


CLASSES = ["open", "short", "spur"]


def _cocoeval(images, anns, results, iou_thresholds=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns,
                        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        if iou_thresholds is not None:
            ev.params.iouThrs = np.array(iou_thresholds)
        ev.evaluate()
        ev.accumulate()
        if iou_thresholds is None:
            ev.summarize()
    return ev


def test_against_pycocotools_at_iou_033():
    classes = CLASSES
    gts, dets, images, anns, results = _random_case()
    ours = evaluate_detections(gts, dets, classes, iou=0.33)
    ev = _cocoeval(images, anns, results, [0.33])
    # precision: [T, R, K, area, maxDets]; area "all", maxDets 100
    for k, name in enumerate(classes):
        ref = ev.eval["precision"][0, :, k, 0, -1]
        assert ours[f"AP-{name}"] == pytest.approx(100 * ref.mean(), abs=1e-9), name
    assert 0 < ours["mAP"] < 100


def test_per_class_ap50_is_pycocotools_at_iou_05():
    """PerClassCOCOEvaluator's AP50-<class> (taken from COCO's 0.5:0.95 evaluation) equals
    pycocotools evaluated at the single IoU threshold 0.5; Detectron2's AP-<class> stays."""
    import logging

    from focal_rpn.evaluation import PerClassCOCOEvaluator

    _, _, images, anns, results = _random_case(1)
    full = _cocoeval(images, anns, results)
    evaluator = PerClassCOCOEvaluator.__new__(PerClassCOCOEvaluator)
    evaluator._logger = logging.getLogger("test")
    out = evaluator._derive_coco_results(full, "bbox", CLASSES)
    at_05 = _cocoeval(images, anns, results, [0.5])
    for k, name in enumerate(CLASSES):
        ref = at_05.eval["precision"][0, :, k, 0, -1]
        assert out[f"AP50-{name}"] == pytest.approx(100 * ref[ref > -1].mean(), abs=1e-9), name
        assert f"AP-{name}" in out
    assert out["AP50"] == pytest.approx(100 * full.stats[1])
    assert np.mean([out[f"AP50-{n}"] for n in CLASSES]) == pytest.approx(out["AP50"])  # COCO: the mean over classes
