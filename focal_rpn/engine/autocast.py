"""Mixed precision on the CPU: bfloat16 autocast for Detectron2's training step.

Detectron2's AMPTrainer is CUDA-only (float16 + GradScaler, and it asserts CUDA). On a CPU with
bfloat16 units (AVX512-BF16, AMX) the trees RetinaNet training step took 0.50x the float32 time
under ``torch.autocast("cpu", torch.bfloat16)`` (docs/performance.md); bfloat16 has float32's exponent range, so no loss
scaling is needed. Parameters, gradients and the optimizer state stay float32.

On a CPU without them (AVX2 only, as many laptops and older servers) oneDNN emulates bfloat16 and the
same step is many times *slower* than float32 (docs/performance.md). There SOLVER.AMP.ENABLED
trains in float32 with a warning, unless the environment variable ``FOCAL_RPN_CPU_BF16`` says
otherwise: ``emulate`` (bfloat16 anyway, e.g. to repeat a run made on another machine) or
``refuse`` (an error: the study runner sets it, so that a suite never mixes float32 runs into
bfloat16 ones under the same config).
"""
import logging
import os

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer

logger = logging.getLogger(__name__)

CPU_BF16_ENV = "FOCAL_RPN_CPU_BF16"
CPU_BF16_MODES = ("auto", "emulate", "refuse")


def cpu_has_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), which make oneDNN's bfloat16
    kernels fast. Not ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: that accepts any AVX-512
    core, where bfloat16 is emulated (3-4x slower than float32 by onnxruntime's account)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def cpu_bf16_mode() -> str:
    """``FOCAL_RPN_CPU_BF16`` (default ``auto``), checked against :data:`CPU_BF16_MODES`."""
    mode = os.environ.get(CPU_BF16_ENV, "auto")
    if mode not in CPU_BF16_MODES:
        raise ValueError(f"{CPU_BF16_ENV}={mode!r}: expected one of {', '.join(CPU_BF16_MODES)}")
    return mode


def refuse_fallback_env() -> dict:
    """The environment a study run trains in: ``FOCAL_RPN_CPU_BF16`` as the user set it, else
    ``refuse``, so that a run of a bfloat16 config is never trained in float32 under its hash."""
    return {CPU_BF16_ENV: os.environ.get(CPU_BF16_ENV, "refuse")}


def no_cpu_bfloat16_message() -> str:
    return ("SOLVER.AMP.ENABLED asks for bfloat16 autocast, but this CPU has no bfloat16 instructions "
            f"(AVX512-BF16 or AMX; torch's CPU capability: {torch.backends.cpu.get_cpu_capability()}), where "
            "emulated bfloat16 makes the training step about 10x slower than float32 (docs/performance.md)")


class CPUAutocastTrainer(SimpleTrainer):
    """SimpleTrainer whose step runs under ``torch.autocast("cpu", dtype)``.

    The whole step is inside the context, as in ``SimpleTrainer.run_step``: on the CPU the
    backward pass replays the dtypes autocast chose in the forward (tests check that the gradients
    equal those of a backward outside the context), and SGD, gradient clipping and the metrics
    work on float32 tensors, which autocast leaves alone.
    """

    def __init__(self, model, data_loader, optimizer, dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.dtype = dtype

    def run_step(self):
        with torch.autocast("cpu", dtype=self.dtype):
            super().run_step()


def requested_precision(device_type: str, amp_enabled: bool) -> str:
    """What a config asks a training on ``device_type`` ("cpu", "cuda") to compute in: "float32"
    without SOLVER.AMP.ENABLED; with it "float16" off the CPU (Detectron2's AMPTrainer) and
    "bfloat16" on the CPU (:class:`CPUAutocastTrainer`)."""
    if not amp_enabled:
        return "float32"
    return "bfloat16" if device_type == "cpu" else "float16"


def training_precision(device_type: str, amp_enabled: bool) -> str:
    """What such a training computes in on this machine under today's ``FOCAL_RPN_CPU_BF16``: the
    requested precision, except bfloat16 on a CPU without bfloat16 units unless the variable says
    ``emulate``, which is "float32" (the fallback; under ``refuse`` the training does not start)."""
    asked = requested_precision(device_type, amp_enabled)
    if asked == "bfloat16" and not (cpu_bf16_mode() == "emulate" or cpu_has_bfloat16()):
        return "float32"
    return asked


def amp_trainer(model, data_loader, optimizer, **kwargs):
    """The trainer DefaultTrainer builds for SOLVER.AMP.ENABLED: Detectron2's AMPTrainer (float16,
    GradScaler) for a CUDA model; for a CPU model :class:`CPUAutocastTrainer` (bfloat16) where
    :func:`training_precision` says bfloat16, else float32 (SimpleTrainer) unless
    :func:`cpu_bf16_mode` refuses."""
    device = next(model.parameters()).device
    precision = training_precision(device.type, True)
    if precision == "float16":
        return AMPTrainer(model, data_loader, optimizer, **kwargs)
    if precision == "bfloat16":
        return CPUAutocastTrainer(model, data_loader, optimizer, **kwargs)
    if cpu_bf16_mode() == "refuse":
        raise RuntimeError(f"{no_cpu_bfloat16_message()}; {CPU_BF16_ENV}=refuse. Train on a CPU with "
                           f"them, set {CPU_BF16_ENV}=emulate to train in bfloat16 anyway, or "
                           "SOLVER.AMP.ENABLED False for a float32 run (another config)")
    logger.warning(f"{no_cpu_bfloat16_message()}: training in float32 instead ({CPU_BF16_ENV}=emulate "
                   "keeps bfloat16)")
    return SimpleTrainer(model, data_loader, optimizer, **kwargs)
