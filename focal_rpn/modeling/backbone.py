"""A narrow ResNet-FPN for CPU training from scratch, built from Detectron2's own blocks.

Detectron2's ResNet builder fixes ResNet-18/34 at 64..512 channels; on a 2-core CPU a network a
quarter as wide trains several times more iterations in the same time, which matters more than
capacity when learning from scratch on a few thousand tree crowns.
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet


def build_narrow_resnet(cfg, input_shape: ShapeSpec) -> ResNet:
    """ResNet of BasicBlocks with MODEL.NARROW_RESNET.WIDTHS / DEPTHS for res2..res5.

    Output features are MODEL.RESNETS.OUT_FEATURES; normalisation is MODEL.RESNETS.NORM.
    """
    c = cfg.MODEL.NARROW_RESNET
    norm = cfg.MODEL.RESNETS.NORM
    if len(c.WIDTHS) != 4 or len(c.DEPTHS) != 4:
        raise ValueError("MODEL.NARROW_RESNET.WIDTHS and DEPTHS need 4 entries (res2..res5)")
    stem = BasicStem(input_shape.channels, c.STEM_CHANNELS, norm=norm)
    stages, in_ch = [], c.STEM_CHANNELS
    for i, (width, depth) in enumerate(zip(c.WIDTHS, c.DEPTHS)):
        stages.append(
            ResNet.make_stage(BasicBlock, depth, in_channels=in_ch, out_channels=width,
                              stride_per_block=[1 if i == 0 else 2] + [1] * (depth - 1), norm=norm)
        )
        in_ch = width
    return ResNet(stem, stages, out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
                  freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_narrow_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """FPN over a narrow ResNet. MODEL.NARROW_RESNET.TOP_BLOCK: "p6p7" (RetinaNet's P6, P7),
    "maxpool" (Faster R-CNN's P6) or "" (only the levels of MODEL.FPN.IN_FEATURES)."""
    bottom_up = build_narrow_resnet(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top = cfg.MODEL.NARROW_RESNET.TOP_BLOCK
    if top == "p6p7":
        top_block = LastLevelP6P7(bottom_up.output_shape()["res5"].channels, out_channels)
    elif top == "maxpool":
        top_block = LastLevelMaxPool()
    elif top == "":
        top_block = None
    else:
        raise ValueError(f"MODEL.NARROW_RESNET.TOP_BLOCK must be 'p6p7', 'maxpool' or '', got {top!r}")
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES, out_channels=out_channels,
               norm=cfg.MODEL.FPN.NORM, top_block=top_block, fuse_type=cfg.MODEL.FPN.FUSE_TYPE)
