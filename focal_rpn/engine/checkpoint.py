"""Checkpoint loading with errors that name the file: a file that is not a checkpoint, and (for
evaluation) a checkpoint that does not fit the model."""
import os

from detectron2.checkpoint import DetectionCheckpointer

from ..modeling.test_time_augmentation import DetectorWithTTA


class CheckedCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose unreadable files (truncated, not a checkpoint) raise an error
    that names the file and says what it is not, instead of the unpickler's raw message."""

    def _load_file(self, filename):
        try:
            data = super()._load_file(filename)
        except FileNotFoundError:
            raise
        except Exception as e:  # torch.load / pickle raise many types for a bad file
            size = os.path.getsize(filename) if os.path.isfile(filename) else 0
            raise ValueError(
                f"MODEL.WEIGHTS {filename} ({size} bytes) is not a readable checkpoint: {type(e).__name__}: {e}. "
                "Expected a .pth saved by Detectron2/torch.save (a dict with 'model') or a .pkl of "
                "Detectron2's model zoo; the file may be truncated (an interrupted copy or download)."
            ) from e
        if not isinstance(data, dict):
            raise ValueError(f"MODEL.WEIGHTS {filename} holds a {type(data).__name__}, not a checkpoint dict")
        return data


class _StrictCheckpointer(CheckedCheckpointer):
    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        if incompatible.missing_keys:
            keys = incompatible.missing_keys
            shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
            raise KeyError(
                f"Checkpoint {self._path} does not cover the model built from this config: missing "
                f"{shown}. Evaluate it with the config it was trained with."
            )
        # Shape mismatches are dropped (with a warning) by fvcore before loading.
        if incompatible.incorrect_shapes:
            raise ValueError(
                f"Checkpoint {self._path} has tensors of other shapes than the model: "
                + ", ".join(f"{k} {a} vs model {b}" for k, a, b in incompatible.incorrect_shapes[:20])
            )
        return incompatible

    def load(self, path, *args, **kwargs):
        self._path = path
        return super().load(path, *args, **kwargs)


def load_weights_strict(model, path: str, save_dir: str = "") -> None:
    """Loads ``path`` into ``model``; raises if a model parameter or buffer is not in it."""
    if not path:
        raise ValueError("--eval-only needs MODEL.WEIGHTS (e.g. MODEL.WEIGHTS output/model_final.pth)")
    _StrictCheckpointer(model, save_dir=save_dir).load(path)


def strict_predictor(cfg):
    """Detectron2's DefaultPredictor (test-size resize, input format) with MODEL.WEIGHTS loaded by
    :func:`load_weights_strict`, so that a wrong or unreadable checkpoint is an error naming it; its
    model wrapped in :class:`DetectorWithTTA` when TEST.TTA.ENABLED."""
    from detectron2.engine import DefaultPredictor

    no_weights = cfg.clone()
    no_weights.defrost()
    no_weights.MODEL.WEIGHTS = ""
    predictor = DefaultPredictor(no_weights)
    load_weights_strict(predictor.model, cfg.MODEL.WEIGHTS)
    if cfg.TEST.TTA.ENABLED:
        predictor.model = DetectorWithTTA(cfg, predictor.model)
    return predictor
