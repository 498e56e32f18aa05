"""Class weights of the box classifier (MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS) against hand
computations and torch's weighted cross-entropy; BCCD registered with its real splits."""
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_dataset
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from focal_rpn.modeling.class_weights import frequency_weights

SYNTH = "configs/synthetic/faster_rcnn.yaml"


def test_frequency_weights_by_hand():
    # BCCD's training boxes: RBC 2381, WBC 214, Platelets 209 (2804 in all)
    expected = [1 / math.log(1.10 + 2381 / 2804), 1 / math.log(1.10 + 214 / 2804), 1 / math.log(1.10 + 209 / 2804)]
    assert frequency_weights([2381, 214, 209]) == pytest.approx(expected, rel=1e-12)
    assert [round(w, 4) for w in expected] == [1.4984, 6.158, 6.2161]  # by hand: 1 / ln(1.10 + n / 2804)
    assert frequency_weights([0, 5]) == pytest.approx([1 / math.log(1.10), 1 / math.log(2.10)])


def _losses(make_cfg, *opts):
    cfg = make_cfg(SYNTH, "MODEL.ROI_HEADS.NAME", "FocalROIHeads", "MODEL.ROI_BOX_HEAD.FOCAL_GAMMA", "0.0", *opts)
    pred = build_model(cfg).roi_heads.box_predictor
    torch.manual_seed(0)
    scores = torch.randn(6, 4, dtype=torch.float32)
    labels = torch.tensor([0, 1, 2, 3, 3, 1])  # 3 = background (3 classes)
    p = Instances((64, 64), proposal_boxes=Boxes(torch.tensor([[0.0, 0, 10, 10]] * 6)),
                  gt_boxes=Boxes(torch.tensor([[0.0, 0, 10, 10]] * 6)), gt_classes=labels)
    with EventStorage():
        return pred, scores, labels, pred.losses((scores, torch.zeros(6, 12)), [p])["loss_cls"]


def test_explicit_weights_are_torchs_weighted_cross_entropy(make_cfg):
    pred, scores, labels, loss = _losses(make_cfg, "MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS", "[1, 2, 3]")
    weight = torch.tensor([1.0, 2.0, 3.0, 2.0])  # background: the mean of the foreground weights
    assert torch.equal(pred.class_weights, weight)
    ref = F.cross_entropy(scores.double(), labels, weight=weight.double(), reduction="sum") / len(labels)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    _, _, _, unweighted = _losses(make_cfg)
    assert unweighted.item() == pytest.approx(F.cross_entropy(scores, labels).item(), rel=1e-6)


def test_background_weight_and_bad_values(make_cfg):
    pred, *_ = _losses(make_cfg, "MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS", "[1, 2, 3]", "MODEL.ROI_BOX_HEAD.BACKGROUND_WEIGHT", "0.5")
    assert pred.class_weights.tolist() == [1.0, 2.0, 3.0, 0.5]
    for bad in ("[1, 2]", "['a', 'b', 'c']", "[1, -2, 3]"):
        with pytest.raises(ValueError, match="CLASS_WEIGHTS"):
            _losses(make_cfg, "MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS", bad)
    with pytest.raises(ValueError, match="FOCAL_ALPHA"):
        _losses(make_cfg, "MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS", "[1, 2, 3]", "MODEL.ROI_BOX_HEAD.FOCAL_ALPHA", "0.25")


def test_frequency_weights_from_the_training_data_are_logged(make_cfg, caplog):
    from collections import Counter

    from detectron2.data import DatasetCatalog

    counts = Counter(a["category_id"] for d in DatasetCatalog.get("synthetic_train") for a in d["annotations"])
    with caplog.at_level(logging.INFO, logger="focal_rpn.modeling.class_weights"):
        pred, *_ = _losses(make_cfg, "MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS", "['frequency']")
    fg = frequency_weights([counts[c] for c in range(3)])
    assert pred.class_weights.tolist() == pytest.approx(fg + [sum(fg) / 3])
    assert "class weights: square=" in caplog.text and "background=" in caplog.text


def test_bccd_splits_of_the_real_dataset():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from focal_rpn.data import bccd

    needs_dataset(bccd.bccd_root)
    sizes = {n: DatasetCatalog.get(n) for n in bccd.SPLITS}
    assert [len(sizes[f"bccd_{s}"]) for s in ("train", "val", "test", "trainval")] == [205, 87, 72, 292]
    test_counts = [sum(a["category_id"] == c for d in sizes["bccd_test"] for a in d["annotations"]) for c in range(3)]
    assert test_counts == [805, 71, 69]  # the dataset's README
    assert MetadataCatalog.get("bccd_test").thing_classes == ["RBC", "WBC", "Platelets"]
    ids = [d["image_id"] for d in sizes["bccd_trainval"]]
    assert all(type(i) is int for i in ids) and len(set(ids)) == len(ids)  # pycocotools needs int ids


def test_bccd_missing_names_where_it_looked_and_the_source(tmp_path, monkeypatch):
    from focal_rpn.data import bccd

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"looked for .*BCCD/ImageSets/Main/test.txt.*Shenggan/BCCD_Dataset"):
        bccd.bccd_root()
