"""The faster training data path against Detectron2's own transforms and mapper."""
import copy

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, transforms as T
from detectron2.data.transforms import BlendTransform
from detectron2.structures import BoxMode

from focal_rpn.data import CheckedDatasetMapper, build_train_augmentations
from focal_rpn.data.transforms import ColorJitterTransform, Rotate90Transform, ResizeShortestEdge


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rotate90_moves_boxes_with_the_pixels(k):
    h, w = 37, 53
    img = np.zeros((h, w, 3), dtype=np.uint8)
    box = (5, 9, 20, 30)  # x0, y0, x1, y1 in pixel edges
    img[box[1]:box[3], box[0]:box[2]] = 255
    t = Rotate90Transform(k, h, w)
    out = t.apply_image(img)
    ys, xs = np.nonzero(out[..., 0])
    expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    np.testing.assert_allclose(t.apply_box(np.array([box], dtype=float))[0], expected)
    assert out.shape[:2] == ((w, h) if k % 2 else (h, w))
    np.testing.assert_array_equal(t.inverse().apply_image(out), img)


def test_color_jitter_equals_detectron2_blends():
    """Detectron2's RandomBrightness, RandomContrast, RandomSaturation with the same factors,
    applied in float64 without rounding between them (the fused version skips that rounding)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (31, 17, 3), dtype=np.uint8)
    b, c, s = 1.3, 0.7, 1.4
    x = img.astype(np.float64) * b
    x = BlendTransform(src_image=x.mean(), src_weight=1 - c, dst_weight=c).apply_image(x)
    grey = x.dot([0.299, 0.587, 0.114])[:, :, None]
    x = np.clip(BlendTransform(src_image=grey, src_weight=1 - s, dst_weight=s).apply_image(x), 0, 255)
    ours = ColorJitterTransform(b, c, s).apply_image(img)
    assert ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - x.astype(np.uint8).astype(int)).max() <= 1


def test_resize_to_the_same_size_is_a_no_op():
    img = np.zeros((400, 400, 3), dtype=np.uint8)
    assert isinstance(ResizeShortestEdge((400,), 1333, "choice").get_transform(img), T.NoOpTransform)
    assert isinstance(ResizeShortestEdge((300,), 1333, "choice").get_transform(img), T.ResizeTransform)


def test_cached_vectorised_mapper_equals_detectron2_mapper(make_cfg):
    """Same augmentation draws (same numpy seed): the same image and the same boxes as
    Detectron2's DatasetMapper with its per-annotation transforms, over every training tile."""
    cfg = make_cfg("configs/trees/retinanet.yaml", "DATALOADER.CACHE_IMAGES", "True")
    augs = build_train_augmentations(cfg)
    ours = CheckedDatasetMapper(cfg, is_train=True, augmentations=augs)
    ref = DatasetMapper(cfg, is_train=True, augmentations=augs)
    dicts = DatasetCatalog.get("trees_train_overlap")
    for epoch in range(2):  # the second epoch reads from the cache
        for i, d in enumerate(dicts):
            np.random.seed(1000 * epoch + i)
            a = ours(copy.deepcopy(d))
            np.random.seed(1000 * epoch + i)
            b = ref(copy.deepcopy(d))
            assert torch.equal(a["image"], b["image"])
            torch.testing.assert_close(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
            assert torch.equal(a["instances"].gt_classes, b["instances"].gt_classes)
    assert len(ours._decoded) == len(dicts)


def test_vectorised_boxes_drop_crowd_and_empty_boxes(make_cfg):
    cfg = make_cfg("configs/synthetic/retinanet.yaml")
    mapper = CheckedDatasetMapper(cfg, is_train=True, augmentations=[T.CropTransform(0, 0, 50, 50)])
    d = copy.deepcopy(DatasetCatalog.get("synthetic_train")[1])
    d["annotations"] = [
        {"bbox": [10, 10, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1},
        {"bbox": [60, 60, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},  # outside the crop
        {"bbox": [5, 5, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 1},
        {"bbox": [40, 40, 20, 5], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2},  # clipped
    ]
    out = mapper(d)["instances"]
    assert out.gt_boxes.tensor.tolist() == [[10, 10, 30, 30], [40, 40, 50, 45]]
    assert out.gt_classes.tolist() == [1, 2]


def test_cache_is_read_only(make_cfg):
    cfg = make_cfg("configs/trees/retinanet.yaml", "DATALOADER.CACHE_IMAGES", "True")
    mapper = CheckedDatasetMapper(cfg, is_train=True, augmentations=[])
    mapper(DatasetCatalog.get("trees_train_overlap")[0])
    (image,) = mapper._decoded.values()
    with pytest.raises(ValueError):
        image[0, 0, 0] = 1
