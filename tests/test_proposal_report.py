"""proposal_report: its AP50 against pycocotools' COCOeval, and a run folder read end to end."""
import contextlib
import io

import numpy as np
import pytest
import torch

from focal_rpn.tools import proposal_report as pr
def _coco_ap50(images):
    """pycocotools' AP at IoU 0.5, one category, every detection counted."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gts, dets = [], []
    for i, (gt, boxes, scores) in enumerate(images):
        gts += [{"id": len(gts) + k + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                 "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": float((b[2] - b[0]) * (b[3] - b[1]))}
                for k, b in enumerate(gt.tolist())]
        dets += [{"image_id": i, "category_id": 1, "score": s, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
                 for b, s in zip(boxes.tolist(), scores.tolist())]
    coco = COCO()
    coco.dataset = {"images": [{"id": i} for i in range(len(images))], "annotations": gts,
                    "categories": [{"id": 1}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.params.maxDets = [1, 10, 1000]
        ev.params.areaRngLbl = ["all"]
        ev.params.areaRng = [[0, 1e10]]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][0, :, 0, 0, -1]  # IoU 0.5, all recalls, the category, all areas, 1000 dets
    return 100 * float(np.mean(np.maximum(precision, 0)))


def _boxes(g, n, size=200.0):
    xy = torch.rand(n, 2, generator=g) * size
    return torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 30], 1)


@pytest.mark.parametrize("seed", range(4))
def test_ap50_is_cocoevals(seed):
    g = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(3):
        gt = _boxes(g, 12)
        # detections near the gt (some hits, some near misses, duplicates) and some elsewhere
        near = gt[torch.randint(0, 12, (20,), generator=g)] + torch.randn(20, 4, generator=g) * 4
        near = torch.cat([torch.minimum(near[:, :2], near[:, 2:] - 1), near[:, 2:]], 1)  # x1 < x2, y1 < y2
        boxes = torch.cat([near, _boxes(g, 10)])
        scores = torch.rand(len(boxes), generator=g)
        images.append((gt, boxes, scores))
    ours = pr.average_precision(
        [(torch.sort(s, descending=True, stable=True).values, pr.match(b, s, gt)) for gt, b, s in images],
        sum(len(gt) for gt, _, _ in images))
    assert ours == pytest.approx(_coco_ap50(images), abs=1e-6)


def test_a_run_folder_end_to_end(tmp_path, make_cfg):
    """An untrained synthetic Faster R-CNN saved as a run folder: the four readings come back as
    percentages over the synthetic_val boxes, and the JSON holds them."""
    from detectron2.checkpoint import DetectionCheckpointer

    from focal_rpn.engine import Trainer

    cfg = make_cfg("configs/synthetic/faster_rcnn.yaml")
    cfg.OUTPUT_DIR = str(tmp_path)
    with open(tmp_path / "config.yaml", "w") as f:
        f.write(cfg.dump())
    torch.manual_seed(0)
    DetectionCheckpointer(Trainer.build_model(cfg), str(tmp_path)).save("model_final")
    rows = pr.main([str(tmp_path), "--output", str(tmp_path / "report.json")])
    (row,) = rows
    assert row["dataset"] == "synthetic_val" and row["ground truth"] > 0
    for key in ("AP50", "AP50 RPN only", "AP50 oracle", "covered"):
        assert 0 <= row[key] <= 100
    import json

    assert json.loads((tmp_path / "report.json").read_text()) == rows


def test_a_folder_without_a_run_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no config.yaml"):
        pr.main([str(tmp_path)])
