"""Anchors fitted to a dataset's boxes (``MODEL.ANCHOR_GENERATOR.FIT``).

Anchors decide which boxes are positives, so a recipe's anchors do not carry over to data whose
objects have other sizes or shapes. The fit chooses the sizes per pyramid level and the aspect
ratios (as many of each as the config has, so the anchors per location stay the same) that
maximise the share of ground-truth boxes whose best anchor reaches the matcher's positive IoU
threshold without the low-quality fallback (the quantity the matcher uses), with the mean best IoU
as a tie-break. The boxes are those of the training data after the training augmentations, so
the resize and the crops are seen as the model sees them.

The IoU of a box with an anchor of its level is computed exactly for the box's position: the best
anchor of a shape is the one centred on the grid point nearest to the box's centre (along each
axis the overlap shrinks with the centre distance), so a coarse level whose stride is large
against a box loses IoU the way it does in training. Start: 1-D k-means of log(h/w) for the aspect
ratios and of log(sqrt(wh)) for the sizes (sorted, the smallest on the finest level); then a
coordinate search of each size and ratio by multiplicative steps. A level on which no box has its
best anchor keeps no fitted size: it gets its neighbour's sizes scaled by the stride ratio.
"""
import logging
from typing import List, NamedTuple, Sequence

import numpy as np
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

logger = logging.getLogger(__name__)

# Multiplicative steps (in log space) tried for each size and aspect ratio, coarse to fine.
_STEPS = (0.25, 0.1, 0.04)
_PASSES = 4


class AnchorFit(NamedTuple):
    sizes: List[List[float]]  # per level, n_sizes each
    aspect_ratios: List[float]  # h / w, shared by the levels
    matched_before: float  # share of boxes with an anchor at IoU >= threshold, config's anchors
    matched_after: float  # the same with the fitted anchors
    boxes_per_level: List[int]  # boxes whose best fitted anchor is on each level
    empty_levels: List[int]  # levels that held no box's best anchor (sizes scaled from a neighbour)


def cell_shapes(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """(A, 2) widths and heights of one level's anchors, in Detectron2's order and convention
    (its DefaultAnchorGenerator's cell anchors: area size², aspect ratio h / w)."""
    # generate_cell_anchors reads nothing from its instance
    cell = DefaultAnchorGenerator.generate_cell_anchors(None, list(sizes), list(aspect_ratios)).double().numpy()
    return cell[:, 2:] - cell[:, :2]


def grid_offsets(boxes: np.ndarray, stride: float, offset: float = 0.0) -> np.ndarray:
    """(N, 2) |dx|, |dy| from each XYXY box's centre to the nearest anchor centre of a level of
    ``stride`` (anchor centres at (i + offset) * stride, Detectron2's ANCHOR_GENERATOR.OFFSET)."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2 / stride - offset
    return np.abs(c - np.round(c)) * stride


def centred_iou(wh: np.ndarray, d: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(N, A) IoU of boxes of sizes ``wh`` (N, 2) with anchors (A, 2) whose centres are ``d`` (N, 2)
    away from the box centres."""
    w, h = wh[:, None, 0], wh[:, None, 1]
    aw, ah = anchors[None, :, 0], anchors[None, :, 1]
    dx, dy = d[:, None, 0], d[:, None, 1]
    iw = np.clip(np.minimum(w / 2, dx + aw / 2) - np.maximum(-w / 2, dx - aw / 2), 0, None)
    ih = np.clip(np.minimum(h / 2, dy + ah / 2) - np.maximum(-h / 2, dy - ah / 2), 0, None)
    inter = iw * ih
    return inter / (w * h + aw * ah - inter)


def best_iou(boxes: np.ndarray, sizes, aspect_ratios, strides, offset: float = 0.0):
    """((N,) best IoU of each XYXY box over every level's anchors, (N,) the level it is on)."""
    wh = boxes[:, 2:] - boxes[:, :2]
    per_level = [centred_iou(wh, grid_offsets(boxes, s, offset), cell_shapes(sz, aspect_ratios)).max(1)
                 for sz, s in zip(sizes, strides)]
    stacked = np.stack(per_level, 1)
    return stacked.max(1), stacked.argmax(1)


def kmeans_1d(x: np.ndarray, k: int, iters: int = 50) -> np.ndarray:
    """(k,) sorted cluster centres of 1-D values (Lloyd's algorithm from evenly spaced quantiles;
    an empty cluster keeps its centre)."""
    centres = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        assign = np.abs(x[:, None] - centres[None]).argmin(1)
        new = np.array([x[assign == j].mean() if np.any(assign == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def _score(boxes, sizes, ratios, strides, offset, threshold):
    best, _ = best_iou(boxes, sizes, ratios, strides, offset)
    return float(np.mean(best >= threshold)) + 1e-3 * float(best.mean())


def fit_anchors(boxes: np.ndarray, strides: Sequence[float], n_sizes: int, n_ratios: int,
                threshold: float, offset: float = 0.0, initial_sizes=None, initial_ratios=None) -> AnchorFit:
    """Fits ``n_sizes`` sizes per level (one level per stride, finest first) and ``n_ratios``
    shared aspect ratios to ``boxes`` (N, 4) XYXY as the model sees them. ``initial_*`` (the
    config's anchors) are only measured, for the before/after report."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    wh = boxes[:, 2:] - boxes[:, :2]
    boxes = boxes[(wh > 0).all(1)]
    if len(boxes) == 0:
        raise ValueError("MODEL.ANCHOR_GENERATOR.FIT: the training datasets have no boxes to fit anchors to")
    wh = boxes[:, 2:] - boxes[:, :2]
    levels = len(strides)
    log_r = kmeans_1d(np.log(wh[:, 1] / wh[:, 0]), n_ratios)
    log_s = kmeans_1d(0.5 * np.log(wh[:, 0] * wh[:, 1]), levels * n_sizes).reshape(levels, n_sizes)

    def score(ls, lr):
        return _score(boxes, np.exp(ls), np.exp(lr), strides, offset, threshold)

    best = score(log_s, log_r)
    for _ in range(_PASSES):
        improved = False
        for step in _STEPS:
            for params, idx in [(log_s, i) for i in np.ndindex(log_s.shape)] + [(log_r, (j,)) for j in range(n_ratios)]:
                for sign in (1.0, -1.0):
                    params[idx] += sign * step
                    s = score(log_s, log_r)
                    if s > best + 1e-9:
                        best, improved = s, True
                        break
                    params[idx] -= sign * step
        if not improved:
            break
    sizes, ratios = np.sort(np.exp(log_s), 1), np.sort(np.exp(log_r))
    ious, level = best_iou(boxes, sizes, ratios, strides, offset)
    counts = np.bincount(level, minlength=levels)
    empty = [i for i in range(levels) if counts[i] == 0]
    held = [i for i in range(levels) if counts[i] > 0]
    for i in empty:  # anchors of the level's own scale: they match no box either way
        j = min(held, key=lambda h: abs(h - i))
        sizes[i] = sizes[j] * strides[i] / strides[j]
    before = float("nan")
    if initial_sizes is not None and initial_ratios is not None:
        init = list(initial_sizes) * (levels if len(initial_sizes) == 1 else 1)
        before = float(np.mean(best_iou(boxes, init, initial_ratios, strides, offset)[0] >= threshold))
    sizes = [[round(float(x), 1) for x in row] for row in sizes]  # as written into the config
    ratios = [round(float(r), 3) for r in ratios]
    after = float(np.mean(best_iou(boxes, sizes, ratios, strides, offset)[0] >= threshold))
    return AnchorFit(sizes, ratios, before, after, counts.tolist(), empty)


def apply_anchor_fit(cfg, in_features: Sequence[str], threshold: float):
    """(cfg, AnchorFit or None): with MODEL.ANCHOR_GENERATOR.FIT on and not yet fitted, a copy of
    ``cfg`` whose ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS are fitted to DATASETS.TRAIN (anchors on
    the backbone outputs ``in_features``, positives at IoU >= ``threshold``) and whose
    FITTED_ON names those datasets (so a config dumped from it is explicit and is not fitted
    again); otherwise ``cfg`` itself."""
    ag = cfg.MODEL.ANCHOR_GENERATOR
    if not ag.FIT or ag.FITTED_ON:
        return cfg, None
    if ag.NAME != "DefaultAnchorGenerator":
        raise ValueError(f"MODEL.ANCHOR_GENERATOR.FIT: fits DefaultAnchorGenerator's anchors, not {ag.NAME!r}")
    if not cfg.DATASETS.TRAIN:
        raise ValueError("MODEL.ANCHOR_GENERATOR.FIT: DATASETS.TRAIN is empty, there are no boxes to fit to")
    from detectron2.modeling import build_backbone

    from ..data.box_shapes import training_boxes

    shapes = build_backbone(cfg).output_shape()
    strides = [shapes[f].stride for f in in_features]
    boxes = training_boxes(cfg, cfg.DATASETS.TRAIN, ag.FIT_MAX_IMAGES)
    fit = fit_anchors(boxes, strides, len(ag.SIZES[0]), len(ag.ASPECT_RATIOS[0]), threshold, ag.OFFSET,
                      ag.SIZES, ag.ASPECT_RATIOS[0])
    out = cfg.clone()
    out.defrost()
    out.MODEL.ANCHOR_GENERATOR.SIZES = fit.sizes
    out.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [fit.aspect_ratios]
    out.MODEL.ANCHOR_GENERATOR.FITTED_ON = tuple(cfg.DATASETS.TRAIN)
    if cfg.is_frozen():
        out.freeze()
    return out, fit


def format_fit(fit: AnchorFit, datasets: Sequence[str], in_features: Sequence[str], threshold: float) -> str:
    """A short table of a fit for the log: sizes per level, aspect ratios, matched share."""
    lines = [f"anchors fitted to the boxes of {', '.join(datasets)} (positives at IoU >= {threshold:g}):",
             f"{'level':<8}{'sizes':<28}{'boxes':>8}"]
    for i, (f, sizes, n) in enumerate(zip(in_features, fit.sizes, fit.boxes_per_level)):
        note = "  (no box: scaled from a neighbour)" if i in fit.empty_levels else ""
        lines.append(f"{f:<8}{' '.join(f'{s:g}' for s in sizes):<28}{n:>8}{note}")
    lines.append(f"aspect ratios (h/w): {' '.join(f'{r:g}' for r in fit.aspect_ratios)}")
    lines.append(f"boxes with an anchor at IoU >= {threshold:g}: {100 * fit.matched_before:.1f}% with the "
                 f"config's anchors, {100 * fit.matched_after:.1f}% fitted")
    return "\n".join(lines)
