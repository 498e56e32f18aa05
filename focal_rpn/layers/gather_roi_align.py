"""RoIAlign as a weighted gather on the CPU (``MODEL.ROI_ALIGN_IMPL "gather"``).

torchvision's CPU RoIAlign walks every RoI, channel, bin and sampling point in scalar loops, and
its backward scatters into the feature map on one core: in the trees Faster R-CNN training step
(8 images, 256 RoIs each, 64 channels) it was the largest single cost (docs/performance.md).
The same arithmetic is a sparse matrix: each output bin is a weighted sum of at most
4 x grid_h x grid_w feature-map pixels (the bilinear corners of its sampling points). Here the
indices and weights are computed once per call, vectorised; the forward is
``F.embedding_bag`` over the feature map seen as a (N·H·W, C) table (channels_last makes that a
view), and the backward is the transposed sparse matrix times the output's gradient.

Same sampling as torchvision's kernel, point for point: bin grid, ``aligned`` half-pixel shift,
adaptive ``sampling_ratio`` 0 (ceil(RoI size / output size) per RoI), points beyond the map
contributing 0 and points on its last row/column clamped. Outputs and gradients agree with
torchvision's to float rounding (tests/test_gather_roi_align.py, float64). Without gradients
(inference), under tracing or scripting and on a GPU it is torchvision's kernel.
"""
from typing import Callable, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler
from torch import nn


def _axis(start: torch.Tensor, bin_size: torch.Tensor, bins: int, grid: int, size: int):
    """Sampling along one axis for R RoIs of one grid size.

    start, bin_size: (R,) -> (low, high) pixel indices (R, bins, grid) and their weights
    (R, bins, grid, 2), zero where the point lies beyond [-1, size] (torchvision's rule).
    """
    dtype = start.dtype
    p = torch.arange(bins, dtype=dtype)[None, :, None]
    i = (torch.arange(grid, dtype=dtype) + 0.5)[None, None, :]
    v = start[:, None, None] + p * bin_size[:, None, None] + i * bin_size[:, None, None] / grid
    inside = ((v >= -1.0) & (v <= size)).to(dtype)
    v = v.clamp(min=0)
    low = v.floor().long()
    last = low >= size - 1  # on or past the last pixel: both corners are the last pixel
    low = low.clamp(max=size - 1)
    high = torch.where(last, low, low + 1)
    frac = torch.where(last, torch.zeros_like(v), v - low.to(dtype))
    weights = torch.stack([1 - frac, frac], dim=-1) * inside[..., None]
    return low, high, weights


def sampling_matrix(rois: torch.Tensor, height: int, width: int, output_size: Tuple[int, int],
                    spatial_scale: float, sampling_ratio: int, aligned: bool):
    """The sparse matrix of RoIAlign over an (N, C, height, width) map.

    rois: (K, 5) rows of (image index, x1, y1, x2, y2) in input pixels. Returns
    ``(index, weight, offsets, order)``: the K·ph·pw output bins, RoI-major then bin row, bin
    column, are bags of ``index`` (M,) into the flattened map (N·height·width) with ``weight``
    (M,), bag b starting at ``offsets[b]`` (K·ph·pw,); the bags are built for the RoIs taken in
    ``order`` (K,) (grouped by their sampling grid), so bag row r belongs to RoI order[r // (ph·pw)].
    """
    ph, pw = output_size
    dtype = rois.dtype
    shift = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - shift
    y1 = rois[:, 2] * spatial_scale - shift
    w = rois[:, 3] * spatial_scale - shift - x1
    h = rois[:, 4] * spatial_scale - shift - y1
    if not aligned:  # the legacy RoIAlign forces RoIs to be at least 1x1
        w, h = w.clamp(min=1.0), h.clamp(min=1.0)
    bin_h, bin_w = h / ph, w / pw
    if sampling_ratio > 0:
        grid_h = torch.full((len(rois),), sampling_ratio, dtype=torch.long)
        grid_w = grid_h
    else:
        grid_h, grid_w = torch.ceil(h / ph).long(), torch.ceil(w / pw).long()
    image = rois[:, 0].long()
    index, weight, sizes, order = [], [], [], []
    # one vectorised pass per distinct (grid_h, grid_w): a fixed ratio makes a single pass
    key = grid_h * (grid_w.max() + 1) + grid_w if len(rois) else grid_h
    for k in torch.unique(key).tolist():
        sel = (key == k).nonzero().flatten()
        gh, gw = int(grid_h[sel[0]]), int(grid_w[sel[0]])
        r = len(sel)
        order.append(sel)
        points = 4 * gh * gw
        sizes.append(torch.full((r * ph * pw,), points, dtype=torch.long))
        if points == 0:  # an empty RoI (zero size, aligned): torchvision's output is 0
            continue
        ylo, yhi, yw = _axis(y1[sel], bin_h[sel], ph, gh, height)
        xlo, xhi, xw = _axis(x1[sel], bin_w[sel], pw, gw, width)
        rows = torch.stack([ylo, yhi], dim=-1) * width + (image[sel] * height * width)[:, None, None, None]
        cols = torch.stack([xlo, xhi], dim=-1)
        # (r, ph, pw, gh, 2, gw, 2): every bin's sampling points and their bilinear corners
        idx = rows[:, :, None, :, :, None, None] + cols[:, None, :, None, None, :, :]
        wts = yw[:, :, None, :, :, None, None] * xw[:, None, :, None, None, :, :] / max(gh * gw, 1)
        index.append(idx.reshape(-1))
        weight.append(wts.reshape(-1))
    sizes = torch.cat(sizes) if sizes else torch.zeros(0, dtype=torch.long)
    offsets = torch.cumsum(sizes, 0) - sizes
    index = torch.cat(index) if index else torch.zeros(0, dtype=torch.long)
    weight = torch.cat(weight) if weight else torch.zeros(0, dtype=dtype)
    order = torch.cat(order) if order else torch.zeros(0, dtype=torch.long)
    return index, weight, offsets, order


class _WeightedGather(torch.autograd.Function):
    """table (T, C), bags (index, weight, offsets) -> (B, C) weighted bag sums; the backward is
    the transposed sparse matrix times the gradient (a dense (T, C) gradient for the table)."""

    @staticmethod
    def forward(ctx, table, index, weight, offsets):
        ctx.save_for_backward(index, weight, offsets)
        ctx.rows = table.shape[0]
        return F.embedding_bag(index, table, offsets, mode="sum", per_sample_weights=weight)

    @staticmethod
    def backward(ctx, grad):
        index, weight, offsets = ctx.saved_tensors
        bags = grad.shape[0]
        sizes = torch.diff(offsets, append=offsets.new_tensor([index.numel()]))
        bag = torch.repeat_interleave(torch.arange(bags), sizes)
        # valid by construction (indices inside the table): no invariant check needed
        transposed = torch.sparse_coo_tensor(torch.stack([index, bag]), weight, (ctx.rows, bags),
                                             check_invariants=False)
        return torch.sparse.mm(transposed, grad.contiguous()), None, None, None


def gather_roi_align(input: torch.Tensor, rois: torch.Tensor, output_size: Tuple[int, int],
                     spatial_scale: float, sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """torchvision's ``roi_align`` computed as a weighted gather.

    input (N, C, H, W), any memory format; rois (K, 5) -> (K, C, ph, pw) in input's dtype
    (computed in float32 at least, as torchvision under autocast).
    """
    n, c, h, w = input.shape
    ph, pw = output_size
    if len(rois) == 0:
        return input.new_zeros((0, c, ph, pw))
    compute = torch.promote_types(input.dtype, torch.float32)
    index, weight, offsets, order = sampling_matrix(
        rois.to(compute), h, w, output_size, spatial_scale, sampling_ratio, aligned)
    table = input.to(compute).permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view when channels_last
    bags = _WeightedGather.apply(table, index, weight, offsets).view(-1, ph, pw, c)
    if not torch.equal(order, torch.arange(len(rois))):  # RoIs of several sampling grids
        bags = bags[torch.argsort(order)]
    # NCHW-contiguous in one pass with the cast: the pooler and the box head copy it as such
    return bags.permute(0, 3, 1, 2).to(input.dtype, memory_format=torch.contiguous_format)


class GatherROIAlign(ROIAlign):
    """Detectron2's ROIAlign (same arguments, same outputs to float rounding) whose CPU forward
    and backward in training are :func:`gather_roi_align`; inference is torchvision's kernel."""

    def forward(self, input, rois):
        """input (N, C, H, W); rois (K, 5) -> (K, C, *output_size)."""
        # the gain is the backward's: without one (inference) torchvision's forward is as fast
        if not (input.device.type == "cpu" and torch.is_grad_enabled() and input.requires_grad
                and not input.is_quantized and not torch.jit.is_scripting() and not torch.jit.is_tracing()):
            return super().forward(input, rois)
        assert rois.dim() == 2 and rois.size(1) == 5, rois.shape
        # as Detectron2's ROIAlign: the boxes in the features' dtype (bfloat16 under autocast)
        return gather_roi_align(input, rois.to(input.dtype), tuple(self.output_size), self.spatial_scale,
                                self.sampling_ratio, self.aligned)


def replace_roi_align(model: nn.Module, make: Callable[[ROIAlign], nn.Module]) -> None:
    """Replaces, in place, every level of every ROIPooler in ``model`` that is Detectron2's own
    ROIAlign (not a subclass: a level replaced once stays as it is) by ``make(level)``."""
    for module in model.modules():
        if isinstance(module, ROIPooler):
            for i, level in enumerate(module.level_poolers):
                if type(level) is ROIAlign:
                    module.level_poolers[i] = make(level)


def use_roi_align(model: nn.Module, impl: str) -> nn.Module:
    """Makes every ROIPooler's RoIAlign levels in ``model`` use ``impl`` (MODEL.ROI_ALIGN_IMPL):
    "torchvision" (Detectron2's, unchanged) or "gather" (:class:`GatherROIAlign`), in place. No
    parameters change: checkpoints load either way. Returns ``model``."""
    if impl not in ("torchvision", "gather"):
        raise ValueError(f"MODEL.ROI_ALIGN_IMPL must be 'torchvision' or 'gather', got {impl!r}")
    if impl == "gather":
        replace_roi_align(model, lambda level: GatherROIAlign(
            level.output_size, level.spatial_scale, level.sampling_ratio, level.aligned))
    return model
