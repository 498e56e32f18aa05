"""MODEL.IMAGE_THREADS: RoIAlign's backward and the RPN's proposal selection split by image over
threads give bitwise the results of one thread (torchvision's kernel and Detectron2's RPN as the
reference), in a whole training step too."""
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.layers import ROIAlign
from detectron2.utils.events import EventStorage

from focal_rpn.engine import Trainer
from focal_rpn.layers.image_threads import ImageThreadsROIAlign, image_ranges, run_by_image


def _rois(n_images, per_image, size, generator):
    """(K, 5) boxes in a shuffled image order, some partly outside the image, a few degenerate."""
    xy = torch.rand(n_images * per_image, 2, generator=generator) * size
    wh = torch.rand(n_images * per_image, 2, generator=generator) * size / 2
    wh[::17] = 0  # empty boxes: no sampling points
    boxes = torch.cat([xy - size / 8, xy + wh], 1)
    image = torch.arange(n_images).repeat_interleave(per_image).float()[:, None]
    rois = torch.cat([image, boxes], 1)
    return rois[torch.randperm(len(rois), generator=generator)]


def test_image_ranges_cover_every_image_once():
    assert image_ranges(8, 2) == [range(0, 4), range(4, 8)]
    assert image_ranges(5, 3) == [range(0, 1), range(1, 3), range(3, 5)]
    assert image_ranges(1, 4) == [range(0, 1)]
    assert run_by_image(lambda r: list(r), 7, 3) == [[0, 1], [2, 3], [4, 5, 6]]


def test_workers_take_the_callers_grad_mode_and_autocast():
    import threading

    def state(r):
        return torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), threading.current_thread().name

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        states = run_by_image(state, 4, 2)
    assert [s[:2] for s in states] == [(False, True), (False, True)]
    assert states[1][2].startswith("focal_rpn-image")  # the second range ran in a worker thread
    assert [s[:2] for s in run_by_image(state, 4, 2)] == [(True, False), (True, False)]


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("sampling_ratio,aligned", [(0, True), (2, False)])
def test_roi_align_backward_bitwise_torchvision(threads, sampling_ratio, aligned):
    g = torch.Generator().manual_seed(threads)
    feats = torch.randn(5, 6, 13, 11, generator=g).contiguous(memory_format=torch.channels_last)
    rois = _rois(5, 9, 96.0, g)
    grads, outs = [], []
    for layer in (ROIAlign((7, 7), 1 / 8, sampling_ratio, aligned),
                  ImageThreadsROIAlign((7, 7), 1 / 8, sampling_ratio, aligned, threads=threads)):
        x = feats.clone().requires_grad_()
        out = layer(x, rois)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        outs.append(out.detach())
        grads.append(x.grad)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


def test_roi_align_under_bf16_autocast_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(4, 3, 10, 10, generator=g)
    rois = _rois(4, 5, 80.0, g)
    res = []
    for layer in (ROIAlign((7, 7), 1 / 8, 0, True), ImageThreadsROIAlign((7, 7), 1 / 8, 0, True, threads=2)):
        x = feats.clone().to(torch.bfloat16).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x, rois)
        out.float().sum().backward()
        res.append((out.dtype, x.grad.dtype, x.grad.float()))
    assert res[0][:2] == res[1][:2] == (torch.bfloat16, torch.bfloat16)
    torch.testing.assert_close(res[1][2], res[0][2], rtol=1e-2, atol=1e-2)


def _step(cfg, batch):
    """Losses, parameter gradients and the proposals of one training step of a fresh model."""
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).train()
    proposals = []
    model.proposal_generator.register_forward_hook(lambda m, i, o: proposals.append(o[0]))
    torch.manual_seed(1)  # the RPN's and ROI heads' sampling
    with EventStorage():
        losses = model(batch)
        sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return losses, grads, proposals[0]


@pytest.mark.parametrize("opts", [
    [],
    ["MODEL.PROPOSAL_GENERATOR.NAME", "FocalRPN", "MODEL.RPN.HEAD_NAME", "SoftmaxRPNHead",
     "MODEL.FOCAL_RPN.FORM", "softmax", "MODEL.ROI_HEADS.NAME", "OHEMROIHeads"],
], ids=["rpn_ce", "focal_rpn_softmax_ohem"])
@pytest.mark.parametrize("roi_align", ["torchvision", "gather"])
def test_training_step_bitwise_one_thread(make_cfg, opts, roi_align):
    """With the gather RoIAlign (not split: its backward is one sparse product) the RPN's
    proposal selection is still split by image, and still bitwise."""
    cfg = make_cfg("configs/synthetic/faster_rcnn.yaml", *opts, "MODEL.ROI_ALIGN_IMPL", roi_align)
    mapper = DatasetMapper(cfg, is_train=True, augmentations=[])
    batch = [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:3]]
    cfg.MODEL.IMAGE_THREADS = 1
    ref = _step(cfg, batch)
    cfg.MODEL.IMAGE_THREADS = 2
    model = Trainer.build_model(cfg)
    assert (sum(isinstance(m, ImageThreadsROIAlign) for m in model.modules()) >= 1) == (roi_align == "torchvision")
    new = _step(cfg, batch)
    assert ref[0].keys() == new[0].keys()
    for k in ref[0]:
        assert torch.equal(ref[0][k], new[0][k]), k
    assert len(ref[1]) == len(new[1]) and all(torch.equal(a, b) for a, b in zip(ref[1], new[1]))
    assert len(ref[2]) == len(new[2]) == 3
    for a, b in zip(ref[2], new[2]):
        assert torch.equal(a.proposal_boxes.tensor, b.proposal_boxes.tensor)
        assert torch.equal(a.objectness_logits, b.objectness_logits)


def test_model_with_image_threads_pickles_and_copies(make_cfg, tmp_path):
    import copy

    cfg = make_cfg("configs/synthetic/faster_rcnn.yaml", "MODEL.IMAGE_THREADS", "2", "MODEL.ROI_ALIGN_IMPL", "torchvision")
    model = Trainer.build_model(cfg)
    torch.save(model, tmp_path / "model.pt")  # a whole model, not only its state_dict
    for clone in (torch.load(tmp_path / "model.pt", weights_only=False), copy.deepcopy(model)):
        rpn = clone.proposal_generator
        assert rpn.predict_proposals.rpn is rpn and rpn.predict_proposals.threads == 2
        assert sum(isinstance(m, ImageThreadsROIAlign) for m in clone.modules()) >= 1


def test_image_threads_rejects_zero(make_cfg):
    cfg = make_cfg("configs/synthetic/faster_rcnn.yaml", "MODEL.IMAGE_THREADS", "0")
    with pytest.raises(ValueError, match="MODEL.IMAGE_THREADS"):
        Trainer.build_model(cfg)


def test_config_hash_ignores_image_threads(make_cfg):
    from focal_rpn.study.summaries import config_sha256

    cfg = make_cfg("configs/synthetic/faster_rcnn.yaml")
    before = config_sha256(cfg)
    cfg.MODEL.IMAGE_THREADS = 2
    assert config_sha256(cfg) == before  # speed only: runs with either value stay current
    del cfg.MODEL["IMAGE_THREADS"]
    assert config_sha256(cfg) == before  # and runs made before the key existed
    cfg.MODEL.CHANNELS_LAST = not cfg.MODEL.CHANNELS_LAST
    assert config_sha256(cfg) != before  # changes the rounding: a different run
