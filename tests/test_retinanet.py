"""FocalRetinaNet against Detectron2's built-in RetinaNet, and its loss variants."""
import math

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import reference_ohem_selection, train_steps

from focal_rpn.modeling.focal_retinanet import LOSS_TYPES
from focal_rpn.modeling.ohem import select_hard_examples


def _batch(cfg, n=2, start=0):
    mapper = DatasetMapper(cfg, is_train=True, augmentations=[])
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    return [mapper(d) for d in dicts[start:start + n]]


def test_focal_losses_equal_detectron2_retinanet(make_cfg):
    cfg = make_cfg()
    torch.manual_seed(0)
    ours = build_model(cfg)
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    ref = build_model(cfg)
    ref.load_state_dict(ours.state_dict())
    batch = _batch(cfg, 2, start=1)
    with EventStorage():
        for _ in range(3):  # the EMA normaliser evolves the same way over several steps
            a, b = ours(batch), ref(batch)
            for k in ("loss_cls", "loss_box_reg"):
                torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
            (a["loss_cls"] + a["loss_box_reg"]).backward()
            (b["loss_cls"] + b["loss_box_reg"]).backward()
    for (n, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_prior_probability_at_init(make_cfg):
    cfg = make_cfg()
    model = build_model(cfg).eval()
    images = model.preprocess_image(_batch(cfg, 1, start=1))
    features = model.backbone(images.tensor)
    logits, _ = model.head([features[f] for f in model.head_in_features])
    mean_p = torch.cat([torch.sigmoid(x).flatten() for x in logits]).mean().item()
    assert mean_p == pytest.approx(cfg.MODEL.RETINANET.PRIOR_PROB, rel=0.1)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_loss_type_trains(make_cfg, loss_type):
    cfg = make_cfg("configs/synthetic/retinanet.yaml", "MODEL.RETINANET.LOSS_TYPE", loss_type,
                   "MODEL.RETINANET.LOSS_NORMALIZER", "num_pos")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    history, latest = train_steps(model, _batch(cfg, 2, start=1))
    assert latest["retinanet/neg_pos_ratio"][0] > 10
    assert sum(history[-5:]) < 0.7 * sum(history[:5]), history


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_image_without_boxes(make_cfg, loss_type):
    cfg = make_cfg("configs/synthetic/retinanet.yaml", "MODEL.RETINANET.LOSS_TYPE", loss_type)
    model = build_model(cfg).train()
    (empty,) = _batch(cfg, 1, start=0)
    assert len(empty["instances"]) == 0
    with EventStorage():
        losses = model([empty])
    assert all(math.isfinite(v.item()) for v in losses.values())
    assert losses["loss_box_reg"].item() == 0.0


def test_ohem_selection_hand_built():
    boxes = torch.tensor([
        [0, 0, 10, 10], [1, 0, 11, 10],      # near-duplicates (IoU 0.82)
        [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70], [80, 80, 90, 90],
        [100, 0, 110, 10], [101, 0, 111, 10],
    ], dtype=torch.float32)
    losses = torch.tensor([5.0, 6.0, 1.0, 4.0, 3.0, 0.5, 2.0, 2.5])
    pos = torch.tensor([False, False, True, False, False, True, False, False])
    keep = select_hard_examples(boxes, losses, pos, batch_size=4, nms_thresh=0.5)
    assert keep.tolist() == reference_ohem_selection(boxes, losses.tolist(), pos.tolist(), 4, 0.5, 0) == [1, 3, 4, 7]
    # 1:3 keeps every surviving positive (2, 5) and three hardest negatives per positive.
    keep13 = select_hard_examples(boxes, losses, pos, batch_size=8, nms_thresh=0.5, neg_pos_ratio=3)
    assert keep13.tolist() == [2, 5, 1, 3, 4, 7]
    # Within a batch of 4: at most 4 / (1 + 3) = 1 positive, then 3 negatives.
    keep13 = select_hard_examples(boxes, losses, pos, batch_size=4, nms_thresh=0.5, neg_pos_ratio=3)
    assert keep13.tolist() == [2, 1, 3, 4]


def test_ohem_trains_only_on_kept_anchors(make_cfg):
    """OHEM's loss is the mean CE of exactly the anchors it keeps: gradient reaches only them."""
    cfg = make_cfg("configs/synthetic/retinanet.yaml", "MODEL.RETINANET.LOSS_TYPE", "ohem",
                   "MODEL.RETINANET.OHEM_BATCH_SIZE_PER_IMAGE", "16")
    model = build_model(cfg).train()
    batch = _batch(cfg, 1, start=1)
    captured = {}
    orig = model._cls_loss

    def spy(logits, labels, reduction="sum"):
        if reduction == "sum":
            logits.retain_grad()
            captured["logits"] = logits
        return orig(logits, labels, reduction)

    model._cls_loss = spy
    with EventStorage():
        losses = model(batch)
    losses["loss_cls"].backward()
    assert captured["logits"].shape[0] == 16
    assert (captured["logits"].grad.abs().sum(1) > 0).all()


def test_gamma_0_with_alpha_075_is_alpha_balanced_ce(make_cfg):
    """Why the study has no gamma_0 run: FL with γ = 0, α = 0.75 is α-balanced CE, to the bit."""
    batch = _batch(make_cfg(), 2, start=1)
    out = []
    for opts in (["MODEL.RETINANET.FOCAL_LOSS_GAMMA", "0.0"], ["MODEL.RETINANET.LOSS_TYPE", "alpha_ce"]):
        cfg = make_cfg("configs/synthetic/retinanet.yaml", "MODEL.RETINANET.FOCAL_LOSS_ALPHA", "0.75", *opts)
        torch.manual_seed(0)
        model = build_model(cfg)
        with EventStorage():
            losses = model(batch)
        sum(losses.values()).backward()
        out.append((losses, [p.grad for p in model.parameters() if p.grad is not None]))
    (a, ga), (b, gb) = out
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(ga, gb))


def test_negative_sampling_keeps_positives_and_r_negatives_per_positive():
    """MODEL.RETINANET.NEG_POS_RATIO r: per image every positive and round(r · #positives)
    negatives (all when fewer; r per missing positive on an image without any), never an ignored
    anchor, each negative about equally likely."""
    from focal_rpn.modeling.focal_retinanet import FocalRetinaNet

    k = 3  # classes; label 3 = background, -1 = ignored
    labels = torch.full((3, 1000), k)
    labels[0, :5] = torch.tensor([0, 1, 2, 0, 1])
    labels[0, 5:20] = -1
    labels[1, :40] = 2  # 40 positives, 960 negatives: 4 x 40 = 160 kept
    labels[2, 990:] = -1  # no positive: r negatives
    model = FocalRetinaNet.__new__(FocalRetinaNet)
    model.num_classes, model.neg_pos_ratio = k, 4.0
    torch.manual_seed(0)
    counts = torch.zeros(1000)
    for _ in range(200):
        keep = model._sampled_negatives(labels, (labels >= 0) & (labels != k))
        assert (labels[keep] == k).all()
        assert keep.sum(1).tolist() == [20, 160, 4]
        counts += keep[0].float()
    # image 0: 20 of its 980 negatives per draw; each one's frequency ~ Binomial(200, 20/980)
    freq = counts[20:] / 200
    assert abs(freq.mean().item() - 20 / 980) < 1e-6 and freq.max().item() < 0.1


def test_negative_sampling_loss_is_focal_loss_over_the_kept_anchors(make_cfg):
    """With NEG_POS_RATIO 2 the classification loss is torchvision's sigmoid focal loss summed over
    the positives and the drawn negatives only (same draw), over the normaliser; the logged ratio
    of negatives to positives in the loss is 2."""
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    cfg = make_cfg("configs/synthetic/retinanet.yaml", "MODEL.RETINANET.NEG_POS_RATIO", "2.0",
                   "MODEL.RETINANET.LOSS_NORMALIZER", "num_pos")
    model = build_model(cfg).train()
    batch = _batch(cfg, 2, start=1)
    captured = {}
    orig = model._sampled_negatives

    def spy(gt_labels, pos_mask):
        captured["labels"] = gt_labels
        captured["keep"] = orig(gt_labels, pos_mask)
        return captured["keep"]

    model._sampled_negatives = spy
    orig_losses = model.losses

    def keep_logits(anchors, pred_logits, gt_labels, *rest):
        captured["logits"] = torch.cat(pred_logits, 1).detach()
        return orig_losses(anchors, pred_logits, gt_labels, *rest)

    model.losses = keep_logits
    with EventStorage() as storage:
        losses = model(batch)
        ratio = storage.latest()["retinanet/loss_neg_pos_ratio"][0]
    labels, keep, logits = captured["labels"], captured["keep"], captured["logits"]
    pos = (labels >= 0) & (labels != model.num_classes)
    sel = pos | keep
    targets = torch.zeros_like(logits)
    targets[pos] = torch.nn.functional.one_hot(labels[pos], model.num_classes).float()
    expected = tv_focal(logits[sel].double(), targets[sel].double(), alpha=0.25, gamma=2.0, reduction="sum")
    expected = expected / max(int(pos.sum()), 1)
    torch.testing.assert_close(losses["loss_cls"].double(), expected, rtol=1e-5, atol=1e-7)
    assert ratio == pytest.approx(keep.sum().item() / pos.sum().item()) and ratio == pytest.approx(2.0, abs=0.05)


def test_negative_sampling_is_refused_with_ohem(make_cfg):
    cfg = make_cfg("configs/synthetic/retinanet.yaml", "MODEL.RETINANET.LOSS_TYPE", "ohem",
                   "MODEL.RETINANET.NEG_POS_RATIO", "3.0")
    with pytest.raises(ValueError, match="NEG_POS_RATIO"):
        build_model(cfg)
