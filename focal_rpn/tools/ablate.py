"""Run an ablation suite with train_net.py, keep one summary per run, and tabulate the suite.

    python -m focal_rpn.tools.ablate --suite rpn --dataset trees --seeds 5
    python -m focal_rpn.tools.ablate --suite retinanet --dataset coco --num-gpus 8
    python -m focal_rpn.tools.ablate --suite rpn --dataset trees --report     # tables from results/ alone
    python -m focal_rpn.tools.ablate --suite rpn --dataset coco --seeds 5 --launcher submitit \
        --slurm-partition learnfair --gpus-per-run 8        # one SLURM job per run (focal_rpn.study.slurm)
    python -m focal_rpn.tools.ablate --suite rpn --dataset coco --seeds 5 --status
    python -m focal_rpn.tools.ablate --suite retinanet --dataset trees --seeds 5 --reevaluate  # test-time change
    python -m focal_rpn.tools.ablate --suite retinanet --dataset deeppcb --seeds 5 --reevaluate all  # a new metric

Each run is an ordinary ``train_net.py`` training + evaluation in its own OUTPUT_DIR
(``OUT/SUITE-DATASET/VARIANT/seedK``; an interrupted run resumes from its last checkpoint). A
finished run leaves its summary in ``RESULTS/DATASET/SUITE/VARIANT/seedK.json`` (see
:mod:`focal_rpn.study.summaries`; commit these): a variant/seed whose summary exists and is current is
skipped, so a suite continues across machines and days; a run identical to one kept under another
suite or variant (same config hash and seed) takes that summary, marked ``same_run_as``, instead of
training again; a stale one (its config changed) is run
again, unless only evaluation settings or the weight average changed: ``--reevaluate`` then
evaluates the run's final checkpoint (or the mean of its checkpoints) under today's config instead
(:mod:`focal_rpn.study.reevaluate`). The report (``results.md``, ``.csv``, ``.png`` beside the summaries) gives mean ± 95% CI per
variant and the paired difference to the suite's reference variant with a verdict.
"""
import argparse
import os

from ..study import runner, slurm
from ..study import summaries as results
from ..study.suites import DATASETS, SUITES, default_results, run_config, run_dir, suite_variants


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True, choices=SUITES)
    ap.add_argument("--dataset", default="trees", choices=DATASETS)
    ap.add_argument("--seeds", type=int, default=1, help="runs per variant, with seeds 0..N-1")
    ap.add_argument("--first-seed", type=int, default=0, metavar="K",
                    help="start at seed K (seeds K..N-1): e.g. to train first the seeds whose reference runs "
                         "are of this machine's precision")
    ap.add_argument("--num-gpus", type=int, default=1, help="local launcher: processes per run (CPU: gloo workers)")
    ap.add_argument("--variants", nargs="*", help="only these variants")
    ap.add_argument("--out", default="output/ablate", help="run folders (checkpoints, logs, cluster jobs)")
    ap.add_argument("--results", help="summaries and reports; default: the committed results/ for the shipped "
                    "configs, OUT/results for runs with --opts (so that they never replace a shipped config's)")
    ap.add_argument("--rerun-stale", action="store_true",
                    help="run again, and replace, summaries of an earlier recipe (by default kept and reported apart)")
    ap.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    ap.add_argument("--report", action="store_true", help="train nothing: tabulate the suite's summaries")
    ap.add_argument("--reevaluate", nargs="?", const="stale", choices=["stale", "all"],
                    help="train nothing: re-evaluate the stale runs whose config changed only in evaluation "
                         "settings or weight averaging (their folders under --out needed), then report; "
                         "'all': the current runs too, to add a metric the evaluator has gained since "
                         "(kept only if every metric they had comes back the same)")
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
        args.results = os.path.join(args.out, "results") if args.opts else default_results()
    if not 0 <= args.first_seed < args.seeds:
        ap.error(f"--first-seed {args.first_seed} must be in 0..{args.seeds - 1} (--seeds {args.seeds}: seeds 0..{args.seeds - 1})")
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
    if args.opts:  # a key that does not exist or a value of another type: one line now, not a traceback
        try:
            run_config(variants[0], 0, args.opts)
        except (AssertionError, KeyError, ValueError) as e:
            ap.error(f"--opts {' '.join(args.opts)}: {e}")
    return args, all_variants, variants


def main(argv=None):
    args, all_variants, variants = parse_args(argv)
    if args.report:
        runner.report(all_variants, args.suite, args.dataset, args.results, args.opts)
        return
    # Seed-major: a suite stopped part-way has every variant at the same seeds, so the paired
    # comparisons it can already make use all of them.
    jobs = [(v, seed, results.summary_path(args.results, args.dataset, args.suite, v.name, seed),
             results.run_identity(run_config(v, seed, args.opts)))
            for seed in range(args.first_seed, args.seeds) for v in variants]
    if args.reevaluate:
        runner.reevaluate(jobs, args, include_current=args.reevaluate == "all")
        runner.report(all_variants, args.suite, args.dataset, args.results, args.opts)
        return
    if not args.status:
        runner.adopt_identical_runs(jobs, args)
    if args.launcher == "local" and not args.status:
        failed = runner.run_local(jobs, args)
        runner.report(all_variants, args.suite, args.dataset, args.results, args.opts)
        if failed:
            raise SystemExit(f"{failed} run(s) failed (listed in the report); --retry-failed runs them again")
        return
    suite_dir = os.path.abspath(os.path.join(args.out, f"{args.suite}-{args.dataset}"))
    expected = {(v.name, seed): sha for v, seed, _, sha in jobs}
    keys = [(v.name, seed, path) for v, seed, path, _ in jobs]

    def states():
        return slurm.run_states(keys, expected, slurm.load_ledger(suite_dir), args.rerun_stale,
                                {(v.name, seed): run_dir(args.out, args.suite, args.dataset, v.name, seed)
                                 for v, seed, _, _ in jobs})

    title = f"{args.suite} suite on {args.dataset}"
    if args.status:
        slurm.print_status(states(), title)
        return
    executor = slurm.make_executor(
        os.path.join(suite_dir, "submitit"), f"{args.suite}-{args.dataset}", args.submitit_cluster,
        args.slurm_partition, args.gpus_per_run, args.nodes_per_run, args.timeout_min, args.slurm_extra)
    runs = [slurm.StudyRun(v, seed, args.opts, run_dir(args.out, args.suite, args.dataset, v.name, seed), path,
                             args.gpus_per_run, args.nodes_per_run) for v, seed, path, _ in jobs]
    slurm.submit(runs, states(), suite_dir, executor, args.retry_failed)
    if not args.wait:
        print(f"Jobs and logs: {suite_dir}; `--status` follows them, `--report` tabulates the finished runs")
        return
    counts = slurm.print_status(slurm.wait(states), title)
    if counts["done"]:
        runner.report(all_variants, args.suite, args.dataset, args.results, args.opts)
    if counts["failed"]:
        raise SystemExit(f"{counts['failed']} run(s) failed; --retry-failed submits them again")


if __name__ == "__main__":
    main()
