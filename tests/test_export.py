"""focal_rpn.tools.export: TorchScript files that reload and detect what the eager model detects."""
import os
import re
import subprocess
import sys

import torch
from detectron2.data import DatasetCatalog, detection_utils as utils

from focal_rpn.tools import export
from focal_rpn.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_export_retinanet_reloads_and_matches(trained, tmp_path, capsys):
    out, _ = trained
    export.main(["--config-file", "configs/synthetic/retinanet.yaml", "--output", str(tmp_path / "m.ts"),
                 "MODEL.WEIGHTS", os.path.join(out, "model_final.pth")])
    assert "reloaded" in capsys.readouterr().out
    # as the README shows a user running it: another image, of another size
    model = torch.jit.load(str(tmp_path / "m.ts"))
    cfg = load_config(os.path.join(ROOT, "configs/synthetic/retinanet.yaml"))
    path = DatasetCatalog.get("synthetic_val")[1]["file_name"]
    image = torch.as_tensor(utils.read_image(path, format="BGR").transpose(2, 0, 1).copy())[:, :100, :120].contiguous()
    boxes, classes, scores, size = model(image)
    assert boxes.shape[1] == 4 and len(boxes) == len(scores) == len(classes)
    assert (boxes[:, 2] <= 120 + 1e-3).all() and (boxes[:, 3] <= 100 + 1e-3).all()
    assert cfg.MODEL.META_ARCHITECTURE == "FocalRetinaNet"
    # the usage page's lines, as written, in a fresh interpreter (no focal_rpn or detectron2 imported)
    with open(os.path.join(ROOT, "docs", "usage.md")) as f:
        (snippet,) = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    snippet = snippet.replace('"model.ts"', repr(str(tmp_path / "m.ts"))).replace('"photo.png"', repr(path))
    p = subprocess.run([sys.executable, "-c", snippet + "\nprint(len(boxes), tuple(image_size))"],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]


def test_export_faster_rcnn(tmp_path):
    """An untrained FocalRPN Faster R-CNN (random weights saved first): traced and checked."""
    cfg = load_config(os.path.join(ROOT, "configs/synthetic/faster_rcnn.yaml"),
                      ["MODEL.PROPOSAL_GENERATOR.NAME", "FocalRPN"], freeze=False)
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "w.pth")
    cfg.MODEL.WEIGHTS = str(tmp_path / "w.pth")
    path = DatasetCatalog.get("synthetic_val")[0]["file_name"]
    image = torch.as_tensor(utils.read_image(path, format="BGR").transpose(2, 0, 1).copy())
    check = export.export(cfg, image, str(tmp_path / "f.ts"))
    assert check["max_abs_diff"] <= 1e-3 and os.path.getsize(tmp_path / "f.ts") > 0
