"""Mixed precision on the CPU: bfloat16 autocast for Detectron2's training step.

Detectron2's AMPTrainer is CUDA-only (float16 + GradScaler, and it asserts CUDA). On a CPU with
bfloat16 units (AVX512-BF16, AMX) the trees RetinaNet training step took 0.50x the float32 time
under ``torch.autocast("cpu", torch.bfloat16)`` (docs/performance.md); bfloat16 has float32's exponent range, so no loss
scaling is needed. Parameters, gradients and the optimizer state stay float32.
"""
import torch
from detectron2.engine import AMPTrainer, SimpleTrainer


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


def amp_trainer(model, data_loader, optimizer, **kwargs):
    """The trainer DefaultTrainer builds for SOLVER.AMP.ENABLED: Detectron2's AMPTrainer (float16,
    GradScaler) for a CUDA model, :class:`CPUAutocastTrainer` (bfloat16) for a CPU model."""
    device = next(model.parameters()).device
    if device.type == "cpu":
        return CPUAutocastTrainer(model, data_loader, optimizer, **kwargs)
    return AMPTrainer(model, data_loader, optimizer, **kwargs)
