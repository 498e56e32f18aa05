"""Embedded datasets (trees, synthetic), their registration, and training-time mapping."""
from .datasets import check_dataset, class_names, ensure_json, register_all
from .mapper import build_train_augmentations, CheckedDatasetMapper

register_all()

__all__ = ["CheckedDatasetMapper", "build_train_augmentations", "check_dataset", "class_names", "ensure_json",
           "register_all"]
