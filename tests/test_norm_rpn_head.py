"""NormRPNHead (``MODEL.RPN.NORM``): without a norm it is Detectron2's StandardRPNHead to the last
bit; with GN each hidden conv is normalised, for the sigmoid and the softmax head alike."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.proposal_generator import build_rpn_head
from torch import nn

SYNTH = "configs/synthetic/faster_rcnn.yaml"
SHAPES = [ShapeSpec(channels=64, stride=2 ** i) for i in range(3, 6)]
FEATURES = [torch.randn(2, 64, 12 // 2 ** k, 16 // 2 ** k, generator=torch.Generator().manual_seed(k)) for k in range(3)]


def _head(make_cfg, *opts):
    torch.manual_seed(0)
    return build_rpn_head(make_cfg(SYNTH, *opts), SHAPES)


@pytest.mark.parametrize("conv_dims", ["[-1]", "[-1, 32]"])
def test_without_a_norm_it_is_the_standard_head(make_cfg, conv_dims):
    ours = _head(make_cfg, "MODEL.RPN.HEAD_NAME", "NormRPNHead", "MODEL.RPN.CONV_DIMS", conv_dims)
    ref = _head(make_cfg, "MODEL.RPN.HEAD_NAME", "StandardRPNHead", "MODEL.RPN.CONV_DIMS", conv_dims)
    assert type(ref).__name__ == "StandardRPNHead"
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)  # same init, same names
    for x, y in zip(ours(FEATURES), ref(FEATURES)):
        assert all(torch.equal(p, q) for p, q in zip(x, y))


@pytest.mark.parametrize("head, logits", [("NormRPNHead", 9), ("SoftmaxRPNHead", 18)])
def test_gn_normalises_every_hidden_conv(make_cfg, head, logits):
    model = _head(make_cfg, "MODEL.RPN.HEAD_NAME", head, "MODEL.RPN.NORM", "GN", "MODEL.RPN.CONV_DIMS", "[-1, -1]")
    convs = [m for m in model.conv]
    assert len(convs) == 2 and all(isinstance(c.norm, nn.GroupNorm) and c.norm.num_channels == 64 for c in convs)
    objectness, deltas = model(FEATURES)
    assert [tuple(o.shape) for o in objectness] == [(2, logits, 12, 16), (2, logits, 6, 8), (2, logits, 3, 4)]
    assert [tuple(d.shape) for d in deltas] == [(2, 36, 12, 16), (2, 36, 6, 8), (2, 36, 3, 4)]
    # normalised hidden convs make the head blind to the features' scale (the biases start at 0);
    # Detectron2's plain head is not
    scaled = model([10 * f for f in FEATURES])[0]
    assert all(torch.allclose(o, s, atol=1e-4) for o, s in zip(objectness, scaled))
    plain = _head(make_cfg, "MODEL.RPN.HEAD_NAME", head, "MODEL.RPN.CONV_DIMS", "[-1, -1]")
    assert not torch.allclose(plain(FEATURES)[0][0], plain([10 * f for f in FEATURES])[0][0], atol=1e-4)


def test_a_norm_for_a_head_without_one_is_an_error(make_cfg):
    from focal_rpn.engine import Trainer

    cfg = make_cfg(SYNTH, "MODEL.RPN.NORM", "GN")  # StandardRPNHead
    with pytest.raises(ValueError, match="MODEL.RPN.NORM 'GN' is read by .*'StandardRPNHead' has no norm"):
        Trainer.build_model(cfg)
    cfg.MODEL.RPN.HEAD_NAME = "NormRPNHead"
    assert isinstance(Trainer.build_model(cfg).proposal_generator.rpn_head.conv.norm, nn.GroupNorm)
