"""focal_rpn.tools.predict: windows, merging across window borders, and the command line."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from PIL import Image

from conftest import ROOT
from focal_rpn.tools import predict
def test_windows_cover_the_image_with_the_overlap():
    wins = predict.windows(2000, 3000, 1024, 256)
    cover = np.zeros((2000, 3000), dtype=int)
    for x0, y0, x1, y1 in wins:
        assert x1 - x0 <= 1024 and y1 - y0 <= 1024
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    xs = sorted({w[0] for w in wins})
    assert all(b - a <= 1024 - 256 for a, b in zip(xs, xs[1:]))  # neighbours share >= 256 px
    assert predict.windows(500, 600, 1024, 256) == [(0, 0, 600, 500)]
    with pytest.raises(ValueError, match="--overlap"):
        predict.windows(3000, 3000, 512, 600)


def _oracle(bgr):
    """A 'detector' that finds the one white rectangle in its window (clipped to the window)."""
    ys, xs = np.nonzero(bgr[..., 0] > 128)
    inst = Instances(bgr.shape[:2])
    if len(xs):
        inst.pred_boxes = Boxes(torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32))
        inst.scores, inst.pred_classes = torch.tensor([0.9]), torch.tensor([0])
    else:
        inst.pred_boxes, inst.scores, inst.pred_classes = Boxes(torch.zeros(0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return inst


@pytest.mark.parametrize("box,straddles", [((740, 300, 860, 380), True), ((1500, 700, 1580, 820), True),
                                           ((10, 1900, 90, 2000), False)])  # the last on the image border
def test_a_box_on_a_window_border_is_found_once_and_whole(box, straddles):
    img = np.zeros((2000, 3000, 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 255
    wins = predict.windows(2000, 3000, 1024, 256)
    # the first two boxes straddle an interior window edge (seen cut in one window, whole in another)
    hits = [w for w in wins if w[0] < x1 and w[2] > x0 and w[1] < y1 and w[3] > y0]
    assert (len(hits) >= 2) == straddles
    out = predict.predict_image(_oracle, img, 1024, 256, nms=0.3, max_dets=100)
    assert out.pred_boxes.tensor.tolist() == [list(map(float, box))]


def test_predict_command_line(trained, tmp_path):
    out, _ = trained
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (2000, 3000, 3), dtype=np.uint8)).save(folder / "big.png")
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(tmp_path / "small.jpg")
    predict.main(["--config-file", "configs/synthetic/retinanet.yaml", "--input", str(folder), str(tmp_path / "*.jpg"),
                  "--output", str(tmp_path / "out"), "--tile", "1024", "--overlap", "128", "--draw",
                  "MODEL.WEIGHTS", os.path.join(out, "model_final.pth")])
    dets = json.loads((tmp_path / "out" / "detections.json").read_text())
    with open(tmp_path / "out" / "detections.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "x1", "y1", "x2", "y2", "score", "label"] and len(rows) == len(dets) + 1
    assert {d["image_id"] for d in dets} <= {1, 2} and all(len(d["bbox"]) == 4 for d in dets)
    assert all(r[6] in ("square", "disk", "bar") for r in rows[1:])
    for d in dets:  # every box inside its image
        x, y, w, h = d["bbox"]
        limit = (3000, 2000) if "big" in d["file_name"] else (128, 128)
        assert x >= 0 and y >= 0 and x + w <= limit[0] + 1e-3 and y + h <= limit[1] + 1e-3
    assert (tmp_path / "out" / "big.png").exists() and (tmp_path / "out" / "small.png").exists()
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        predict.expand_inputs([str(tmp_path / "nothing_here")])


def test_predict_names_an_unreadable_weights_file(tmp_path):
    (tmp_path / "w.pth").write_text("not a checkpoint")
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match=f"MODEL.WEIGHTS {tmp_path / 'w.pth'} .* is not a readable checkpoint"):
        predict.main(["--config-file", "configs/synthetic/retinanet.yaml", "--input", str(tmp_path / "a.png"),
                      "--output", str(tmp_path / "out"), "MODEL.WEIGHTS", str(tmp_path / "w.pth")])


def test_predict_draws_the_evaluation_view_where_ground_truth_exists(trained, tmp_path, capsys):
    """--gt DATASET (registered from the config): the image it annotates is drawn as true/false
    positives and missed objects, and the printed totals add up to the ground truth and to the
    detections above --draw-thresh; an image it does not annotate is drawn as detections."""
    out, _ = trained
    rng = np.random.default_rng(1)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "annotated.png")
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "other.png")
    gt_boxes = [[20, 30, 40, 40], [200, 100, 60, 50]]  # XYWH
    coco = {"images": [{"id": 1, "file_name": "annotated.png", "height": 300, "width": 400}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                            for i, b in enumerate(gt_boxes)],
            "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "disk"}, {"id": 3, "name": "bar"}]}
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    predict.main(["--config-file", "configs/synthetic/retinanet.yaml",
                  "--input", str(tmp_path / "imgs" / "annotated.png"), str(tmp_path / "other.png"),
                  "--output", str(tmp_path / "out"), "--draw", "--draw-thresh", "0.1", "--gt", "predict_gt_test",
                  "DATASETS.REGISTER", f"('predict_gt_test=coco:{tmp_path / 'gt.json'}:{tmp_path / 'imgs'}',)",
                  "MODEL.WEIGHTS", os.path.join(out, "model_final.pth")])
    printed = capsys.readouterr().out
    line = [l for l in printed.splitlines() if l.startswith("against the ground truth of 1 of them")]
    assert line, printed
    tp, fp, missed = (int(line[0].split(f" {k}")[0].split()[-1]) for k in ("true positive", "false positive", "missed"))
    dets = [d for d in json.loads((tmp_path / "out" / "detections.json").read_text())
            if d["image_id"] == 1 and d["score"] >= 0.1]
    assert tp + missed == len(gt_boxes) and tp + fp == len(dets)
    from focal_rpn.tools.visualize import EVAL_COLORS
    drawn = np.asarray(Image.open(tmp_path / "out" / "annotated.png"))
    x, y, w, h = gt_boxes[1]  # its left edge is drawn as missed, or a matched detection is drawn near it
    colours = {tuple(c) for c in drawn[y + 5:y + h - 5, x - 3:x + 4].reshape(-1, 3)}
    assert colours & {EVAL_COLORS["missed"], EVAL_COLORS["true positive"]}
    assert tuple(drawn[5, 5]) == (255, 255, 255)  # the legend's background
    assert (tmp_path / "out" / "other.png").exists()
    with pytest.raises(KeyError, match="--gt nowhere"):
        predict.main(["--config-file", "configs/synthetic/retinanet.yaml", "--input", str(tmp_path / "other.png"),
                      "--output", str(tmp_path / "out2"), "--gt", "nowhere", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth")])


def test_a_model_of_another_class_count_than_the_configs_datasets(tmp_path):
    """The usage page's predict example for a 3-class model: the trees config's training dataset
    (1 class) is not read, so it does not block inference; names come from --class-names."""
    import torch
    from detectron2.modeling import build_model

    from focal_rpn.config import load_config

    opts = ["MODEL.RETINANET.NUM_CLASSES", "3", "MODEL.DEVICE", "cpu"]
    cfg = load_config(os.path.join(ROOT, "configs/trees/retinanet.yaml"), opts, check_datasets=[])
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "w.pth")
    Image.fromarray(np.full((96, 128, 3), 127, np.uint8)).save(tmp_path / "photo.png")
    predict.main(["--config-file", os.path.join(ROOT, "configs/trees/retinanet.yaml"), "--input",
                  str(tmp_path / "photo.png"), "--output", str(tmp_path / "out"), "--class-names", "a,b,c",
                  "--score-thresh", "0", "MODEL.WEIGHTS", str(tmp_path / "w.pth"), *opts])
    rows = (tmp_path / "out" / "detections.csv").read_text().splitlines()
    assert rows[0] == "image,x1,y1,x2,y2,score,label" and {r.rsplit(",", 1)[1] for r in rows[1:]} <= {"a", "b", "c"}
    with pytest.raises(ValueError, match="2 names for a model of 3 classes"):
        predict.main(["--config-file", os.path.join(ROOT, "configs/trees/retinanet.yaml"), "--input",
                      str(tmp_path / "photo.png"), "--output", str(tmp_path / "out2"), "--class-names", "a,b",
                      "MODEL.WEIGHTS", str(tmp_path / "w.pth"), *opts])
