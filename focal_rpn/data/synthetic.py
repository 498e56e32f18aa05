"""A small deterministic synthetic detection dataset (three shape classes) for fast tests."""
import os
from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw

from .cache import build_cached, source_key
from .coco_json import write_coco_json

CLASS_NAMES = ["square", "disk", "bar"]
IMAGE_SIZE = 128
NUM_IMAGES = {"train": 12, "val": 4}
COLORS = [(230, 60, 40), (40, 200, 80), (60, 90, 230)]


def render_image(rng: np.random.Generator, size: int, num_objects: int):
    """Draws ``num_objects`` shapes on a noisy background. Returns (PIL image, XYXY boxes, classes)."""
    bg = rng.integers(60, 140, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)
    boxes, classes = [], []
    for _ in range(num_objects):
        c = int(rng.integers(0, len(CLASS_NAMES)))
        w = int(rng.integers(14, 40))
        h = w if c < 2 else max(6, w // 3)
        x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        box = (x0, y0, x0 + w, y0 + h)
        if c == 1:
            draw.ellipse(box, fill=COLORS[c])
        else:
            draw.rectangle(box, fill=COLORS[c])
        boxes.append([float(v) for v in box])
        classes.append(c)
    return img, boxes, classes


def _build(folder: str, split: str) -> None:
    rng = np.random.default_rng(0 if split == "train" else 1)
    images = []
    for i in range(NUM_IMAGES[split]):
        # The first training image has no objects: background-only images must train.
        n = 0 if (split == "train" and i == 0) else int(rng.integers(1, 5))
        img, boxes, classes = render_image(rng, IMAGE_SIZE, n)
        name = f"{split}_{i:03d}.png"
        img.save(os.path.join(folder, name))
        images.append({"file_name": name, "width": IMAGE_SIZE, "height": IMAGE_SIZE, "boxes": boxes, "classes": classes})
    write_coco_json(os.path.join(folder, "annotations.json"), images, CLASS_NAMES)


def prepare_synthetic(split: str) -> Tuple[str, str]:
    """Builds (once) the synthetic ``split`` ("train"/"val"). Returns (json_file, image_root)."""
    key = source_key([__file__], {"split": split, "n": NUM_IMAGES[split], "size": IMAGE_SIZE})
    folder = build_cached(f"synthetic_{split}", key, lambda d: _build(d, split))
    return os.path.join(folder, "annotations.json"), folder
