"""FocalRetinaNet: Detectron2's RetinaNet with the paper's classification-loss ablations."""
import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage

from ..losses import sigmoid_focal_loss, sigmoid_focal_loss_star
from .anchor_stats import log_anchor_stats
from .ohem import select_hard_examples
from .sampling import sample_negatives

LOSS_TYPES = ("focal", "ce", "alpha_ce", "fl_star", "ohem", "ohem_1_3")
NORMALIZERS = ("ema", "num_pos")


@META_ARCH_REGISTRY.register()
class FocalRetinaNet(RetinaNet):
    """RetinaNet (backbone, FPN, anchors, heads and prior init unchanged) whose classification
    loss is chosen by ``loss_type`` and computed by :mod:`focal_rpn.losses`."""

    @configurable
    def __init__(
        self,
        *,
        loss_type: str = "focal",
        loss_normalizer: str = "ema",
        fl_star_gamma: float = 2.0,
        fl_star_beta: float = 1.0,
        ohem_nms_thresh: float = 0.5,
        ohem_batch_size_per_image: int = 128,
        neg_pos_ratio: float = 0.0,
        **kwargs,
    ):
        """
        Args:
            loss_type: one of "focal", "ce", "alpha_ce", "fl_star", "ohem", "ohem_1_3".
            loss_normalizer: "ema" (Detectron2's moving average of #positives) or "num_pos".
            fl_star_gamma, fl_star_beta: FL* parameters.
            ohem_nms_thresh, ohem_batch_size_per_image: OHEM selection (per image).
            neg_pos_ratio: 0 puts every negative anchor in the classification loss (the paper);
                r > 0 a uniformly random r negatives per positive of each image (the imbalance
                sweep's dial: the count of negatives in the loss, their mix of easy and hard kept).
            kwargs: everything :class:`detectron2.modeling.RetinaNet` takes.
        """
        super().__init__(**kwargs)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"MODEL.RETINANET.LOSS_TYPE must be one of {LOSS_TYPES}, got {loss_type!r}")
        if loss_normalizer not in NORMALIZERS:
            raise ValueError(
                f"MODEL.RETINANET.LOSS_NORMALIZER must be one of {NORMALIZERS}, got {loss_normalizer!r}"
            )
        self.loss_type = loss_type
        self.normalizer_type = loss_normalizer  # d2 keeps its EMA in self.loss_normalizer
        self.fl_star_gamma = fl_star_gamma
        self.fl_star_beta = fl_star_beta
        self.ohem_nms_thresh = ohem_nms_thresh
        self.ohem_batch_size_per_image = ohem_batch_size_per_image
        if neg_pos_ratio < 0 or (neg_pos_ratio > 0 and loss_type.startswith("ohem")):
            raise ValueError(f"MODEL.RETINANET.NEG_POS_RATIO must be >= 0 (0: every negative), and 0 with the OHEM "
                             f"loss types, which choose their own negatives; got {neg_pos_ratio} with {loss_type!r}")
        self.neg_pos_ratio = neg_pos_ratio

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        c = cfg.MODEL.RETINANET
        ret.update(
            loss_type=c.LOSS_TYPE,
            loss_normalizer=c.LOSS_NORMALIZER,
            fl_star_gamma=c.FL_STAR_GAMMA,
            fl_star_beta=c.FL_STAR_BETA,
            ohem_nms_thresh=c.OHEM_NMS_THRESH,
            ohem_batch_size_per_image=c.OHEM_BATCH_SIZE_PER_IMAGE,
            neg_pos_ratio=c.NEG_POS_RATIO,
        )
        return ret

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """Same inputs and outputs as :meth:`RetinaNet.losses`: {"loss_cls", "loss_box_reg"}."""
        gt_labels = torch.stack(gt_labels)  # (N, R), -1 ignore, K background
        num_pos = log_anchor_stats("retinanet", gt_labels, self.num_classes)
        if self.normalizer_type == "ema":
            normalizer = self._ema_update("loss_normalizer", max(num_pos, 1), 100)
        else:
            normalizer = max(num_pos, 1)
        logits = cat(pred_logits, dim=1)  # (N, R, K)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)

        if self.loss_type.startswith("ohem"):
            loss_cls = self._ohem_cls_loss(Boxes.cat(anchors).tensor, logits, gt_labels)
        else:
            valid = gt_labels >= 0
            if self.neg_pos_ratio > 0:
                valid &= self._sampled_negatives(gt_labels, pos_mask) | pos_mask
            get_event_storage().put_scalar("retinanet/loss_neg_pos_ratio",
                                           float((valid & ~pos_mask).sum()) / max(int(pos_mask.sum()), 1))
            loss_cls = self._cls_loss(logits[valid], gt_labels[valid]) / normalizer

        loss_box_reg = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg / normalizer}

    def _sampled_negatives(self, gt_labels, pos_mask):
        """(N, R) bool: per image, neg_pos_ratio negatives per positive (:func:`sample_negatives`)."""
        return torch.stack([sample_negatives(labels == self.num_classes, int(pos.sum()), self.neg_pos_ratio)
                            for labels, pos in zip(gt_labels, pos_mask)])

    def _cls_loss(self, logits, labels, reduction="sum"):
        """Classification loss of (M, K) logits against (M,) labels in [0, K] (K = background)."""
        if self.loss_type == "focal":
            return sigmoid_focal_loss(logits, labels, self.focal_loss_alpha, self.focal_loss_gamma, reduction)
        if self.loss_type == "alpha_ce":
            return sigmoid_focal_loss(logits, labels, self.focal_loss_alpha, 0.0, reduction)
        if self.loss_type == "fl_star":
            return sigmoid_focal_loss_star(logits, labels, self.fl_star_gamma, self.fl_star_beta, reduction)
        return sigmoid_focal_loss(logits, labels, -1.0, 0.0, reduction)  # "ce" and the OHEM variants

    def _ohem_cls_loss(self, anchors, logits, gt_labels):
        """CE averaged over the anchors OHEM keeps: per image, anchors ranked by their CE, NMS at
        ``ohem_nms_thresh`` over the anchor boxes, then the top ``ohem_batch_size_per_image``
        (``ohem_1_3``: positives plus three hardest negatives per positive)."""
        ratio = 3.0 if self.loss_type == "ohem_1_3" else 0.0
        kept_logits, kept_labels = [], []
        for logits_i, labels_i in zip(logits, gt_labels):
            valid = torch.nonzero(labels_i >= 0).squeeze(1)
            with torch.no_grad():
                per_anchor = self._cls_loss(logits_i[valid], labels_i[valid], "none").sum(dim=1)
            keep = select_hard_examples(
                anchors[valid], per_anchor, labels_i[valid] != self.num_classes,
                self.ohem_batch_size_per_image, self.ohem_nms_thresh, ratio,
                pre_nms_topk=20 * self.ohem_batch_size_per_image,
            )
            kept_logits.append(logits_i[valid[keep]])
            kept_labels.append(labels_i[valid[keep]])
        kept_logits, kept_labels = torch.cat(kept_logits), torch.cat(kept_labels)
        storage = get_event_storage()
        storage.put_scalar("retinanet/ohem_kept_per_image", kept_labels.numel() / max(len(gt_labels), 1))
        storage.put_scalar(
            "retinanet/ohem_kept_fg_fraction",
            float((kept_labels != self.num_classes).float().mean()) if kept_labels.numel() else 0.0,
        )
        return self._cls_loss(kept_logits, kept_labels) / max(kept_labels.numel(), 1)
