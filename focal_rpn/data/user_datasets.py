"""DATASETS.REGISTER: the user's own datasets, registered from the config before anything is built.

    DATASETS.REGISTER ("mytrees_train=coco:data/train.json:data/images", "mytrees_val=voc:data/val")

``NAME=coco:ANNOTATIONS.json:IMAGE_DIR`` is a COCO instances file (Detectron2's
``register_coco_instances``). ``NAME=voc:DIR`` is a folder of images with Pascal VOC XMLs beside
them (``a.jpg`` + ``a.xml``) or in ``DIR/Annotations`` + ``DIR/JPEGImages``; the class names are
those of ``DIR/classes.txt`` (one per line) when present, else every ``<name>`` in the XMLs,
sorted. Images without boxes (no XML, or an XML without objects) are kept as negatives.
"""
import json
import logging
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode
from PIL import Image

from .coco_json import clip_boxes_xyxy

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
# name -> the spec string it was registered with (a second, identical registration is a no-op)
_REGISTERED: Dict[str, str] = {}


def parse_spec(spec: str) -> Tuple[str, str, List[str]]:
    """"NAME=kind:arg[:arg]" -> (name, kind, args), with a clear error for anything else."""
    name, sep, rest = spec.partition("=")
    kind, _, args = rest.partition(":")
    forms = '"NAME=coco:ANNOTATIONS.json:IMAGE_DIR" or "NAME=voc:DIR"'
    if not sep or not name.strip() or kind not in ("coco", "voc"):
        raise ValueError(f"DATASETS.REGISTER entry {spec!r}: expected {forms}")
    parts = args.split(":") if kind == "voc" else args.rsplit(":", 1)
    if (kind == "coco" and len(parts) != 2) or (kind == "voc" and (len(parts) != 1 or not parts[0])):
        raise ValueError(f"DATASETS.REGISTER entry {spec!r}: expected {forms}")
    return name.strip(), kind, parts


def _voc_pairs(root: str) -> List[Tuple[str, str]]:
    """(image path, xml path or "") of every image of a VOC folder, sorted by file name."""
    ann_dir, img_dir = os.path.join(root, "Annotations"), os.path.join(root, "JPEGImages")
    if not (os.path.isdir(ann_dir) and os.path.isdir(img_dir)):
        ann_dir = img_dir = root
    pairs = []
    for f in sorted(os.listdir(img_dir)):
        if f.lower().endswith(IMAGE_EXTENSIONS):
            xml = os.path.join(ann_dir, os.path.splitext(f)[0] + ".xml")
            pairs.append((os.path.join(img_dir, f), xml if os.path.isfile(xml) else ""))
    return pairs


def _read_voc_objects(xml_path: str) -> Tuple[List[Tuple[str, List[float]]], Tuple[int, int]]:
    """([(class name, XYXY box)], (width, height) or (0, 0) if the XML has no <size>)."""
    try:
        root = ET.parse(xml_path).getroot()
        objs = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            objs.append((obj.find("name").text.strip(), [float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]))
        size = root.find("size")
        wh = (int(float(size.find("width").text)), int(float(size.find("height").text))) if size is not None else (0, 0)
    except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"cannot read Pascal VOC annotation {xml_path}: {e}") from e
    return objs, wh


def voc_class_names(root: str) -> List[str]:
    """classes.txt of the folder if present, else the sorted names found in its XMLs."""
    listed = os.path.join(root, "classes.txt")
    if os.path.isfile(listed):
        with open(listed) as f:
            return [line.strip() for line in f if line.strip()]
    return sorted({n for _, xml in _voc_pairs(root) if xml for n, _ in _read_voc_objects(xml)[0]})


def voc_dataset_dict(img: str, xml: str, image_id, class_names: List[str]) -> dict:
    """The Detectron2 dataset dict of one image and its Pascal VOC XML ("" for none): boxes as
    pixel edges (XYXY_ABS); real annotations hold zero-size boxes and boxes past the border, so
    those are dropped / clipped, logged per file; an unknown class is an error naming the file."""
    objs, (w, h) = _read_voc_objects(xml) if xml else ([], (0, 0))
    if not (w and h):
        with Image.open(img) as im:
            w, h = im.size
    for name, _ in objs:
        if name not in class_names:
            raise ValueError(f"{xml}: class {name!r} is not one of {class_names}")
    boxes, keep = clip_boxes_xyxy([box for _, box in objs], w, h, xml)
    annos = [{"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": class_names.index(objs[i][0]), "iscrowd": 0}
             for box, i in zip(boxes, keep)]
    return {"file_name": img, "image_id": image_id, "width": w, "height": h, "annotations": annos}


def load_voc_folder(root: str, class_names: List[str]) -> List[dict]:
    """Detectron2 dataset dicts of a VOC folder (see :func:`voc_dataset_dict`)."""
    return [voc_dataset_dict(img, xml, image_id, class_names) for image_id, (img, xml) in enumerate(_voc_pairs(root))]


def load_checked_coco(json_file: str, image_root: str, name: str) -> List[dict]:
    """Detectron2's load_coco_json, then every box clipped to its image and degenerate ones
    (zero or negative width or height) dropped, with one count per defect kind naming the file."""
    dicts = load_coco_json(json_file, image_root, name)
    counts: Dict[str, int] = {}
    for d in dicts:
        annos = d.get("annotations", [])
        xyxy = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
        boxes, keep = clip_boxes_xyxy(xyxy, d["width"], d["height"], json_file, warn=False, counts=counts)
        d["annotations"] = [{**annos[i], "bbox": box, "bbox_mode": BoxMode.XYXY_ABS} for box, i in zip(boxes, keep)]
    if counts.get("clipped") or counts.get("dropped"):
        logger.warning("%s: %d box(es) past the image border clipped, %d box(es) of zero or negative width or "
                       "height dropped", json_file, counts["clipped"], counts["dropped"])
    return dicts


def register_dataset(spec: str) -> str:
    """Registers one DATASETS.REGISTER entry (checking its files now). Returns the dataset name."""
    name, kind, args = parse_spec(spec)
    if _REGISTERED.get(name) == spec:
        return name
    if name in DatasetCatalog.list():
        raise ValueError(f"DATASETS.REGISTER {spec!r}: a dataset named {name!r} is already registered "
                         f"({_REGISTERED.get(name, 'by Detectron2 or focal_rpn')}); pick another name")
    if kind == "coco":
        json_file, image_root = args
        for path, what in ((json_file, "annotation file"), (image_root, "image folder")):
            if not os.path.exists(path):
                raise FileNotFoundError(f"DATASETS.REGISTER {name}: {what} {path} not found")
        with open(json_file) as f:
            coco = json.load(f)
        if not coco.get("images"):
            raise ValueError(f"DATASETS.REGISTER {name}: {json_file} has no images")
        DatasetCatalog.register(name, lambda: load_checked_coco(json_file, image_root, name))
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")
        # thing_classes now, so that the class count is checked before training (d2 sets it on load)
        cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
        MetadataCatalog.get(name).set(thing_classes=[c["name"] for c in cats])
    else:
        (root,) = args
        if not os.path.isdir(root):
            raise FileNotFoundError(f"DATASETS.REGISTER {name}: VOC folder {root} not found")
        if not _voc_pairs(root):
            raise ValueError(f"DATASETS.REGISTER {name}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
        classes = voc_class_names(root)
        if not classes:
            raise ValueError(f"DATASETS.REGISTER {name}: no <object> in the XMLs of {root} and no classes.txt")
        DatasetCatalog.register(name, lambda: load_voc_folder(root, classes))
        MetadataCatalog.get(name).set(thing_classes=classes, evaluator_type="coco", dirname=root)
    _REGISTERED[name] = spec
    return name


def check_class_count(names, num_classes: int, key: str) -> None:
    """Raises a ValueError naming the dataset, both numbers and the key to set when a registered
    dataset of ``names`` whose classes are known has another number of classes than the model's
    ``num_classes`` (config ``key``)."""
    for name in names:
        if name not in DatasetCatalog.list():
            continue  # check_dataset explains unknown names
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"Dataset {name!r} has {len(classes)} classes ({', '.join(classes[:10])}"
                             f"{', ...' if len(classes) > 10 else ''}) but {key} is {num_classes}: set {key} {len(classes)}")
