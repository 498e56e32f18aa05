"""DeepPCB (Tang et al. 2019): printed-circuit-board defects, 640x640 binarised images, 6 classes.

Found at ``$DETECTRON2_DATASETS/DeepPCB/PCBData`` (Detectron2's convention; default ``datasets/``).
Registered splits:

- ``deeppcb_trainval`` (1,000 images) and ``deeppcb_test`` (500): the official ``trainval.txt`` /
  ``test.txt``.
- ``deeppcb_train`` / ``deeppcb_val``: a fixed tuning split of trainval by whole board groups
  (:data:`VAL_GROUPS`, 200 images), so that crops of one board never sit on both sides.

Each annotation line is ``x1 y1 x2 y2 type`` (spaces or commas); ``type`` 1-6 are
:data:`CLASS_NAMES`. A malformed line is an error naming the file and line; boxes over the
border are clipped and degenerate ones dropped, counted per file in the log.
"""
import logging
import os
from typing import Dict, List, Tuple

from detectron2.structures import BoxMode
from PIL import Image

from .coco_json import clip_boxes_xyxy

logger = logging.getLogger(__name__)

CLASS_NAMES = ["open", "short", "mousebite", "spur", "copper", "pin-hole"]
SOURCE = "https://github.com/tangsanli5201/DeepPCB (folder PCBData/, MIT licence)"
# Board groups of trainval held out for tuning: 44000, 50600 and 77000 are 200 of its 1,000 images
# (1,185 boxes, 169-224 per class), leaving 800 images of four other groups to train on.
VAL_GROUPS = ("group44000", "group50600", "group77000")
# registered name -> (list file, which groups: "all", "train" (not VAL_GROUPS) or "val")
SPLITS = {
    "deeppcb_trainval": ("trainval.txt", "all"),
    "deeppcb_test": ("test.txt", "all"),
    "deeppcb_train": ("trainval.txt", "train"),
    "deeppcb_val": ("trainval.txt", "val"),
}


def deeppcb_root() -> str:
    """``$DETECTRON2_DATASETS/DeepPCB/PCBData``, or a FileNotFoundError saying where it looked and
    where the dataset comes from."""
    base = os.environ.get("DETECTRON2_DATASETS", "datasets")
    root = os.path.join(base, "DeepPCB", "PCBData")
    if not os.path.isfile(os.path.join(root, "test.txt")):
        raise FileNotFoundError(
            f"DeepPCB not found: looked for {os.path.abspath(os.path.join(root, 'test.txt'))} "
            f"(DETECTRON2_DATASETS={base!r}). Get it from {SOURCE}: put its PCBData/ folder in "
            "$DETECTRON2_DATASETS/DeepPCB/ (only the *_test.jpg images and the annotations are read).")
    return root


def parse_annotation(path: str) -> List[Tuple[List[float], int]]:
    """[(XYXY box, 0-based class)] of one annotation file; a line that is not 4 numbers and a
    class of 1-6 raises a ValueError naming the file and line."""
    out = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.replace(",", " ").split()
            if not parts:
                continue
            try:
                if len(parts) != 5:
                    raise ValueError(f"expected 5 fields, got {len(parts)}")
                *box, cls = (float(p) for p in parts)
                if cls != int(cls) or not 1 <= cls <= len(CLASS_NAMES):
                    raise ValueError(f"class {parts[4]} is not one of 1-{len(CLASS_NAMES)}")
            except ValueError as e:
                raise ValueError(f"{path}, line {lineno}: {line.strip()!r} is not 'x1 y1 x2 y2 type' ({e})") from e
            out.append((box, int(cls) - 1))
    return out


def load_deeppcb(split: str, root: str = "") -> List[Dict]:
    """Detectron2 dataset dicts of a registered split (see :data:`SPLITS`)."""
    list_file, groups = SPLITS[split]
    root = root or deeppcb_root()
    dicts = []
    with open(os.path.join(root, list_file)) as f:
        lines = [line.split() for line in f if line.strip()]
    for lineno, parts in enumerate(lines, start=1):
        if len(parts) != 2:
            raise ValueError(f"{os.path.join(root, list_file)}, line {lineno}: expected 'IMAGE ANNOTATION'")
        image_rel, ann_rel = parts
        group = image_rel.split("/")[0]
        if groups != "all" and (group in VAL_GROUPS) != (groups == "val"):
            continue
        stem, ext = os.path.splitext(image_rel)
        file_name = os.path.join(root, f"{stem}_test{ext}")  # the tested image; templates are not used
        with Image.open(file_name) as im:
            width, height = im.size
        ann_path = os.path.join(root, ann_rel)
        objs = parse_annotation(ann_path)
        boxes, keep = clip_boxes_xyxy([b for b, _ in objs], width, height, ann_path)  # logs what it changed
        objs = [(box, objs[i][1]) for box, i in zip(boxes, keep)]
        dicts.append({
            # an int: pycocotools takes a str id for a list of ids (its characters), which left the
            # proposal recall (box_proposals/AR@*) of string-id datasets NaN
            "file_name": file_name, "image_id": int(os.path.basename(stem)), "width": width, "height": height,
            "annotations": [{"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": cls, "iscrowd": 0}
                            for box, cls in objs],
        })
    logger.info("deeppcb %s: %d images, %d boxes from %s", split, len(dicts),
                sum(len(d["annotations"]) for d in dicts), root)
    return dicts
