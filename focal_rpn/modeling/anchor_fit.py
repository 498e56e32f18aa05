"""Anchors fitted to a dataset's boxes (``MODEL.ANCHOR_GENERATOR.FIT``).

Anchors decide which boxes are positives, so a recipe's anchors do not carry over to data whose
objects have other sizes or shapes. The fit chooses the anchor sizes and the aspect ratios (as
many of each as the config has, so the anchors per location stay the same) that maximise the
share of ground-truth boxes whose best anchor reaches the matcher's positive IoU threshold without
the low-quality fallback (the quantity the matcher uses), with the mean best IoU as a tie-break.
The boxes are those of the training data after the training augmentations, so the resize and the
crops are seen as the model sees them.

Sizes are multiples of each level's stride, the same multiples on every level (RetinaNet's
4 x stride x 2^(k/3) has this form): a box then gets about as many positive anchors whatever its
size. Sizes fitted per level freely put large anchors on fine strides where most boxes are: on
BCCD a red cell got ~185 positive anchors and a platelet ~13, and the platelets were never
detected (AP 28.9 -> 0.0; docs/recipes.md).

The IoU of a box with an anchor of its level is computed exactly for the box's position: the best
anchor of a shape is the one centred on the grid point nearest to the box's centre (along each
axis the overlap shrinks with the centre distance), so a coarse level whose stride is large
against a box loses IoU the way it does in training. Start: the aspect ratios from a 1-D k-means
of log(h/w); the multiples octave-spaced (2^(k/n)), the smallest chosen on a grid of quarter
octaves. Then a coordinate search of each multiple and ratio by multiplicative steps.
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
    empty_levels: List[int]  # levels that hold no box's best anchor
    positives_before: float  # median anchors at IoU >= threshold per box, config's anchors
    positives_after: float  # the same with the fitted anchors


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


def positives_per_box(boxes: np.ndarray, sizes, aspect_ratios, strides, threshold: float,
                      offset: float = 0.0) -> np.ndarray:
    """(N,) anchors of every level at IoU >= ``threshold`` with each XYXY box (boxes alone, as if
    no other box competed for them)."""
    wh = boxes[:, 2:] - boxes[:, :2]
    out = np.zeros(len(boxes), dtype=np.int64)
    for sz, stride in zip(sizes, strides):
        shapes = cell_shapes(sz, aspect_ratios)
        # IoU >= t needs a centre offset <= (1 - t) * max(box side, anchor side) along each axis
        reach = int(np.ceil((1 - threshold) * max(wh.max(), shapes.max()) / stride)) + 1
        d0 = (boxes[:, :2] + boxes[:, 2:]) / 2 / stride - offset
        d0 = (d0 - np.round(d0)) * stride  # signed offset to the nearest anchor centre
        for i in range(-reach, reach + 1):
            for j in range(-reach, reach + 1):
                d = np.abs(d0 + np.array([i, j]) * stride)
                out += (centred_iou(wh, d, shapes) >= threshold).sum(1)
    return out


def fit_anchors(boxes: np.ndarray, strides: Sequence[float], n_sizes: int, n_ratios: int,
                threshold: float, offset: float = 0.0, initial_sizes=None, initial_ratios=None) -> AnchorFit:
    """Fits ``n_sizes`` sizes per level (one level per stride, finest first; level l's sizes are
    m_k x stride_l with the same multiples m_k on every level) and ``n_ratios`` shared aspect
    ratios to ``boxes`` (N, 4) XYXY as the model sees them. ``initial_*`` (the config's anchors)
    are only measured, for the before/after report."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    wh = boxes[:, 2:] - boxes[:, :2]
    boxes = boxes[(wh > 0).all(1)]
    if len(boxes) == 0:
        raise ValueError("MODEL.ANCHOR_GENERATOR.FIT: the training datasets have no boxes to fit anchors to")
    wh = boxes[:, 2:] - boxes[:, :2]
    levels, stride = len(strides), np.asarray(strides, dtype=np.float64)
    log_r = kmeans_1d(np.log(wh[:, 1] / wh[:, 0]), n_ratios)

    def score(log_m, log_r):
        return _score(boxes, stride[:, None] * np.exp(log_m)[None], np.exp(log_r), strides, offset, threshold)

    octave = np.arange(n_sizes) / n_sizes * np.log(2)
    starts = [np.log(0.5) + q * np.log(2) / 4 + octave for q in range(25)]  # smallest multiple 0.5 .. 32
    log_m = max(starts, key=lambda lm: score(lm, log_r)).copy()
    best = score(log_m, log_r)
    for _ in range(_PASSES):
        improved = False
        for step in _STEPS:
            for params, idx in [(log_m, i) for i in range(n_sizes)] + [(log_r, j) for j in range(n_ratios)]:
                for sign in (1.0, -1.0):
                    params[idx] += sign * step
                    s = score(log_m, log_r)
                    if s > best + 1e-9:
                        best, improved = s, True
                        break
                    params[idx] -= sign * step
        if not improved:
            break
    # as written into the config
    sizes = [[round(float(x), 1) for x in row] for row in stride[:, None] * np.sort(np.exp(log_m))[None]]
    ratios = [round(float(r), 3) for r in np.sort(np.exp(log_r))]
    ious, level = best_iou(boxes, sizes, ratios, strides, offset)
    counts = np.bincount(level, minlength=levels)
    before, pos_before = float("nan"), float("nan")
    if initial_sizes is not None and initial_ratios is not None:
        init = list(initial_sizes) * (levels if len(initial_sizes) == 1 else 1)
        before = float(np.mean(best_iou(boxes, init, initial_ratios, strides, offset)[0] >= threshold))
        pos_before = float(np.median(positives_per_box(boxes, init, initial_ratios, strides, threshold, offset)))
    pos_after = float(np.median(positives_per_box(boxes, sizes, ratios, strides, threshold, offset)))
    return AnchorFit(sizes, ratios, before, float(np.mean(ious >= threshold)), counts.tolist(),
                     [i for i in range(levels) if counts[i] == 0], pos_before, pos_after)


def with_anchors(cfg, sizes, aspect_ratios, fitted_on):
    """A copy of ``cfg`` (frozen as ``cfg`` is) whose ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS are
    fitted ones and whose FITTED_ON names the datasets they were fitted to (so that the config is
    explicit and not fitted again)."""
    out = cfg.clone()
    out.defrost()
    ag = out.MODEL.ANCHOR_GENERATOR
    ag.SIZES, ag.ASPECT_RATIOS, ag.FITTED_ON = sizes, aspect_ratios, tuple(fitted_on)
    if cfg.is_frozen():
        out.freeze()
    return out


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
    return with_anchors(cfg, fit.sizes, [fit.aspect_ratios], cfg.DATASETS.TRAIN), fit


def format_fit(fit: AnchorFit, datasets: Sequence[str], in_features: Sequence[str], threshold: float) -> str:
    """A short table of a fit for the log: sizes per level, aspect ratios, matched share."""
    lines = [f"anchors fitted to the boxes of {', '.join(datasets)} (positives at IoU >= {threshold:g}):",
             f"{'level':<8}{'sizes':<28}{'boxes':>8}"]
    for i, (f, sizes, n) in enumerate(zip(in_features, fit.sizes, fit.boxes_per_level)):
        note = "  (no box's best anchor)" if i in fit.empty_levels else ""
        lines.append(f"{f:<8}{' '.join(f'{s:g}' for s in sizes):<28}{n:>8}{note}")
    lines.append(f"aspect ratios (h/w): {' '.join(f'{r:g}' for r in fit.aspect_ratios)}")
    lines.append(f"boxes with an anchor at IoU >= {threshold:g}: {100 * fit.matched_before:.1f}% with the "
                 f"config's anchors, {100 * fit.matched_after:.1f}% fitted")
    lines.append(f"positive anchors per box (median): {fit.positives_before:g} with the config's anchors, "
                 f"{fit.positives_after:g} fitted")
    return "\n".join(lines)
