"""Registration of focal_rpn's datasets and checks that a config's datasets can be loaded."""
import os
from typing import Callable, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from . import bccd, deeppcb
from .synthetic import CLASS_NAMES as SYNTHETIC_CLASSES, prepare_synthetic
from .trees import CLASS_NAMES as TREES_CLASSES, prepare_trees

# name -> (prepare function returning (json_file, image_root), split, class names)
_DATASETS = {
    "trees_train": (prepare_trees, "train", TREES_CLASSES),
    "trees_train_overlap": (prepare_trees, "train_overlap", TREES_CLASSES),
    "trees_val": (prepare_trees, "val", TREES_CLASSES),
    "synthetic_train": (prepare_synthetic, "train", SYNTHETIC_CLASSES),
    "synthetic_val": (prepare_synthetic, "val", SYNTHETIC_CLASSES),
}
# Datasets read from $DETECTRON2_DATASETS: name -> (loader, the function that finds the data or
# raises an error naming where it looked and where the dataset comes from, class names)
_EXTERNAL = {
    **{name: (lambda split=name: deeppcb.load_deeppcb(split), deeppcb.deeppcb_root, deeppcb.CLASS_NAMES, "deeppcb")
       for name in deeppcb.SPLITS},
    **{name: (lambda split=name: bccd.load_bccd(split), bccd.bccd_root, bccd.CLASS_NAMES, "coco") for name in bccd.SPLITS},
}


def _loader(name: str, prepare: Callable[[str], Tuple[str, str]], split: str):
    def load():
        json_file, image_root = prepare(split)
        meta = MetadataCatalog.get(name)
        if getattr(meta, "json_file", None) != json_file:
            # A rebuilt cache (changed sources) moves the json: drop the old path first.
            meta.__dict__.pop("json_file", None)
            meta.__dict__.pop("image_root", None)
            meta.set(json_file=json_file, image_root=image_root)
        return load_coco_json(json_file, image_root, name)

    return load


def register_all() -> None:
    """Registers trees_*, synthetic_* (built on first use), deeppcb_* and bccd_* (read from
    $DETECTRON2_DATASETS on first use)."""
    for name, (prepare, split, classes) in _DATASETS.items():
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, _loader(name, prepare, split))
        MetadataCatalog.get(name).set(thing_classes=list(classes), evaluator_type="coco")
    for name, (load, _, classes, evaluator) in _EXTERNAL.items():
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, load)
            # "deeppcb": COCO's AP and the dataset's own measure (Trainer.build_evaluator)
            MetadataCatalog.get(name).set(thing_classes=list(classes), evaluator_type=evaluator)


def check_dataset(name: str) -> None:
    """Raises a clear error if dataset ``name`` is unknown or its files are not where expected."""
    if name not in DatasetCatalog.list():
        raise KeyError(
            f"Dataset '{name}' is not registered. focal_rpn registers: {', '.join([*_DATASETS, *_EXTERNAL])}; "
            "Detectron2 registers the COCO/LVIS/VOC/Cityscapes splits (e.g. coco_2017_train). "
            "The configs in configs/trees/ work offline on the embedded trees photographs."
        )
    meta = MetadataCatalog.get(name)
    if name in _DATASETS:
        return
    if name in _EXTERNAL:
        _EXTERNAL[name][1]()  # raises, naming where it looked and where to get the data
        return
    missing = [p for p in (getattr(meta, "json_file", None), getattr(meta, "image_root", None)) if p and not os.path.exists(p)]
    if missing:
        root = os.environ.get("DETECTRON2_DATASETS", "datasets")
        raise FileNotFoundError(
            f"Dataset '{name}' not found: looked for {' and '.join(missing)} "
            f"(DETECTRON2_DATASETS={root!r}). Download COCO 2017 (train2017/, val2017/, "
            "annotations/) from cocodataset.org into $DETECTRON2_DATASETS/coco, as described in "
            "Detectron2's datasets/README.md. Without a download, the configs in configs/trees/ "
            "train and evaluate offline on the embedded trees photographs."
        )


def class_names(num_classes: int, datasets, explicit=()) -> list:
    """Names of a model's ``num_classes`` classes: ``explicit`` if given (their count checked),
    else those of the first of ``datasets`` with that many classes, else "0", "1", ..."""
    if explicit:
        if len(explicit) != num_classes:
            raise ValueError(f"--class-names gives {len(explicit)} names for a model of {num_classes} classes")
        return list(explicit)
    for name in datasets:
        names = MetadataCatalog.get(name).get("thing_classes", None) if name in DatasetCatalog.list() else None
        if names is not None and len(names) == num_classes:
            return list(names)
    return [str(i) for i in range(num_classes)]


def ensure_json(name: str) -> None:
    """Builds the dataset if needed so that its metadata has a COCO ``json_file``."""
    if name in _DATASETS:
        DatasetCatalog.get(name)
