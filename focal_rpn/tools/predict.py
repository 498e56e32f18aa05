"""Detections for a folder of (large) photographs: one COCO-results json, one CSV, optional PNGs.

    python -m focal_rpn.tools.predict --config-file configs/trees/retinanet.yaml --input photos/ big.tif \\
        --output out/ --draw MODEL.WEIGHTS output/demo/model_final.pth

Images larger than ``--tile`` pixels are cut into overlapping windows (``--overlap`` pixels shared
by neighbours), each window is predicted, its boxes are shifted back, and the windows are merged:
a box that touches a window edge lying inside the image is dropped (the overlap shows that object
whole in a neighbouring window, as long as objects are smaller than the overlap), then NMS over
everything at the model's test threshold removes what two windows both found.

With ``--gt DATASET`` (a registered dataset, e.g. one of ``DATASETS.REGISTER``), an image found in
it is drawn in the evaluation view of ``focal_rpn.tools.visualize --eval-view`` (true positives, false
positives, missed ground truth) and the totals are printed; other images are drawn as detections.
"""
import argparse
import csv
import glob
import json
import os
from collections import Counter
from typing import Callable, List, Tuple

import numpy as np
import torch
from detectron2.data import MetadataCatalog, detection_utils as utils
from detectron2.structures import Boxes, Instances
from PIL import Image
from torchvision.ops import batched_nms
from tqdm import tqdm

from ..config import is_retinanet, load_config, model_num_classes
from ..data import class_names
from ..data.trees import tile_origins
from ..data.user_datasets import IMAGE_EXTENSIONS
from ..engine import strict_predictor
from .visualize import draw_evaluation, draw_predictions, evaluation_groups, ground_truth_lookup


def expand_inputs(inputs: List[str]) -> List[str]:
    """Files, folders (their images, sorted) and globs -> image paths; a path that matches
    nothing is an error naming it."""
    out = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(glob.glob(item))
        if not found:
            raise FileNotFoundError(f"--input {item}: no such image, folder of images or glob match")
        out += found
    return out


def windows(height: int, width: int, tile: int, overlap: int) -> List[Tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) windows of at most ``tile`` px covering the image, neighbours sharing
    ``overlap`` px (the last row/column flush with the border). One window if it fits."""
    if tile <= 0 or (height <= tile and width <= tile):
        return [(0, 0, width, height)]
    if not 0 <= overlap < tile:
        raise ValueError(f"--overlap must be in [0, --tile), got {overlap} with --tile {tile}")
    stride = tile - overlap
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in tile_origins(height, tile, stride) for x in tile_origins(width, tile, stride)]


def merge_windows(per_window: List[Tuple[Tuple[int, int, int, int], Instances]], image_size: Tuple[int, int],
                  nms_thresh: float, max_dets: int, edge: float = 2.0) -> Instances:
    """Instances of the whole image from each window's Instances (in window coordinates)."""
    height, width = image_size
    boxes, scores, classes = [], [], []
    for (x0, y0, x1, y1), inst in per_window:
        b = inst.pred_boxes.tensor + torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
        # drop boxes touching an edge of this window that is not an edge of the image
        cut = torch.zeros(len(b), dtype=torch.bool)
        if x0 > 0:
            cut |= b[:, 0] <= x0 + edge
        if y0 > 0:
            cut |= b[:, 1] <= y0 + edge
        if x1 < width:
            cut |= b[:, 2] >= x1 - edge
        if y1 < height:
            cut |= b[:, 3] >= y1 - edge
        boxes.append(b[~cut])
        scores.append(inst.scores[~cut])
        classes.append(inst.pred_classes[~cut])
    out = Instances(image_size)
    b, s, c = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
    keep = batched_nms(b, s, c, nms_thresh)[:max_dets] if len(per_window) > 1 else torch.arange(len(b))[:max_dets]
    out.pred_boxes, out.scores, out.pred_classes = Boxes(b[keep]), s[keep], c[keep]
    return out


def nms_thresh(cfg) -> float:
    return cfg.MODEL.RETINANET.NMS_THRESH_TEST if is_retinanet(cfg) else cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST


def predict_image(predict: Callable[[np.ndarray], Instances], bgr: np.ndarray, tile: int, overlap: int,
                  nms: float, max_dets: int, progress=None) -> Instances:
    """Predicts every window of ``bgr`` and merges them (see the module docstring)."""
    per_window = []
    for x0, y0, x1, y1 in windows(*bgr.shape[:2], tile, overlap):
        per_window.append(((x0, y0, x1, y1), predict(bgr[y0:y1, x0:x1])))
        if progress is not None:
            progress.update(1)
    return merge_windows(per_window, bgr.shape[:2], nms, max_dets)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--input", nargs="+", required=True, help="images, folders of images, or globs")
    ap.add_argument("--output", required=True, help="folder for detections.json, detections.csv, PNGs")
    ap.add_argument("--tile", type=int, default=1024, help="window size in px for larger images (0: never cut)")
    ap.add_argument("--overlap", type=int, default=256, help="px shared by neighbouring windows (> object size)")
    ap.add_argument("--score-thresh", type=float, default=0.05, help="lowest score written")
    ap.add_argument("--draw", action="store_true", help="also write each image with its detections (PNG)")
    ap.add_argument("--draw-thresh", type=float, default=0.3, help="lowest score drawn")
    ap.add_argument("--gt", action="append", default=[], metavar="DATASET",
                    help="a registered dataset with ground truth for (some of) the images (repeatable): with "
                         "--draw, those are drawn as true/false positives and missed objects (IoU >= 0.5)")
    ap.add_argument("--class-names", type=lambda s: s.split(","), default=[], metavar="A,B,...",
                    help="the model's class names, comma-separated (default: those of --gt or DATASETS.TEST "
                         "when their count matches the model's, else 0, 1, ...)")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS W")
    args = ap.parse_args(argv)
    # no training dataset is read: only the --gt datasets must match the model's classes
    cfg = load_config(args.config_file, args.opts, check_datasets=args.gt)
    paths = expand_inputs(args.input)
    gt_of = ground_truth_lookup(args.gt) if args.gt else (lambda path: None)
    counts, annotated = Counter(), 0  # totals of the evaluation view over the images --gt annotates
    d2_predictor = strict_predictor(cfg)  # resizes to INPUT.MIN_SIZE_TEST, maps back to the window

    def predictor(bgr):
        return d2_predictor(bgr)["instances"].to("cpu")

    names = class_names(model_num_classes(cfg), [*args.gt, *cfg.DATASETS.TEST], args.class_names)
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else MetadataCatalog.get("__unused")
    to_dataset_id = {v: k for k, v in meta.get("thing_dataset_id_to_contiguous_id", {}).items()}
    os.makedirs(args.output, exist_ok=True)
    sizes = []
    for p in paths:  # image sizes first (headers only), for a progress bar over windows
        with Image.open(p) as im:
            sizes.append(im.size[::-1])
    total = sum(len(windows(h, w, args.tile, args.overlap)) for h, w in sizes)
    records, rows = [], []
    with tqdm(total=total, unit="window", desc="predict") as bar:
        for image_id, path in enumerate(paths, start=1):
            bgr = utils.read_image(path, format="BGR")
            inst = predict_image(predictor, bgr, args.tile, args.overlap, nms_thresh(cfg),
                                 cfg.TEST.DETECTIONS_PER_IMAGE, bar)
            inst = inst[inst.scores >= args.score_thresh]
            for (x1, y1, x2, y2), s, c in zip(inst.pred_boxes.tensor.tolist(), inst.scores.tolist(), inst.pred_classes.tolist()):
                records.append({"image_id": image_id, "file_name": path, "category_id": to_dataset_id.get(c, c + 1),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
                rows.append([path, f"{x1:.1f}", f"{y1:.1f}", f"{x2:.1f}", f"{y2:.1f}", f"{s:.4f}", names[c]])
            gt = gt_of(path)
            if gt is not None:
                counts.update({k: len(v) for k, v in evaluation_groups(inst, gt, args.draw_thresh).items()})
                annotated += 1
            if args.draw:
                out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
                rgb = bgr[:, :, ::-1]
                drawn = (draw_predictions(rgb, inst, meta, args.draw_thresh) if gt is None
                         else draw_evaluation(rgb, inst, gt, args.draw_thresh))
                Image.fromarray(drawn).save(out)
    with open(os.path.join(args.output, "detections.json"), "w") as f:
        json.dump(records, f)
    with open(os.path.join(args.output, "detections.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "x1", "y1", "x2", "y2", "score", "label"])
        w.writerows(rows)
    print(f"{len(records)} detections in {len(paths)} images: {os.path.abspath(args.output)}/detections.json, detections.csv")
    if args.gt:
        print(f"against the ground truth of {annotated} of them (IoU >= 0.5, score >= {args.draw_thresh:g}): "
              + ", ".join(f"{counts[k]} {k}" for k in ("true positive", "false positive", "missed")))


if __name__ == "__main__":
    main()
