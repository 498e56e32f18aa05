"""focal_rpn: focal loss for dense detection and region proposals, as a Detectron2 plugin.

Importing the package registers its models and datasets.
"""
from .config import add_focal_rpn_config, load_config
from . import data, modeling  # noqa: F401  (registration side effects)

__version__ = "0.1.0"
__all__ = ["add_focal_rpn_config", "load_config"]
