"""MODEL.ROI_BOX_HEAD.CONTEXT_SCALE: box features pooled from the RoI enlarged about its centre."""
import pytest
import torch
from detectron2.structures import Boxes
from torchvision.ops import roi_align

from focal_rpn.modeling.context_pooler import ContextPooler, enlarge

SYNTH = "configs/synthetic/faster_rcnn.yaml"


def test_enlarge_by_hand():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 4.0, 2.0]])
    # centres (20, 40) and (2, 1); sizes 20 x 40 and 4 x 2 become 30 x 60 and 6 x 3
    assert torch.equal(enlarge(boxes, 1.5), torch.tensor([[5.0, 10.0, 35.0, 70.0], [-1.0, -0.5, 5.0, 2.5]]))
    assert torch.equal(enlarge(boxes, 1.0), boxes)


def test_the_model_pools_the_enlarged_boxes(make_cfg):
    """The box pooler of a model built with CONTEXT_SCALE 1.5 gives what torchvision's RoIAlign
    gives for the enlarged boxes written out by hand (one FPN level: every box maps to it)."""
    from focal_rpn.engine import Trainer

    cfg = make_cfg(SYNTH, "MODEL.ROI_BOX_HEAD.CONTEXT_SCALE", "1.5")
    model = Trainer.build_model(cfg)
    pooler = model.roi_heads.box_pooler
    assert isinstance(pooler, ContextPooler)
    features = [torch.randn(1, 8, 40, 40, generator=torch.Generator().manual_seed(0))]
    stride = 1 / pooler.pooler.level_poolers[0].spatial_scale
    inner = pooler.pooler
    inner.level_poolers = inner.level_poolers[:1]  # one level: no level assignment to reproduce
    inner.min_level = inner.max_level = 3
    boxes = Boxes(torch.tensor([[40.0, 48.0, 88.0, 80.0], [100.0, 100.0, 124.0, 140.0]]))
    by_hand = torch.tensor([[0.0, 28.0, 40.0, 100.0, 88.0], [0.0, 94.0, 90.0, 130.0, 150.0]])
    size = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
    expected = roi_align(features[0], by_hand, (size, size), 1 / stride, cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
                         aligned=True)
    assert torch.allclose(pooler(features, [boxes]), expected, atol=1e-6)


def test_context_changes_no_checkpoint(make_cfg):
    from focal_rpn.engine import Trainer

    torch.manual_seed(0)
    plain = Trainer.build_model(make_cfg(SYNTH)).state_dict()
    torch.manual_seed(0)
    context = Trainer.build_model(make_cfg(SYNTH, "MODEL.ROI_BOX_HEAD.CONTEXT_SCALE", "1.5")).state_dict()
    assert list(plain) == list(context) and all(torch.equal(plain[k], context[k]) for k in plain)


def test_a_bad_scale_is_an_error(make_cfg):
    from focal_rpn.engine import Trainer

    with pytest.raises(ValueError, match="CONTEXT_SCALE must be > 0, got -1"):
        Trainer.build_model(make_cfg(SYNTH, "MODEL.ROI_BOX_HEAD.CONTEXT_SCALE", "-1.0"))
