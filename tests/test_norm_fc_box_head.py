"""NormFCBoxHead (``MODEL.ROI_BOX_HEAD.FC_NORM``): without a norm it is Detectron2's
FastRCNNConvFCHead to the last bit; with GN it is relu(GN(fc(x))) per FC, as written out by hand."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import build_box_head
from torch import nn

SYNTH = "configs/synthetic/faster_rcnn.yaml"
SHAPE = ShapeSpec(channels=16, height=7, width=7)
ROIS = torch.randn(5, 16, 7, 7, generator=torch.Generator().manual_seed(0))


def _head(make_cfg, *opts):
    torch.manual_seed(0)
    return build_box_head(make_cfg(SYNTH, "MODEL.ROI_BOX_HEAD.FC_DIM", "256", *opts), SHAPE)


@pytest.mark.parametrize("num_conv", ["0", "1"])
def test_without_a_norm_it_is_the_conv_fc_head(make_cfg, num_conv):
    ours = _head(make_cfg, "MODEL.ROI_BOX_HEAD.NAME", "NormFCBoxHead", "MODEL.ROI_BOX_HEAD.NUM_CONV", num_conv)
    ref = _head(make_cfg, "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead", "MODEL.ROI_BOX_HEAD.NUM_CONV", num_conv)
    a, b = ours.state_dict(), ref.state_dict()
    assert [n for n, _ in ours.named_children()] == [n for n, _ in ref.named_children()]
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(ours(ROIS), ref(ROIS)) and ours.output_shape == ref.output_shape


def test_gn_sits_between_each_fc_and_its_relu(make_cfg):
    head = _head(make_cfg, "MODEL.ROI_BOX_HEAD.NAME", "NormFCBoxHead", "MODEL.ROI_BOX_HEAD.FC_NORM", "GN",
                 "MODEL.ROI_BOX_HEAD.NUM_FC", "2")
    assert [n for n, _ in head.named_children()] == [
        "flatten", "fc1", "fc_norm1", "fc_relu1", "fc2", "fc_norm2", "fc_relu2"]
    with torch.no_grad():  # non-trivial affine parameters, so that a wrong order would show
        for norm in (head.fc_norm1, head.fc_norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = ROIS.flatten(1)
    for fc, norm in ((head.fc1, head.fc_norm1), (head.fc2, head.fc_norm2)):
        x = F.relu(F.group_norm(x @ fc.weight.T + fc.bias, 32, norm.weight, norm.bias, eps=1e-5))
    assert torch.allclose(head(ROIS), x, atol=1e-5)
    assert head.output_shape.channels == 256


def test_gn_makes_the_head_blind_to_the_features_scale(make_cfg):
    """The FCs' biases start at 0, so a normalised head's output does not depend on the pooled
    features' scale (FPN outputs drift in scale while trained from scratch); the plain head's does."""
    gn = _head(make_cfg, "MODEL.ROI_BOX_HEAD.NAME", "NormFCBoxHead", "MODEL.ROI_BOX_HEAD.FC_NORM", "GN")
    assert torch.allclose(gn(ROIS), gn(10 * ROIS), atol=1e-4)
    plain = _head(make_cfg, "MODEL.ROI_BOX_HEAD.NAME", "NormFCBoxHead")
    assert not torch.allclose(plain(ROIS), plain(10 * ROIS), atol=1e-4)


def test_a_norm_for_a_head_without_one_is_an_error(make_cfg):
    from focal_rpn.engine import Trainer

    cfg = make_cfg(SYNTH, "MODEL.ROI_BOX_HEAD.FC_NORM", "GN")
    with pytest.raises(ValueError, match="FC_NORM 'GN' is read by .*'NormFCBoxHead'"):
        Trainer.build_model(cfg)
    cfg.MODEL.ROI_BOX_HEAD.NAME = "NormFCBoxHead"
    assert isinstance(Trainer.build_model(cfg).roi_heads.box_head.fc_norm1, nn.GroupNorm)


def test_a_model_without_a_box_head_is_not_looked_up(make_cfg):
    """RetinaNet configs have ROI_BOX_HEAD.NAME "" (no such head registered): the check skips them."""
    from focal_rpn.modeling.norm_keys import check_norm_keys

    cfg = make_cfg("configs/trees/retinanet.yaml")
    assert cfg.MODEL.ROI_BOX_HEAD.NAME == "" and cfg.MODEL.ROI_BOX_HEAD.FC_NORM == ""
    check_norm_keys(cfg)
