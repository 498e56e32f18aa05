"""Cheaper training augmentations for aerial photographs (same distributions as Detectron2's).

On a 2-core CPU the data loader competes with the training step for the same cores, so every
millisecond per image counts (docs/performance.md):

- :class:`RandomRotate90` rotates by a multiple of 90° with ``np.rot90`` (exact, a view) instead of
  an affine warp over every pixel (``T.RandomRotation``);
- :class:`RandomColorJitter` draws brightness, contrast and saturation factors as Detectron2's
  ``RandomBrightness/Contrast/Saturation`` do and applies them in that order in one float32 pass
  (Detectron2 makes three float64 passes, rounding to uint8 after each);
- :class:`ResizeShortestEdge` is Detectron2's, but leaves an image that already has the target size
  untouched (a 400 px crop resized to 400 px was a full PIL resample).
"""
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, Transform

# ITU-R 601 luma weights, as Detectron2's RandomSaturation and RandomLighting use.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class Rotate90Transform(Transform):
    """Rotates an (H, W, C) image by ``k`` quarter turns counter-clockwise (``np.rot90``)."""

    def __init__(self, k: int, h: int, w: int):
        super().__init__()
        self._set_attributes(locals())
        self.k = k % 4

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.rot90(img, self.k, axes=(0, 1))

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """(N, 2) x, y points in pixel-edge coordinates of the (h, w) input."""
        x, y = coords[:, 0].copy(), coords[:, 1].copy()
        h, w = self.h, self.w
        if self.k == 1:  # counter-clockwise: (x, y) -> (y, w - x)
            coords[:, 0], coords[:, 1] = y, w - x
        elif self.k == 2:
            coords[:, 0], coords[:, 1] = w - x, h - y
        elif self.k == 3:
            coords[:, 0], coords[:, 1] = h - y, x
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation)

    def inverse(self) -> Transform:
        h, w = (self.w, self.h) if self.k % 2 else (self.h, self.w)
        return Rotate90Transform(-self.k, h, w)


class RandomRotate90(T.Augmentation):
    """Rotation by 0, 90, 180 or 270 degrees, each with probability 1/4."""

    def get_transform(self, image):
        k = int(np.random.randint(4))
        return Rotate90Transform(k, *image.shape[:2]) if k else NoOpTransform()


class ColorJitterTransform(Transform):
    """Brightness, contrast, then saturation blends of a uint8 RGB/BGR image, in float32.

    brightness: ``img * b``; contrast: blend with the mean of the image with weight ``c``;
    saturation: blend with the per-pixel grey value with weight ``s`` (1 = unchanged).
    """

    def __init__(self, brightness: float, contrast: float, saturation: float):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        x = img.astype(np.float32)
        x *= self.brightness
        mean = x.mean()
        x *= self.contrast
        x += (1 - self.contrast) * mean
        grey = x @ _LUMA if img.shape[-1] == 3 else x.mean(axis=-1)
        x *= self.saturation
        x += (1 - self.saturation) * grey[..., None]
        return np.clip(x, 0, 255, out=x).astype(np.uint8)

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation

    def inverse(self) -> Transform:
        return NoOpTransform()


class RandomColorJitter(T.Augmentation):
    """Brightness, contrast and saturation factors each uniform in [1 - j, 1 + j]."""

    def __init__(self, jitter: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        lo, hi = 1 - self.jitter, 1 + self.jitter
        return ColorJitterTransform(*(float(np.random.uniform(lo, hi)) for _ in range(3)))


class ResizeShortestEdge(T.ResizeShortestEdge):
    """Detectron2's ResizeShortestEdge that returns a no-op when the size would not change."""

    def get_transform(self, image):
        t = super().get_transform(image)
        if isinstance(t, T.ResizeTransform) and (t.new_h, t.new_w) == (t.h, t.w):
            return NoOpTransform()
        return t
