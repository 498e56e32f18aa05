"""The training entry point: ``main(args)`` trains or evaluates one config. It lives in the
library (importable, picklable) so that Detectron2's ``launch`` can start it in worker processes
from any launcher (``focal_rpn.tools.train_net``, the study's SLURM jobs)."""
import logging
import os

import torch.distributed
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import fit_config_anchors, load_config
from ..modeling.anchor_fit import with_anchors
from .checkpoint import load_weights_strict
from .trainer import Trainer


def resumed_anchors(cfg, resume: bool):
    """(cfg, "") or with ``resume``, MODEL.ANCHOR_GENERATOR.FIT and a checkpoint in OUTPUT_DIR, a copy
    with the anchors that run fitted (its config.yaml, when fitted to the same DATASETS.TRAIN): its
    weights were trained with them, and a fit made now (by other code) need not give the same; and
    the line that says so for the log."""
    ag = cfg.MODEL.ANCHOR_GENERATOR
    saved = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if not (resume and ag.FIT and not ag.FITTED_ON and os.path.isfile(saved)
            and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))):
        return cfg, ""
    run = load_config(saved, check_datasets=[], fit_anchors=False).MODEL.ANCHOR_GENERATOR
    if tuple(run.FITTED_ON) != tuple(cfg.DATASETS.TRAIN):
        return cfg, ""
    line = (f"resuming {cfg.OUTPUT_DIR}: the anchors it fitted to {', '.join(run.FITTED_ON)} (sizes "
            f"{run.SIZES}, aspect ratios {run.ASPECT_RATIOS}), not fitted again")
    return with_anchors(cfg, run.SIZES, run.ASPECT_RATIOS, run.FITTED_ON), line


def setup(args):
    """The config of ``args`` (``--config-file`` and options), with Detectron2's default_setup
    (logging, OUTPUT_DIR/config.yaml, seeding). Anchors fitted (MODEL.ANCHOR_GENERATOR.FIT) before
    the config is written, so that the run's config.yaml holds them; a resumed run keeps its own."""
    cfg, resumed = resumed_anchors(load_config(args.config_file, args.opts, fit_anchors=False), args.resume)
    cfg, fit_message = fit_config_anchors(cfg)
    default_setup(cfg, args)
    # default_setup logs "detectron2" and "fvcore"; the project's own records (dataset defects
    # dropped or clipped, class weights, the anchor fit) go to the same console and log.txt
    # (setup_logger stops propagation; the root logger keeps receiving them, as by default, for
    # whoever listens there: an embedding program, pytest's caplog)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="focal_rpn").propagate = True
    if fit_message or resumed:
        logging.getLogger(__name__).info(fit_message or resumed)
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
