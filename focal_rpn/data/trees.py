"""The embedded real dataset: aerial photographs of tree crowns shipped in the deepforest wheel.

``trees_train``: the 2299x2472 Yellowstone image cut into 400x400 tiles (boxes kept by centre,
clipped), plus SOAP_061 and OSBS_029 (400x400). ``trees_train_overlap``: the same photographs, the
big one cut into 600x600 tiles every 400 px, so that a random 400x400 crop (INPUT.CROP) sees every
crown at many offsets and with its neighbours. ``trees_val``: the whole 1249x1035 Yellowstone image at its
native scale (279 crowns), never trained on. One class, "tree" (Dead/Alive/Tree are merged).
"""
import importlib.util
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Tuple

from PIL import Image

from .cache import build_cached, source_key
from .coco_json import clip_boxes_xyxy, write_coco_json

CLASS_NAMES = ["tree"]
TRAIN_TILED = "2019_YELL_2_528000_4978000_image_crop2"
TRAIN_WHOLE = ["SOAP_061", "OSBS_029"]
VAL_IMAGE = "2019_YELL_2_541000_4977000_image_crop"
# split -> (tile size, stride) for the big training photograph
TRAIN_TILINGS = {"train": (400, 400), "train_overlap": (600, 400)}


def deepforest_data_dir() -> str:
    """The ``data/`` folder of the installed deepforest package (found, never imported)."""
    spec = importlib.util.find_spec("deepforest")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The trees dataset needs the images shipped in the 'deepforest' wheel. Install it "
            "without its dependencies: pip install --no-deps deepforest==2.1.0 (make demo does this)."
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "data")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"deepforest is installed but has no data folder at {path}")
    return path


def read_voc_boxes(xml_path: str) -> List[Tuple[float, float, float, float]]:
    """XYXY boxes of every <object> in a Pascal VOC file (all classes; VOC pixels are 1-based
    inclusive in name only: deepforest's boxes are pixel edges, so they are used as they are)."""
    if not os.path.isfile(xml_path):
        raise FileNotFoundError(f"annotation file not found: {xml_path}")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"cannot parse annotation file {xml_path}: {e}") from e
    boxes = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        boxes.append(tuple(float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")))
    return boxes


def _image_path(data_dir: str, stem: str) -> str:
    # The XMLs sometimes name a .tif; the package ships a .png of the same picture.
    path = os.path.join(data_dir, stem + ".png")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    return path


def tile_origins(length: int, tile: int, stride: int) -> List[int]:
    """Tile start offsets covering [0, length): every ``stride``, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tile_boxes(boxes, x0: int, y0: int, tile: int):
    """Boxes whose centre lies in the tile [x0, x0+tile) x [y0, y0+tile), shifted to tile
    coordinates (clipping is left to the caller). Returns a list of XYXY."""
    out = []
    for a, b, c, d in boxes:
        cx, cy = (a + c) / 2, (b + d) / 2
        if x0 <= cx < x0 + tile and y0 <= cy < y0 + tile:
            out.append((a - x0, b - y0, c - x0, d - y0))
    return out


def _build_split(folder: str, split: str, data_dir: str) -> None:
    images: List[Dict] = []
    if split in TRAIN_TILINGS:
        tile, stride = TRAIN_TILINGS[split]
        src = Image.open(_image_path(data_dir, TRAIN_TILED)).convert("RGB")
        boxes = read_voc_boxes(os.path.join(data_dir, TRAIN_TILED + ".xml"))
        for y0 in tile_origins(src.height, tile, stride):
            for x0 in tile_origins(src.width, tile, stride):
                name = f"{TRAIN_TILED}_{x0}_{y0}.png"
                src.crop((x0, y0, x0 + tile, y0 + tile)).save(os.path.join(folder, name))
                images.append(_entry(name, tile, tile, tile_boxes(boxes, x0, y0, tile), name, warn=False))
        stems = TRAIN_WHOLE
    else:
        stems = [VAL_IMAGE]
    for stem in stems:
        img = Image.open(_image_path(data_dir, stem)).convert("RGB")
        img.save(os.path.join(folder, stem + ".png"))
        images.append(
            _entry(stem + ".png", img.width, img.height, read_voc_boxes(os.path.join(data_dir, stem + ".xml")),
                   os.path.join(data_dir, stem + ".xml"))
        )
    write_coco_json(os.path.join(folder, "annotations.json"), images, CLASS_NAMES)


def _entry(file_name, width, height, boxes, source, warn=True):
    kept, _ = clip_boxes_xyxy(boxes, width, height, source, warn=warn)
    return {"file_name": file_name, "width": width, "height": height, "boxes": kept, "classes": [0] * len(kept)}


def prepare_trees(split: str) -> Tuple[str, str]:
    """Builds (once) the ``split`` ("train", "train_overlap" or "val") images and COCO json in the
    cache.

    Returns (json_file, image_root).
    """
    data_dir = deepforest_data_dir()
    if split not in TRAIN_TILINGS and split != "val":
        raise ValueError(f"unknown trees split {split!r}: expected one of {[*TRAIN_TILINGS, 'val']}")
    stems = [TRAIN_TILED] + TRAIN_WHOLE if split in TRAIN_TILINGS else [VAL_IMAGE]
    sources = [os.path.join(data_dir, s + ext) for s in stems for ext in (".xml", ".png")]
    for s in stems:
        _image_path(data_dir, s)
    key = source_key(sources, {"split": split, "tiling": TRAIN_TILINGS.get(split), "version": 1})
    folder = build_cached(f"trees_{split}", key, lambda d: _build_split(d, split, data_dir))
    return os.path.join(folder, "annotations.json"), folder
