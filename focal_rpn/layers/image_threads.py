"""MODEL.IMAGE_THREADS: per-image work that PyTorch runs on one CPU core, split by image over threads.

Profiled in the trees Faster R-CNN training step (8 images of 400 px, 256 RoIs each,
docs/performance.md), two single-threaded kernels take a quarter of it while the second core idles:
torchvision's RoIAlign backward (~0.26 s of ~1 s) and the RPN's per-image NMS (~0.08 s). Both
treat every image on its own, so the images are split into contiguous ranges, one range per
thread (PyTorch releases the GIL inside its ops). Each image's result is computed by the same
kernel with the same inputs in the same order, so training is bitwise identical to one thread
(tests/test_image_threads.py); only the wall time changes. Nothing random runs in the threads (the
RPN's and ROI heads' sampling draws from the global generator, so it stays in the caller).
"""
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List

import torch
from detectron2.layers import ROIAlign
from detectron2.modeling.proposal_generator import RPN
from torch import nn

from .gather_roi_align import replace_roi_align

_POOL = {}  # threads -> ThreadPoolExecutor: long-lived workers (no thread start, no new OpenMP team per call)


def image_ranges(num_images: int, threads: int) -> List[range]:
    """``threads`` contiguous, near-equal ranges of image indices (fewer when there are fewer images)."""
    parts = max(1, min(threads, num_images))
    bounds = [num_images * i // parts for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


def run_by_image(fn: Callable[[range], object], num_images: int, threads: int) -> list:
    """``[fn(r) for r in image_ranges(num_images, threads)]``, the first range in this thread and
    the others in worker threads that take over this thread's grad mode and CPU autocast state
    (both are thread-local in PyTorch)."""
    ranges = image_ranges(num_images, threads)
    if len(ranges) == 1:
        return [fn(ranges[0])]
    grad = torch.is_grad_enabled()
    autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None

    def worker(r):
        with torch.set_grad_enabled(grad), \
                (torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()):
            return fn(r)

    pool = _POOL.get(len(ranges))
    if pool is None:
        pool = _POOL[len(ranges)] = ThreadPoolExecutor(len(ranges) - 1, thread_name_prefix="focal_rpn-image")
    futures = [pool.submit(worker, r) for r in ranges[1:]]
    first = fn(ranges[0])
    return [first] + [f.result() for f in futures]


class _ROIAlignByImage(torch.autograd.Function):
    """torchvision's RoIAlign whose backward runs per range of images in threads."""

    @staticmethod
    def forward(ctx, features, rois, output_size, spatial_scale, sampling_ratio, aligned, threads):
        """features (N, C, H, W); rois (K, 5): image index, x1, y1, x2, y2 -> (K, C, *output_size)."""
        ctx.save_for_backward(rois)
        ctx.args = (features.shape, features.dtype, output_size, spatial_scale, sampling_ratio, aligned, threads)
        return torch.ops.torchvision.roi_align(features, rois, spatial_scale, output_size[0], output_size[1],
                                               sampling_ratio, aligned)

    @staticmethod
    def backward(ctx, grad):
        """grad (K, C, ph, pw) -> features' gradient (N, C, H, W), computed in float32 per image range."""
        (rois,) = ctx.saved_tensors
        shape, dtype, (ph, pw), scale, ratio, aligned, threads = ctx.args
        n, c, h, w = shape
        grad, rois = grad.float(), rois.float()
        image = rois[:, 0].long()

        def part(r):
            keep = (image >= r.start) & (image < r.stop)
            local = rois[keep]
            local[:, 0] -= r.start  # the kernel indexes images from 0
            return torch.ops.torchvision._roi_align_backward(
                grad[keep], local, scale, ph, pw, len(r), c, h, w, ratio, aligned)

        return torch.cat(run_by_image(part, n, threads)).to(dtype), None, None, None, None, None, None


class ImageThreadsROIAlign(ROIAlign):
    """Detectron2's ROIAlign (same arguments and outputs) whose backward on a CPU splits the images
    over ``threads`` threads; the forward is the same torchvision kernel."""

    def __init__(self, *args, threads: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.threads = threads

    def forward(self, input, rois):
        """input (N, C, H, W); rois (K, 5) -> (K, C, *output_size)."""
        if not (input.device.type == "cpu" and torch.is_grad_enabled() and input.requires_grad
                and self.threads > 1 and not input.is_quantized):
            return super().forward(input, rois)
        assert rois.dim() == 2 and rois.size(1) == 5, rois.shape
        return _ROIAlignByImage.apply(input, rois.to(input.dtype), tuple(self.output_size), self.spatial_scale,
                                      self.sampling_ratio, self.aligned, self.threads)


class _ProposalsByImage:
    """Stands in for an RPN's ``predict_proposals``: the RPN's own method (per-level top-k, box
    decoding, per-image NMS) run per range of images in threads, returning the same list of
    per-image Instances. A plain object rather than a bound function, so that a model holding it
    still pickles (``torch.save(model)``) and deep-copies."""

    def __init__(self, rpn: RPN, threads: int):
        self.rpn, self.threads = rpn, threads

    def __call__(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes):
        rpn = self.rpn

        def part(r):
            return type(rpn).predict_proposals(
                rpn, anchors, [x[r.start:r.stop] for x in pred_objectness_logits],
                [d[r.start:r.stop] for d in pred_anchor_deltas], image_sizes[r.start:r.stop])

        return [inst for out in run_by_image(part, len(image_sizes), self.threads) for inst in out]


def split_images(model: nn.Module, threads: int) -> nn.Module:
    """Makes ``model``'s RoIAlign backward (every ROIPooler's ROIAlign levels) and its RPN's
    proposal selection (any :class:`RPN` subclass, e.g. FocalRPN) run per range of images over
    ``threads`` threads, in place. Weights, outputs and state_dict are unchanged. Returns ``model``."""
    if threads < 1:
        raise ValueError(f"MODEL.IMAGE_THREADS must be >= 1, got {threads}")
    if threads == 1:
        return model
    replace_roi_align(model, lambda level: ImageThreadsROIAlign(
        level.output_size, level.spatial_scale, level.sampling_ratio, level.aligned, threads=threads))
    for module in model.modules():
        if isinstance(module, RPN):
            module.predict_proposals = _ProposalsByImage(module, threads)
    return model

