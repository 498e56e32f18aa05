"""The COCO configs as a GPU user runs them, on a generated COCO-2017-shaped folder, on the CPU.

Only what a CPU cannot do is overridden: the device, the ImageNet weights (no download), the image
size and the schedule (2 iterations). Everything else (models, heads, losses, anchors, evaluator)
is the config as shipped.
"""
import glob
import json
import os

import numpy as np
import pytest
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml"))
                 if not os.path.basename(p).startswith("Base-"))
CPU_OPTS = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", "160",
            "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "160", "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.MAX_ITER", "2", "DATALOADER.NUM_WORKERS", "0"]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    """$DETECTRON2_DATASETS with coco/{train2017,val2017,annotations}: 4 + 2 images, the 80 categories."""
    root = tmp_path_factory.mktemp("d2data")
    cats = [c for c in COCO_CATEGORIES if c["isthing"]]
    rng = np.random.default_rng(0)
    for split, n in (("train2017", 4), ("val2017", 2)):
        os.makedirs(root / "coco" / split)
        images, annos = [], []
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)).save(root / "coco" / split / f"{i:012d}.jpg")
            images.append({"id": i + 1, "file_name": f"{i:012d}.jpg", "width": 200, "height": 160})
            for _ in range(3):
                x, y = rng.integers(0, 120), rng.integers(0, 90)
                w, h = rng.integers(20, 70), rng.integers(20, 60)
                annos.append({"id": len(annos) + 1, "image_id": i + 1, "category_id": int(rng.choice([c["id"] for c in cats])),
                              "bbox": [int(x), int(y), int(w), int(h)], "area": int(w * h), "iscrowd": 0})
        os.makedirs(root / "coco" / "annotations", exist_ok=True)
        with open(root / "coco" / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump({"images": images, "annotations": annos,
                       "categories": [{"id": c["id"], "name": c["name"]} for c in cats]}, f)
    return str(root)


def test_every_coco_config_is_tested():
    assert len(CONFIGS) == 7 and "retinanet_R50.yaml" in CONFIGS


@pytest.fixture(scope="module")
def coco_runs(coco_root, tmp_path_factory):
    """Every COCO config trained and evaluated as `train_net.py --config-file ... OPTS` does it, in
    one interpreter (one start-up instead of seven): {config: (output dir, its log)}."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("coco_runs")
    code = f"""
import sys
from detectron2.engine import default_argument_parser
from focal_rpn.engine.main import main
for config in sys.argv[1:]:
    print("=== " + config, flush=True)
    main(default_argument_parser().parse_args(["--config-file", "configs/" + config, *{CPU_OPTS!r},
                                                "OUTPUT_DIR", {str(out)!r} + "/" + config]))
"""
    p = subprocess.run([sys.executable, "-c", code, *CONFIGS], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       # the loss kernels' torch.compile (tested in test_losses.py) would add ~11 s of
                       # inductor compilation on a fresh machine for 2 iterations
                       env={**os.environ, "DETECTRON2_DATASETS": coco_root, "FOCAL_RPN_COMPILE": "0"})
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    parts = log.split("=== ")[1:]
    return {part.split("\n", 1)[0].strip(): (out / part.split("\n", 1)[0].strip(), part) for part in parts}


@pytest.mark.parametrize("config", CONFIGS)
def test_coco_config_trains_and_evaluates(config, coco_runs):
    run_dir, log = coco_runs[config]
    assert os.path.exists(run_dir / "model_final.pth")
    # inference over coco_2017_val and COCOEvaluator ran (after 2 iterations from random weights no
    # score passes the configs' 0.05 test threshold, so it reports "no predictions", not a table)
    assert "Start inference on 2 batches" in log and "Total inference time" in log
    assert "Evaluation results for bbox" in log or "No predictions from the model" in log
    with open(run_dir / "config.yaml") as f:
        assert "coco_2017_train" in f.read()
