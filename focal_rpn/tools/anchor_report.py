"""Anchor imbalance of a dataset under a config: positives, negatives and ignored per image.

    python -m focal_rpn.tools.anchor_report --config-file configs/trees/retinanet.yaml [--dataset trees_train]

Anchors are labelled by the model's own matcher (RetinaNet: IoU ≥ 0.5 positive, < 0.4 negative;
RPN: ≥ 0.7 / < 0.3) at the test-time input size, before any sampling. Prints the distribution
over images and the negative:positive ratio (the RetinaNet paper's ~1000:1), and writes
anchor_report.csv and anchor_report.png into --output.
"""
import argparse
import csv
import os

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, detection_utils as utils
from detectron2.modeling import build_model
from detectron2.structures import Boxes, pairwise_iou

from ..config import load_config


@torch.no_grad()
def count_anchor_labels(model, inputs):
    """(positives, negatives, ignored) of one mapped image under the model's anchor matcher."""
    dense = model if hasattr(model, "anchor_matcher") else model.proposal_generator
    in_features = getattr(dense, "head_in_features", None) or dense.in_features
    images = model.preprocess_image([inputs])
    features = model.backbone(images.tensor)
    anchors = Boxes.cat(dense.anchor_generator([features[f] for f in in_features]))
    gt = inputs["instances"].gt_boxes.to(anchors.device)
    if len(gt) == 0:
        return 0, len(anchors), 0
    _, labels = dense.anchor_matcher(pairwise_iou(gt, anchors))
    return int((labels == 1).sum()), int((labels == 0).sum()), int((labels == -1).sum())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--dataset", help="default: the config's first training set")
    ap.add_argument("--output", default="output/anchor_report")
    ap.add_argument("opts", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    name = args.dataset or cfg.DATASETS.TRAIN[0]
    model = build_model(cfg).eval()
    mapper = DatasetMapper(cfg, is_train=True, augmentations=utils.build_augmentation(cfg, is_train=False))
    rows = []
    for d in DatasetCatalog.get(name):
        pos, neg, ign = count_anchor_labels(model, mapper(d))
        rows.append((os.path.basename(d["file_name"]), pos, neg, ign))
    counts = np.array([r[1:] for r in rows], dtype=float)
    print(f"{name}: {len(rows)} images, anchors labelled by {cfg.MODEL.META_ARCHITECTURE}'s matcher")
    print(f"{'per image':<12}{'min':>10}{'median':>10}{'mean':>10}{'max':>10}")
    for i, label in enumerate(["positive", "negative", "ignored"]):
        c = counts[:, i]
        print(f"{label:<12}{c.min():>10.0f}{np.median(c):>10.0f}{c.mean():>10.1f}{c.max():>10.0f}")
    ratio = counts[:, 1].sum() / max(counts[:, 0].sum(), 1)
    print(f"negative:positive = {ratio:.0f}:1")
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "anchor_report.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "positive", "negative", "ignored"])
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(counts[:, 1] / np.maximum(counts[:, 0], 1), bins=20)
    ax.set_xlabel("negative : positive anchors per image")
    ax.set_ylabel("images")
    ax.set_title(f"{name}: overall {ratio:.0f}:1")
    fig.tight_layout()
    fig.savefig(os.path.join(args.output, "anchor_report.png"), dpi=120)
    print(f"Written: {os.path.abspath(args.output)}/anchor_report.csv, anchor_report.png")


if __name__ == "__main__":
    main()
