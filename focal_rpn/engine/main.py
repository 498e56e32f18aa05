"""The training entry point: ``main(args)`` trains or evaluates one config. It lives in the
library (importable, picklable) so that Detectron2's ``launch`` can start it in worker processes
from any launcher (``focal_rpn.tools.train_net``, the study's SLURM jobs)."""
import torch.distributed
from detectron2.engine import default_setup
from detectron2.utils import comm

from ..config import load_config
from .checkpoint import load_weights_strict
from .trainer import Trainer


def setup(args):
    """The config of ``args`` (``--config-file`` and options), with Detectron2's default_setup
    (logging, OUTPUT_DIR/config.yaml, seeding)."""
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg


def main(args):
    """Trains (or, with ``--eval-only``, evaluates) and returns the evaluation results."""
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
