"""An RPN head whose hidden 3x3 convs are normalised (``MODEL.RPN.NORM``, e.g. "GN").

Detectron2's StandardRPNHead has no norm: trained from scratch, a deeper one (``RPN.CONV_DIMS
[-1, -1]``) learned worse on trees than one conv. RetinaNet's head, which trains well from scratch
here, is GN convs; this head gives the RPN the same, with everything else Detectron2's.
"""
from detectron2.config import configurable
from detectron2.layers import Conv2d, get_norm
from detectron2.modeling.proposal_generator import RPN_HEAD_REGISTRY
from detectron2.modeling.proposal_generator.rpn import StandardRPNHead
from torch import nn


@RPN_HEAD_REGISTRY.register()
class NormRPNHead(StandardRPNHead):
    """StandardRPNHead with ``norm`` after each hidden conv (before its ReLU). ``norm=""`` builds
    exactly StandardRPNHead (same modules, parameter names and initialisation).

    forward: features [(N, C, Hi, Wi)] -> objectness [(N, A, Hi, Wi)], deltas [(N, A*4, Hi, Wi)].
    """

    @configurable
    def __init__(self, *, in_channels: int, num_anchors: int, box_dim: int = 4, conv_dims=(-1,), norm: str = ""):
        self._norm = norm  # read by _get_rpn_conv, which the parent's __init__ calls
        super().__init__(in_channels=in_channels, num_anchors=num_anchors, box_dim=box_dim, conv_dims=conv_dims)

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {**super().from_config(cfg, input_shape), "norm": cfg.MODEL.RPN.NORM}

    def _get_rpn_conv(self, in_channels, out_channels):
        # The conv keeps its bias: the parent's init sets every conv's bias, and a bias before a
        # norm is only redundant.
        return Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1,
                      norm=get_norm(self._norm, out_channels), activation=nn.ReLU())
