"""The project on a CUDA GPU: the losses (eager and compiled by Triton) against float64 references,
every model's losses and gradients on the GPU against the same model on the CPU, and train_net.py
runs with MODEL.DEVICE cuda (Detectron2's float16 AMPTrainer included). Skipped without a GPU (CI
has none); run them where there is one: ``pytest tests/test_cuda.py``."""
import copy
import json
import math

import pytest
import torch
import torchvision
from detectron2.engine import AMPTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import run_train_net
from test_autocast import MODELS, _batch, _forward
from test_train_net import copypaste_metrics

from focal_rpn import losses
from focal_rpn.engine import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 convolutions and matmuls (PyTorch's default for cuDNN convolutions) keep 10 bits of
    mantissa: compare float32 with float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _logits_and_targets(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    return x, (torch.rand(n, k, generator=g) < 0.02).double()


def _value_and_grad(fn, x, *args):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, *args)
    loss.backward()
    return loss.detach().double().cpu(), x.grad.double().cpu()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (0.25, 0.5)])
def test_sigmoid_focal_loss_on_cuda_matches_torchvision_in_float64(alpha, gamma, compiled):
    """Ours in float32 on the GPU (big enough to be compiled when asked) against torchvision's
    composite loss under float64 autograd on the CPU: value and gradient."""
    x, t = _logits_and_targets(1 << 16, 8)  # 2^19 logits: above the size that is compiled
    ref, g_ref = _value_and_grad(lambda a: torchvision.ops.sigmoid_focal_loss(a, t, alpha, gamma, "sum"), x)
    losses.set_compile(compiled)
    try:
        xc, tc = x.float().cuda(), t.float().cuda()
        ours, g_ours = _value_and_grad(lambda a: losses.sigmoid_focal_loss(a, tc, alpha, gamma, "sum"), xc)
        # a failed compilation falls back to eager for good: it must not have happened here
        assert losses._COMPILE == compiled
    finally:
        losses.set_compile(True)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)


def test_integer_targets_on_cuda_match_torchvision_on_one_hot_in_float64():
    x, _ = _logits_and_targets(4096, 6, seed=1)
    labels = torch.randint(0, 7, (4096,), generator=torch.Generator().manual_seed(2))  # 6: all negative
    one_hot = torch.nn.functional.one_hot(labels, 7)[:, :6].double()
    ref, g_ref = _value_and_grad(lambda v: torchvision.ops.sigmoid_focal_loss(v, one_hot, 0.25, 2.0, "sum"), x)
    ours, g_ours = _value_and_grad(lambda v: losses.sigmoid_focal_loss(v, labels.cuda(), 0.25, 2.0, "sum"),
                                   x.float().cuda())
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)


def test_focal_loss_star_on_cuda_matches_its_formula_in_float64():
    x, t = _logits_and_targets(4096, 4, seed=3)

    def reference(v):  # -log σ(γ x_t + β) / γ, x_t = (2t - 1) x, by autograd
        return (-torch.nn.functional.logsigmoid(2.0 * (2 * t - 1) * v + 1.0) / 2.0).sum()

    ref, g_ref = _value_and_grad(reference, x)
    tc = t.float().cuda()
    ours, g_ours = _value_and_grad(lambda v: losses.sigmoid_focal_loss_star(v, tc, 2.0, 1.0, "sum"), x.float().cuda())
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)


def test_softmax_focal_loss_on_cuda_matches_its_formula_in_float64():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(512, 81, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 81, (512,), generator=g)
    y[::7] = -1  # ignored rows
    w = torch.rand(81, generator=g, dtype=torch.float64) + 0.5

    def reference(v):  # -w_y (1 - p_y)^2 log p_y over the rows that are not ignored
        keep = y >= 0
        logp = torch.log_softmax(v[keep], dim=1).gather(1, y[keep, None])[:, 0]
        return (-w[y[keep]] * (1 - logp.exp()) ** 2 * logp).sum()

    ref, g_ref = _value_and_grad(reference, x)
    ours, g_ours = _value_and_grad(
        lambda v: losses.softmax_focal_loss(v, y.cuda(), w.float(), 2.0, "sum"), x.float().cuda())
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)


@pytest.fixture
def randperm_from_the_cpu(monkeypatch):
    """The RPN's and ROI heads' samplers draw with torch.randperm on the tensors' device, and a CUDA
    generator gives other numbers than the CPU's for the same seed: draw on the CPU, so that both
    devices sample the same anchors and RoIs."""
    cpu_randperm = torch.randperm

    def randperm(n, *args, device=None, **kwargs):
        return cpu_randperm(n, *args, **kwargs).to(device)

    monkeypatch.setattr(torch, "randperm", randperm)


def _step(model, batch, proposals):
    model.zero_grad()
    torch.manual_seed(0)
    with EventStorage():
        out = _forward(model, batch, proposals)
        sum(out.values()).backward()
    grad = torch.cat([p.grad.flatten().cpu() for p in model.parameters() if p.grad is not None])
    return {k: v.item() for k, v in out.items()}, grad


def _to(batch, device):
    return [{**d, "image": d["image"].to(device), "instances": d["instances"].to(device)} for d in batch]


@pytest.mark.parametrize("name", MODELS)
def test_model_on_cuda_matches_the_same_model_on_the_cpu(make_cfg, name, randperm_from_the_cpu):
    """The same weights, batch and samples on both devices: every loss within 1e-3 relative (float32
    reductions in another order), the gradient's cosine to the CPU's above 0.9999, and inference
    gives the same top detections."""
    path, opts = MODELS[name]
    cfg = make_cfg(path, *opts)
    torch.manual_seed(0)
    cpu = build_model(cfg).train()
    batch = _batch(cfg)
    proposals = None
    if hasattr(cpu, "roi_heads"):  # the box head's RoIs fixed, as in test_autocast
        with torch.no_grad(), EventStorage():
            images = cpu.preprocess_image(batch)
            proposals, _ = cpu.proposal_generator(images, cpu.backbone(images.tensor), [b["instances"] for b in batch])
    gpu = copy.deepcopy(cpu).cuda()
    ref, g_ref = _step(cpu, batch, proposals)
    got, g_got = _step(gpu, _to(batch, "cuda"), None if proposals is None else [p.to("cuda") for p in proposals])
    assert set(got) == set(ref)
    for k in ref:
        assert math.isfinite(got[k]) and abs(got[k] - ref[k]) <= 1e-3 * abs(ref[k]) + 1e-5, (k, got[k], ref[k])
    assert torch.nn.functional.cosine_similarity(g_got, g_ref, dim=0).item() > 0.9999
    cpu.eval(), gpu.eval()
    with torch.no_grad():
        a = cpu([{"image": d["image"]} for d in batch])
        b = gpu([{"image": d["image"].cuda()} for d in batch])
    for x, y in zip(a, b):
        x, y = x["instances"], y["instances"].to("cpu")
        n = min(10, len(x), len(y))
        torch.testing.assert_close(y.scores[:n], x.scores[:n], rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(y.pred_boxes.tensor[:n], x.pred_boxes.tensor[:n], rtol=1e-3, atol=1e-2)


RUNS = {
    # the trees recipes' keys as a user has them: AMP (here Detectron2's float16 AMPTrainer),
    # channels_last, image threads and the gather RoIAlign (both CPU-only: they must stand aside)
    "retinanet": ("configs/synthetic/retinanet.yaml", []),
    "focal_rpn_softmax_roi_fl_weights": ("configs/synthetic/faster_rcnn.yaml", [
        "MODEL.PROPOSAL_GENERATOR.NAME", "FocalRPN", "MODEL.RPN.HEAD_NAME", "SoftmaxRPNHead",
        "MODEL.FOCAL_RPN.FORM", "softmax", "MODEL.ROI_HEADS.NAME", "FocalROIHeads",
        "MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS", "['frequency']"]),
    "ohem_1_3": ("configs/synthetic/faster_rcnn.yaml", ["MODEL.ROI_HEADS.NAME", "OHEMROIHeads",
                                                        "MODEL.OHEM.NEG_POS_RATIO", "3.0"]),
}


def test_amp_on_cuda_builds_detectron2s_float16_trainer(make_cfg):
    cfg = make_cfg("configs/synthetic/retinanet.yaml", "MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True")
    assert type(Trainer(cfg)._trainer) is AMPTrainer


@pytest.mark.parametrize("name", RUNS)
def test_train_net_on_cuda(tmp_path, name):
    """A user's GPU run: trains with AMP on the GPU to finite losses, checkpoints, evaluates, and
    --eval-only of its checkpoint on the GPU prints the same AP row."""
    path, opts = RUNS[name]
    p = run_train_net("--config-file", path, *opts, "MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True",
                      "SOLVER.MAX_ITER", "10", "SOLVER.CHECKPOINT_PERIOD", "10", "OUTPUT_DIR", str(tmp_path))
    with open(tmp_path / "metrics.json") as f:
        totals = [r["total_loss"] for r in map(json.loads, f) if "total_loss" in r]
    assert totals and all(math.isfinite(v) for v in totals)
    e = run_train_net("--config-file", path, "--eval-only", *opts, "MODEL.DEVICE", "cuda",
                      "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval"))
    a, b = copypaste_metrics(p.stdout + p.stderr), copypaste_metrics(e.stdout + e.stderr)
    assert a == pytest.approx(b, nan_ok=True)
