"""BCCD (blood cell count and detection): 364 microscope images, 640x480, three classes.

Found at ``$DETECTRON2_DATASETS/BCCD`` in the Pascal VOC layout (``Annotations/``,
``JPEGImages/``, ``ImageSets/Main/{train,val,test,trainval}.txt``), registered as ``bccd_train``
(205 images), ``bccd_val`` (87), ``bccd_test`` (72) and ``bccd_trainval``. The classes are
imbalanced (RBC : WBC : Platelets boxes about 11.5 : 1 : 1). Its annotations hold real defects
(boxes of zero width or height): dropped, counted per file in the log.
"""
import os
from typing import Dict, List

from .user_datasets import voc_dataset_dict

CLASS_NAMES = ["RBC", "WBC", "Platelets"]
SOURCE = "https://github.com/Shenggan/BCCD_Dataset (folder BCCD/, MIT licence)"
SPLITS = {f"bccd_{s}": s for s in ("train", "val", "test", "trainval")}


def bccd_root() -> str:
    """``$DETECTRON2_DATASETS/BCCD``, or a FileNotFoundError saying where it looked and where the
    dataset comes from."""
    base = os.environ.get("DETECTRON2_DATASETS", "datasets")
    root = os.path.join(base, "BCCD")
    if not os.path.isfile(os.path.join(root, "ImageSets", "Main", "test.txt")):
        raise FileNotFoundError(
            f"BCCD not found: looked for {os.path.abspath(os.path.join(root, 'ImageSets', 'Main', 'test.txt'))} "
            f"(DETECTRON2_DATASETS={base!r}). Get it from {SOURCE}: its BCCD/ folder (Annotations, "
            "JPEGImages, ImageSets) as $DETECTRON2_DATASETS/BCCD.")
    return root


def load_bccd(name: str, root: str = "") -> List[Dict]:
    """Detectron2 dataset dicts of a registered split (see :data:`SPLITS`)."""
    root = root or bccd_root()
    with open(os.path.join(root, "ImageSets", "Main", SPLITS[name] + ".txt")) as f:
        stems = [line.strip() for line in f if line.strip()]
    # int ids (BloodImage_00343 -> 343): pycocotools reads a str id as a list of ids (its characters)
    return [voc_dataset_dict(os.path.join(root, "JPEGImages", s + ".jpg"), os.path.join(root, "Annotations", s + ".xml"),
                             int(s.rsplit("_", 1)[1]), CLASS_NAMES) for s in stems]
