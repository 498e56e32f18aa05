import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def make_cfg():
    """Returns f(config path relative to the repo, *opts) -> a frozen-free CfgNode."""
    from detectron2.config import get_cfg

    from focal_rpn import add_focal_rpn_config

    def make(path="configs/synthetic/retinanet.yaml", *opts):
        cfg = get_cfg()
        add_focal_rpn_config(cfg)
        cfg.merge_from_file(os.path.join(ROOT, path))
        cfg.merge_from_list(list(opts))
        return cfg

    return make
