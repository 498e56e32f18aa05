"""Norm keys that only some registered heads read: set for a head that ignores them, an error.

A config's ``MODEL.RPN.NORM`` or ``MODEL.ROI_BOX_HEAD.FC_NORM`` with a head that has no such norm
would train a model other than the config says; the check runs before the model is built.
"""
from detectron2.modeling.proposal_generator import RPN_HEAD_REGISTRY
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY

from .norm_fc_box_head import NormFCBoxHead
from .norm_rpn_head import NormRPNHead

# (norm key, key naming the head, the head's registry, the class whose subclasses read the norm)
NORM_KEYS = [
    ("MODEL.RPN.NORM", "MODEL.RPN.HEAD_NAME", RPN_HEAD_REGISTRY, NormRPNHead),
    ("MODEL.ROI_BOX_HEAD.FC_NORM", "MODEL.ROI_BOX_HEAD.NAME", ROI_BOX_HEAD_REGISTRY, NormFCBoxHead),
]


def _get(cfg, key: str):
    for name in key.split("."):
        cfg = cfg[name]
    return cfg


def check_norm_keys(cfg) -> None:
    """Raises ValueError naming the key, its value, the heads that read it and the head configured,
    for every norm key of :data:`NORM_KEYS` set for a head that would ignore it. A config whose
    head is unset (RetinaNet: ROI_BOX_HEAD.NAME "") is only looked up when the norm is set."""
    for norm_key, name_key, registry, reader in NORM_KEYS:
        norm, name = _get(cfg, norm_key), _get(cfg, name_key)
        if norm and not issubclass(registry.get(name), reader):
            readers = " or ".join(repr(n) for n, c in sorted(registry) if issubclass(c, reader))
            raise ValueError(f"{norm_key} {norm!r} is read by {name_key} {readers}; "
                             f"{name!r} has no norm and would ignore it")
