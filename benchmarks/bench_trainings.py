#!/usr/bin/env python
"""Training speed of whole short trainings, run one at a time in turn, as a ratio to a reference.

    python benchmarks/bench_trainings.py --reps 2 \\
        retinanet=configs/trees/retinanet.yaml rpn_ce=configs/trees/rpn_ce.yaml \\
        "rpn_ce_tv=configs/trees/rpn_ce.yaml:MODEL.ROI_ALIGN_IMPL torchvision"

Each variant is ``NAME=CONFIG[:KEY VALUE ...]``; the first is the reference. Every rep runs each
variant once, in the order given, as an ordinary ``train_net.py`` training of ``--iters``
iterations (no weight average, no evaluation, its own output folder under ``--out``), and reads
Detectron2's "Overall training speed" (s/iter over all but its first iterations: the data loader,
the model and the optimizer as a user's training runs them). Printed: each run's s/iter, its
ratio to the reference's run of the same rep, and per variant the median ratio over the reps and
that ratio times the variant's schedule over the reference's (each config's SOLVER.MAX_ITER,
after its options): the ratio of whole trainings' wall time. A variant's own SOLVER.MAX_ITER sets
its schedule only; every benchmark training runs ``--iters``.

This is the measurement for a question about training wall time between *different* models
(bench_train_step.py interleaves steps in one process, which is fair for two variants of one model
but slows the lighter of two different models: README, "The two-stage recipe", ninth round). Two
trainings never overlap; anything else running on the machine still shows in the spread between
reps, so run it on a quiet machine and compare ratios, not seconds.
"""
import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEED = re.compile(r"Overall training speed: (\d+) iterations in \S+ \(([\d.]+) s / it\)")


def parse_variant(spec: str):
    """``NAME=CONFIG[:KEY VALUE ...]`` -> (name, config, [KEY, VALUE, ...])."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"variant {spec!r}: expected NAME=CONFIG[:KEY VALUE ...]")
    config, _, opts = rest.partition(":")
    if not os.path.isfile(os.path.join(ROOT, config)):
        raise SystemExit(f"variant {name!r}: no config file {config!r} (paths are relative to {ROOT})")
    return name, config, shlex.split(opts)


def train_speed(config: str, opts, iters: int, out_dir: str) -> float:
    """s/iter of one ``train_net.py`` training of ``iters`` iterations in ``out_dir``."""
    # the variant's options first: the benchmark's own (its length among them) come last and win
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", os.path.join(ROOT, config), *opts,
           "SOLVER.MAX_ITER", str(iters), "SOLVER.WEIGHT_AVERAGE.ENABLED", "False", "TEST.EVAL_PERIOD", "0",
           "DATASETS.TEST", "()", "OUTPUT_DIR", out_dir]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    found = SPEED.findall(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not found:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise SystemExit(f"training {config} {' '.join(opts)} failed (exit {proc.returncode}):\n{tail}")
    return float(found[-1][1])


def schedule_iters(config: str, opts) -> int:
    """SOLVER.MAX_ITER of ``config`` with ``opts``: the length of the training the variant stands for."""
    sys.path.insert(0, ROOT)
    from focal_rpn.config import load_config

    return load_config(os.path.join(ROOT, config), list(opts)).SOLVER.MAX_ITER


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="NAME=CONFIG[:KEY VALUE ...]; the first is the reference")
    ap.add_argument("--reps", type=int, default=2, help="turns over all variants")
    ap.add_argument("--iters", type=int, default=100, help="iterations per training")
    ap.add_argument("--out", default="/tmp/bench_trainings", help="folder for the trainings' outputs")
    ap.add_argument("--json", help="also write the runs and ratios to this file")
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in args.variants]
    names = [v[0] for v in variants]
    if len(set(names)) != len(names):
        raise SystemExit(f"variant names must differ: {names}")
    runs = []
    for rep in range(1, args.reps + 1):
        speeds = {}
        for name, config, opts in variants:
            speeds[name] = train_speed(config, opts, args.iters, os.path.join(args.out, f"{name}-{rep}"))
            ratio = speeds[name] / speeds[names[0]]
            runs.append({"rep": rep, "variant": name, "s_per_iter": speeds[name], "ratio": ratio})
            print(f"rep {rep} {name:<24} {speeds[name]:.4f} s/iter  {ratio:.2f}x {names[0]}", flush=True)
    medians = {n: statistics.median(r["ratio"] for r in runs if r["variant"] == n) for n in names}
    schedules = {name: schedule_iters(config, opts) for name, config, opts in variants}
    training_time = {n: medians[n] * schedules[n] / schedules[names[0]] for n in names}
    print(f"median over {args.reps} reps of s/iter / {names[0]}'s s/iter in the same rep, and x the schedule:")
    for n in names:
        print(f"  {n:<24} {medians[n]:.2f}x per iteration, {schedules[n]} iterations: "
              f"{training_time[n]:.2f}x {names[0]}'s training time")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"iters": args.iters, "reference": names[0],
                       "variants": {n: {"config": c, "opts": o} for n, c, o in variants},
                       "runs": runs, "median_ratio": medians, "schedule_iters": schedules,
                       "training_time_ratio": training_time}, f, indent=1)
    return medians


if __name__ == "__main__":
    main()
