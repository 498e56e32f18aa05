"""Negatives drawn at random to a ratio per positive: the imbalance sweep's dial of the negatives a
dense loss sees (MODEL.RETINANET.NEG_POS_RATIO, MODEL.FOCAL_RPN.NEG_POS_RATIO)."""
import torch


def sample_negatives(is_negative: torch.Tensor, num_positive: int, ratio: float) -> torch.Tensor:
    """(R,) bool: round(ratio · max(num_positive, 1)) of the ``is_negative`` (R,) entries, drawn
    uniformly without replacement (all of them when there are fewer). Anchors of an image are
    drawn together, so an image without positives still gets ``ratio`` negatives."""
    neg = torch.nonzero(is_negative).squeeze(1)
    k = min(neg.numel(), int(round(ratio * max(num_positive, 1))))
    keep = torch.zeros_like(is_negative, dtype=torch.bool)
    keep[neg[torch.randperm(neg.numel(), device=neg.device)[:k]]] = True
    return keep
