"""Loading weights for evaluation, where a checkpoint that does not fit the model is an error."""
from detectron2.checkpoint import DetectionCheckpointer


class _StrictCheckpointer(DetectionCheckpointer):
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
