"""TEST.TTA: the views map back to the image, box voting by hand, and the evaluation and predict use it."""
import os

import numpy as np
import pytest
import torch
from conftest import load_repo_config
from detectron2.structures import Boxes, Instances
from torch import nn

from focal_rpn.engine import Trainer, load_weights_strict
from focal_rpn.engine.checkpoint import strict_predictor
from focal_rpn.modeling.test_time_augmentation import (DIHEDRAL_VIEWS, DetectorWithTTA, merge_detections,
                                                       view_image, view_transform)

SYNTH = "configs/synthetic/retinanet.yaml"


class BrightBoxDetector(nn.Module):
    """Detects the bounding box of the image's bright pixels, found with numpy in the image it is given."""

    def forward(self, batched_inputs):
        outs = []
        for d in batched_inputs:
            img = d["image"].numpy()
            assert img.shape[1:] == (d["height"], d["width"])
            ys, xs = np.nonzero(img[0] > 0)
            inst = Instances((d["height"], d["width"]))
            inst.pred_boxes = Boxes(torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32))
            inst.scores, inst.pred_classes = torch.tensor([0.9]), torch.tensor([1])
            outs.append({"instances": inst})
        return outs


def bright_image():
    """(3, 40, 60) zeros with a bright 20 x 8 rectangle at x 5..25, y 10..18 (not centred: every view differs)."""
    img = torch.zeros(3, 40, 60)
    img[:, 10:18, 5:25] = 1.0
    return img


@pytest.mark.parametrize("view", DIHEDRAL_VIEWS)
def test_each_view_maps_its_detection_back_to_the_image(view):
    img = bright_image()
    t = view_transform(view, 40, 60)
    seen = view_image(img, t)
    assert seen.shape[1:] == ((60, 40) if view[0] % 2 else (40, 60))
    det = BrightBoxDetector()([{"image": seen, "height": seen.shape[1], "width": seen.shape[2]}])[0]["instances"]
    assert t.inverse().apply_box(det.pred_boxes.tensor.numpy()).tolist() == [[5.0, 10.0, 25.0, 18.0]]


def test_the_eight_views_are_the_flips_and_quarter_turns():
    img = torch.arange(12.0).reshape(1, 3, 4)  # no symmetry: 8 distinct images
    views = [view_image(img, view_transform(v, 3, 4)) for v in DIHEDRAL_VIEWS]
    seen = {tuple(x.flatten().tolist()) + tuple(x.shape) for x in views}
    turns = {tuple(torch.rot90(f, k, (1, 2)).flatten().tolist()) + tuple(torch.rot90(f, k, (1, 2)).shape)
             for f in (img, img.flip(2)) for k in range(4)}
    assert seen == turns
    # VIEWS 2: the image and its mirror; VIEWS 4: every flip (TEST.TTA.VIEWS's documented prefixes)
    key = lambda x: tuple(x.flatten().tolist()) + tuple(x.shape)  # noqa: E731
    assert [key(x) for x in views[:2]] == [key(img), key(img.flip(2))]
    assert {key(x) for x in views[:4]} == {key(img), key(img.flip(2)), key(img.flip(1)), key(img.flip(1).flip(2))}


@pytest.mark.parametrize("views", [1, 2, 4, 8])
def test_the_wrapper_returns_the_objects_box_from_every_view(views):
    tta = DetectorWithTTA(BrightBoxDetector(), views=views, nms_thresh=0.5, max_dets=100, merge="vote", vote_iou=0.6)
    inst = tta([{"image": bright_image(), "height": 40, "width": 60}])[0]["instances"]
    assert inst.image_size == (40, 60)
    assert inst.pred_boxes.tensor.tolist() == [pytest.approx([5.0, 10.0, 25.0, 18.0])]  # a mean of equal boxes
    assert inst.scores.tolist() == pytest.approx([0.9])


def test_box_voting_by_hand():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [2, 2, 12, 12], [1, 1, 11, 11], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.6, 0.3, 0.8, 0.7])
    classes = torch.tensor([0, 0, 0, 1, 0])
    # NMS at 0.5: [1,1,11,11] (IoU 81/119 = 0.68 with the first) goes; [2,2,12,12] (IoU 64/136 = 0.47) stays
    b, s, c = merge_detections(boxes, scores, classes, 0.5, 100, rule="nms")
    assert b.tolist() == [[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [2, 2, 12, 12]]
    assert s.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.3]) and c.tolist() == [0, 1, 0, 0]
    # voting at 0.6: the first box takes the mean of itself (0.9) and the suppressed [1,1,11,11] (0.6),
    # not of [2,2,12,12] (IoU 0.47) nor of class 1's box; [2,2,12,12] (0.3) also takes the suppressed
    # box (IoU 0.68): (0.3 * 2 + 0.6 * 1) / 0.9 = 4/3; class 1's and the far box have no neighbour
    b, s, c = merge_detections(boxes, scores, classes, 0.5, 100, rule="vote", vote_iou=0.6)
    assert b[0].tolist() == pytest.approx([0.4, 0.4, 10.4, 10.4])
    assert b[1:3].tolist() == [[1, 1, 11, 11], [50, 50, 60, 60]]
    assert b[3].tolist() == pytest.approx([4 / 3, 4 / 3, 34 / 3, 34 / 3])
    assert s.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.3])
    # scores of 0 (a score threshold of 0): the boxes as they are, not 0 / 0
    b, s, c = merge_detections(boxes, torch.zeros(5), classes, 0.5, 100, rule="vote")
    assert len(b) and torch.isfinite(b).all()
    assert all(row in boxes.tolist() for row in b.tolist())  # kept as they are: no mean was taken
    # max_dets keeps the best scores
    assert merge_detections(boxes, scores, classes, 0.5, 2, rule="vote")[1].tolist() == pytest.approx([0.9, 0.8])


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="TEST.TTA.VIEWS=9"):
        DetectorWithTTA(BrightBoxDetector(), views=9, nms_thresh=0.5, max_dets=100, merge="vote", vote_iou=0.6)
    with pytest.raises(ValueError, match="TEST.TTA.MERGE='mean'"):
        DetectorWithTTA(BrightBoxDetector(), views=8, nms_thresh=0.5, max_dets=100, merge="mean", vote_iou=0.6)


def test_evaluation_and_predict_use_tta(trained, tmp_path):
    out, _ = trained
    weights = os.path.join(out, "model_final.pth")
    plain = load_repo_config(SYNTH, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "plain"))
    model = Trainer.build_model(plain)
    load_weights_strict(model, weights)
    model.eval()
    reference = Trainer.test(plain, model)["bbox"]
    assert np.isfinite(reference["AP"])
    # one view, NMS at the detector's own threshold: the detector's detections again, the same AP
    one = load_repo_config(SYNTH, "OUTPUT_DIR", str(tmp_path / "one"), "TEST.TTA.ENABLED", "True", "TEST.TTA.VIEWS", "1",
                           "TEST.TTA.MERGE", "nms", "TEST.TTA.NMS_THRESH", str(plain.MODEL.RETINANET.NMS_THRESH_TEST))
    assert Trainer.test(one, model)["bbox"] == pytest.approx(reference, nan_ok=True)
    eight = load_repo_config(SYNTH, "OUTPUT_DIR", str(tmp_path / "eight"), "TEST.TTA.ENABLED", "True")
    result = Trainer.test(eight, model)["bbox"]
    assert np.isfinite(result["AP"]) and result["AP"] != reference["AP"]
    aug = load_repo_config(SYNTH, "OUTPUT_DIR", str(tmp_path / "aug"), "TEST.AUG.ENABLED", "True")
    with pytest.raises(ValueError, match="TEST.TTA.ENABLED"):
        Trainer.test(aug, model)
    with pytest.raises(ValueError, match="TEST.TTA.ENABLED"):  # a training is refused before it starts
        Trainer(aug)
    eight.MODEL.WEIGHTS = weights
    predictor = strict_predictor(eight)
    assert isinstance(predictor.model, DetectorWithTTA)
    inst = predictor(np.zeros((100, 80, 3), dtype=np.uint8))["instances"]
    assert inst.image_size == (100, 80) and len(inst) <= eight.TEST.DETECTIONS_PER_IMAGE


def test_one_view_reproduces_a_two_stage_detector(tmp_path):
    """The project's Faster R-CNN through the wrapper: one view, NMS at the box head's own threshold,
    gives the detector's detections again (untrained weights, no score threshold: hundreds of boxes);
    its proposals pass through."""
    torch.manual_seed(0)
    opts = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "OUTPUT_DIR", str(tmp_path)]
    cfg = load_repo_config("configs/synthetic/faster_rcnn.yaml", *opts)
    model = Trainer.build_model(cfg).eval()
    inputs = [{"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8), "height": 96, "width": 128}]
    with torch.no_grad():
        plain = model(inputs)[0]["instances"]
    tta = DetectorWithTTA(model, views=1, nms_thresh=cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST, merge="nms", vote_iou=0.6,
                          max_dets=cfg.TEST.DETECTIONS_PER_IMAGE)
    one = tta(inputs)[0]["instances"]
    assert len(plain) > 10 and len(one) == len(plain)
    torch.testing.assert_close(one.pred_boxes.tensor, plain.pred_boxes.tensor)
    torch.testing.assert_close(one.scores, plain.scores)
    assert one.pred_classes.tolist() == plain.pred_classes.tolist()
    eight = DetectorWithTTA(model, views=8, nms_thresh=0.5, merge="vote", vote_iou=0.6, max_dets=100)(inputs)[0]
    assert eight["instances"].image_size == (96, 128) and 0 < len(eight["instances"]) <= 100
    # the RPN's proposals (its AR@100 / AR@1000 in the evaluation) are those of the image as it is
    with torch.no_grad():
        proposals = model(inputs)[0]["proposals"]
    torch.testing.assert_close(eight["proposals"].proposal_boxes.tensor, proposals.proposal_boxes.tensor)


def test_tta_off_leaves_the_config_hash_of_older_runs():
    """Summaries made before TEST.TTA existed stay current while it is off; on, it is another run."""
    from focal_rpn.study.summaries import config_sha256

    off = load_repo_config("configs/bccd/retinanet.yaml")
    before_the_keys = off.clone()
    del before_the_keys.TEST["TTA"]
    assert config_sha256(off) == config_sha256(before_the_keys)
    assert config_sha256(load_repo_config("configs/bccd/retinanet.yaml", "TEST.TTA.VIEWS", "2")) == config_sha256(off)
    assert config_sha256(load_repo_config("configs/bccd/retinanet.yaml", "TEST.TTA.ENABLED", "True")) != config_sha256(off)


def test_export_refuses_tta(tmp_path):
    from focal_rpn.tools import export

    cfg = load_repo_config(SYNTH, "TEST.TTA.ENABLED", "True")
    with pytest.raises(ValueError, match="TEST.TTA.ENABLED: the exported file holds the detector of one view"):
        export.export(cfg, torch.zeros(3, 64, 64, dtype=torch.uint8), str(tmp_path / "m.ts"))
