"""The embedded datasets against their source files, and bad-input errors."""
import logging
import os
import re

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

import focal_rpn  # noqa: F401  (registers the datasets)
from focal_rpn.data import CheckedDatasetMapper, check_dataset
from focal_rpn.data.cache import source_key
from focal_rpn.data.coco_json import clip_boxes_xyxy
from focal_rpn.data.trees import deepforest_data_dir, tile_origins


def _xml_objects(stem):
    """Counts <object> entries with a regex (independent of the ElementTree parser we use)."""
    with open(os.path.join(deepforest_data_dir(), stem + ".xml")) as f:
        text = f.read()
    boxes = re.findall(r"<xmin>([\d.]+)</xmin>\s*<ymin>([\d.]+)</ymin>\s*<xmax>([\d.]+)</xmax>\s*<ymax>([\d.]+)</ymax>", text)
    assert len(boxes) == text.count("<object>")
    return [tuple(map(float, b)) for b in boxes]


def test_trees_val_is_the_whole_held_out_image():
    (d,) = DatasetCatalog.get("trees_val")
    assert (d["width"], d["height"]) == (1249, 1035)
    assert len(d["annotations"]) == len(_xml_objects("2019_YELL_2_541000_4977000_image_crop")) == 279
    assert MetadataCatalog.get("trees_val").thing_classes == ["tree"]
    assert os.path.isfile(MetadataCatalog.get("trees_val").json_file)


def test_trees_train_tiles_cover_every_box():
    dicts = DatasetCatalog.get("trees_train")
    by_name = {os.path.basename(d["file_name"]): d for d in dicts}
    assert len(by_name["SOAP_061.png"]["annotations"]) == len(_xml_objects("SOAP_061")) == 37
    assert len(by_name["OSBS_029.png"]["annotations"]) == len(_xml_objects("OSBS_029")) == 61
    tiles = [d for d in dicts if d["file_name"].endswith(".png") and "YELL" in d["file_name"]]
    assert all((d["width"], d["height"]) == (400, 400) for d in tiles)
    # Every crown of the big photograph has its centre in at least one tile.
    big = _xml_objects("2019_YELL_2_528000_4978000_image_crop2")
    assert len(big) == 574
    covered = set()
    for d in tiles:
        x0, y0 = map(int, re.findall(r"_(\d+)_(\d+)\.png$", d["file_name"])[0])
        for b in big:
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            if x0 <= cx < x0 + 400 and y0 <= cy < y0 + 400:
                covered.add(b)
        for a in d["annotations"]:
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 400 and y + h <= 400 and w > 0 and h > 0
            assert a["category_id"] == 0
    assert len(covered) == len(set(big))
    assert sum(len(d["annotations"]) for d in tiles) >= 574


def test_tile_origins_cover_the_image():
    assert tile_origins(2299, 400, 400) == [0, 400, 800, 1200, 1600, 1899]
    assert tile_origins(300, 400, 400) == [0]


def test_synthetic_has_an_empty_image_and_three_classes():
    dicts = DatasetCatalog.get("synthetic_train")
    assert any(len(d["annotations"]) == 0 for d in dicts)
    assert {a["category_id"] for d in dicts for a in d["annotations"]} <= {0, 1, 2}


def test_degenerate_boxes_are_clipped_or_dropped_with_a_log(caplog):
    with caplog.at_level(logging.WARNING):
        kept, idx = clip_boxes_xyxy([(-5, 0, 10, 10), (3, 3, 3, 8), (395, 5, 420, 9), (500, 0, 600, 10)], 400, 400, "x.xml")
    assert kept == [[0.0, 0, 10, 10], [395, 5, 400, 9]] and idx == [0, 2]
    assert "x.xml" in caplog.text and "2 box(es) clipped" in caplog.text and "2 empty" in caplog.text


def test_source_key_changes_with_the_source(tmp_path):
    f = tmp_path / "a.xml"
    f.write_text("<a/>")
    k1 = source_key([str(f)], {"v": 1})
    f.write_text("<b/>")
    assert source_key([str(f)], {"v": 1}) != k1


def test_unknown_dataset_error():
    with pytest.raises(KeyError, match="configs/trees"):
        check_dataset("no_such_dataset")


def test_missing_coco_error(monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        check_dataset("coco_2017_val")
    msg = str(e.value)
    assert "coco/annotations/instances_val2017.json" in msg and "DETECTRON2_DATASETS" in msg
    assert "configs/trees" in msg


def test_missing_image_names_the_file(make_cfg, tmp_path):
    cfg = make_cfg()
    mapper = CheckedDatasetMapper(cfg, is_train=True)
    missing = str(tmp_path / "nope.png")
    with pytest.raises(OSError, match="nope.png"):
        mapper({"file_name": missing, "height": 10, "width": 10, "annotations": []})
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(Exception, match="bad.png"):
        mapper({"file_name": str(bad), "height": 10, "width": 10, "annotations": []})
