#!/usr/bin/env python
"""Train or evaluate a focal_rpn (or any Detectron2) config.

    python -m focal_rpn.tools.train_net --config-file configs/trees/retinanet.yaml
    python -m focal_rpn.tools.train_net --config-file configs/retinanet_R50.yaml --num-gpus 8
    python -m focal_rpn.tools.train_net --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python -m focal_rpn.tools.train_net --config-file CFG --resume   # continue from OUTPUT_DIR/last_checkpoint

(``python train_net.py ...`` in a checkout is the same command.) Detectron2's argument parser and
``launch`` around :func:`focal_rpn.engine.main.main`.
"""
from detectron2.engine import default_argument_parser, launch

from ..engine.main import main


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    cli()
