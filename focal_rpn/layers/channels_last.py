"""MODEL.CHANNELS_LAST: a model whose convolutions run in the channels_last (NHWC) layout."""
import torch
from torch import nn


def _input_to_channels_last(module, args):
    return (args[0].contiguous(memory_format=torch.channels_last),) + tuple(args[1:])


def to_channels_last(model: nn.Module) -> nn.Module:
    """Converts ``model``'s 4-d parameters to channels_last, in place, and makes its backbone
    convert each input batch (N, C, H, W) to channels_last (a forward pre-hook on
    ``model.backbone``, the first module every Detectron2 meta-architecture calls on the padded
    batch). oneDNN's NHWC convolutions are faster on CPUs; the results are the same up to
    float rounding. Returns ``model``."""
    model.to(memory_format=torch.channels_last)
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ValueError(f"MODEL.CHANNELS_LAST: {type(model).__name__} has no .backbone to convert inputs for")
    backbone.register_forward_pre_hook(_input_to_channels_last)
    return model
