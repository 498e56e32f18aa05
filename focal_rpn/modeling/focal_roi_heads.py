"""FocalROIHeads: the Fast R-CNN box classifier trained with a softmax focal loss, or with soft
targets from each RoI's IoU (``MODEL.ROI_BOX_HEAD.IOU_TARGETS``)."""
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

from ..losses import softmax_focal_loss


class FocalFastRCNNOutputLayers(FastRCNNOutputLayers):
    """FastRCNNOutputLayers whose classification loss is softmax_focal_loss, normalised by the
    number of sampled RoIs (so that γ = 0, α = None gives Detectron2's mean cross-entropy).

    With ``iou_targets`` (lo, hi) the classifier of a one-class detector is trained instead with a
    soft cross-entropy whose object target is t = clamp((IoU - lo) / (hi - lo), 0, 1), IoU being the
    RoI's with the ground-truth box it was matched to: a near miss is neither a crown nor
    background, and the hard IoU ≥ 0.5 label is noisy where box annotations are.
    """

    @configurable
    def __init__(self, *, focal_gamma: float = 2.0, focal_alpha: float = -1.0, iou_targets=(), **kwargs):
        super().__init__(**kwargs)
        self.focal_gamma = focal_gamma
        self.focal_alpha = None if focal_alpha < 0 else focal_alpha
        self.iou_targets = tuple(iou_targets)
        if self.iou_targets:
            lo, hi = self.iou_targets if len(self.iou_targets) == 2 else (None, None)
            if lo is None or not 0 <= lo < hi <= 1:
                raise ValueError(f"MODEL.ROI_BOX_HEAD.IOU_TARGETS must be [lo, hi] with 0 <= lo < hi <= 1, "
                                 f"got {list(iou_targets)}")
            if self.num_classes != 1 or focal_gamma != 0 or self.focal_alpha is not None:
                raise ValueError("MODEL.ROI_BOX_HEAD.IOU_TARGETS needs ROI_HEADS.NUM_CLASSES 1 (a background RoI's "
                                 "matched class is not kept) and ROI_BOX_HEAD.FOCAL_GAMMA 0, FOCAL_ALPHA -1")

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(focal_gamma=cfg.MODEL.ROI_BOX_HEAD.FOCAL_GAMMA, focal_alpha=cfg.MODEL.ROI_BOX_HEAD.FOCAL_ALPHA,
                   iou_targets=cfg.MODEL.ROI_BOX_HEAD.IOU_TARGETS)
        return ret

    def losses(self, predictions, proposals):
        """As FastRCNNOutputLayers.losses, with loss_cls = Σ FL / #RoIs (or Σ soft CE / #RoIs)."""
        losses = super().losses(predictions, proposals)
        scores = predictions[0]
        if self.iou_targets:
            losses["loss_cls"] = self._soft_iou_loss(scores, proposals) * self.loss_weight.get("loss_cls", 1.0)
            return losses
        gt_classes = cat([p.gt_classes for p in proposals]) if proposals else scores.new_zeros(0).long()
        fl = softmax_focal_loss(scores, gt_classes, self.focal_alpha, self.focal_gamma, "sum")
        losses["loss_cls"] = fl / max(gt_classes.numel(), 1) * self.loss_weight.get("loss_cls", 1.0)
        return losses

    def _soft_iou_loss(self, scores, proposals):
        """scores (R, 2) logits (object, background) of the R sampled RoIs -> mean soft CE."""
        if not proposals:
            return scores.sum() * 0
        ious = []
        for p in proposals:
            if p.has("gt_boxes"):
                ious.append(matched_pairwise_iou(p.proposal_boxes, p.gt_boxes))
            else:  # an image without objects: every RoI is background
                ious.append(torch.zeros(len(p), device=scores.device))
        lo, hi = self.iou_targets
        t = ((cat(ious) - lo) / (hi - lo)).clamp(0, 1)
        logp = F.log_softmax(scores.float(), dim=1)
        return -(t * logp[:, 0] + (1 - t) * logp[:, 1]).sum() / max(len(t), 1)


@ROI_HEADS_REGISTRY.register()
class FocalROIHeads(StandardROIHeads):
    """StandardROIHeads whose box predictor is :class:`FocalFastRCNNOutputLayers`."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = FocalFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret
