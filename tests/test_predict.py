"""focal_rpn.predict: windows, merging across window borders, and the command line."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from PIL import Image

from focal_rpn import predict


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
