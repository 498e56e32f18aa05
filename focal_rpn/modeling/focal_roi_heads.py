"""FocalROIHeads: the Fast R-CNN box classifier trained with a softmax focal loss."""
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

from ..losses import softmax_focal_loss


class FocalFastRCNNOutputLayers(FastRCNNOutputLayers):
    """FastRCNNOutputLayers whose classification loss is softmax_focal_loss, normalised by the
    number of sampled RoIs (so that γ = 0, α = None gives Detectron2's mean cross-entropy).
    """

    @configurable
    def __init__(self, *, focal_gamma: float = 2.0, focal_alpha: float = -1.0, **kwargs):
        super().__init__(**kwargs)
        self.focal_gamma = focal_gamma
        self.focal_alpha = None if focal_alpha < 0 else focal_alpha

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(focal_gamma=cfg.MODEL.ROI_BOX_HEAD.FOCAL_GAMMA, focal_alpha=cfg.MODEL.ROI_BOX_HEAD.FOCAL_ALPHA)
        return ret

    def losses(self, predictions, proposals):
        """As FastRCNNOutputLayers.losses, with loss_cls = Σ FL / #RoIs."""
        losses = super().losses(predictions, proposals)
        scores = predictions[0]
        gt_classes = cat([p.gt_classes for p in proposals]) if proposals else scores.new_zeros(0).long()
        fl = softmax_focal_loss(scores, gt_classes, self.focal_alpha, self.focal_gamma, "sum")
        losses["loss_cls"] = fl / max(gt_classes.numel(), 1) * self.loss_weight.get("loss_cls", 1.0)
        return losses


@ROI_HEADS_REGISTRY.register()
class FocalROIHeads(StandardROIHeads):
    """StandardROIHeads whose box predictor is :class:`FocalFastRCNNOutputLayers`."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = FocalFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret
