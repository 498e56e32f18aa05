"""Where a trained two-stage detector loses AP50: its proposals, its ranking, its second stage.

    python -m focal_rpn.tools.proposal_report output/rpn-trees/rpn_ce/seed0 [RUN_DIR ...] [--output report.json]

Each RUN_DIR is a finished run (config.yaml, model_final.pth; a FocalFasterRCNN, which returns
its proposals beside its detections). On its test set (or --dataset), class-agnostic, IoU 0.5:

- ``AP50``: the detections as the model scores them (COCO's AP50 for a one-class dataset);
- ``AP50 RPN only``: the proposals as detections, scored by objectness, after the box head's NMS
  and detection cap: what the RPN alone would give, so the difference is what the box head adds;
- ``AP50 oracle``: the same detections re-scored by their IoU with the nearest ground truth: what a
  perfect ranking of these boxes would give, so the difference is what the ranking loses;
- ``covered``: the fraction of ground-truth boxes with a proposal at IoU ≥ 0.5, the ceiling
  on recall that the RPN leaves the box head.
"""
import argparse
import json
import os
from typing import Dict, List, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.structures import BoxMode
from torchvision.ops import box_iou, nms

from ..config import load_config


def match(boxes: torch.Tensor, scores: torch.Tensor, gt: torch.Tensor, thresh: float = 0.5) -> np.ndarray:
    """COCO's greedy matching: boxes (D, 4) in descending score order each take the unmatched gt
    (G, 4) they overlap most if IoU ≥ thresh. Returns (D,) true-positive flags in the order of ``scores``
    sorted descending."""
    order = torch.argsort(scores, descending=True, stable=True)
    if len(gt) == 0 or len(boxes) == 0:
        return np.zeros(len(boxes), dtype=bool)
    iou = box_iou(boxes[order].double(), gt.double())
    taken = torch.zeros(len(gt), dtype=torch.bool)
    tp = np.zeros(len(boxes), dtype=bool)
    for i in range(len(boxes)):
        row = iou[i].masked_fill(taken, -1.0)
        j = int(row.argmax())
        if row[j] >= thresh:
            taken[j] = True
            tp[i] = True
    return tp


def average_precision(per_image: List[Tuple[torch.Tensor, np.ndarray]], num_gt: int) -> float:
    """COCO-style AP (101 recall points, precision made monotone) from per-image (scores sorted
    descending, true-positive flags), pooled over images; in percent."""
    if num_gt == 0:
        return float("nan")
    scores = np.concatenate([s.numpy() for s, _ in per_image]) if per_image else np.zeros(0)
    tp = np.concatenate([t for _, t in per_image]) if per_image else np.zeros(0, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    tp = tp[order]
    ctp = np.cumsum(tp)
    precision = ctp / np.arange(1, len(tp) + 1)
    recall = ctp / num_gt
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return 100.0 * float(np.mean([precision[k] if k < len(precision) else 0.0 for k in idx]))


def gt_boxes(record: dict) -> torch.Tensor:
    """(G, 4) XYXY boxes of a dataset dict's non-crowd annotations."""
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
             for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


@torch.no_grad()
def report_run(run_dir: str, dataset: str = "") -> Dict[str, float]:
    """The four readings of one run (see the module docstring), with the run and dataset named."""
    from ..engine import Trainer, load_weights_strict

    cfg = load_config(os.path.join(run_dir, "config.yaml"), [])
    dataset = dataset or cfg.DATASETS.TEST[0]
    model = Trainer.build_model(cfg)
    load_weights_strict(model, os.path.join(run_dir, "model_final.pth"))
    model.eval()
    mapper = DatasetMapper(cfg, is_train=False)
    nms_thresh, cap = cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST, cfg.TEST.DETECTIONS_PER_IMAGE
    dets, rpn_only, oracle = [], [], []
    num_gt = covered = 0
    for record in DatasetCatalog.get(dataset):
        out = model([mapper(record)])[0]
        if "proposals" not in out:
            raise SystemExit(f"{run_dir}: {cfg.MODEL.META_ARCHITECTURE} returns no proposals; "
                             "proposal_report reads FocalFasterRCNN runs")
        gt = gt_boxes(record)
        boxes, scores = out["instances"].pred_boxes.tensor.cpu(), out["instances"].scores.cpu()
        props = out["proposals"]
        pboxes, pscores = props.proposal_boxes.tensor.cpu(), props.objectness_logits.cpu()
        keep = nms(pboxes, pscores, nms_thresh)[:cap]
        best = box_iou(boxes, gt).max(dim=1).values if len(gt) and len(boxes) else torch.zeros(len(boxes))
        for acc, b, s in ((dets, boxes, scores), (rpn_only, pboxes[keep], pscores[keep]), (oracle, boxes, best)):
            acc.append((torch.sort(s, descending=True, stable=True).values, match(b, s, gt)))
        num_gt += len(gt)
        if len(gt) and len(pboxes):
            covered += int((box_iou(gt, pboxes).max(dim=1).values >= 0.5).sum())
    return {"run": run_dir, "dataset": dataset, "AP50": average_precision(dets, num_gt),
            "AP50 RPN only": average_precision(rpn_only, num_gt), "AP50 oracle": average_precision(oracle, num_gt),
            "covered": 100.0 * covered / max(num_gt, 1), "ground truth": num_gt}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders (config.yaml, model_final.pth)")
    ap.add_argument("--dataset", default="", help="registered dataset (default: the run's DATASETS.TEST[0])")
    ap.add_argument("--output", help="also write the readings to this JSON file")
    args = ap.parse_args(argv)
    for run in args.runs:
        for name in ("config.yaml", "model_final.pth"):
            if not os.path.isfile(os.path.join(run, name)):
                raise SystemExit(f"{run}: no {name} (a finished run folder is expected)")
    rows = [report_run(run, args.dataset) for run in args.runs]
    cols = ["AP50", "AP50 RPN only", "AP50 oracle", "covered"]
    print("| run | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for r in rows:
        print(f"| {r['run']} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
