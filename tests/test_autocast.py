"""Mixed precision and channels_last: losses and gradients of a bfloat16 (CPU) and a float16 (the
GPU AMP path) forward against the same model in float32; the CPU AMP trainer; channels_last."""
import json
import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import run_train_net

from focal_rpn.engine import Trainer, autocast
from focal_rpn.engine.autocast import CPUAutocastTrainer, amp_trainer

# bfloat16 in the training processes of the tests below even where the CPU has no bfloat16 units
EMULATE = {autocast.CPU_BF16_ENV: "emulate"}

# (config, options): every classification loss path of the project
MODELS = {
    # per-batch normaliser: Detectron2's EMA would change between the two forwards compared
    "retinanet_focal": ("configs/synthetic/retinanet.yaml", ["MODEL.RETINANET.LOSS_NORMALIZER", "num_pos"]),
    "retinanet_ohem": ("configs/synthetic/retinanet.yaml", ["MODEL.RETINANET.LOSS_TYPE", "ohem_1_3",
                                                            "MODEL.RETINANET.LOSS_NORMALIZER", "num_pos"]),
    "rpn_ce": ("configs/synthetic/faster_rcnn.yaml", []),
    "focal_rpn_sigmoid": ("configs/synthetic/faster_rcnn.yaml", ["MODEL.PROPOSAL_GENERATOR.NAME", "FocalRPN"]),
    "focal_rpn_softmax_roi_fl": ("configs/synthetic/faster_rcnn.yaml", [
        "MODEL.PROPOSAL_GENERATOR.NAME", "FocalRPN", "MODEL.RPN.HEAD_NAME", "SoftmaxRPNHead",
        "MODEL.FOCAL_RPN.FORM", "softmax", "MODEL.ROI_HEADS.NAME", "FocalROIHeads"]),
    "ohem_roi_heads": ("configs/synthetic/faster_rcnn.yaml", ["MODEL.ROI_HEADS.NAME", "OHEMROIHeads"]),
}
# Stated tolerances of a low-precision forward against float32 (bfloat16 keeps 8 bits of
# mantissa, float16 11): every loss within 3% (bf16) / 1% (fp16) relative, plus 2e-3 absolute
# for the near-zero ones; the cosine of the flattened gradient to the float32 one above 0.95 /
# 0.98 (measured: bf16 0.96-0.99, most of the error in the 7x7 stem convolution's weights).
TOLERANCE = {torch.bfloat16: (0.03, 0.95), torch.float16: (0.01, 0.98)}


def _batch(cfg, n=2):
    mapper = DatasetMapper(cfg, is_train=True, augmentations=[])
    return [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[1:1 + n]]


def _forward(model, batch, proposals):
    """Training losses. A two-stage model's box head gets the fixed ``proposals`` (computed once in
    float32), so that low-precision objectness scores cannot change which RoIs it trains on."""
    if proposals is None:
        return model(batch)
    images = model.preprocess_image(batch)
    gt = [b["instances"] for b in batch]
    features = model.backbone(images.tensor)
    _, rpn_losses = model.proposal_generator(images, features, gt)
    _, roi_losses = model.roi_heads(images, features, [p[:] for p in proposals], gt)
    return {**rpn_losses, **roi_losses}


def _losses_and_grad(model, batch, dtype, proposals=None):
    model.zero_grad()
    torch.manual_seed(0)  # the RPN's and ROI heads' sampling draw random numbers
    with EventStorage(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        losses = _forward(model, batch, proposals)
        sum(losses.values()).backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return {k: v.detach() for k, v in losses.items()}, grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", MODELS)
def test_low_precision_forward_matches_float32(make_cfg, name, dtype):
    path, opts = MODELS[name]
    cfg = make_cfg(path, *opts)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    # a few float32 steps first, so that the comparison is not only of the initial prior
    batch = _batch(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    with EventStorage():
        for _ in range(3):
            loss = sum(model(batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    proposals = None
    if hasattr(model, "roi_heads"):
        with torch.no_grad(), EventStorage():
            images = model.preprocess_image(batch)
            proposals, _ = model.proposal_generator(images, model.backbone(images.tensor),
                                                    [b["instances"] for b in batch])
    ref, g_ref = _losses_and_grad(model, batch, None, proposals)
    low, g_low = _losses_and_grad(model, batch, dtype, proposals)
    rel, cos_min = TOLERANCE[dtype]
    assert set(low) == set(ref)
    for k in ref:
        assert math.isfinite(low[k].item()), (k, low[k])
        assert low[k].dtype == torch.float32, (k, low[k].dtype)  # losses are computed in float32
        assert abs(low[k] - ref[k]) <= rel * abs(ref[k]) + 2e-3, (name, k, low[k].item(), ref[k].item())
    assert torch.isfinite(g_low).all()
    cos = torch.nn.functional.cosine_similarity(g_low, g_ref, dim=0).item()
    assert cos > cos_min, cos


def test_backward_inside_autocast_equals_backward_outside(make_cfg):
    """CPUAutocastTrainer runs backward inside the autocast context (as SimpleTrainer.run_step
    is one piece): on the CPU that must give the gradients of a backward outside it."""
    cfg = make_cfg("configs/synthetic/faster_rcnn.yaml", "MODEL.PROPOSAL_GENERATOR.NAME", "FocalRPN")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = _batch(cfg)
    grads = []
    for inside in (True, False):
        model.zero_grad()
        torch.manual_seed(0)
        with EventStorage():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = sum(model(batch).values())
                if inside:
                    loss.backward()
            if not inside:
                loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_amp_on_cpu_builds_the_bfloat16_trainer(make_cfg, monkeypatch):
    monkeypatch.setattr(autocast, "cpu_has_bfloat16", lambda: True)
    cfg = make_cfg("configs/synthetic/retinanet.yaml", "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "1")
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, CPUAutocastTrainer) and trainer._trainer.dtype == torch.bfloat16


@pytest.mark.parametrize("has_bf16,mode,expected", [
    (True, None, CPUAutocastTrainer), (True, "refuse", CPUAutocastTrainer),
    (False, None, SimpleTrainer), (False, "auto", SimpleTrainer), (False, "emulate", CPUAutocastTrainer),
    (False, "refuse", RuntimeError), (False, "yes", ValueError)])
def test_amp_on_a_cpu_without_bfloat16_units(has_bf16, mode, expected, monkeypatch, caplog):
    """Without bfloat16 units, SOLVER.AMP.ENABLED trains in float32 with a warning (emulated
    bfloat16 is many times slower), or bfloat16 anyway, or refuses, as FOCAL_RPN_CPU_BF16 says."""
    monkeypatch.setattr(autocast, "cpu_has_bfloat16", lambda: has_bf16)
    if mode is None:
        monkeypatch.delenv(autocast.CPU_BF16_ENV, raising=False)
    else:
        monkeypatch.setenv(autocast.CPU_BF16_ENV, mode)
    model = torch.nn.Linear(2, 2)
    build = lambda: amp_trainer(model, [], torch.optim.SGD(model.parameters(), lr=0.1))  # noqa: E731
    if issubclass(expected, Exception):
        with pytest.raises(expected, match="FOCAL_RPN_CPU_BF16"):
            build()
        return
    with caplog.at_level("WARNING", logger=autocast.__name__):
        trainer = build()
    assert type(trainer) is expected
    fell_back = expected is SimpleTrainer
    assert ("training in float32 instead" in caplog.text) == fell_back
    if fell_back:
        assert "SOLVER.AMP.ENABLED" in caplog.text and "bfloat16" in caplog.text


@pytest.mark.parametrize("device,amp,has_bf16,mode,expected", [
    ("cpu", False, True, None, "float32"), ("cuda", False, False, None, "float32"),
    ("cuda", True, False, None, "float16"), ("cuda", True, False, "refuse", "float16"),
    ("cpu", True, True, None, "bfloat16"), ("cpu", True, True, "refuse", "bfloat16"),
    ("cpu", True, False, None, "float32"), ("cpu", True, False, "auto", "float32"),
    ("cpu", True, False, "emulate", "bfloat16")])
def test_training_precision_by_hand(device, amp, has_bf16, mode, expected, monkeypatch):
    """What a run's summary records as its precision, by hand, and for a CPU with SOLVER.AMP.ENABLED
    the trainer amp_trainer really builds there (bfloat16 autocast or plain float32)."""
    monkeypatch.setattr(autocast, "cpu_has_bfloat16", lambda: has_bf16)
    if mode is None:
        monkeypatch.delenv(autocast.CPU_BF16_ENV, raising=False)
    else:
        monkeypatch.setenv(autocast.CPU_BF16_ENV, mode)
    assert autocast.training_precision(device, amp) == expected
    if device == "cpu" and amp:
        model = torch.nn.Linear(2, 2)
        trainer = amp_trainer(model, [], torch.optim.SGD(model.parameters(), lr=0.1))
        assert type(trainer) is {"bfloat16": CPUAutocastTrainer, "float32": SimpleTrainer}[expected]


def test_train_net_with_amp_and_channels_last(tmp_path):
    """A user's run with both keys on: finite losses, the bf16 trainer in use, evaluation works."""
    p = run_train_net("--config-file", "configs/synthetic/faster_rcnn.yaml", "SOLVER.AMP.ENABLED", "True",
                      "MODEL.CHANNELS_LAST", "True", "MODEL.PROPOSAL_GENERATOR.NAME", "FocalRPN",
                      "SOLVER.MAX_ITER", "6", "OUTPUT_DIR", str(tmp_path), env=EMULATE)
    assert "Evaluation results for bbox" in p.stdout + p.stderr
    with open(tmp_path / "metrics.json") as f:
        rows = [json.loads(line) for line in f]
    losses = [r["total_loss"] for r in rows if "total_loss" in r]
    assert losses and all(math.isfinite(v) for v in losses)


def test_channels_last_model_and_inputs(make_cfg):
    cfg = make_cfg("configs/synthetic/retinanet.yaml")
    torch.manual_seed(0)
    ref = Trainer.build_model(cfg).eval()
    cfg.MODEL.CHANNELS_LAST = True
    torch.manual_seed(0)
    ours = Trainer.build_model(cfg).eval()
    convs = [m for m in ours.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    seen = []
    ours.backbone.bottom_up.stem.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    batch = [{"image": d["image"]} for d in _batch(cfg)]
    with torch.no_grad():
        a, b = ref(batch), ours(batch)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    for x, y in zip(a, b):
        torch.testing.assert_close(x["instances"].scores, y["instances"].scores, rtol=1e-4, atol=1e-5)


def test_bf16_training_repeats_bit_for_bit_across_processes(tmp_path):
    """Two fresh train_net.py processes of the same bf16 Faster R-CNN config (autocast,
    channels_last, image threads, the gather RoIAlign, as the trees recipe) end with bitwise the
    same weights: a run's seed reproduces it, so seed-to-seed spread is not process noise."""
    def train(out):
        run_train_net("--config-file", "configs/synthetic/faster_rcnn.yaml", "SOLVER.MAX_ITER", "6",
                      "SOLVER.WEIGHT_AVERAGE.ENABLED", "False", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
                      "SEED", "3", "OUTPUT_DIR", str(out), env=EMULATE)
        return torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]

    # side by side (their start-ups overlap): each process is alone with its seed either way
    with ThreadPoolExecutor(2) as pool:
        finals = list(pool.map(train, (tmp_path / "a", tmp_path / "b")))
    assert finals[0].keys() == finals[1].keys()
    changed = [k for k in finals[0] if not torch.equal(finals[0][k], finals[1][k])]
    assert not changed, changed[:5]
