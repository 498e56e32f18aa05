"""FocalRPN against hand computations with torchvision's focal loss and smooth-L1."""
import math

import pytest
import torch
import torchvision
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import train_steps

SYNTH = "configs/synthetic/faster_rcnn.yaml"
FL_SIGMOID = ("MODEL.PROPOSAL_GENERATOR.NAME", "FocalRPN")
FL_SOFTMAX = FL_SIGMOID + ("MODEL.RPN.HEAD_NAME", "SoftmaxRPNHead", "MODEL.FOCAL_RPN.FORM", "softmax")
SHAPES = {f"p{i}": ShapeSpec(channels=64, stride=2 ** i) for i in range(3, 7)}


def _rpn(make_cfg, *opts):
    # the paper's smooth-L1 regression (the trees recipe, which the synthetic config inherits, uses GIoU)
    cfg = make_cfg(SYNTH, *opts, "MODEL.RPN.SMOOTH_L1_BETA", "0.5", "MODEL.RPN.BBOX_REG_LOSS_TYPE", "smooth_l1")
    return build_proposal_generator(cfg, SHAPES)


def _hand_case():
    """One image, one level, 6 anchors: labels 1, 0, 0, -1, 1, 0."""
    anchors = [Boxes(torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60], [80, 0, 90, 10],
                                   [0, 20, 10, 30], [1, 1, 11, 12], [30, 30, 40, 40]], dtype=torch.float32))]
    labels = [torch.tensor([1, 0, 0, -1, 1, 0])]
    gt = torch.tensor([[0, 0, 10, 11]] * 6, dtype=torch.float32)
    logits = torch.tensor([[0.5, -1.0, 3.0, 7.0, -2.0, -6.0]])
    deltas = torch.linspace(-0.3, 0.4, 24).view(1, 6, 4)
    return anchors, logits, labels, deltas, gt


def test_losses_equal_the_formula(make_cfg):
    rpn = _rpn(make_cfg, *FL_SIGMOID)
    anchors, logits, labels, deltas, gt = _hand_case()
    with EventStorage():
        out = rpn.losses(anchors, [logits], labels, [deltas], [gt])
    lab = labels[0]
    keep = lab >= 0
    n_pos = int((lab == 1).sum())
    fl = torchvision.ops.sigmoid_focal_loss(logits[0][keep], lab[keep].float(), 0.25, 2.0, "sum")
    target = rpn.box2box_transform.get_deltas(anchors[0].tensor, gt)
    pos = lab == 1
    reg = torch.nn.functional.smooth_l1_loss(deltas[0][pos], target[pos], beta=0.5, reduction="sum")
    torch.testing.assert_close(out["loss_rpn_cls"], 0.1 * fl / n_pos)
    torch.testing.assert_close(out["loss_rpn_loc"], reg / (2.0 * n_pos))


def test_softmax_form_with_zero_background_logit_equals_sigmoid_form(make_cfg):
    sig, soft = _rpn(make_cfg, *FL_SIGMOID), _rpn(make_cfg, *FL_SOFTMAX)
    anchors, logits, labels, deltas, gt = _hand_case()
    two = torch.stack([logits, torch.zeros_like(logits)], dim=-1).flatten(1)  # (N, R*2), anchor-major
    with EventStorage():
        a = sig.losses(anchors, [logits], labels, [deltas], [gt])
        b = soft.losses(anchors, [two], labels, [deltas], [gt])
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_no_sampling_every_labelled_anchor_counts(make_cfg):
    rpn = _rpn(make_cfg, *FL_SIGMOID)
    anchors, logits, labels, deltas, gt = _hand_case()

    def cls(lg):
        with EventStorage():
            return rpn.losses(anchors, [lg], labels, [deltas], [gt])["loss_rpn_cls"].item()

    base = cls(logits)
    easy_bg = logits.clone()
    easy_bg[0, 5] = -3.0  # a far-background anchor, still easy (p ≈ 0.05); it was at -6
    ignored = logits.clone()
    ignored[0, 3] = -20.0
    assert cls(easy_bg) != base
    assert cls(ignored) == base


def test_labelling_keeps_all_anchors(make_cfg):
    """IoU thresholds (0.3, 0.7): anchors with IoU 1.0 / 0.5 / 0 get 1 / -1 / 0, and thousands of
    negatives all stay labelled (Detectron2's RPN would sample 256 per image)."""
    rpn = _rpn(make_cfg, *FL_SIGMOID, "MODEL.RPN.IOU_THRESHOLDS", "[0.3, 0.7]")  # Detectron2's (trees: 0.5)
    far = torch.tensor([[200.0 + 2 * i, 200.0, 210.0 + 2 * i, 210.0] for i in range(3000)])
    anchors = [Boxes(torch.cat([torch.tensor([[0, 0, 10, 10], [0, 0, 10, 20]], dtype=torch.float32), far]))]
    gt = Instances((400, 8000), gt_boxes=Boxes(torch.tensor([[0, 0, 10, 10.0]])))
    labels, _ = rpn.label_and_sample_anchors(anchors, [gt])
    assert labels[0][:2].tolist() == [1, -1]
    assert int((labels[0] == 0).sum()) == 3000


def test_negative_ratio_keeps_r_random_negatives_per_positive(make_cfg):
    """MODEL.FOCAL_RPN.NEG_POS_RATIO 5: the labelling above keeps its positive, its ignored anchor
    and 5 of the 3000 negatives (different ones from draw to draw); the rest become ignored."""
    rpn = _rpn(make_cfg, *FL_SIGMOID, "MODEL.RPN.IOU_THRESHOLDS", "[0.3, 0.7]", "MODEL.FOCAL_RPN.NEG_POS_RATIO", "5.0")
    far = torch.tensor([[200.0 + 2 * i, 200.0, 210.0 + 2 * i, 210.0] for i in range(3000)])
    anchors = [Boxes(torch.cat([torch.tensor([[0, 0, 10, 10], [0, 0, 10, 20]], dtype=torch.float32), far]))]
    gt = Instances((400, 8000), gt_boxes=Boxes(torch.tensor([[0, 0, 10, 10.0]])))
    torch.manual_seed(0)
    drawn = []
    for _ in range(2):
        labels, _ = rpn.label_and_sample_anchors(anchors, [gt])
        assert labels[0][:2].tolist() == [1, -1]
        assert int((labels[0] == 0).sum()) == 5 and int((labels[0] == -1).sum()) == 3000 - 5 + 1
        drawn.append(set(torch.nonzero(labels[0] == 0).squeeze(1).tolist()))
    assert drawn[0] != drawn[1]
    with pytest.raises(ValueError, match="NEG_POS_RATIO"):
        _rpn(make_cfg, *FL_SIGMOID, "MODEL.FOCAL_RPN.NEG_POS_RATIO", "-1.0")


def test_empty_ground_truth(make_cfg):
    rpn = _rpn(make_cfg, *FL_SOFTMAX)
    anchors, logits, _, deltas, gt = _hand_case()
    two = torch.stack([logits, torch.zeros_like(logits)], dim=-1).flatten(1)
    with EventStorage():
        out = rpn.losses(anchors, [two], [torch.zeros(6, dtype=torch.long)], [deltas], [gt])
    assert math.isfinite(out["loss_rpn_cls"].item()) and out["loss_rpn_cls"].item() > 0
    assert out["loss_rpn_loc"].item() == 0.0


def test_prior_init(make_cfg):
    for opts in (FL_SIGMOID, FL_SOFTMAX):
        rpn = _rpn(make_cfg, *opts)
        feats = [torch.randn(1, 64, 8, 8) for _ in range(4)]
        obj, _ = rpn.rpn_head(feats)
        flat = [o.permute(0, 2, 3, 1).flatten(1) for o in obj]
        if rpn.form == "softmax":
            flat = [x[..., 0] - x[..., 1] for x in rpn._split_logits(flat)]
        p = torch.sigmoid(torch.cat(flat, 1)).mean().item()
        assert p == pytest.approx(0.01, rel=0.2)


def test_form_must_match_head(make_cfg):
    with pytest.raises(ValueError, match="SoftmaxRPNHead"):
        _rpn(make_cfg, *FL_SIGMOID, "MODEL.FOCAL_RPN.FORM", "softmax")
    with pytest.raises(ValueError, match="sigmoid form"):
        _rpn(make_cfg, *FL_SIGMOID, "MODEL.RPN.HEAD_NAME", "SoftmaxRPNHead")


@pytest.mark.parametrize("opts", [(), FL_SIGMOID, FL_SOFTMAX], ids=["rpn_ce", "fl_sigmoid", "fl_softmax"])
def test_each_rpn_trains(make_cfg, opts):
    cfg = make_cfg(SYNTH, *opts)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    mapper = DatasetMapper(cfg, is_train=True, augmentations=[])
    batch = [mapper(d) for d in DatasetCatalog.get("synthetic_train")[:2]]  # includes the empty image
    history, latest = train_steps(model, batch)
    assert "rpn/proposal_recall@0.5" in latest
    assert sum(history[-5:]) < 0.8 * sum(history[:5]), history
