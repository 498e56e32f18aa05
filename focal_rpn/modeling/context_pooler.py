"""RoI features pooled from a box enlarged about its centre (``MODEL.ROI_BOX_HEAD.CONTEXT_SCALE``).

The box classifier must tell a crown (IoU ≥ 0.5) from a near miss. A proposal that is too small
shows only crown inside its box, just as a well-placed one does; pooled from a box 1.5x the size,
the classifier also sees whether the crown goes on past the proposal's edges. The detection is
still the proposal's box (regressed as usual): only what the box head looks at changes.
"""
from typing import List

import torch
from detectron2.structures import Boxes
from torch import nn


def enlarge(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """(R, 4) XYXY boxes -> (R, 4) boxes with the same centres and ``scale`` x the width and height."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (scale / 2)
    return torch.cat([centre - half, centre + half], dim=1)


class ContextPooler(nn.Module):
    """Wraps a box pooler (ROIPooler: features, [Boxes] -> (R, C, P, P)) so that it pools each box
    enlarged by ``scale``. No parameters: checkpoints are the same with or without it."""

    def __init__(self, pooler: nn.Module, scale: float):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"MODEL.ROI_BOX_HEAD.CONTEXT_SCALE must be > 0, got {scale}")
        self.pooler, self.scale = pooler, scale

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> torch.Tensor:
        """x: per-level features [(N, C, Hl, Wl)]; box_lists: N Boxes (R_i, 4) -> (ΣR_i, C, P, P)."""
        return self.pooler(x, [Boxes(enlarge(b.tensor, self.scale)) for b in box_lists])
