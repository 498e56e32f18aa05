"""Per-class weights of the box classifier's loss (``MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS``: ``[]``,
``["frequency"]`` or one number per class), for the
imbalance between object classes: from the training data's box frequencies,
w_c = 1 / ln(1.10 + f_c) with f_c the class's share of the ground-truth boxes, counted once over
``DATASETS.TRAIN`` (a batch need not hold every class); the background gets the mean of the
foreground weights unless ``MODEL.ROI_BOX_HEAD.BACKGROUND_WEIGHT`` >= 0 sets it."""
import logging
import math
from collections import Counter
from typing import List, Optional, Sequence

import torch

logger = logging.getLogger(__name__)


def frequency_weights(counts: Sequence[int]) -> List[float]:
    """1 / ln(1.10 + f_c) of each class's box count (a class without boxes: f_c = 0)."""
    total = sum(counts)
    if total == 0:
        raise ValueError("MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS frequency: the training datasets have no boxes")
    return [1.0 / math.log(1.10 + n / total) for n in counts]


def class_weights(cfg, class_names: Optional[Sequence[str]] = None) -> Optional[torch.Tensor]:
    """(K + 1,) weights of the K foreground classes and the background (last, Detectron2's order)
    from ``cfg``, or None when MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS is empty. Logged."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    spec = list(cfg.MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS)
    k = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if not spec:
        return None
    if spec == ["frequency"]:
        counts = Counter(a["category_id"] for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name)
                         for a in d.get("annotations", []) if not a.get("iscrowd", 0))
        fg = frequency_weights([counts.get(c, 0) for c in range(k)])
    else:
        try:
            fg = [float(x) for x in spec]
        except (TypeError, ValueError):
            fg = []
        if len(fg) != k or any(w < 0 for w in fg):
            raise ValueError(f"MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS {spec!r}: expected [], ['frequency'] or {k} "
                             "non-negative numbers (one per foreground class)")
    bg = cfg.MODEL.ROI_BOX_HEAD.BACKGROUND_WEIGHT
    weights = fg + [sum(fg) / len(fg) if bg < 0 else bg]
    if class_names is None and cfg.DATASETS.TRAIN:
        class_names = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("thing_classes", None)
    names = list(class_names) if class_names and len(class_names) == k else [str(c) for c in range(k)]
    logger.info("class weights: " + ", ".join(f"{n}={w:.3f}" for n, w in zip(names + ["background"], weights)))
    return torch.tensor(weights, dtype=torch.float32)
