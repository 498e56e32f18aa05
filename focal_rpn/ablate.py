"""Run an ablation suite with train_net.py, keep one summary per run, and tabulate the suite.

    python -m focal_rpn.ablate --suite rpn --dataset trees --seeds 5
    python -m focal_rpn.ablate --suite retinanet --dataset coco --num-gpus 8
    python -m focal_rpn.ablate --suite rpn --dataset trees --report     # tables from results/ alone

Each run is an ordinary ``train_net.py`` training + evaluation in its own OUTPUT_DIR
(``OUT/SUITE-DATASET/VARIANT/seedK``; an interrupted run resumes from its last checkpoint). A
finished run leaves its summary in ``RESULTS/DATASET/SUITE/VARIANT/seedK.json`` (see
:mod:`focal_rpn.results`; commit these): a variant/seed whose summary exists and is current is
skipped, so a suite continues across machines and days; a stale one (its config changed) is run
again. The report (``results.md``, ``.csv``, ``.png`` beside the summaries) gives mean ± 95% CI per
variant and the paired difference to the suite's reference variant with a verdict.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, NamedTuple

from . import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Table 1 of the RetinaNet paper: γ sweep with the α the paper pairs with each γ. γ = 0 with
# α = 0.75 is alpha_ce by construction (a test shows it instead of a run).
RETINANET_VARIANTS: Dict[str, List[str]] = {
    "ce": ["MODEL.RETINANET.LOSS_TYPE", "ce"],
    "alpha_ce": ["MODEL.RETINANET.LOSS_TYPE", "alpha_ce", "MODEL.RETINANET.FOCAL_LOSS_ALPHA", "0.75"],
    **{
        f"gamma_{g:g}": ["MODEL.RETINANET.FOCAL_LOSS_GAMMA", str(g), "MODEL.RETINANET.FOCAL_LOSS_ALPHA", str(a)]
        for g, a in [(0.5, 0.5), (1.0, 0.25), (2.0, 0.25), (5.0, 0.25)]
    },
    "fl_star": ["MODEL.RETINANET.LOSS_TYPE", "fl_star"],
    "ohem": ["MODEL.RETINANET.LOSS_TYPE", "ohem"],
    "ohem_1_3": ["MODEL.RETINANET.LOSS_TYPE", "ohem_1_3"],
}
RPN_VARIANTS = ["rpn_ce", "rpn_fl_sigmoid", "rpn_fl_softmax", "ohem", "ohem_1_3", "roi_fl"]
# λ of the sigmoid FocalRPN: the paper's 0.1 (set for a pretrained backbone) to 3.
RPN_LAMBDAS = [0.1, 0.3, 1.0, 3.0]
# The variant every other one of a suite is compared with (paired by seed).
REFERENCES = {"rpn": "rpn_ce", "retinanet": "gamma_2", "rpn_lambda": "lambda_1"}
SUITES = tuple(REFERENCES)

# Extra options turning a trees config into a seconds-long run on the synthetic shapes.
SYNTHETIC_OPTS = [
    "DATASETS.TRAIN", "('synthetic_train',)", "DATASETS.TEST", "('synthetic_val',)",
    "MODEL.RETINANET.NUM_CLASSES", "3", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    "INPUT.ROTATE_90", "False", "INPUT.VERTICAL_FLIP", "False", "INPUT.CROP.ENABLED", "False",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2", "SOLVER.MAX_ITER", "10",
    "SOLVER.CHECKPOINT_PERIOD", "5",
]


class Variant(NamedTuple):
    name: str
    config: str  # relative to the repository root
    opts: List[str]


def suite_variants(suite: str, dataset: str) -> List[Variant]:
    """Every variant of ``suite`` on ``dataset``."""
    if dataset not in ("trees", "coco", "synthetic"):
        raise ValueError(f"--dataset must be trees, coco or synthetic, got {dataset!r}")
    extra = SYNTHETIC_OPTS if dataset == "synthetic" else []

    def frcnn(v):
        return f"configs/faster_rcnn_R50_{v}.yaml" if dataset == "coco" else f"configs/trees/{v}.yaml"

    if suite == "retinanet":
        cfg = "configs/retinanet_R50.yaml" if dataset == "coco" else "configs/trees/retinanet.yaml"
        return [Variant(name, cfg, opts + extra) for name, opts in RETINANET_VARIANTS.items()]
    if suite == "rpn":
        return [Variant(v, frcnn(v), list(extra)) for v in RPN_VARIANTS]
    if suite == "rpn_lambda":
        return [Variant(f"lambda_{lam:g}", frcnn("rpn_fl_sigmoid"),
                        ["MODEL.FOCAL_RPN.CLS_LOSS_WEIGHT", str(lam)] + extra) for lam in RPN_LAMBDAS]
    raise ValueError(f"--suite must be one of {SUITES}, got {suite!r}")


def run_config(variant: Variant, seed: int, opts: List[str]):
    """The full config a run of ``variant`` with ``seed`` and the extra ``opts`` trains."""
    from .config import load_config

    return load_config(os.path.join(ROOT, variant.config), variant.opts + list(opts) + ["SEED", str(seed)])


def run_one(variant: Variant, seed: int, opts: List[str], run_dir: str, num_gpus: int) -> dict:
    """Trains and evaluates one run (resuming when it has a checkpoint). Returns its summary
    (without writing it)."""
    os.makedirs(run_dir, exist_ok=True)
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", os.path.join(ROOT, variant.config),
           "--num-gpus", str(num_gpus)]
    if os.path.isfile(os.path.join(run_dir, "last_checkpoint")):
        cmd.append("--resume")
    cmd += variant.opts + list(opts) + ["SEED", str(seed), "OUTPUT_DIR", run_dir]
    t0 = time.time()
    with open(os.path.join(run_dir, "stdout.txt"), "a") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"run failed (exit {code}): {' '.join(cmd)}; see {run_dir}/stdout.txt")
    cfg = run_config(variant, seed, opts)
    metrics = results.final_metrics(run_dir)
    return {
        "variant": variant.name, "seed": seed, "iterations": cfg.SOLVER.MAX_ITER,
        "s_per_iter": metrics.pop("s_per_iter"), "peak_rss_mb": usage.ru_maxrss / 1024,
        "wall_s": time.time() - t0, "config_sha256": results.config_sha256(cfg),
        "git_commit": results.git_commit(ROOT), "metrics": metrics,
    }


def report(variants: List[Variant], suite: str, dataset: str, results_dir: str, opts: List[str]) -> str:
    """Rebuilds results.md/.csv/.png of a suite from its summaries; returns the markdown."""
    names = [v.name for v in variants]
    by_name = {v.name: v for v in variants}
    current, stale = results.read_summaries(
        results_dir, dataset, suite, names,
        lambda name, seed: results.config_sha256(run_config(by_name[name], seed, opts)))
    if not current:
        raise SystemExit(f"no current summary under {os.path.join(results_dir, dataset, suite)}: nothing to report"
                         + (f" ({len(stale)} stale)" if stale else ""))
    out_dir = os.path.join(results_dir, dataset, suite)
    md = results.write_report(current, names, REFERENCES[suite], out_dir, f"{suite} suite on {dataset}", stale)
    print(md)
    print(f"Results: {os.path.abspath(out_dir)}/results.md, results.csv, results.png")
    return md


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True, choices=SUITES)
    ap.add_argument("--dataset", default="trees", choices=["trees", "coco", "synthetic"])
    ap.add_argument("--seeds", type=int, default=1, help="runs per variant, with seeds 0..N-1")
    ap.add_argument("--num-gpus", type=int, default=1, help="processes per run (CPU: gloo workers)")
    ap.add_argument("--variants", nargs="*", help="only these variants")
    ap.add_argument("--out", default="output/ablate", help="run folders (checkpoints, logs)")
    ap.add_argument("--results", default=os.path.join(ROOT, "results"), help="summaries and reports (committed)")
    ap.add_argument("--report", action="store_true", help="train nothing: tabulate the suite's summaries")
    ap.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                    help="config options for every run (they are part of each run's config hash)")
    args = ap.parse_args(argv)
    variants = suite_variants(args.suite, args.dataset)
    if args.variants:
        unknown = set(args.variants) - {v.name for v in variants}
        if unknown:
            ap.error(f"unknown variants {sorted(unknown)}; choose from {[v.name for v in variants]}")
        variants = [v for v in variants if v.name in args.variants]
    if args.report:
        report(suite_variants(args.suite, args.dataset), args.suite, args.dataset, args.results, args.opts)
        return
    # Seed-major: a suite stopped part-way has every variant at the same seeds, so the paired
    # comparisons it can already make use all of them.
    jobs = [(v, seed) for seed in range(args.seeds) for v in variants]
    durations = []
    for i, (v, seed) in enumerate(jobs, start=1):
        path = results.summary_path(args.results, args.dataset, args.suite, v.name, seed)
        expected = results.config_sha256(run_config(v, seed, args.opts))
        if os.path.isfile(path):
            if results.load_summary(path)["config_sha256"] == expected:
                print(f"[{i}/{len(jobs)}] {v.name} seed {seed}: summary exists, skipped")
                continue
            print(f"[{i}/{len(jobs)}] {v.name} seed {seed}: summary is stale (config changed), running again")
        eta = f", ETA {time.strftime('%H:%M:%S', time.gmtime(statistics.mean(durations) * (len(jobs) - i + 1)))}" \
            if durations else ""
        print(f"[{i}/{len(jobs)}] {v.name} seed {seed}: running{eta}", flush=True)
        t0 = time.time()
        run_dir = os.path.join(args.out, f"{args.suite}-{args.dataset}", v.name, f"seed{seed}")
        results.write_summary(path, run_one(v, seed, args.opts, run_dir, args.num_gpus))
        durations.append(time.time() - t0)
    report(suite_variants(args.suite, args.dataset), args.suite, args.dataset, args.results, args.opts)


if __name__ == "__main__":
    main()
