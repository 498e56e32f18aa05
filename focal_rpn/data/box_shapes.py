"""The ground-truth boxes of training datasets as the model sees them: after one draw of the
training augmentations (crop, resize, flips, quarter turns), for statistics such as the anchor fit."""
from typing import Sequence

import numpy as np
from detectron2.data import DatasetCatalog, transforms as T
from detectron2.structures import BoxMode

from .mapper import build_train_augmentations
from .transforms import RandomColorJitter

# Share of a box's area that must stay inside a training crop for its shape to count.
WHOLE = 0.9


def _image_size(d) -> tuple:
    if "height" in d and "width" in d:
        return int(d["height"]), int(d["width"])
    from PIL import Image

    with Image.open(d["file_name"]) as im:
        return im.size[1], im.size[0]


def training_boxes(cfg, dataset_names: Sequence[str], max_images: int, seed: int = 0) -> np.ndarray:
    """(N, 4) XYXY boxes of at most ``max_images`` images (drawn with ``seed``) of
    ``dataset_names``, each image passed once through the training augmentations of ``cfg``. Boxes a
    crop cuts (less than :data:`WHOLE` of them inside) are left out: slivers at a crop's edge are
    not the shapes of the objects to detect. Crowd boxes are not counted (the matcher ignores them)."""
    dicts = [d for name in dataset_names for d in DatasetCatalog.get(name)]
    rng = np.random.RandomState(seed)
    if len(dicts) > max_images:
        dicts = [dicts[i] for i in sorted(rng.choice(len(dicts), max_images, replace=False))]
    # geometric augmentations only: the photometric ones leave boxes as they are
    augs = T.AugmentationList([a for a in build_train_augmentations(cfg) if not isinstance(a, RandomColorJitter)])
    state = np.random.get_state()  # Detectron2's augmentations draw from numpy's global generator
    np.random.seed(seed)
    out = []
    try:
        for d in dicts:
            annos = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
            if not annos:
                continue
            boxes = np.array([BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos],
                             dtype=np.float64)
            h, w = _image_size(d)
            aug = T.AugInput(np.zeros((h, w, 1), dtype=np.uint8), boxes=boxes)
            augs(aug)
            ih, iw = aug.image.shape[:2]
            b = np.clip(aug.boxes, 0, [iw, ih, iw, ih])  # the transforms move boxes; a crop does not clip them
            whole = np.prod(b[:, 2:] - b[:, :2], 1) >= WHOLE * np.prod(aug.boxes[:, 2:] - aug.boxes[:, :2], 1)
            out.append(b[whole & ((b[:, 2:] - b[:, :2]) >= 1).all(1)])
    finally:
        np.random.set_state(state)
    return np.concatenate(out) if out else np.zeros((0, 4))
