"""EventStorage scalars describing the anchor imbalance of a batch."""
import torch
from detectron2.utils.events import get_event_storage


def log_anchor_stats(prefix: str, labels: torch.Tensor, background_label: int) -> int:
    """Logs positives, negatives and ignored anchors per image and the negative:positive ratio.

    Args:
        labels: (N, R) anchor labels: -1 ignored, ``background_label`` negative, else positive.
    Returns:
        The number of positive anchors in the batch.
    """
    n = max(labels.shape[0], 1)
    num_pos = int(((labels >= 0) & (labels != background_label)).sum())
    num_neg = int((labels == background_label).sum())
    num_ign = int((labels < 0).sum())
    storage = get_event_storage()
    storage.put_scalar(f"{prefix}/num_pos_per_image", num_pos / n)
    storage.put_scalar(f"{prefix}/num_neg_per_image", num_neg / n)
    storage.put_scalar(f"{prefix}/num_ignored_per_image", num_ign / n)
    storage.put_scalar(f"{prefix}/neg_pos_ratio", num_neg / max(num_pos, 1))
    return num_pos
