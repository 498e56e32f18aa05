"""DeepPCB: registration, splits, annotation parsing and defects, on the real files when present."""
import logging

import pytest
from conftest import needs_dataset

from focal_rpn.data import deeppcb


def test_splits_of_the_real_dataset():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    needs_dataset(deeppcb.deeppcb_root)
    sizes = {name: DatasetCatalog.get(name) for name in deeppcb.SPLITS}
    # the official split (the dataset's README: 1,000 / 500 images, 3,140 test boxes)
    assert len(sizes["deeppcb_trainval"]) == 1000 and len(sizes["deeppcb_test"]) == 500
    assert sum(len(d["annotations"]) for d in sizes["deeppcb_test"]) == 3140
    train, val = sizes["deeppcb_train"], sizes["deeppcb_val"]
    assert len(train) + len(val) == 1000 and len(val) == 200
    groups = lambda ds: {d["file_name"].split("/")[-3] for d in ds}  # noqa: E731
    assert groups(val) == set(deeppcb.VAL_GROUPS) and not groups(train) & groups(val)
    d = sizes["deeppcb_test"][0]
    assert d["file_name"].endswith("_test.jpg") and (d["width"], d["height"]) == (640, 640)
    assert MetadataCatalog.get("deeppcb_test").thing_classes == deeppcb.CLASS_NAMES
    assert MetadataCatalog.get("deeppcb_test").evaluator_type == "deeppcb"
    ids = [d["image_id"] for d in sizes["deeppcb_trainval"]]
    assert all(type(i) is int for i in ids) and len(set(ids)) == len(ids)  # pycocotools needs int ids


def _fake_root(tmp_path, lines):
    """A one-image DeepPCB tree whose annotation file holds ``lines``."""
    from PIL import Image

    (tmp_path / "group1" / "1").mkdir(parents=True)
    (tmp_path / "group1" / "1_not").mkdir()
    Image.new("L", (64, 48)).save(tmp_path / "group1" / "1" / "00000001_test.jpg")
    (tmp_path / "group1" / "1_not" / "00000001.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.txt").write_text("group1/1/00000001.jpg group1/1_not/00000001.txt\n")
    return str(tmp_path)


def test_spaces_or_commas_clipped_and_dropped_boxes_counted(tmp_path, caplog):
    root = _fake_root(tmp_path, ["1 2 11 12 1", "10,10,20,30,6", "50 40 70 60 3", "5 5 5 9 2", ""])
    with caplog.at_level(logging.WARNING, logger="focal_rpn.data.coco_json"):
        (d,) = deeppcb.load_deeppcb("deeppcb_test", root)
    boxes = [(a["bbox"], a["category_id"]) for a in d["annotations"]]
    assert boxes == [([1, 2, 11, 12], 0), ([10, 10, 20, 30], 5), ([50, 40, 64, 48], 2)]
    assert "00000001.txt: 1 box(es) clipped to the 64x48 image, 1 empty or degenerate box(es) dropped" in caplog.text


@pytest.mark.parametrize("line, why", [("1 2 3 4", "expected 5 fields"), ("1 2 3 4 7", "class 7"),
                                       ("a 2 3 4 1", "could not convert")])
def test_a_malformed_line_names_file_and_line(tmp_path, line, why):
    root = _fake_root(tmp_path, ["1 2 11 12 1", line])
    with pytest.raises(ValueError, match=rf"00000001.txt, line 2: .*{why}"):
        deeppcb.load_deeppcb("deeppcb_test", root)


def test_missing_dataset_names_where_it_looked_and_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"looked for .*DeepPCB/PCBData/test.txt.*tangsanli5201/DeepPCB"):
        deeppcb.deeppcb_root()
