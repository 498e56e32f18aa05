"""DATASETS.REGISTER (COCO json, VOC folders), its errors, and unreadable MODEL.WEIGHTS files."""
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from conftest import run_train_net

from focal_rpn.config import load_config
from focal_rpn.data.user_datasets import load_voc_folder, register_dataset, voc_class_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = os.path.join(ROOT, "configs/synthetic/retinanet.yaml")


def _image(path, w=96, h=64, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _voc_xml(path, objects, size=(96, 64)):
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    with open(path, "w") as f:
        f.write(f"<annotation><filename>x</filename>{size_xml}{objs}</annotation>")


def make_coco(folder, categories=("tree", "shrub")):
    """Two images, the second without boxes (a negative)."""
    os.makedirs(folder / "images", exist_ok=True)
    for i in range(2):
        _image(folder / "images" / f"im{i}.png", seed=i)
    ann = {"images": [{"id": i + 1, "file_name": f"im{i}.png", "width": 96, "height": 64} for i in range(2)],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 30], "area": 600, "iscrowd": 0},
                           {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 5, 30, 20], "area": 600, "iscrowd": 0}],
           "categories": [{"id": i + 1, "name": n} for i, n in enumerate(categories)]}
    (folder / "ann.json").write_text(json.dumps(ann))
    return f"{folder / 'ann.json'}:{folder / 'images'}"


def test_voc_folder_side_by_side(tmp_path):
    _image(tmp_path / "a.jpg")
    _voc_xml(tmp_path / "a.xml", [("pine", (1, 2, 30, 40)), ("oak", (50, 10, 90, 60))])
    _image(tmp_path / "b.png", w=80, h=50)
    _voc_xml(tmp_path / "b.xml", [], size=None)  # no objects, no <size>: size read from the image
    _image(tmp_path / "c.png")  # no XML at all: a negative
    assert voc_class_names(str(tmp_path)) == ["oak", "pine"]
    dicts = load_voc_folder(str(tmp_path), ["oak", "pine"])
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["a.jpg", "b.png", "c.png"]
    assert [(a["category_id"], a["bbox"]) for a in dicts[0]["annotations"]] == [(1, [1, 2, 30, 40]), (0, [50, 10, 90, 60])]
    assert (dicts[1]["width"], dicts[1]["height"], dicts[1]["annotations"]) == (80, 50, [])
    assert dicts[2]["annotations"] == []


def test_voc_annotations_jpegimages_layout_and_classes_txt(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    _image(tmp_path / "JPEGImages" / "x.jpg")
    _voc_xml(tmp_path / "Annotations" / "x.xml", [("tree", (5, 5, 20, 20))])
    (tmp_path / "classes.txt").write_text("tree\nsnag\n")
    name = register_dataset(f"voc_layout_test=voc:{tmp_path}")
    assert MetadataCatalog.get(name).thing_classes == ["tree", "snag"]
    (d,) = DatasetCatalog.get(name)
    assert d["annotations"][0]["category_id"] == 0


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="expected"):
        register_dataset("nonsense")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        register_dataset(f"e1=coco:{tmp_path / 'missing.json'}:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="VOC folder .*nowhere"):
        register_dataset(f"e2=voc:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        register_dataset(f"e3=voc:{tmp_path / 'empty'}")
    (tmp_path / "empty.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(ValueError, match="has no images"):
        register_dataset(f"e4=coco:{tmp_path / 'empty.json'}:{tmp_path}")
    src = make_coco(tmp_path / "c")
    register_dataset(f"twice_test=coco:{src}")
    register_dataset(f"twice_test=coco:{src}")  # the same source again: fine (each launch worker does this)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(f"twice_test=voc:{tmp_path}")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(f"trees_val=coco:{src}")


def test_class_count_mismatch_names_both_numbers(tmp_path):
    src = make_coco(tmp_path)
    opts = ["DATASETS.REGISTER", f"('mismatch_test=coco:{src}',)", "DATASETS.TRAIN", "('mismatch_test',)",
            "DATASETS.TEST", "('mismatch_test',)"]
    with pytest.raises(ValueError, match=r"has 2 classes \(tree, shrub\) but MODEL.RETINANET.NUM_CLASSES is 3"):
        load_config(SYNTH, opts)
    cfg = load_config(SYNTH, opts + ["MODEL.RETINANET.NUM_CLASSES", "2"])
    assert cfg.DATASETS.TRAIN == ("mismatch_test",)


def test_train_and_evaluate_on_registered_coco_and_voc(tmp_path):
    """train_net.py as a user runs it: a COCO json to train on, a VOC folder to evaluate on."""
    src = make_coco(tmp_path / "coco")
    voc = tmp_path / "voc"
    voc.mkdir()
    _image(voc / "v.png")
    _voc_xml(voc / "v.xml", [("tree", (10, 10, 30, 40)), ("shrub", (50, 5, 80, 25))])
    (voc / "classes.txt").write_text("tree\nshrub\n")
    p = run_train_net("--config-file", SYNTH, "DATASETS.REGISTER", f"('own_train=coco:{src}', 'own_val=voc:{voc}')",
                      "DATASETS.TRAIN", "('own_train',)", "DATASETS.TEST", "('own_val',)",
                      "MODEL.RETINANET.NUM_CLASSES", "2", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path / "out"))
    log = p.stdout + p.stderr
    assert "Evaluation results for own_val" in log or "Evaluation results for bbox" in log


@pytest.mark.parametrize("content, mode", [(b"not a checkpoint at all", ["--eval-only"]), ("truncated", [])])
def test_unreadable_weights_are_named(trained, tmp_path, content, mode):
    """Evaluation and training (initial weights) read MODEL.WEIGHTS alike: each is tried with one kind of bad file."""
    out, _ = trained
    bad = tmp_path / "model.pth"
    if content == "truncated":
        data = open(os.path.join(out, "model_final.pth"), "rb").read()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(content)
    p = run_train_net("--config-file", "configs/synthetic/retinanet.yaml", *mode, "MODEL.WEIGHTS", str(bad),
                      "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(tmp_path / "o"), check=False)
    assert p.returncode != 0
    assert f"MODEL.WEIGHTS {bad}" in p.stderr and "is not a readable checkpoint" in p.stderr, p.stderr[-2000:]


def _bccd():
    """The shared BCCD folder (VOC layout), or a skip saying where to get it."""
    root = os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "BCCD")
    if not os.path.isdir(os.path.join(root, "Annotations")):
        pytest.skip(f"BCCD not found at {root}: get it from https://github.com/Shenggan/BCCD_Dataset "
                    "(folder BCCD/) into $DETECTRON2_DATASETS/BCCD")
    return root


def test_real_zero_size_voc_boxes_are_dropped_and_counted(tmp_path, caplog):
    """BCCD's BloodImage_00338.xml and 00343.xml each hold an RBC with xmin == xmax, ymin == ymax."""
    import logging
    import shutil

    root = _bccd()
    for stem in ("BloodImage_00338", "BloodImage_00343"):
        shutil.copy(os.path.join(root, "Annotations", stem + ".xml"), tmp_path)
        shutil.copy(os.path.join(root, "JPEGImages", stem + ".jpg"), tmp_path)
    xml_boxes = {}
    import xml.etree.ElementTree as ET
    for stem in ("BloodImage_00338", "BloodImage_00343"):
        xml_boxes[stem] = len(list(ET.parse(tmp_path / f"{stem}.xml").getroot().iter("object")))
    with caplog.at_level(logging.WARNING, logger="focal_rpn.data.coco_json"):
        dicts = load_voc_folder(str(tmp_path), voc_class_names(str(tmp_path)))
    for d in dicts:
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        assert len(d["annotations"]) == xml_boxes[stem] - 1
        assert all(a["bbox"][2] > a["bbox"][0] and a["bbox"][3] > a["bbox"][1] for a in d["annotations"])
        assert f"{stem}.xml: 0 box(es) clipped to the 640x480 image, 1 empty or degenerate box(es) dropped" in caplog.text


def test_a_truncated_real_jpeg_is_named(tmp_path):
    """A BCCD photograph cut short: the training mapper's error names the file."""
    from focal_rpn.data import CheckedDatasetMapper

    root = _bccd()
    data = open(os.path.join(root, "JPEGImages", "BloodImage_00000.jpg"), "rb").read()
    bad = tmp_path / "BloodImage_00000.jpg"
    bad.write_bytes(data[: len(data) // 2])
    cfg = load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs/synthetic/retinanet.yaml"))
    mapper = CheckedDatasetMapper(cfg, is_train=True)
    with pytest.raises(OSError, match="BloodImage_00000.jpg"):
        mapper({"file_name": str(bad), "height": 480, "width": 640, "image_id": 0, "annotations": []})


def test_coco_json_defects_are_counted_per_kind_naming_the_file(tmp_path, caplog):
    import logging

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(img)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 60, "height": 40}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, -5, 8], "area": 40, "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 30, 20, 20], "area": 400, "iscrowd": 0},
                        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0}]}))
    name = register_dataset(f"defects_coco=coco:{ann}:{tmp_path}")
    with caplog.at_level(logging.WARNING, logger="focal_rpn.data.user_datasets"):
        (d,) = DatasetCatalog.get(name)
    assert [a["bbox"] for a in d["annotations"]] == [[50, 30, 60, 40], [5, 5, 15, 15]]
    assert f"{ann}: 1 box(es) past the image border clipped, 1 box(es) of zero or negative width or height dropped" in caplog.text
