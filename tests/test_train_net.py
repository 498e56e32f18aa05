"""train_net.py end to end, as a user runs it: train, --eval-only, --resume, --num-gpus 2 (CPU)."""
import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_train_net as run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = "configs/synthetic/retinanet.yaml"


def copypaste_metrics(text):
    """The AP row Detectron2 prints after evaluation (``copypaste: 1.2,3.4,...``)."""
    rows = re.findall(r"copypaste: ([-\d.,na]+)$", text, flags=re.M)
    assert rows, text[-3000:]
    return [float(v) for v in rows[-1].split(",")]


def metrics_json(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def test_training_writes_detectron2_outputs(trained):
    out, log = trained
    for f in ("log.txt", "metrics.json", "last_checkpoint", "model_final.pth",
              "inference/coco_instances_results.json"):
        assert os.path.exists(os.path.join(out, f)), f
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    assert "eta:" in log
    rows = metrics_json(out)
    assert any("retinanet/neg_pos_ratio" in r for r in rows)
    assert any("bbox/AP50" in r for r in rows)


def test_checkpoint_loads_with_weights_only(trained):
    out, _ = trained
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=True, map_location="cpu")
    assert "model" in ckpt and "iteration" in ckpt


def test_eval_only_reproduces_training_metrics(trained, tmp_path):
    out, log = trained
    p = run("--config-file", SYNTH, "--eval-only", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
            "OUTPUT_DIR", str(tmp_path))
    a, b = copypaste_metrics(log), copypaste_metrics(p.stdout + p.stderr)
    assert not all(math.isnan(v) for v in a)
    assert a == pytest.approx(b, nan_ok=True)


def test_eval_only_with_a_checkpoint_of_another_model_fails_loudly(trained, tmp_path):
    out, _ = trained
    p = run("--config-file", SYNTH, "--eval-only", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
            "MODEL.RETINANET.NUM_CONVS", "3", "OUTPUT_DIR", str(tmp_path), check=False)
    assert p.returncode != 0
    assert "missing" in p.stderr and "head.cls_subnet" in p.stderr


def test_resume_after_kill_continues_from_checkpoint(tmp_path):
    out = str(tmp_path)
    cmd = [sys.executable, "train_net.py", "--config-file", SYNTH, "SOLVER.MAX_ITER", "400",
           "SOLVER.CHECKPOINT_PERIOD", "5", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", out]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ckpt = os.path.join(out, "model_0000009.pth")
    deadline = time.time() + 300
    while not os.path.exists(ckpt) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # let the checkpointer finish writing last_checkpoint
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.path.exists(ckpt)
    with open(os.path.join(out, "last_checkpoint")) as f:
        last = f.read().strip()
    resumed_from = int(re.findall(r"model_(\d+)\.pth", last)[0]) + 1
    p = run("--config-file", SYNTH, "--resume", "SOLVER.MAX_ITER", str(resumed_from + 6),
            "SOLVER.CHECKPOINT_PERIOD", "5", "OUTPUT_DIR", out)
    log = p.stdout + p.stderr
    assert f"Starting training from iteration {resumed_from}" in log
    assert os.path.exists(os.path.join(out, "model_final.pth"))


def test_two_cpu_workers_train_and_evaluate(tmp_path):
    """--num-gpus 2 with MODEL.DEVICE cpu: two gloo processes train and gather evaluation."""
    p = run("--config-file", SYNTH, "--num-gpus", "2", "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "4",
            "OUTPUT_DIR", str(tmp_path))
    log = p.stdout + p.stderr
    assert "World size: 2" in log
    assert len(copypaste_metrics(log)) == 6
    assert os.path.exists(os.path.join(tmp_path, "model_final.pth"))


def test_demo_config_trains(tmp_path):
    """The `make demo` config runs (a few iterations, then evaluation on trees_val)."""
    p = run("--config-file", "configs/trees/retinanet.yaml", "SOLVER.MAX_ITER", "3",
            "SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", str(tmp_path))
    assert "Evaluation results for trees_val" in p.stdout + p.stderr


@pytest.mark.parametrize("config", sorted(
    os.path.relpath(p, ROOT) for d in ("trees", "deeppcb", "bccd", "synthetic")
    for p in glob.glob(os.path.join(ROOT, "configs", d, "*.yaml")) if not os.path.basename(p).startswith("Base-")))
def test_every_dataset_config_loads_and_builds(config):
    """Each shipped CPU config: its class count agrees with its datasets' (metadata, no data
    needed) and its model builds with one parameter set per anchor shape of the head."""
    from detectron2.modeling import build_model

    from focal_rpn.config import load_config

    cfg = load_config(os.path.join(ROOT, config), fit_anchors=False)
    model = build_model(cfg)
    dense = model if hasattr(model, "anchor_generator") else model.proposal_generator
    assert dense.anchor_generator.num_anchors[0] == len(cfg.MODEL.ANCHOR_GENERATOR.SIZES[0]) * len(
        cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0])
