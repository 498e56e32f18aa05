#!/usr/bin/env python
"""Train or evaluate a focal_rpn (or any Detectron2) config: ``focal_rpn.tools.train_net``.

    python train_net.py --config-file configs/trees/retinanet.yaml
    python train_net.py --config-file configs/retinanet_R50.yaml --num-gpus 8
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CFG --resume          # continue from OUTPUT_DIR/last_checkpoint
"""
from focal_rpn.tools.train_net import cli

if __name__ == "__main__":
    cli()
