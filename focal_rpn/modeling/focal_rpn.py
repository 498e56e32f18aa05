"""FocalRPN: Detectron2's RPN without 1:1 anchor sampling, trained with a focal loss.

Chen, Song, Jiang, "Focal Loss for Region Proposal Network" (PRCV 2018): every labelled anchor
(positive or negative; those between the IoU thresholds are ignored) contributes to

    loss_rpn_cls = λ / N_pos · Σ FL,     loss_rpn_loc = 1 / (REG_NORM_FACTOR · N_pos) · Σ_pos reg

with N_pos the number of positive anchors in the batch (at least 1).
"""
import math

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN

from ..losses import sigmoid_focal_loss, softmax_focal_loss
from .anchor_stats import log_anchor_stats
from .sampling import sample_negatives
from .softmax_rpn_head import SoftmaxRPNHead

FORMS = ("sigmoid", "softmax")


@PROPOSAL_GENERATOR_REGISTRY.register()
class FocalRPN(RPN):
    """RPN whose objectness loss is a focal loss over all labelled anchors (no subsampling).

    ``form="sigmoid"``: one logit per anchor (StandardRPNHead). ``form="softmax"``: two logits
    per anchor (SoftmaxRPNHead); proposals are ranked by l_object - l_background, the logit of
    the softmax's object probability.
    """

    @configurable
    def __init__(
        self,
        *,
        form: str = "sigmoid",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cls_loss_weight: float = 0.1,
        reg_norm_factor: float = 2.0,
        prior_prob: float = 0.01,
        neg_pos_ratio: float = 0.0,
        **kwargs,
    ):
        """
        Args:
            form: "sigmoid" or "softmax"; must match the head (SoftmaxRPNHead for "softmax").
            focal_alpha, focal_gamma: focal loss α (for objects; background gets 1 - α) and γ.
            cls_loss_weight: λ.
            reg_norm_factor: the regression loss is divided by reg_norm_factor · N_pos.
            prior_prob: initial object probability of every anchor (bias init).
            neg_pos_ratio: 0 labels every anchor (the paper); r > 0 keeps r random negatives per
                positive of each image (the imbalance sweep's dial).
            kwargs: everything :class:`detectron2.modeling.proposal_generator.RPN` takes.
        """
        super().__init__(**kwargs)
        if form not in FORMS:
            raise ValueError(f"MODEL.FOCAL_RPN.FORM must be one of {FORMS}, got {form!r}")
        if neg_pos_ratio < 0:
            raise ValueError(f"MODEL.FOCAL_RPN.NEG_POS_RATIO must be >= 0 (0: every negative), got {neg_pos_ratio}")
        self.neg_pos_ratio = neg_pos_ratio
        is_softmax_head = isinstance(self.rpn_head, SoftmaxRPNHead)
        if (form == "softmax") != is_softmax_head:
            raise ValueError(
                f"MODEL.FOCAL_RPN.FORM '{form}' does not match MODEL.RPN.HEAD_NAME "
                f"'{type(self.rpn_head).__name__}': the softmax form needs 'SoftmaxRPNHead' "
                "(2 logits per anchor), the sigmoid form a head with 1 logit per anchor "
                "(e.g. 'StandardRPNHead')."
            )
        self.form = form
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.cls_loss_weight = cls_loss_weight
        self.reg_norm_factor = reg_norm_factor
        if is_softmax_head:
            self.rpn_head.init_prior(prior_prob)
        else:
            torch.nn.init.constant_(self.rpn_head.objectness_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        c = cfg.MODEL.FOCAL_RPN
        ret.update(
            form=c.FORM,
            focal_alpha=c.ALPHA,
            focal_gamma=c.GAMMA,
            cls_loss_weight=c.CLS_LOSS_WEIGHT,
            reg_norm_factor=c.REG_NORM_FACTOR,
            prior_prob=c.PRIOR_PROB,
            neg_pos_ratio=c.NEG_POS_RATIO,
        )
        return ret

    def _subsample_labels(self, label):
        """No sampling: every anchor keeps its label (1, 0, or -1 between the IoU thresholds); with
        ``neg_pos_ratio`` r > 0, r random negatives per positive of the image keep theirs and the
        other negatives are ignored (the imbalance sweep's dial)."""
        if self.neg_pos_ratio <= 0:
            return label
        keep = sample_negatives(label == 0, int((label == 1).sum()), self.neg_pos_ratio)
        return torch.where((label == 0) & ~keep, torch.full_like(label, -1), label)

    def _split_logits(self, pred_objectness_logits):
        """Per level (N, Hi*Wi*A) for sigmoid; (N, Hi*Wi*A, 2) for softmax."""
        if self.form == "sigmoid":
            return pred_objectness_logits
        return [x.view(x.shape[0], -1, 2) for x in pred_objectness_logits]

    def predict_proposals(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes):
        """As RPN's, ranking softmax-form anchors by l_object - l_background."""
        if self.form == "softmax":
            pred_objectness_logits = [x[..., 0] - x[..., 1] for x in self._split_logits(pred_objectness_logits)]
        return super().predict_proposals(anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes)

    def losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """Same inputs and outputs as :meth:`RPN.losses`: {"loss_rpn_cls", "loss_rpn_loc"}."""
        gt_labels = torch.stack(gt_labels)  # (N, R): 1 object, 0 background, -1 ignored
        num_pos = log_anchor_stats("rpn", gt_labels, background_label=0)
        normalizer = max(num_pos, 1)
        valid = gt_labels >= 0
        logits = cat(self._split_logits(pred_objectness_logits), dim=1)[valid]
        labels = gt_labels[valid]
        if self.form == "sigmoid":
            fl = sigmoid_focal_loss(logits, labels.to(logits.dtype), self.focal_alpha, self.focal_gamma, "sum")
        else:
            # class 0 = object (weight α), class 1 = background (the last class, weight 1 - α)
            alpha = self.focal_alpha if self.focal_alpha >= 0 else None
            fl = softmax_focal_loss(logits, 1 - labels, alpha, self.focal_gamma, "sum")
        reg = _dense_box_regression_loss(
            anchors, self.box2box_transform, pred_anchor_deltas, gt_boxes, gt_labels == 1,
            box_reg_loss_type=self.box_reg_loss_type, smooth_l1_beta=self.smooth_l1_beta,
        )
        losses = {
            "loss_rpn_cls": self.cls_loss_weight * fl / normalizer,
            "loss_rpn_loc": reg / (self.reg_norm_factor * normalizer),
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}
