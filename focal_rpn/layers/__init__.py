"""CPU-speed layers: RoIAlign as a weighted gather, per-image work over threads, channels_last."""
from .channels_last import to_channels_last
from .gather_roi_align import use_roi_align
from .image_threads import split_images

__all__ = ["split_images", "to_channels_last", "use_roi_align"]
