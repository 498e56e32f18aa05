"""Online hard example mining: NMS over examples scored by their loss, then the hardest ones."""
import torch
from torchvision.ops import nms


def select_hard_examples(
    boxes: torch.Tensor,
    losses: torch.Tensor,
    is_positive: torch.Tensor,
    batch_size: int,
    nms_thresh: float,
    neg_pos_ratio: float = 0.0,
    pre_nms_topk: int = 0,
) -> torch.Tensor:
    """Indices of the examples OHEM trains on, hardest first.

    Args:
        boxes: (M, 4) XYXY boxes of the candidate examples (anchors or RoIs).
        losses: (M,) per-example loss (the ranking score).
        is_positive: (M,) bool, foreground examples.
        batch_size: how many examples to keep at most (B).
        nms_thresh: IoU above which a lower-loss example is a duplicate and dropped (≥ 1 disables).
        neg_pos_ratio: 0 keeps the top-B by loss; r > 0 keeps every surviving positive (at most
            B / (1 + r) of them, hardest first) plus the r·N_pos hardest negatives (at least one
            negative when there is no positive).
        pre_nms_topk: if > 0, only the top-k losses enter NMS (NMS over ~100k anchors is slow).
    Returns:
        (K,) int64 indices into the M candidates.
    """
    order = torch.argsort(losses, descending=True)
    if pre_nms_topk > 0:
        order = order[:pre_nms_topk]
    if nms_thresh < 1.0 and order.numel() > 0:
        keep = nms(boxes[order].float(), losses[order].float(), nms_thresh)
        order = order[keep]  # nms returns indices sorted by decreasing score
    if neg_pos_ratio <= 0:
        return order[:batch_size]
    pos = order[is_positive[order]]
    neg = order[~is_positive[order]]
    num_pos = min(pos.numel(), int(batch_size / (1.0 + neg_pos_ratio)))
    num_neg = min(neg.numel(), max(int(round(num_pos * neg_pos_ratio)), 1), batch_size - num_pos)
    return torch.cat([pos[:num_pos], neg[:num_neg]])
