"""The RetinaNet paper's Figure 4: cumulative focal loss of positive and negative anchors.

    python -m focal_rpn.tools.loss_cdf --config-file configs/trees/retinanet.yaml \
        --output output/loss_cdf MODEL.WEIGHTS output/demo/model_final.pth

A trained (Focal)RetinaNet predicts on the images of DATASETS.TEST[0]; its anchors are labelled
as in training. For each γ, the focal loss (no α) of every positive (anchor, its class) and every
negative (background anchor, any class) element is computed, sorted from lowest to highest and
normalised to sum to 1. The cumulative sums are drawn against the fraction of elements (PNG) and
written at 101 points (CSV).
"""
import argparse
import csv
import os
from typing import Dict, List

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, detection_utils as utils
from detectron2.layers import cat
from detectron2.modeling import build_model

from ..config import load_config
from ..engine import load_weights_strict
from ..losses import sigmoid_focal_loss

GAMMAS = [0.0, 0.5, 1.0, 2.0]


@torch.no_grad()
def anchor_logits_and_labels(model, batched_inputs):
    """(logits (R, K), labels (R,)) over all anchors of the images; labels -1/K/class as in training."""
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    predictions = model.head(features)
    logits, _ = model._transpose_dense_predictions(predictions, [model.num_classes, 4])
    anchors = model.anchor_generator(features)
    gt = [x["instances"].to(model.device) for x in batched_inputs]
    labels, _ = model.label_anchors(anchors, gt)
    return cat(logits, dim=1).flatten(0, 1), torch.stack(labels).flatten()


def loss_cdfs(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, gammas=GAMMAS,
              points: int = 101) -> Dict[str, Dict[float, np.ndarray]]:
    """Normalised cumulative loss at ``points`` fractions, for "positive" and "negative" elements."""
    pos = labels >= 0
    pos &= labels != num_classes
    neg = labels == num_classes
    pos_logits = logits[pos].gather(1, labels[pos][:, None])[:, 0]
    neg_logits = logits[neg].flatten()
    grid = np.linspace(0, 1, points)
    out: Dict[str, Dict[float, np.ndarray]] = {"positive": {}, "negative": {}}
    for kind, x, t in (("positive", pos_logits, 1.0), ("negative", neg_logits, 0.0)):
        for g in gammas:
            if x.numel() == 0:
                out[kind][g] = np.full(points, np.nan)
                continue
            loss = sigmoid_focal_loss(x.double(), torch.full_like(x, t).double(), -1, g).sort().values
            cdf = (loss.cumsum(0) / loss.sum().clamp_min(1e-300)).numpy()
            frac = np.arange(1, len(cdf) + 1) / len(cdf)
            out[kind][g] = np.interp(grid, np.concatenate([[0.0], frac]), np.concatenate([[0.0], cdf]))
    return out


def write_outputs(cdfs, output_dir: str) -> List[str]:
    """Writes loss_cdf.csv and loss_cdf.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(output_dir, exist_ok=True)
    csv_path = os.path.join(output_dir, "loss_cdf.csv")
    png_path = os.path.join(output_dir, "loss_cdf.png")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "gamma", "fraction", "cumulative_normalized_loss"])
        for kind, by_gamma in cdfs.items():
            for g, ys in by_gamma.items():
                for x, y in zip(np.linspace(0, 1, len(ys)), ys):
                    w.writerow([kind, g, f"{x:.4f}", f"{y:.6f}"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ("positive", "negative")):
        for g, ys in cdfs[kind].items():
            ax.plot(np.linspace(0, 1, len(ys)), ys, label=f"γ = {g:g}")
        ax.set_title(f"{kind} samples")
        ax.set_xlabel("fraction of samples")
        ax.set_ylabel("cumulative normalized loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return [csv_path, png_path]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--gammas", type=float, nargs="+", default=GAMMAS)
    ap.add_argument("opts", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    model = build_model(cfg).eval()
    load_weights_strict(model, cfg.MODEL.WEIGHTS)
    if not hasattr(model, "label_anchors"):
        raise ValueError(f"loss_cdf needs a RetinaNet-style model; {cfg.MODEL.META_ARCHITECTURE} has no dense anchors")
    mapper = DatasetMapper(cfg, is_train=True, augmentations=utils.build_augmentation(cfg, is_train=False))
    all_logits, all_labels = [], []
    for d in DatasetCatalog.get(cfg.DATASETS.TEST[0]):
        lg, lb = anchor_logits_and_labels(model, [mapper(d)])
        all_logits.append(lg)
        all_labels.append(lb)
    cdfs = loss_cdfs(torch.cat(all_logits), torch.cat(all_labels), model.num_classes, args.gammas)
    for path in write_outputs(cdfs, args.output):
        print(f"Written: {os.path.abspath(path)}")


if __name__ == "__main__":
    main()
