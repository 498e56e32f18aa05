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


@pytest.mark.parametrize("name,tile,n_tiles", [("trees_train", 400, 42), ("trees_train_overlap", 600, 36)])
def test_trees_train_tiles_cover_every_box(name, tile, n_tiles):
    dicts = DatasetCatalog.get(name)
    by_name = {os.path.basename(d["file_name"]): d for d in dicts}
    assert len(by_name["SOAP_061.png"]["annotations"]) == len(_xml_objects("SOAP_061")) == 37
    assert len(by_name["OSBS_029.png"]["annotations"]) == len(_xml_objects("OSBS_029")) == 61
    tiles = [d for d in dicts if d["file_name"].endswith(".png") and "YELL" in d["file_name"]]
    assert len(tiles) == n_tiles
    assert all((d["width"], d["height"]) == (tile, tile) for d in tiles)
    # Every crown of the big photograph has its centre in at least one tile.
    big = _xml_objects("2019_YELL_2_528000_4978000_image_crop2")
    assert len(big) == 574
    covered = set()
    for d in tiles:
        x0, y0 = map(int, re.findall(r"_(\d+)_(\d+)\.png$", d["file_name"])[0])
        for b in big:
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            if x0 <= cx < x0 + tile and y0 <= cy < y0 + tile:
                covered.add(b)
        for a in d["annotations"]:
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= tile and y + h <= tile and w > 0 and h > 0
            assert a["category_id"] == 0
    assert len(covered) == len(set(big))
    assert sum(len(d["annotations"]) for d in tiles) >= 574


def test_tile_origins_cover_the_image():
    assert tile_origins(2299, 400, 400) == [0, 400, 800, 1200, 1600, 1899]
    assert tile_origins(2299, 600, 400) == [0, 400, 800, 1200, 1600, 1699]
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


def test_input_crop_cuts_a_window_and_shifts_the_boxes(make_cfg, tmp_path):
    """INPUT.CROP is honoured (Detectron2's DatasetMapper adds it; our augmentation list must too).

    The picture encodes each pixel's own (x, y), so the crop's top-left pixel says where it was cut.
    """
    import numpy as np
    from PIL import Image

    from focal_rpn.data import build_train_augmentations

    yy, xx = np.mgrid[0:600, 0:600]
    img = np.stack([xx % 256, yy % 256, (xx // 256) * 16 + yy // 256], axis=-1).astype(np.uint8)
    path = tmp_path / "coords.png"
    Image.fromarray(img).save(path)
    box = [250.0, 260.0, 330.0, 350.0]  # XYXY, inside every 400x400 window's reach
    cfg = make_cfg(
        "configs/trees/retinanet.yaml", "INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute",
        "INPUT.CROP.SIZE", "[400, 400]", "INPUT.RANDOM_FLIP", "none", "INPUT.VERTICAL_FLIP", "False",
        "INPUT.ROTATE_90", "False", "INPUT.COLOR_JITTER", "0.0",
    )
    mapper = CheckedDatasetMapper(cfg, is_train=True, augmentations=build_train_augmentations(cfg))
    offsets = set()
    for _ in range(10):
        out = mapper({"file_name": str(path), "height": 600, "width": 600, "image_id": 0,
                      "annotations": [{"bbox": box, "bbox_mode": 0, "category_id": 0}]})
        chw = out["image"].numpy()  # BGR, as Detectron2 reads it
        assert chw.shape == (3, 400, 400)
        b, g, r = (int(v) for v in chw[:, 0, 0])
        x0, y0 = r + 256 * (b // 16), g + 256 * (b % 16)
        offsets.add((x0, y0))
        expected = np.clip(np.array(box) - [x0, y0, x0, y0], 0, 400)
        got = out["instances"].gt_boxes.tensor.numpy()
        if (expected[2:] - expected[:2] > 0).all():
            np.testing.assert_allclose(got, [expected], atol=1e-3)
    assert len(offsets) > 1  # random, not a fixed window
