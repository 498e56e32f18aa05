#!/usr/bin/env python
"""Train or evaluate a focal_rpn (or any Detectron2) config.

    python -m focal_rpn.tools.train_net --config-file configs/trees/retinanet.yaml
    python -m focal_rpn.tools.train_net --config-file configs/retinanet_R50.yaml --num-gpus 8
    python -m focal_rpn.tools.train_net --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python -m focal_rpn.tools.train_net --config-file CFG --resume   # continue from OUTPUT_DIR/last_checkpoint

(``python train_net.py ...`` in a checkout is the same command.) :func:`main` is importable and
picklable, so Detectron2's ``launch`` can start it in worker processes from any launcher.
"""
import torch.distributed
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm

from ..config import load_config
from ..engine import Trainer, load_weights_strict


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg


def main(args):
    results = train_or_evaluate(args)
    if comm.get_world_size() > 1:
        # Detectron2's launch leaves the process groups alive: gloo's threads then race the
        # interpreter's exit and can abort a finished worker (SIGABRT, "terminate called without
        # an active exception"; pytorch/pytorch#190489). Every rank gets here, so all destroy.
        comm.synchronize()
        torch.distributed.destroy_process_group()
    return results


def train_or_evaluate(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_weights_strict(model, cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            from detectron2.evaluation import verify_results

            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    cli()
