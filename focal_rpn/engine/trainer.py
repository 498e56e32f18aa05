"""Detectron2's DefaultTrainer with COCO evaluation, our data mapping, and CPU-capable DDP."""
import os
from unittest import mock

from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.engine import hooks as d2_hooks
from detectron2.engine import defaults as d2_defaults
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluators

from ..evaluation import IoUThresholdEvaluator, PerClassCOCOEvaluator
from ..data import CheckedDatasetMapper, build_train_augmentations, check_dataset, ensure_json
from ..layers.channels_last import to_channels_last
from ..layers.gather_roi_align import use_roi_align
from ..layers.image_threads import split_images
from ..modeling.test_time_augmentation import DetectorWithTTA
from .autocast import amp_trainer
from .checkpoint import CheckedCheckpointer
from .weight_average import WeightAverage

_d2_create_ddp_model = d2_defaults.create_ddp_model


def create_ddp_model(model, **kwargs):
    """Detectron2's create_ddp_model, but without device_ids for a CPU model (gloo training):
    DistributedDataParallel rejects device_ids for modules that are not on a GPU."""
    if next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _d2_create_ddp_model(model, **kwargs)


def refuse_test_aug(cfg):
    """TEST.AUG.ENABLED is an error: Detectron2 runs that test-time augmentation (R-CNN only) in its own
    tools/train_net.py, which this trainer is not, so it would be silently ignored."""
    if cfg.TEST.AUG.ENABLED:
        raise ValueError("TEST.AUG.ENABLED: Detectron2's test-time augmentation (R-CNN only) is run by its own "
                         "tools/train_net.py, not by this trainer; use TEST.TTA.ENABLED (any detector)")


class Trainer(DefaultTrainer):
    """DefaultTrainer that checks its datasets up front, evaluates with COCOEvaluator (and DeepPCB's
    AP at IoU 0.33 on its splits), trains
    with bfloat16 autocast on a CPU when SOLVER.AMP.ENABLED (Detectron2's AMPTrainer on CUDA), and
    builds channels_last models when MODEL.CHANNELS_LAST, splits per-image work over
    MODEL.IMAGE_THREADS threads, and averages the weights of the schedule's tail when
    SOLVER.WEIGHT_AVERAGE.ENABLED."""

    def __init__(self, cfg):
        refuse_test_aug(cfg)  # before training, not at its final evaluation
        for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
            check_dataset(name)
        with mock.patch.object(d2_defaults, "create_ddp_model", create_ddp_model), \
                mock.patch.object(d2_defaults, "AMPTrainer", amp_trainer), \
                mock.patch.object(d2_defaults, "DetectionCheckpointer", CheckedCheckpointer):
            super().__init__(cfg)

    def build_hooks(self):
        hooks = super().build_hooks()
        wa = self.cfg.SOLVER.WEIGHT_AVERAGE
        if wa.ENABLED:
            avg = WeightAverage(wa.START_ITER, wa.PERIOD, self.cfg.SOLVER.MAX_ITER, self.cfg.OUTPUT_DIR)
            # before the checkpointer: the final checkpoint (and the final evaluation) get the mean
            at = next((i for i, h in enumerate(hooks) if isinstance(h, d2_hooks.PeriodicCheckpointer)), len(hooks))
            hooks.insert(at, avg)
        return hooks

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        if cfg.MODEL.CHANNELS_LAST:
            to_channels_last(model)
        # gather levels first: split_images leaves all but torchvision's RoIAlign as they are
        return split_images(use_roi_align(model, cfg.MODEL.ROI_ALIGN_IMPL), cfg.MODEL.IMAGE_THREADS)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer.test, of the detector wrapped in :class:`DetectorWithTTA` when
        TEST.TTA.ENABLED."""
        refuse_test_aug(cfg)
        if cfg.TEST.TTA.ENABLED:
            model = DetectorWithTTA(cfg, model)
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = CheckedDatasetMapper(cfg, is_train=True, augmentations=build_train_augmentations(cfg))
        return build_detection_train_loader(cfg, mapper=mapper)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_dataset(dataset_name)
        return super().build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        ensure_json(dataset_name)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        # COCO's AP counts at most 100 detections per image; an aerial photograph holds hundreds
        # of objects, so the limit follows TEST.DETECTIONS_PER_IMAGE (100, COCO's, by default).
        coco = PerClassCOCOEvaluator(dataset_name, output_dir=output_folder,
                                     max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)
        if MetadataCatalog.get(dataset_name).get("evaluator_type") == "deeppcb":
            # the dataset's own measure (AP at IoU 0.33, F-score) beside COCO's, as its paper reports
            return DatasetEvaluators([coco, IoUThresholdEvaluator(dataset_name, 0.33, cfg.TEST.DETECTIONS_PER_IMAGE)])
        return coco
