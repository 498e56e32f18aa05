"""Training and evaluation: the Trainer used by train_net.py and the ablation tools."""
from .checkpoint import load_weights_strict, strict_predictor
from .trainer import Trainer

__all__ = ["Trainer", "load_weights_strict", "strict_predictor"]
