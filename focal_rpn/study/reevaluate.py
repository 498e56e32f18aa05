"""Re-evaluating a finished run whose training config is unchanged, instead of training it again.

A run's summary goes stale when anything in its config changes (``results.config_sha256``),
including settings that only evaluation reads: the test-time proposal and candidate budgets, score
and NMS thresholds, test image sizes, the test datasets. Training again would reproduce the same
weights, so ``python -m focal_rpn.tools.ablate ... --reevaluate`` loads the run's ``model_final.pth``,
evaluates it under today's config and rewrites its summary: new metrics and config hash; the
training figures (s/iter, peak memory, wall time, the training commit) are kept and the
re-evaluation is recorded under ``"reevaluated"``. A run whose config differs in anything else is
refused with the keys that differ: it needs a new training.

An evaluator that has gained a metric since a run (e.g. the per-class AP50) leaves its summary
current but without it: ``--reevaluate all`` re-evaluates the current runs too, and keeps the new
evaluation only if every metric the summary had comes back the same. A summary copied from an
identical run (``same_run_as``) is copied again from its source instead.

Weight averaging (SOLVER.WEIGHT_AVERAGE.*) is post-training too: a run trained without it gets the
mean of its periodic checkpoints (``focal_rpn.engine.weight_average``), saved as
``reevaluate/model_average.pth`` in its folder and evaluated. A run trained with it keeps only the
mean in model_final.pth, so a change of its averaging is refused.
"""
import math
import os
from typing import Dict, List

# Config keys that only evaluation reads (a change leaves the trained weights as they were).
# TEST.PRECISE_BN is not one: it recomputes BatchNorm statistics, i.e. changes the weights.
EVAL_ONLY_KEYS = frozenset({
    "DATASETS.TEST", "DATASETS.PROPOSAL_FILES_TEST", "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST",
    "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST",
    "TEST.EVAL_PERIOD", "TEST.DETECTIONS_PER_IMAGE", "TEST.EXPECTED_RESULTS", "TEST.KEYPOINT_OKS_SIGMAS",
    "TEST.AUG.ENABLED", "TEST.AUG.MIN_SIZES", "TEST.AUG.MAX_SIZE", "TEST.AUG.FLIP",
    "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "MODEL.RETINANET.SCORE_THRESH_TEST", "MODEL.RETINANET.NMS_THRESH_TEST",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "MODEL.RPN.POST_NMS_TOPK_TEST",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.ROI_HEADS.NMS_THRESH_TEST",
})


# Keys of the weight average over the training's tail: computable afterwards from the checkpoints.
AVERAGE_PREFIX = "SOLVER.WEIGHT_AVERAGE."
# Test-time augmentation (every key of the node) wraps the trained detector at evaluation only.
TTA_PREFIX = "TEST.TTA."


def flatten_config(cfg, prefix: str = "") -> Dict[str, object]:
    """{"MODEL.RPN.NMS_THRESH": 0.7, ...}: every leaf of a CfgNode under its dotted key."""
    out = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = _as_lists(value)
    return out


def _as_lists(value):
    """Tuples as lists, nested: a config dump read back has lists where the defaults have tuples."""
    return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def config_differences(trained_cfg, cfg) -> Dict[str, List[str]]:
    """The keys whose values differ between the config a run was trained with and ``cfg``, as
    "KEY: old -> new" lines, split into {"evaluation": [...], "training": [...]}."""
    from .summaries import comparable_config, fitted_anchors, flat_value

    # compared as config_sha256 compares them (where a run is written, result-neutral keys and
    # switched-off features left out; a key added later, left out at its default, holds it)
    old, new = flatten_config(comparable_config(trained_cfg)), flatten_config(comparable_config(cfg))
    diffs: Dict[str, List[str]] = {"evaluation": [], "training": []}
    for key in sorted(set(old) | set(new)):
        was, now = flat_value(old, key), flat_value(new, key)
        if was != now:
            kind = "evaluation" if key in EVAL_ONLY_KEYS or key.startswith((AVERAGE_PREFIX, TTA_PREFIX)) else "training"
            diffs[kind].append(f"{key}: {was!r} -> {now!r}")
    # fitted anchors are left out of the hash (the config as written names the run) but not out of
    # the weights: a checkpoint is only valid with the anchors it was trained with
    if fitted_anchors(trained_cfg) != fitted_anchors(cfg):
        diffs["training"].append(f"fitted anchors: {fitted_anchors(trained_cfg)} -> {fitted_anchors(cfg)}")
    return diffs


def evaluate_checkpoint(cfg, weights: str, output_dir: str) -> Dict[str, float]:
    """Detectron2's evaluation of ``weights`` under ``cfg`` (the Trainer's evaluators, as at the end
    of training), flattened to metrics.json's names ("bbox/AP50", "box_proposals/AR@1000")."""
    from detectron2.evaluation.testing import flatten_results_dict

    from ..engine import Trainer, load_weights_strict

    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = output_dir
    cfg.freeze()
    model = Trainer.build_model(cfg)
    load_weights_strict(model, weights)
    return {k: float(v) for k, v in flatten_results_dict(Trainer.test(cfg, model)).items()}


# How far (in AP points) a metric may move when a run is re-evaluated under the config it was
# evaluated with: the same weights and settings give the same detections up to float rounding.
REPRODUCE_TOLERANCE = 0.05


def reevaluate_run(summary: dict, cfg, run_dir: str, git_commit: str) -> dict:
    """The summary of the run in ``run_dir`` re-evaluated under ``cfg``. Raises ValueError naming
    what is missing or which training keys changed. Under an unchanged config (to add a metric the
    evaluator has gained since the run) every metric the summary had must come back within
    :data:`REPRODUCE_TOLERANCE`, or ValueError names the first that did not; the new metrics are
    recorded under ``reevaluated.added``."""
    from . import summaries as results
    from ..config import load_config

    trained_yaml = os.path.join(run_dir, "config.yaml")
    weights = os.path.join(run_dir, "model_final.pth")
    for path in (trained_yaml, weights):
        if not os.path.isfile(path):
            raise ValueError(f"{path} not found: the run's folder is needed to re-evaluate it (train it again instead)")
    trained_cfg = load_config(trained_yaml, freeze=False)
    diffs = config_differences(trained_cfg, cfg)
    if diffs["training"]:
        raise ValueError(f"{run_dir} was trained with another config; it needs a new run: " + "; ".join(diffs["training"]))
    weights = _final_weights(trained_cfg, cfg, run_dir)
    metrics = evaluate_checkpoint(cfg, weights, os.path.join(run_dir, "reevaluate"))
    metrics = {k: v for k, v in metrics.items() if k.startswith(("bbox/", "box_proposals/", "deeppcb/"))}
    # what training logged (the anchor ratios it saw) does not depend on the evaluation
    metrics.update({k: v for k, v in summary.get("metrics", {}).items() if k in results.LOGGED_MEDIANS})
    if not diffs["evaluation"]:
        _check_reproduced(summary["metrics"], metrics, run_dir)
    kept = {k: v for k, v in summary.items() if k != "path"}  # load_summary's note of where it was read
    return {**kept, "metrics": metrics, "config_sha256": results.config_sha256(cfg),
            "config": results.comparable_config(cfg).dump(),
            "reevaluated": {"previous_config_sha256": summary["config_sha256"], "git_commit": git_commit,
                            "changed": diffs["evaluation"],
                            "added": sorted(set(metrics) - set(summary["metrics"])),
                            **({"earlier": summary["reevaluated"]} if "reevaluated" in summary else {})}}


def _check_reproduced(old: Dict[str, float], new: Dict[str, float], run_dir: str) -> None:
    """Raises ValueError naming the first metric of ``old`` that ``new`` lacks or moves by more than
    :data:`REPRODUCE_TOLERANCE` (NaN matches NaN: e.g. the AP of a class without boxes)."""
    for key, before in sorted(old.items()):
        after = new.get(key, math.nan)
        if math.isnan(before) and math.isnan(after):
            continue
        if not abs(after - before) <= REPRODUCE_TOLERANCE:
            raise ValueError(f"{run_dir}: re-evaluated under the same config, {key} came back {after:.4f}, "
                             f"not {before:.4f}; summary left as it was")


def _final_weights(trained_cfg, cfg, run_dir: str) -> str:
    """The weights file that ``cfg`` makes of the run in ``run_dir``: its model_final.pth, or, when
    ``cfg`` adds a weight average the run was trained without, the mean of its checkpoints."""
    import torch

    from ..engine.weight_average import average_of_checkpoints

    old, new = trained_cfg.SOLVER.WEIGHT_AVERAGE, cfg.SOLVER.WEIGHT_AVERAGE
    final = os.path.join(run_dir, "model_final.pth")
    if old.ENABLED:
        if (new.ENABLED, new.START_ITER, new.PERIOD) != (True, old.START_ITER, old.PERIOD):
            raise ValueError(f"{final} holds the weight average of SOLVER.WEIGHT_AVERAGE {dict(old)}; the "
                             f"last iteration's weights are not kept, so {dict(new)} needs a new run")
        return final
    if not new.ENABLED:
        return final
    state = average_of_checkpoints(run_dir, new.START_ITER, new.PERIOD, cfg.SOLVER.MAX_ITER)
    path = os.path.join(run_dir, "reevaluate", "model_average.pth")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"model": state}, path)
    return path
