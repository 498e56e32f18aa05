"""Training-time mapping: Detectron2's DatasetMapper with aerial augmentations and clear errors."""
from typing import List

from detectron2.data import DatasetMapper, detection_utils as utils, transforms as T


def build_train_augmentations(cfg) -> List[T.Augmentation]:
    """Detectron2's training augmentations (INPUT.CROP, resize, horizontal flip, in the order of its
    DatasetMapper), then INPUT.VERTICAL_FLIP, INPUT.ROTATE_90 and INPUT.COLOR_JITTER."""
    augs = utils.build_augmentation(cfg, is_train=True)
    if cfg.INPUT.CROP.ENABLED:
        augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if cfg.INPUT.VERTICAL_FLIP:
        augs.append(T.RandomFlip(prob=0.5, horizontal=False, vertical=True))
    if cfg.INPUT.ROTATE_90:
        # Multiples of 90° map boxes to boxes exactly (expand keeps the whole image).
        augs.append(T.RandomRotation([0, 90, 180, 270], expand=True, sample_style="choice"))
    j = cfg.INPUT.COLOR_JITTER
    if j > 0:
        augs += [T.RandomBrightness(1 - j, 1 + j), T.RandomContrast(1 - j, 1 + j), T.RandomSaturation(1 - j, 1 + j)]
    return augs


class CheckedDatasetMapper(DatasetMapper):
    """DatasetMapper whose image-reading errors name the file that failed."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, ValueError) as e:
            name = dataset_dict.get("file_name", "<no file_name>")
            if name in str(e):
                raise
            raise type(e)(f"cannot read or map image {name}: {e}") from e
