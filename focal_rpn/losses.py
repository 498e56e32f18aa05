"""Focal losses with a fused, analytic backward.

Every component of focal_rpn (FocalRetinaNet, FocalRPN, the focal ROI classifier) takes its
classification loss from here. The sigmoid losses (RetinaNet: ~100k anchors x K classes) compute
their value *and* their gradient in one forward pass; autograd then only scales the saved
gradient by ``grad_output``. Compared with the composite torchvision/fvcore versions (about eight
elementwise ops whose intermediates all stay alive for backward), this keeps one logits-sized
tensor for backward and, when torch.compile works on the machine, runs the whole
loss-and-gradient as one fused loop. The softmax loss (RoIs, the 2-way RPN) is ATen's fused
cross-entropy plus elementwise ops on one value per row, under autograd.

Shapes: ``sigmoid_*`` take ``inputs`` and ``targets`` of any shape (the same for both);
``softmax_focal_loss`` takes ``logits`` (N, K) and integer ``labels`` (N,).
"""
import logging
import os
from typing import Callable, Tuple, Union

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "sigmoid_focal_loss_star",
    "set_compile",
]

logger = logging.getLogger(__name__)

_REDUCTIONS = ("none", "mean", "sum")


# ---------------------------------------------------------------------------------------------
# Loss-and-gradient kernels: plain elementwise torch code, float32 in and out, compile-friendly.
# ---------------------------------------------------------------------------------------------
def _sigmoid_focal_kernel(x: Tensor, t: Tensor, alpha: float, gamma: float) -> Tuple[Tensor, Tensor]:
    """Elementwise FL(p_t) = -α_t (1-p_t)^γ log p_t for logits ``x`` and soft targets ``t``.

    Returns (loss, d loss / d x), both shaped like ``x``. The cross-entropy factor is computed
    exactly as ATen's ``binary_cross_entropy_with_logits`` does, (1 - t) x - log σ(x) (finite for
    logits of ±100, the same bits eager and compiled), and multiplied by factors in [0, 1], so
    that the focal loss is never above BCE, not even by rounding. In-place updates keep the eager
    fallback light.
    """
    p = torch.sigmoid(x)
    q = torch.sigmoid(-x)  # 1 - p without cancellation
    ce = (1 - t).mul_(x).sub_(F.logsigmoid(x))
    # t (1 - p) + (1 - t) p, clamped: rounding must not lift the modulator above 1
    one_minus_pt = (q - p).mul_(t).add_(p).clamp_(0.0, 1.0)
    grad = p.mul(q) if gamma != 0 else None  # p (1 - p), needed for d(1 - p_t)/dx
    d_ce = p.sub_(t)  # d BCE / dx = p - t
    if gamma == 0:
        loss, grad = ce, d_ce
    else:
        # d/dx (1-p_t)^γ = γ (1-p_t)^(γ-1) p (1-p) (1-2t); its limit where 1-p_t = 0 is 0 (γ > 0).
        grad.mul_(1 - 2 * t)
        if gamma == 1:
            modulator = one_minus_pt
        elif gamma == 2:
            modulator = one_minus_pt * one_minus_pt
            grad.mul_(one_minus_pt).mul_(2.0)
        else:
            modulator = one_minus_pt.pow(gamma)
            grad = torch.where(one_minus_pt > 0, grad * one_minus_pt.pow(gamma - 1) * gamma, torch.zeros_like(grad))
        grad.mul_(ce).addcmul_(d_ce, modulator)  # (p - t) m + BCE dm/dx
        loss = ce.mul_(modulator)
    if alpha >= 0:
        alpha_t = t * (2 * alpha - 1) + (1 - alpha)  # α t + (1 - α)(1 - t)
        loss = loss.mul_(alpha_t)
        grad = grad.mul_(alpha_t)
    return loss, grad


def _bce_kernel(x: Tensor, t: Tensor, alpha: float, gamma: float) -> Tuple[Tensor, Tensor]:
    """γ = 0 without α is binary cross-entropy: ATen's own kernel, so that the value and the
    gradient are those of ``F.binary_cross_entropy_with_logits`` to the last bit (never compiled)."""
    return F.binary_cross_entropy_with_logits(x, t, reduction="none"), torch.sigmoid(x).sub_(t)


_bce_kernel.eager_only = True

def _sigmoid_focal_star_kernel(x: Tensor, t: Tensor, gamma: float, beta: float) -> Tuple[Tensor, Tensor]:
    """Elementwise FL* = -log σ(γ x_t + β) / γ with x_t = (2t - 1) x. Returns (loss, d loss / d x)."""
    sign = 2 * t - 1
    z = gamma * sign * x + beta
    loss = -F.logsigmoid(z) / gamma
    grad = -sign * torch.sigmoid(-z)
    return loss, grad


# ---------------------------------------------------------------------------------------------
# torch.compile'd versions where a compiler is present; eager otherwise.
# ---------------------------------------------------------------------------------------------
_COMPILE = os.environ.get("FOCAL_RPN_COMPILE", "1") not in ("0", "false", "False", "")
# Below this many logits a compiled call's fixed overhead (~0.1 ms) outweighs its gain.
_COMPILE_MIN_NUMEL = 1 << 18
_compiled = {}


def set_compile(enabled: bool) -> None:
    """Turn torch.compile of the loss kernels on or off (env FOCAL_RPN_COMPILE=0 also disables)."""
    global _COMPILE
    _COMPILE = bool(enabled)


def _summed(kernel: Callable) -> Callable:
    """``kernel`` with its loss summed inside, so that a compiled kernel never writes the
    per-element loss to memory."""

    def kernel_sum(*args):
        loss, grad = kernel(*args)
        return loss.sum(), grad

    return kernel_sum


def _run_kernel(kernel: Callable, args: tuple, sum_loss: bool):
    """Runs ``kernel`` compiled if possible; the first failure disables compilation for good."""
    global _COMPILE
    key = (kernel, sum_loss)
    if key not in _compiled:
        _compiled[key] = [_summed(kernel) if sum_loss else kernel, None]
    entry = _compiled[key]
    if _COMPILE and args[0].numel() >= _COMPILE_MIN_NUMEL and not getattr(kernel, "eager_only", False):
        if entry[1] is None:
            entry[1] = torch.compile(entry[0], dynamic=True)
        try:
            # α and γ must be compile-time constants: with dynamic floats (torch's default),
            # torch 2.14 reused a kernel compiled for γ=2 when called with γ=0.5.
            with torch._dynamo.config.patch(specialize_float=True):
                return entry[1](*args)
        except Exception as e:  # no C++ compiler, unsupported backend, ...
            logger.warning("torch.compile of focal losses failed (%s); using eager kernels.", e)
            _COMPILE = False
    return entry[0](*args)


class _PrecomputedGradLoss(torch.autograd.Function):
    """Returns a precomputed loss; backward scales the precomputed gradient.

    forward(logits, loss, grad, divisor, dtype): ``loss`` is the summed loss (a scalar) or the
    unreduced loss; ``grad`` is d sum(loss) / d logits. The result is ``loss / divisor`` in
    ``dtype``. Only ``grad`` is kept for backward.
    """

    @staticmethod
    def forward(ctx, logits, loss, grad, divisor, dtype):
        ctx.divisor = divisor
        ctx.grad_dtype = logits.dtype
        ctx.save_for_backward(grad)
        return (loss / divisor).to(dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        go = grad_output.to(grad.dtype)
        if go.dim() == 1 and grad.dim() == 2:  # per-row loss (softmax): broadcast over classes
            go = go[:, None]
        # scale, then divide: the order of ATen's BCE and cross-entropy backward ("mean")
        out = grad * go
        if ctx.divisor != 1:
            out = out.div_(ctx.divisor)
        return out.to(ctx.grad_dtype), None, None, None, None


def _apply(logits: Tensor, kernel: Callable, kernel_args: tuple, reduction: str, out_shape) -> Tensor:
    """Runs a loss-and-gradient kernel and wires its gradient into autograd.

    ``out_shape`` is the shape of the unreduced loss (that of logits, or (N,) for softmax);
    "mean" divides by its number of elements. Reductions are
    done in float32 (a float16 sum can overflow where the mean does not)."""
    out_numel = 1
    for d in out_shape:
        out_numel *= int(d)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    # float32 out for float16/bfloat16 logits, as autocast's float32 ops (cross-entropy) return:
    # a half-precision loss would round a small loss term away. float64 stays float64.
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if logits.numel() == 0:
        if reduction == "none":
            return logits.new_zeros(out_shape, dtype=dtype)
        return logits.sum().to(dtype) * 0.0
    needs_grad = torch.is_grad_enabled() and logits.requires_grad
    with torch.no_grad():
        loss, grad = _run_kernel(kernel, kernel_args, sum_loss=reduction != "none")
    numel = out_numel if reduction == "mean" else 1
    if not needs_grad:
        return (loss / numel).to(dtype)
    return _PrecomputedGradLoss.apply(logits, loss, grad, numel, dtype)


def _with_label_targets(kernel: Callable) -> Callable:
    """``kernel`` taking class indices (..., ) instead of float targets (..., K): the one-hot
    targets are formed inside (and, compiled, never written to memory). Index >= K (or < 0)
    means "negative for every class" (Detectron2's background index K)."""

    def kernel_labels(x, labels, *rest):
        classes = torch.arange(x.shape[-1], device=x.device)
        return kernel(x, (labels[..., None] == classes).to(x.dtype), *rest)

    kernel_labels.__name__ = kernel.__name__ + "_labels"
    kernel_labels.eager_only = getattr(kernel, "eager_only", False)
    return kernel_labels


_LABEL_KERNELS = {}


def _targets_args(inputs: Tensor, targets: Tensor, kernel: Callable, name: str):
    """(kernel, inputs, targets) in the compute dtype, for float targets or integer labels."""
    cdt = torch.float64 if inputs.dtype == torch.float64 else torch.float32
    if not targets.is_floating_point():
        if inputs.dim() == 0 or targets.shape != inputs.shape[:-1]:
            raise ValueError(
                f"{name}: integer class labels must have shape inputs.shape[:-1]; got inputs "
                f"{tuple(inputs.shape)} and labels {tuple(targets.shape)}"
            )
        if kernel not in _LABEL_KERNELS:
            _LABEL_KERNELS[kernel] = _with_label_targets(kernel)
        return _LABEL_KERNELS[kernel], inputs.to(cdt), targets.long()
    if inputs.shape != targets.shape:
        raise ValueError(f"{name}: inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} differ")
    return kernel, inputs.to(cdt), targets.to(cdt)


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> Tensor:
    """Sigmoid focal loss, a drop-in for ``torchvision.ops.sigmoid_focal_loss``.

    Args:
        inputs: logits of any shape, float32/float16/bfloat16/float64.
        targets: same shape, values in [0, 1] (soft labels allowed); or, as a memory-saving
            extension, integer class indices of shape ``inputs.shape[:-1]`` (an index outside
            [0, K) marks an anchor that is negative for all K classes).
        alpha: weight of positives (negatives get 1 - alpha); ``alpha < 0`` disables weighting.
        gamma: focusing parameter γ ≥ 0.
        reduction: "none" (same shape as inputs) | "mean" | "sum" (scalars).
    Returns:
        The loss in float32 (float64 for float64 inputs), computed in that precision; the gradient
        flows back in the dtype of ``inputs``.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    fused = _bce_kernel if gamma == 0 and alpha < 0 else _sigmoid_focal_kernel
    kernel, x, t = _targets_args(inputs, targets, fused, "sigmoid_focal_loss")
    return _apply(inputs, kernel, (x, t, float(alpha), float(gamma)), reduction, inputs.shape)


def sigmoid_focal_loss_star(
    inputs: Tensor, targets: Tensor, gamma: float = 2.0, beta: float = 1.0, reduction: str = "none"
) -> Tensor:
    """FL* from the RetinaNet paper's appendix: -log σ(γ x_t + β) / γ, x_t = x (t=1) or -x (t=0).

    Args and return as :func:`sigmoid_focal_loss`; ``gamma`` must be > 0. With ``beta=0`` this
    equals fvcore's ``sigmoid_focal_loss_star`` without alpha.
    """
    if gamma <= 0:
        raise ValueError(f"FL* needs gamma > 0, got {gamma}")
    kernel, x, t = _targets_args(inputs, targets, _sigmoid_focal_star_kernel, "sigmoid_focal_loss_star")
    return _apply(inputs, kernel, (x, t, float(gamma), float(beta)), reduction, inputs.shape)


def softmax_focal_loss(
    logits: Tensor,
    labels: Tensor,
    alpha: Union[None, float, Tensor] = None,
    gamma: float = 2.0,
    reduction: str = "none",
    ignore_index: int = -1,
) -> Tensor:
    """Softmax focal loss -α_y (1 - p_y)^γ log p_y.

    Args:
        logits: (N, K) float.
        labels: (N,) int64 in [0, K) or ``ignore_index`` (those rows give 0 loss, 0 gradient).
        alpha: None (no weighting); a float (classes 0..K-2 get alpha, the last class, Detectron2's
            background, gets 1 - alpha); or a (K,) tensor of class weights.
        gamma: focusing parameter γ ≥ 0; γ = 0 with alpha None is cross-entropy.
        reduction: "none" -> (N,); "mean" averages over the non-ignored rows; "sum".
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"softmax_focal_loss: expects logits (N, K) and labels (N,), got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    num_classes = logits.shape[1]
    cdt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if alpha is None:
        class_weight = None
    elif isinstance(alpha, Tensor):
        if alpha.shape != (num_classes,):
            raise ValueError(f"alpha tensor must have shape ({num_classes},), got {tuple(alpha.shape)}")
        class_weight = alpha.to(device=logits.device, dtype=cdt)
    else:
        class_weight = torch.full((num_classes,), float(alpha), device=logits.device, dtype=cdt)
        class_weight[-1] = 1.0 - float(alpha)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    # The rows are few (RoIs) or narrow (2-way RPN): ATen's fused cross-entropy (log-softmax and
    # gather in one op, keeping one (N, K) tensor for backward) plus as few elementwise ops on the
    # (N,) vectors as the formula allows, under autograd: each op's saved (N,) tensor is what makes
    # a softmax focal loss heavier than cross-entropy (bench_losses.py: as fast and as light as the
    # usual composite at 512 x 81 and 100k x 2).
    labels = labels.long()
    ce = F.cross_entropy(logits.to(cdt), labels, reduction="none", ignore_index=ignore_index)  # -log p_y, 0 if ignored
    loss = ce
    if gamma != 0:
        # 1 - p_y (0 for ignored rows). exp is vectorised and expm1 is not (0.48 vs ~0.1 ms at
        # 100k rows); where p_y rounds to 1, the loss ce * q^γ is below float resolution anyway.
        q = 1 - torch.exp(-ce)
        if gamma == int(gamma):
            modulator = q * q if gamma == 2 else (q if gamma == 1 else q.pow(int(gamma)))
        elif gamma > 1:
            modulator = q.pow(gamma)  # its gradient γ q^(γ-1) is finite (0) at q = 0
        else:
            # 0 < γ < 1: q^γ has an infinite slope at q = 0 (p_y rounds to 1, or an ignored row):
            # take its limit there, 0, with a zero gradient instead of 0 * inf
            positive = q > 0
            modulator = torch.where(positive, torch.where(positive, q, 1.0).pow(gamma), 0.0)
        loss = ce * modulator
    if class_weight is not None:
        safe = torch.where(labels != ignore_index, labels, 0)
        loss = loss * class_weight[safe]
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    # "mean" averages over the rows that count, as F.cross_entropy does with ignore_index.
    return loss.sum() / (labels != ignore_index).sum().clamp(min=1).to(loss.dtype)
