"""Anchor imbalance of a dataset under a config: positives, negatives and ignored per image.

    python -m focal_rpn.tools.anchor_report --config-file configs/trees/retinanet.yaml [--dataset trees_train]

Anchors are labelled by the model's own matcher (RetinaNet: IoU ≥ 0.5 positive, < 0.4 negative;
RPN: ≥ 0.7 / < 0.3) at the test-time input size, before any sampling. Prints the distribution
over images and the negative:positive ratio (the RetinaNet paper's ~1000:1), and writes
anchor_report.csv and anchor_report.png into --output. It also counts the boxes that have an anchor
at the positive IoU (the matcher's fallback aside) and the positive anchors per box, per class
when there are several. With
MODEL.ANCHOR_GENERATOR.FIT True, the config's anchors and the fitted ones are reported side by side.
"""
import argparse
import csv
import os

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, detection_utils as utils
from detectron2.modeling import build_model
from detectron2.structures import Boxes, pairwise_iou

from ..config import dense_anchor_keys, fit_config_anchors, load_config


@torch.no_grad()
def count_anchor_labels(model, inputs, threshold: float):
    """((positives, negatives, ignored, boxes, boxes matched), (G, 3) per box: class, positive
    anchors, matched) of one mapped image under the model's anchor matcher; a box is matched when an
    anchor reaches ``threshold`` (the positive IoU) with it, before the matcher's low-quality
    fallback gives every box its best anchor. A positive anchor counts for the box it is matched to."""
    dense = model if hasattr(model, "anchor_matcher") else model.proposal_generator
    in_features = getattr(dense, "head_in_features", None) or dense.in_features
    images = model.preprocess_image([inputs])
    features = model.backbone(images.tensor)
    anchors = Boxes.cat(dense.anchor_generator([features[f] for f in in_features]))
    instances = inputs["instances"]
    gt = instances.gt_boxes.to(anchors.device)
    if len(gt) == 0:
        return (0, len(anchors), 0, 0, 0), np.zeros((0, 3), dtype=np.int64)
    iou = pairwise_iou(gt, anchors)
    matches, labels = dense.anchor_matcher(iou)
    matched = iou.max(1).values >= threshold
    per_box = torch.bincount(matches[labels == 1], minlength=len(gt))
    boxes = np.stack([instances.gt_classes.numpy(), per_box.numpy(), matched.numpy()], 1).astype(np.int64)
    counts = (int((labels == 1).sum()), int((labels == 0).sum()), int((labels == -1).sum()), len(gt), int(matched.sum()))
    return counts, boxes


def report(cfg, name: str, label: str):
    """Rows (image, positive, negative, ignored, boxes, matched) of dataset ``name`` under ``cfg``'s
    anchors, printed as a distribution over images; with more than one class, also per class (the
    share of boxes matched and the positive anchors per box)."""
    _, threshold = dense_anchor_keys(cfg)
    model = build_model(cfg).eval()
    mapper = DatasetMapper(cfg, is_train=True, augmentations=utils.build_augmentation(cfg, is_train=False))
    rows, per_box = [], []
    for d in DatasetCatalog.get(name):
        counts, boxes = count_anchor_labels(model, mapper(d), threshold)
        rows.append((os.path.basename(d["file_name"]),) + counts)
        per_box.append(boxes)
    counts = np.array([r[1:] for r in rows], dtype=float)
    ag = cfg.MODEL.ANCHOR_GENERATOR
    print(f"{name}, {label} anchors (sizes {ag.SIZES}, aspect ratios {ag.ASPECT_RATIOS}): {len(rows)} images, "
          f"labelled by {cfg.MODEL.META_ARCHITECTURE}'s matcher")
    print(f"{'per image':<12}{'min':>10}{'median':>10}{'mean':>10}{'max':>10}")
    for i, kind in enumerate(["positive", "negative", "ignored"]):
        c = counts[:, i]
        print(f"{kind:<12}{c.min():>10.0f}{np.median(c):>10.0f}{c.mean():>10.1f}{c.max():>10.0f}")
    boxes = max(counts[:, 3].sum(), 1)
    print(f"negative:positive = {counts[:, 1].sum() / max(counts[:, 0].sum(), 1):.0f}:1, "
          f"boxes with an anchor at IoU >= {threshold:g}: {100 * counts[:, 4].sum() / boxes:.1f}%, "
          f"positive anchors per box: {counts[:, 0].sum() / boxes:.1f}")
    per_box = np.concatenate(per_box)
    classes = MetadataCatalog.get(name).get("thing_classes", [])
    if len(classes) > 1 and len(per_box):
        # a rare class can be matched and still get few positives against a common one
        print(f"{'class':<16}{'boxes':>8}{'matched':>10}{'positives/box median':>22}{'mean':>8}")
        for k, cls in enumerate(classes):
            b = per_box[per_box[:, 0] == k]
            if len(b):
                print(f"{cls:<16}{len(b):>8}{100 * b[:, 2].mean():>9.1f}%{np.median(b[:, 1]):>22.0f}{b[:, 1].mean():>8.1f}")
    return [(label,) + r for r in rows], per_box


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--dataset", help="default: the config's first training set")
    ap.add_argument("--output", default="output/anchor_report")
    ap.add_argument("opts", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cfg = load_config(args.config_file, args.opts, fit_anchors=False)
    name = args.dataset or cfg.DATASETS.TRAIN[0]
    fitted, message = fit_config_anchors(cfg)
    rows, _ = report(cfg, name, "the config's")
    if message:  # MODEL.ANCHOR_GENERATOR.FIT: before and after
        print(message)
        more, _ = report(fitted, name, "fitted")
        rows += more
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "anchor_report.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["anchors", "image", "positive", "negative", "ignored", "boxes", "matched"])
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r[0] for r in rows):
        c = np.array([r[2:5] for r in rows if r[0] == label], dtype=float)
        ratio = c[:, 1].sum() / max(c[:, 0].sum(), 1)
        ax.hist(c[:, 1] / np.maximum(c[:, 0], 1), bins=20, alpha=0.6, label=f"{label} anchors: {ratio:.0f}:1 overall")
    ax.set_xlabel("negative : positive anchors per image")
    ax.set_ylabel("images")
    ax.set_title(name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.output, "anchor_report.png"), dpi=120)
    print(f"Written: {os.path.abspath(args.output)}/anchor_report.csv, anchor_report.png")


if __name__ == "__main__":
    main()
