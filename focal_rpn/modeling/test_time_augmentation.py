"""Test-time augmentation by the symmetries of the image (``TEST.TTA``), for any detector.

The detector sees each test image in up to 8 views: as it is, flipped left-right, flipped up-down,
both, and the same four transposed (the dihedral group of the square: the flips and quarter turns
that the BCCD and trees recipes train with). Each view's detections are mapped back to the image
and merged: class-wise NMS over all of them, then, with ``MERGE "vote"``, each kept box replaced by
the score-weighted mean of the same-class boxes that overlap it by more than ``VOTE_IOU`` (box
voting: the views disagree by a few pixels, and their mean localises better than any one of
them). The kept box's score is unchanged.

Detectron2's ``TEST.AUG`` (multi-scale + horizontal flip) is GeneralizedRCNN-only and lives in
its ``tools/train_net.py``; this wrapper works for every meta-architecture whose outputs are
``{"instances": Instances}`` in the input's ``height`` x ``width`` frame (RetinaNet, R-CNN), and
replaces the evaluation it is configured for (``Trainer.test``, ``predict``).
"""
from typing import List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances, pairwise_iou
from torch import nn

# (flip left-right, flip up-down, transpose); the first VIEWS of these are used
DIHEDRAL_VIEWS = ((False, False, False), (True, False, False), (False, True, False), (True, True, False),
                  (False, False, True), (True, False, True), (False, True, True), (True, True, True))
MERGE_RULES = ("nms", "vote")


def view_image(image: torch.Tensor, view: Tuple[bool, bool, bool]) -> torch.Tensor:
    """``image`` (C, H, W) as the view sees it: transposed to (C, W, H) first, then flipped."""
    hflip, vflip, transpose = view
    if transpose:
        image = image.transpose(1, 2)
    if hflip:
        image = image.flip(2)
    if vflip:
        image = image.flip(1)
    return image


def unview_boxes(boxes: torch.Tensor, view: Tuple[bool, bool, bool], height: int, width: int) -> torch.Tensor:
    """Boxes (N, 4) XYXY detected in the view of an image of ``height`` x ``width`` (the view's
    frame is ``width`` x ``height`` when transposed), in the image's frame: the inverse of
    :func:`view_image`, undone in reverse order."""
    hflip, vflip, transpose = view
    vh, vw = (width, height) if transpose else (height, width)
    boxes = boxes.clone()
    if vflip:
        boxes[:, [1, 3]] = vh - boxes[:, [3, 1]]
    if hflip:
        boxes[:, [0, 2]] = vw - boxes[:, [2, 0]]
    if transpose:
        boxes = boxes[:, [1, 0, 3, 2]]
    return boxes


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
    detections of its views as ``{"instances": Instances}`` of ``height`` x ``width``."""

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
        return [{"instances": self._one(d)} for d in batched_inputs]

    def _one(self, d: dict) -> Instances:
        # height/width: the frame the model maps its boxes to (the original image), as in Detectron2's inputs
        image = d["image"]
        height, width = d.get("height", image.shape[1]), d.get("width", image.shape[2])
        found = []
        for view in self.views:
            vh, vw = (width, height) if view[2] else (height, width)
            inst = self.model([{"image": view_image(image, view), "height": vh, "width": vw}])[0]["instances"]
            found.append((unview_boxes(inst.pred_boxes.tensor, view, height, width), inst.scores, inst.pred_classes))
        boxes, scores, classes = (torch.cat(x) for x in zip(*found))
        boxes, scores, classes = merge_detections(boxes, scores, classes, self.nms_thresh, self.max_dets,
                                                  self.merge, self.vote_iou)
        out = Instances((height, width))
        out.pred_boxes, out.scores, out.pred_classes = Boxes(boxes), scores, classes
        return out
