import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# The shared datasets (DeepPCB, BCCD) of developer machines and CI, as Detectron2 finds datasets
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
if "DETECTRON2_DATASETS" not in os.environ and os.path.isdir(SHARED_DATA):
    os.environ["DETECTRON2_DATASETS"] = SHARED_DATA
torch.set_num_threads(min(2, os.cpu_count() or 1))
# The synthetic configs ask for bfloat16 autocast (as the CPU recipes): on a CPU without bfloat16
# units their runs, the study's included, train in float32 (focal_rpn/engine/autocast.py). The
# tests of that choice set or clear the variable themselves.
os.environ.setdefault("FOCAL_RPN_CPU_BF16", "auto")


def load_repo_config(path="configs/synthetic/retinanet.yaml", *opts):
    """A frozen-free CfgNode of ``path`` (relative to the repo) with ``opts``."""
    from focal_rpn.config import load_config

    return load_config(os.path.join(ROOT, path), opts, freeze=False)


def needs_dataset(root_check):
    """Skips the calling test, with the loader's own message (where it looked, where to get the
    data), when ``root_check()`` cannot find the dataset."""
    try:
        return root_check()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture
def make_cfg():
    """Returns f(config path relative to the repo, *opts) -> a frozen-free CfgNode."""
    return load_repo_config


def run_train_net(*args, check=True, timeout=600, env=None):
    """Runs train_net.py as a user would (``env``: variables added to this environment); returns
    the CompletedProcess (stdout, stderr)."""
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), *args]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A FocalRetinaNet trained 20 iterations on the synthetic shapes: (output dir, log text)."""
    out = str(tmp_path_factory.mktemp("train"))
    p = run_train_net("--config-file", "configs/synthetic/retinanet.yaml", "OUTPUT_DIR", out)
    return out, p.stdout + p.stderr


def train_steps(model, batch, steps=20, lr=0.01):
    """SGD steps on one fixed batch; asserts finite losses. Returns (total losses, last storage)."""
    import math

    from detectron2.utils.events import EventStorage

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    history = []
    with EventStorage() as storage:
        for _ in range(steps):
            losses = model(batch)
            assert all(math.isfinite(v.item()) for v in losses.values()), losses
            total = sum(losses.values())
            opt.zero_grad()
            total.backward()
            opt.step()
            history.append(total.item())
        latest = storage.latest()
    return history, latest


def reference_ohem_selection(boxes, losses, is_fg, k, thresh, ratio):
    """Independent OHEM reference: greedy NMS by descending loss, then the top k (ratio 0) or
    the surviving positives (at most k / (1 + ratio)) plus ratio x as many negatives."""
    from torchvision.ops import box_iou

    order = sorted(range(len(losses)), key=lambda i: -losses[i])
    iou = box_iou(boxes, boxes)
    kept = []
    for i in order:
        if all(iou[i, j] <= thresh for j in kept):
            kept.append(i)
    if ratio == 0:
        return kept[:k]
    pos = [i for i in kept if is_fg[i]][: int(k / (1 + ratio))]
    neg = [i for i in kept if not is_fg[i]][: min(k - len(pos), max(int(round(len(pos) * ratio)), 1))]
    return pos + neg
