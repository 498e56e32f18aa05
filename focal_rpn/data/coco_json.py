"""Writing small COCO-format annotation files, with box sanitising."""
import json
import logging
from typing import Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)


def clip_boxes_xyxy(
    boxes: Sequence[Sequence[float]], width: int, height: int, source: str, min_size: float = 1.0,
    warn: bool = True, counts: Optional[Dict[str, int]] = None,
) -> Tuple[List[List[float]], List[int]]:
    """Clips XYXY boxes to the image and drops those left smaller than ``min_size`` pixels.

    Returns (kept boxes, indices kept). Logs how many were clipped or dropped, naming ``source``
    (unless ``warn`` is False: tiles cut crowns by design); adds them to ``counts["clipped"]`` and
    ``counts["dropped"]`` when given (to log one total per file of many images).
    """
    kept, keep_idx, clipped = [], [], 0
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        c = [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height)]
        if c[2] - c[0] >= min_size and c[3] - c[1] >= min_size:
            clipped += c != [x0, y0, x1, y1]
            kept.append(c)
            keep_idx.append(i)
    dropped = len(boxes) - len(kept)
    if counts is not None:
        counts["clipped"] = counts.get("clipped", 0) + clipped
        counts["dropped"] = counts.get("dropped", 0) + dropped
    if warn and (clipped or dropped):
        logger.warning(
            "%s: %d box(es) clipped to the %dx%d image, %d empty or degenerate box(es) dropped",
            source, clipped, width, height, dropped,
        )
    return kept, keep_idx


def write_coco_json(path: str, images: List[Dict], class_names: Sequence[str]) -> None:
    """Writes a COCO instances file.

    ``images``: dicts with file_name, width, height, and "boxes" (list of XYXY) and "classes"
    (list of 0-based class indices). Category ids are 1-based, as in COCO.
    """
    out = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)],
    }
    ann_id = 1
    for img_id, img in enumerate(images, start=1):
        out["images"].append(
            {"id": img_id, "file_name": img["file_name"], "width": img["width"], "height": img["height"]}
        )
        for (x0, y0, x1, y1), c in zip(img["boxes"], img["classes"]):
            w, h = x1 - x0, y1 - y0
            out["annotations"].append(
                {"id": ann_id, "image_id": img_id, "category_id": int(c) + 1, "bbox": [x0, y0, w, h],
                 "area": w * h, "iscrowd": 0}
            )
            ann_id += 1
    with open(path, "w") as f:
        json.dump(out, f)
