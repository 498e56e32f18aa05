"""FocalROIHeads: the Fast R-CNN box classifier trained with a softmax focal loss."""
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

from ..losses import softmax_focal_loss
from .class_weights import class_weights as weights_from_config


class FocalFastRCNNOutputLayers(FastRCNNOutputLayers):
    """FastRCNNOutputLayers whose classification loss is softmax_focal_loss, normalised by the
    number of sampled RoIs (so that γ = 0, α = None gives Detectron2's mean cross-entropy).
    """

    @configurable
    def __init__(self, *, focal_gamma: float = 2.0, focal_alpha: float = -1.0, class_weights=None, **kwargs):
        """``class_weights``: None or (K + 1,) weights of the classes and background (see
        :mod:`focal_rpn.modeling.class_weights`), in place of ``focal_alpha``."""
        super().__init__(**kwargs)
        self.focal_gamma = focal_gamma
        if class_weights is not None and focal_alpha >= 0:
            raise ValueError("MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS and FOCAL_ALPHA >= 0 both weight the classes: set one")
        self.focal_alpha = None if focal_alpha < 0 else focal_alpha
        # not saved in checkpoints: recomputed from the config (the training data) at build time
        self.register_buffer("class_weights", class_weights, persistent=False)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(focal_gamma=cfg.MODEL.ROI_BOX_HEAD.FOCAL_GAMMA, focal_alpha=cfg.MODEL.ROI_BOX_HEAD.FOCAL_ALPHA,
                   class_weights=weights_from_config(cfg))
        return ret

    def losses(self, predictions, proposals):
        """As FastRCNNOutputLayers.losses, with loss_cls = Σ FL / #RoIs."""
        losses = super().losses(predictions, proposals)
        scores = predictions[0]
        gt_classes = cat([p.gt_classes for p in proposals]) if proposals else scores.new_zeros(0).long()
        alpha = self.class_weights if self.class_weights is not None else self.focal_alpha
        fl = softmax_focal_loss(scores, gt_classes, alpha, self.focal_gamma, "sum")
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
