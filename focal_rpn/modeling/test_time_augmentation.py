"""Test-time augmentation by the symmetries of the image (``TEST.TTA``), for any detector.

The detector sees each test image in up to 8 views: every quarter turn, each also flipped
left-right (the dihedral group of the square: the flips and quarter turns that the BCCD, DeepPCB
and trees recipes train with), made by the training augmentations' transforms. Each view's
detections are mapped back to the image by the inverse transform and merged: class-wise NMS over all of them, then, with ``MERGE "vote"``, each kept box replaced by
the score-weighted mean of the same-class boxes that overlap it by more than ``VOTE_IOU`` (box
voting: the views disagree by a few pixels, and their mean localises better than any one of
them). The kept box's score is unchanged.

Detectron2's ``TEST.AUG`` (multi-scale + horizontal flip) is GeneralizedRCNN-only and lives in
its ``tools/train_net.py``; this wrapper works for every meta-architecture whose outputs are
``{"instances": Instances}`` in the input's ``height`` x ``width`` frame (RetinaNet, R-CNN), and
replaces the evaluation it is configured for (``Trainer.test``, ``predict``).
"""
from typing import List, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances, pairwise_iou
from fvcore.transforms.transform import HFlipTransform, TransformList
from torch import nn

from ..data.transforms import Rotate90Transform

# (quarter turns counter-clockwise, then a left-right flip): the dihedral group of the square,
# ordered so that the first 2 are the image and its mirror, the first 4 every flip (a half turn is
# both flips), all 8 every flip and quarter turn; the first VIEWS of these are used
DIHEDRAL_VIEWS = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))
MERGE_RULES = ("nms", "vote")


def view_transform(view: Tuple[int, bool], height: int, width: int) -> TransformList:
    """The view of an image of ``height`` x ``width`` as a transform: the training augmentation's
    :class:`~focal_rpn.data.transforms.Rotate90Transform` by ``view[0]`` quarter turns, then a
    left-right flip if ``view[1]``; its ``inverse().apply_box`` maps detections back."""
    turns, flip = view
    out_w = height if turns % 2 else width
    return TransformList([Rotate90Transform(turns, height, width)] + ([HFlipTransform(out_w)] if flip else []))


def view_image(image: torch.Tensor, transform: TransformList) -> torch.Tensor:
    """``image`` (C, H, W) under ``transform`` (which works on (H, W, C) arrays), as (C, H', W')."""
    viewed = transform.apply_image(image.permute(1, 2, 0).numpy())
    return torch.from_numpy(np.ascontiguousarray(viewed)).permute(2, 0, 1)


def merge_detections(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, nms_thresh: float,
                     max_dets: int, rule: str = "vote", vote_iou: float = 0.6):
    """Merges the detections of all views, (N, 4) XYXY boxes, (N,) scores and (N,) classes, into at
    most ``max_dets``: class-wise NMS at ``nms_thresh``; with ``rule`` "vote" each kept box becomes the
    score-weighted mean of the same-class boxes with IoU > ``vote_iou`` to it (itself included).
    Returns (boxes, scores, classes), by descending score."""
    keep = batched_nms(boxes, scores, classes, nms_thresh)[:max_dets]
    kept = boxes[keep]
    if rule == "vote" and len(keep):
        same = (classes[keep][:, None] == classes[None, :]) & (pairwise_iou(Boxes(kept), Boxes(boxes)) > vote_iou)
        weights = same.to(scores.dtype) * scores[None, :]  # (K, N)
        total = weights.sum(1, keepdim=True)
        # a cluster whose scores are all 0 (SCORE_THRESH_TEST 0 with underflowed sigmoids) keeps its box
        kept = torch.where(total > 0, weights @ boxes / total.clamp(min=torch.finfo(scores.dtype).tiny), kept)
    return kept, scores[keep], classes[keep]


class DetectorWithTTA(nn.Module):
    """Wraps a detector in eval mode: ``forward(batched_inputs)`` returns, per image, the merged
    detections of its views as ``{"instances": Instances}`` of ``height`` x ``width``, with the
    detector's other outputs for the image as it is (R-CNN's ``"proposals"``: the RPN's recall is
    evaluated on one view, as without augmentation)."""

    @configurable
    def __init__(self, model: nn.Module, *, views: int, nms_thresh: float, max_dets: int, merge: str,
                 vote_iou: float):
        super().__init__()
        if not 1 <= views <= len(DIHEDRAL_VIEWS):
            raise ValueError(f"TEST.TTA.VIEWS={views}: expected 1 to {len(DIHEDRAL_VIEWS)}")
        if merge not in MERGE_RULES:
            raise ValueError(f"TEST.TTA.MERGE={merge!r}: expected one of {', '.join(MERGE_RULES)}")
        self.model = model
        self.views = DIHEDRAL_VIEWS[:views]
        self.nms_thresh, self.max_dets, self.merge, self.vote_iou = nms_thresh, max_dets, merge, vote_iou

    @classmethod
    def from_config(cls, cfg, model):
        t = cfg.TEST.TTA
        return {"model": model, "views": t.VIEWS, "nms_thresh": t.NMS_THRESH, "merge": t.MERGE, "vote_iou": t.VOTE_IOU,
                "max_dets": cfg.TEST.DETECTIONS_PER_IMAGE}

    @torch.no_grad()
    def forward(self, batched_inputs: List[dict]) -> List[dict]:
        return [self._one(d) for d in batched_inputs]

    def _one(self, d: dict) -> dict:
        # height/width: the frame the model maps its boxes to (the original image), as in Detectron2's inputs
        image = d["image"]
        height, width = d.get("height", image.shape[1]), d.get("width", image.shape[2])
        found = []
        for view in self.views:
            # the view of the image as the mapper made it, its detections in the view of the original frame
            seen = view_image(image, view_transform(view, *image.shape[1:]))
            vh, vw = (width, height) if view[0] % 2 else (height, width)
            out = self.model([{"image": seen, "height": vh, "width": vw}])[0]
            if view == (0, False):  # the image as it is (always the first view)
                others = {k: v for k, v in out.items() if k != "instances"}
            inst = out["instances"]
            back = view_transform(view, height, width).inverse().apply_box(inst.pred_boxes.tensor.cpu().numpy())
            found.append((torch.as_tensor(back, device=inst.scores.device).to(inst.scores.dtype), inst.scores,
                          inst.pred_classes))
        boxes, scores, classes = (torch.cat(x) for x in zip(*found))
        boxes, scores, classes = merge_detections(boxes, scores, classes, self.nms_thresh, self.max_dets,
                                                  self.merge, self.vote_iou)
        merged = Instances((height, width))
        merged.pred_boxes, merged.scores, merged.pred_classes = Boxes(boxes), scores, classes
        return {**others, "instances": merged}
