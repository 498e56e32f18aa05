"""MODEL.ROI_ALIGN_IMPL "gather": RoIAlign as a weighted gather gives torchvision's RoIAlign
(the reference kernel) forward and backward, in float64, for every sampling mode and edge case."""
import pytest
import torch
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from torchvision.ops import roi_align

from focal_rpn.config import load_config
from focal_rpn.engine import Trainer
from focal_rpn.layers.gather_roi_align import GatherROIAlign, gather_roi_align, use_roi_align

from test_image_threads import _rois


def _both(features, rois, output_size, scale, ratio, aligned):
    """(output, input gradient) of torchvision's kernel and of the gather, for one random upstream
    gradient."""
    out = []
    for fn in (lambda f: roi_align(f, rois, output_size, scale, ratio, aligned),
               lambda f: gather_roi_align(f, rois, output_size, scale, ratio, aligned)):
        f = features.detach().clone().requires_grad_()
        y = fn(f)
        upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
        (y * upstream).sum().backward()
        out.append((y.detach(), f.grad))
    return out


@pytest.mark.parametrize("ratio", [0, 1, 2, 3])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("output_size", [(7, 7), (3, 5)])
def test_matches_torchvision_forward_and_backward(ratio, aligned, output_size):
    g = torch.Generator().manual_seed(ratio + 10 * aligned)
    features = torch.randn(3, 4, 13, 17, generator=g, dtype=torch.float64)
    # boxes up to half the 8x image, partly outside it, every 17th empty; scale 1/8 as on P3
    rois = _rois(3, 30, 120.0, g).double()
    (ref, ref_grad), (out, grad) = _both(features, rois, output_size, 0.125, ratio, aligned)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)


def test_boxes_on_and_past_the_map_edges():
    """Points past the last row/column clamp to it; points beyond [-1, size] contribute 0."""
    features = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    rois = torch.tensor([[0, -3.0, -3.0, 1.0, 1.0],      # mostly outside, top left
                         [0, 3.5, 4.5, 9.0, 11.0],       # over the bottom right edge
                         [0, -20.0, -20.0, -5.0, -5.0],  # entirely outside
                         [0, 2.0, 2.0, 2.0, 2.0],        # zero size
                         [0, 0.0, 0.0, 5.0, 6.0]], dtype=torch.float64)  # the whole map
    for aligned in (True, False):
        for ratio in (0, 2):
            (ref, ref_grad), (out, grad) = _both(features, rois, (4, 4), 1.0, ratio, aligned)
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
            torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)


def test_float32_channels_last_and_bfloat16_autocast():
    """The trees recipe's case: channels_last features, RoIAlign under bfloat16 autocast (torchvision
    casts to float32 and the result back; so does the gather)."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 8, 20, 20, generator=g).contiguous(memory_format=torch.channels_last)
    rois = _rois(2, 40, 160.0, g)
    (ref, ref_grad), (out, grad) = _both(features, rois, (7, 7), 0.125, 0, True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)
    level = ROIAlign((7, 7), 0.125, 0, True)
    gather = GatherROIAlign((7, 7), 0.125, 0, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf = features.to(torch.bfloat16).requires_grad_()  # training: the gather runs
        ref, out = level(bf, rois), gather(bf, rois)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=1e-2, atol=1e-2)


def test_no_rois():
    out = gather_roi_align(torch.randn(1, 3, 5, 5), torch.zeros(0, 5), (2, 2), 1.0, 0, True)
    assert out.shape == (0, 3, 2, 2)


def test_pooler_levels_swapped_and_pooled_alike():
    """use_roi_align swaps every level of an ROIPooler; a multi-level pooler then gives what it gave
    before (FPN level assignment untouched)."""
    pooler = ROIPooler((7, 7), (1 / 8, 1 / 16, 1 / 32), 0, "ROIAlignV2")
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, 4, 64 // s, 64 // s, generator=g, dtype=torch.float64).requires_grad_()
             for s in (1, 2, 4)]
    boxes = [Boxes(torch.tensor([[0, 0, 30, 30], [10, 10, 300, 200.0]], dtype=torch.float64)),
             Boxes(torch.tensor([[5, 5, 120, 90], [100, 50, 480, 500.0]], dtype=torch.float64))]
    ref = pooler(feats, boxes)
    use_roi_align(pooler, "gather")
    assert all(type(level) is GatherROIAlign for level in pooler.level_poolers)
    torch.testing.assert_close(pooler(feats, boxes), ref, rtol=0, atol=1e-12)
    with torch.no_grad():  # inference: torchvision's kernel, bit for bit
        assert torch.equal(pooler(feats, boxes), ref)
    with pytest.raises(ValueError, match="MODEL.ROI_ALIGN_IMPL"):
        use_roi_align(pooler, "cuda")


def test_trainer_builds_it_from_the_key():
    cfg = load_config("configs/trees/rpn_ce.yaml", ["MODEL.ROI_ALIGN_IMPL", "gather"])
    model = Trainer.build_model(cfg)
    levels = model.roi_heads.box_pooler.level_poolers
    assert len(levels) and all(type(level) is GatherROIAlign for level in levels)


def test_backward_is_deterministic():
    """The same call twice gives bitwise the same gradient (runs repeat exactly)."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(4, 8, 25, 25, generator=g).contiguous(memory_format=torch.channels_last)
    rois = _rois(4, 64, 200.0, g)
    upstream = torch.randn(len(rois), 8, 7, 7, generator=g)
    grads = []
    for _ in range(3):
        x = features.clone().requires_grad_()
        (gather_roi_align(x, rois, (7, 7), 0.125, 0, True) * upstream).sum().backward()
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


def test_training_step_matches_torchvision(make_cfg):
    """A whole Faster R-CNN training step (FPN levels, OHEM's second pooling, image threads): the
    same losses and gradients as with torchvision's RoIAlign, to float rounding."""
    from detectron2.data import DatasetCatalog, DatasetMapper
    from test_image_threads import _step

    cfg = make_cfg("configs/synthetic/faster_rcnn.yaml", "MODEL.IMAGE_THREADS", "2",
                   "MODEL.ROI_HEADS.NAME", "OHEMROIHeads", "MODEL.ROI_ALIGN_IMPL", "torchvision")
    mapper = DatasetMapper(cfg, is_train=True, augmentations=[])
    batch = [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:3]]
    ref = _step(cfg, batch)
    cfg.MODEL.ROI_ALIGN_IMPL = "gather"
    assert sum(isinstance(m, GatherROIAlign) for m in Trainer.build_model(cfg).modules()) >= 1
    new = _step(cfg, batch)
    assert ref[0].keys() == new[0].keys()
    for k in ref[0]:
        torch.testing.assert_close(new[0][k], ref[0][k], rtol=1e-4, atol=1e-6, msg=k)
    assert len(ref[1]) == len(new[1])
    for a, b in zip(ref[1], new[1]):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


def test_model_with_gather_pickles_and_the_key_enters_the_hash(make_cfg, tmp_path):
    from focal_rpn.study.summaries import config_sha256

    cfg = make_cfg("configs/synthetic/faster_rcnn.yaml", "MODEL.ROI_ALIGN_IMPL", "gather")
    model = Trainer.build_model(cfg)
    torch.save(model, tmp_path / "model.pt")
    clone = torch.load(tmp_path / "model.pt", weights_only=False)
    assert sum(isinstance(m, GatherROIAlign) for m in clone.modules()) >= 1
    gather = config_sha256(cfg)
    cfg.MODEL.ROI_ALIGN_IMPL = "torchvision"
    before = config_sha256(cfg)
    assert gather != before  # not bitwise torchvision's: a different run
    del cfg.MODEL["ROI_ALIGN_IMPL"]
    assert config_sha256(cfg) == before  # runs made before the key existed stay current
