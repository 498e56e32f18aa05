"""Run an ablation suite with train_net.py, keep one summary per run, and tabulate the suite.

    python -m focal_rpn.ablate --suite rpn --dataset trees --seeds 5
    python -m focal_rpn.ablate --suite retinanet --dataset coco --num-gpus 8
    python -m focal_rpn.ablate --suite rpn --dataset trees --report     # tables from results/ alone
    python -m focal_rpn.ablate --suite rpn --dataset coco --seeds 5 --launcher submitit \
        --slurm-partition learnfair --gpus-per-run 8        # one SLURM job per run (focal_rpn.cluster)
    python -m focal_rpn.ablate --suite rpn --dataset coco --seeds 5 --status
    python -m focal_rpn.ablate --suite retinanet --dataset trees --seeds 5 --reevaluate  # test-time change

Each run is an ordinary ``train_net.py`` training + evaluation in its own OUTPUT_DIR
(``OUT/SUITE-DATASET/VARIANT/seedK``; an interrupted run resumes from its last checkpoint). A
finished run leaves its summary in ``RESULTS/DATASET/SUITE/VARIANT/seedK.json`` (see
:mod:`focal_rpn.results`; commit these): a variant/seed whose summary exists and is current is
skipped, so a suite continues across machines and days; a run identical to one kept under another
suite or variant (same config hash and seed) takes that summary, marked ``same_run_as``, instead of
training again; a stale one (its config changed) is run
again, unless only evaluation settings or the weight average changed: ``--reevaluate`` then
evaluates the run's final checkpoint (or the mean of its checkpoints) under today's config instead
(:mod:`focal_rpn.reevaluate`). The report (``results.md``, ``.csv``, ``.png`` beside the summaries) gives mean ± 95% CI per
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
# configs/<dataset>/ holds each dataset's recipes (coco: configs/*_R50*.yaml)
DATASETS = ("trees", "deeppcb", "coco", "synthetic")
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
    if dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {DATASETS}, got {dataset!r}")
    extra = SYNTHETIC_OPTS if dataset == "synthetic" else []
    folder = "trees" if dataset == "synthetic" else dataset  # synthetic: the trees configs, shrunk

    def frcnn(v):
        return f"configs/faster_rcnn_R50_{v}.yaml" if dataset == "coco" else f"configs/{folder}/{v}.yaml"

    if suite == "retinanet":
        cfg = "configs/retinanet_R50.yaml" if dataset == "coco" else f"configs/{folder}/retinanet.yaml"
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


def summarize(variant: Variant, seed: int, opts: List[str], run_dir: str, peak_rss_mb: float,
              wall_s: float) -> dict:
    """The summary of a finished run in ``run_dir`` (read from its metrics.json), whichever launcher
    ran it."""
    cfg = run_config(variant, seed, opts)
    metrics = results.final_metrics(run_dir)
    return {
        "variant": variant.name, "seed": seed, "iterations": cfg.SOLVER.MAX_ITER,
        "s_per_iter": metrics.pop("s_per_iter"), "peak_rss_mb": peak_rss_mb, "wall_s": wall_s,
        "config_sha256": results.config_sha256(cfg), "config": results.comparable_config(cfg).dump(),
        "opts": list(opts), "git_commit": results.git_commit(ROOT), "metrics": metrics,
    }


def set_aside_other_training(run_dir: str, cfg) -> None:
    """Renames ``run_dir`` to ``run_dir.stale-N`` (files kept) when it holds checkpoints of a config
    other than ``cfg`` (the variant changed since: its summary is stale), so that ``--resume``
    cannot continue, or take as finished, weights trained under the old config."""
    if not os.path.isfile(os.path.join(run_dir, "last_checkpoint")):
        return
    saved = os.path.join(run_dir, "config.yaml")  # written by train_net.py's default_setup
    try:
        from .config import load_config

        if results.same_training(load_config(saved), cfg):
            return
        why = "trained under another config"
    except Exception as e:  # no config.yaml, or one this version cannot read: not the same run
        why = f"its config.yaml cannot be compared ({type(e).__name__}: {e})"
    n = 1
    while os.path.exists(f"{run_dir}.stale-{n}"):
        n += 1
    os.rename(run_dir, f"{run_dir}.stale-{n}")
    print(f"{run_dir}: {why}; moved to {run_dir}.stale-{n}, training from scratch", flush=True)


def run_one(variant: Variant, seed: int, opts: List[str], run_dir: str, num_gpus: int) -> dict:
    """Trains and evaluates one run in a train_net process (resuming when it has a checkpoint).
    Returns its summary (without writing it): the metrics, or, when the process failed (a
    diverging loss, out of memory, a crash), a ``failed`` record of why, at which iteration, and
    the log."""
    set_aside_other_training(run_dir, run_config(variant, seed, opts))
    os.makedirs(run_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "focal_rpn.tools.train_net", "--config-file", os.path.join(ROOT, variant.config),
           "--num-gpus", str(num_gpus)]
    if os.path.isfile(os.path.join(run_dir, "last_checkpoint")):
        cmd.append("--resume")
    cmd += variant.opts + list(opts) + ["SEED", str(seed), "OUTPUT_DIR", run_dir]
    t0 = time.time()
    log_path = os.path.join(run_dir, "stdout.txt")
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        cfg = run_config(variant, seed, opts)
        return {"variant": variant.name, "seed": seed, "config_sha256": results.config_sha256(cfg),
                "config": results.comparable_config(cfg).dump(), "opts": list(opts),
                "git_commit": results.git_commit(ROOT), "wall_s": time.time() - t0,
                "failed": results.failure(run_dir, log_path, code)}
    return summarize(variant, seed, opts, run_dir, usage.ru_maxrss / 1024, time.time() - t0)


def report(variants: List[Variant], suite: str, dataset: str, results_dir: str, opts: List[str]) -> str:
    """Rebuilds results.md/.csv/.png of a suite from its summaries; returns the markdown. Summaries
    of another config than the variants build today with ``opts`` are tabulated apart, titled by
    what differs."""
    names = [v.name for v in variants]
    by_name = {v.name: v for v in variants}
    groups = results.read_summaries(results_dir, dataset, suite, names,
                                    lambda name, seed: run_config(by_name[name], seed, opts))
    out_dir = os.path.join(results_dir, dataset, suite)
    if not (groups.current or groups.earlier or groups.failed):
        raise SystemExit(f"no summary under {out_dir}: nothing to report")
    md = results.write_report(groups, names, REFERENCES[suite], out_dir, f"{suite} suite on {dataset}")
    print(md)
    print(f"Results: {os.path.abspath(out_dir)}/results.md, results.csv, results.png")
    return md


def run_dir(out: str, suite: str, dataset: str, variant: str, seed: int) -> str:
    """The OUTPUT_DIR of one run (absolute: cluster jobs may start elsewhere)."""
    return os.path.abspath(os.path.join(out, f"{suite}-{dataset}", variant, f"seed{seed}"))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True, choices=SUITES)
    ap.add_argument("--dataset", default="trees", choices=DATASETS)
    ap.add_argument("--seeds", type=int, default=1, help="runs per variant, with seeds 0..N-1")
    ap.add_argument("--num-gpus", type=int, default=1, help="local launcher: processes per run (CPU: gloo workers)")
    ap.add_argument("--variants", nargs="*", help="only these variants")
    ap.add_argument("--out", default="output/ablate", help="run folders (checkpoints, logs, cluster jobs)")
    ap.add_argument("--results", help="summaries and reports; default: the committed results/ for the shipped "
                    "configs, OUT/results for runs with --opts (so that they never replace a shipped config's)")
    ap.add_argument("--rerun-stale", action="store_true",
                    help="run again, and replace, summaries of an earlier recipe (by default kept and reported apart)")
    ap.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    ap.add_argument("--report", action="store_true", help="train nothing: tabulate the suite's summaries")
    ap.add_argument("--reevaluate", action="store_true",
                    help="train nothing: re-evaluate the stale runs whose config changed only in evaluation "
                         "settings or weight averaging (their folders under --out needed), then report")
    ap.add_argument("--status", action="store_true",
                    help="train nothing: how many runs are done, running, pending, failed (with their logs)")
    ap.add_argument("--launcher", default="local", choices=["local", "submitit"],
                    help="local: one run after another in this shell; submitit: one SLURM job per run")
    cl = ap.add_argument_group("submitit launcher")
    cl.add_argument("--slurm-partition", help="SLURM partition of the jobs")
    cl.add_argument("--gpus-per-run", type=int, default=8, help="GPUs per node of each run (0: a CPU run)")
    cl.add_argument("--nodes-per-run", type=int, default=1, help="machines per run (launch's --num-machines)")
    cl.add_argument("--timeout-min", type=int, default=24 * 60,
                    help="time limit of a job; a run that needs longer is requeued and resumes")
    cl.add_argument("--slurm-extra", nargs="*", default=[], metavar="KEY=VALUE",
                    help="other sbatch settings, e.g. cpus_per_task=80 mem_gb=400 account=X constraint=volta32gb")
    cl.add_argument("--wait", action="store_true", help="block until the jobs end, then write the report")
    cl.add_argument("--submitit-cluster", choices=["slurm", "local"], help=argparse.SUPPRESS)  # tests: force local
    ap.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                    help="config options for every run (they are part of each run's config hash)")
    args = ap.parse_args(argv)
    if args.results is None:
        args.results = os.path.join(args.out, "results") if args.opts else os.path.join(ROOT, "results")
    if args.launcher == "local" and (args.wait or args.slurm_partition or args.slurm_extra):
        ap.error("--wait, --slurm-partition and --slurm-extra need --launcher submitit "
                 "(the local launcher runs one run after another and returns when all are done)")
    all_variants = suite_variants(args.suite, args.dataset)
    variants = all_variants
    if args.variants:
        unknown = set(args.variants) - {v.name for v in variants}
        if unknown:
            ap.error(f"unknown variants {sorted(unknown)}; choose from {[v.name for v in variants]}")
        variants = [v for v in variants if v.name in args.variants]
    return args, all_variants, variants


def adopt_identical_runs(jobs, args) -> None:
    """Writes, for each job without a current summary, the summary of an identical run (same config
    hash and seed) already kept under another suite or variant of the dataset, marked
    ``same_run_as``: training it again would repeat that run."""
    for v, seed, path, expected in jobs:
        state = results.summary_state(path, expected)
        if state in ("current", "failed") or (state == "stale" and not args.rerun_stale):
            continue
        twin = results.find_same_run(args.results, args.dataset, seed, expected, path)
        if twin is None:
            continue
        source = os.path.relpath(twin.pop("path"), os.path.join(args.results, args.dataset))
        results.write_summary(path, {**twin, "variant": v.name, "same_run_as": source})
        print(f"{v.name} seed {seed}: the same config and seed as {source}; its summary copied, not trained again")


def run_local(jobs, args) -> int:
    """Runs the jobs one after another in this shell (``--launcher local``); a run locked by another
    process is skipped, a failed one recorded and the next one started. Returns how many failed."""
    from .study.lock import run_lock

    durations, failed = [], 0
    for i, (v, seed, path, expected) in enumerate(jobs, start=1):
        head = f"[{i}/{len(jobs)}] {v.name} seed {seed}"
        state = results.summary_state(path, expected)
        if state == "current":
            print(f"{head}: summary exists, skipped")
            continue
        if state == "stale" and not args.rerun_stale:
            print(f"{head}: {path} holds a run of another config (an earlier recipe, reported apart): "
                  "kept, not run; --rerun-stale replaces it")
            continue
        if state == "failed" and not args.retry_failed:
            print(f"{head}: failed before ({results.load_summary(path)['failed']['cause']}); --retry-failed runs it again")
            continue
        out = run_dir(args.out, args.suite, args.dataset, v.name, seed)
        with run_lock(out) as other:
            if other is not None:
                print(f"{head}: being trained by {other} (lock {out}/run.lock), skipped")
                continue
            if results.summary_state(path, expected) == "current":  # finished while we waited our turn
                print(f"{head}: summary exists, skipped")
                continue
            # (hours, not a clock time: a suite can take days)
            eta = f", about {statistics.mean(durations) * (len(jobs) - i + 1) / 3600:.1f} h left" if durations else ""
            print(f"{head}: running{eta}", flush=True)
            t0 = time.time()
            summary = run_one(v, seed, args.opts, out, args.num_gpus)
            results.write_summary(path, summary)
        if "failed" in summary:
            failed += 1
            print(f"{head}: FAILED: {summary['failed']['cause']}; recorded in {path}", flush=True)
        else:
            durations.append(time.time() - t0)
    return failed


def reevaluate_stale(jobs, args) -> None:
    """``--reevaluate``: each stale summary of ``jobs`` rewritten from its run's final checkpoint
    evaluated under today's config; a run that cannot be (no folder, training config changed) is
    named with the reason and left stale."""
    from .reevaluate import reevaluate_run

    refused = []
    for v, seed, path, expected in jobs:
        state = results.summary_state(path, expected)
        if state != "stale":
            print(f"{v.name} seed {seed}: {'current' if state == 'current' else 'no summary (train it)'}, skipped")
            continue
        summary = results.load_summary(path)
        try:
            new = reevaluate_run(summary, run_config(v, seed, args.opts),
                                 run_dir(args.out, args.suite, args.dataset, v.name, seed), results.git_commit(ROOT))
        except ValueError as e:
            refused.append(f"{v.name} seed {seed}: {e}")
            continue
        results.write_summary(path, new)
        changed = "; ".join(new["reevaluated"]["changed"]) or "no setting"
        print(f"{v.name} seed {seed}: re-evaluated ({changed}): AP50 "
              f"{summary['metrics'].get('bbox/AP50', float('nan')):.2f} -> {new['metrics'].get('bbox/AP50', float('nan')):.2f}")
    for line in refused:
        print(f"not re-evaluated, still stale: {line}")


def main(argv=None):
    args, all_variants, variants = parse_args(argv)
    if args.report:
        report(all_variants, args.suite, args.dataset, args.results, args.opts)
        return
    # Seed-major: a suite stopped part-way has every variant at the same seeds, so the paired
    # comparisons it can already make use all of them.
    jobs = [(v, seed, results.summary_path(args.results, args.dataset, args.suite, v.name, seed),
             results.config_sha256(run_config(v, seed, args.opts)))
            for seed in range(args.seeds) for v in variants]
    if args.reevaluate:
        reevaluate_stale(jobs, args)
        report(all_variants, args.suite, args.dataset, args.results, args.opts)
        return
    if not args.status:
        adopt_identical_runs(jobs, args)
    if args.launcher == "local" and not args.status:
        failed = run_local(jobs, args)
        report(all_variants, args.suite, args.dataset, args.results, args.opts)
        if failed:
            raise SystemExit(f"{failed} run(s) failed (listed in the report); --retry-failed runs them again")
        return
    from . import cluster

    suite_dir = os.path.abspath(os.path.join(args.out, f"{args.suite}-{args.dataset}"))
    expected = {(v.name, seed): sha for v, seed, _, sha in jobs}
    keys = [(v.name, seed, path) for v, seed, path, _ in jobs]

    def states():
        return cluster.run_states(keys, expected, cluster.load_ledger(suite_dir), args.rerun_stale)

    title = f"{args.suite} suite on {args.dataset}"
    if args.status:
        cluster.print_status(states(), title)
        return
    executor = cluster.make_executor(
        os.path.join(suite_dir, "submitit"), f"{args.suite}-{args.dataset}", args.submitit_cluster,
        args.slurm_partition, args.gpus_per_run, args.nodes_per_run, args.timeout_min, args.slurm_extra)
    runs = [cluster.StudyRun(v, seed, args.opts, run_dir(args.out, args.suite, args.dataset, v.name, seed), path,
                             args.gpus_per_run, args.nodes_per_run) for v, seed, path, _ in jobs]
    cluster.submit(runs, states(), suite_dir, executor, args.retry_failed)
    if not args.wait:
        print(f"Jobs and logs: {suite_dir}; `--status` follows them, `--report` tabulates the finished runs")
        return
    counts = cluster.print_status(cluster.wait(states), title)
    if counts["done"]:
        report(all_variants, args.suite, args.dataset, args.results, args.opts)
    if counts["failed"]:
        raise SystemExit(f"{counts['failed']} run(s) failed; --retry-failed submits them again")


if __name__ == "__main__":
    main()
