"""An RPN head with two objectness logits per anchor (object, background) for a softmax loss."""
import torch
from detectron2.config import configurable
from detectron2.modeling.proposal_generator import RPN_HEAD_REGISTRY
from torch import nn

from detectron2.modeling.proposal_generator.rpn import StandardRPNHead


@RPN_HEAD_REGISTRY.register()
class SoftmaxRPNHead(StandardRPNHead):
    """StandardRPNHead whose objectness conv predicts 2 logits per anchor.

    forward returns objectness maps of shape (N, 2A, Hi, Wi), channels ordered anchor-major
    (a0 object, a0 background, a1 object, ...), so that the RPN's (N, Hi*Wi*2A) flattening can be
    viewed as (N, Hi*Wi*A, 2).
    """

    logits_per_anchor = 2

    @configurable
    def __init__(self, *, in_channels: int, num_anchors: int, box_dim: int = 4, conv_dims=(-1,)):
        super().__init__(in_channels=in_channels, num_anchors=num_anchors, box_dim=box_dim, conv_dims=conv_dims)
        hidden = self.objectness_logits.in_channels
        self.objectness_logits = nn.Conv2d(hidden, 2 * num_anchors, kernel_size=1)
        nn.init.normal_(self.objectness_logits.weight, std=0.01)
        nn.init.constant_(self.objectness_logits.bias, 0.0)

    def init_prior(self, prior_prob: float) -> None:
        """Sets the biases so that every anchor starts with P(object) = ``prior_prob``."""
        with torch.no_grad():
            self.objectness_logits.bias[0::2] = -torch.log(torch.tensor((1 - prior_prob) / prior_prob))
            self.objectness_logits.bias[1::2] = 0.0
