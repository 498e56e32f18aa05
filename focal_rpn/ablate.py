"""Run an ablation suite with train_net.py and summarise it as a table and a bar plot.

    python -m focal_rpn.ablate --suite rpn --dataset trees --seeds 3 --out output/ablate
    python -m focal_rpn.ablate --suite retinanet --dataset coco --num-gpus 8 --out output/ablate

Each run is an ordinary ``train_net.py`` training + evaluation in its own OUTPUT_DIR
(``OUT/SUITE-DATASET/VARIANT/seedK``). A finished run is not run again; a half-finished one resumes
from its last checkpoint. Writes ``results.csv`` (one row per run), ``results.md`` (mean ± std over
seeds per variant) and ``results.png`` (AP50 and AP with error bars). ``--report`` only rewrites
them from every finished run in ``OUT/SUITE-DATASET`` (any seeds), training nothing.
"""
import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Table 1 of the RetinaNet paper. γ sweep with the α the paper pairs with each γ.
RETINANET_VARIANTS: Dict[str, List[str]] = {
    "ce": ["MODEL.RETINANET.LOSS_TYPE", "ce"],
    "alpha_ce": ["MODEL.RETINANET.LOSS_TYPE", "alpha_ce", "MODEL.RETINANET.FOCAL_LOSS_ALPHA", "0.75"],
    **{
        f"gamma_{g:g}": ["MODEL.RETINANET.FOCAL_LOSS_GAMMA", str(g), "MODEL.RETINANET.FOCAL_LOSS_ALPHA", str(a)]
        for g, a in [(0.0, 0.75), (0.5, 0.5), (1.0, 0.25), (2.0, 0.25), (5.0, 0.25)]
    },
    "fl_star": ["MODEL.RETINANET.LOSS_TYPE", "fl_star"],
    "ohem": ["MODEL.RETINANET.LOSS_TYPE", "ohem"],
    "ohem_1_3": ["MODEL.RETINANET.LOSS_TYPE", "ohem_1_3"],
}
RPN_VARIANTS = ["rpn_ce", "rpn_fl_sigmoid", "rpn_fl_softmax", "ohem", "ohem_1_3", "roi_fl"]

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

METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
PROPOSAL_METRICS = ["AR@100", "AR@1000"]


def suite_runs(suite: str, dataset: str) -> List[Tuple[str, str, List[str]]]:
    """(variant, config file, extra options) of every variant of ``suite`` on ``dataset``."""
    if dataset not in ("trees", "coco", "synthetic"):
        raise ValueError(f"--dataset must be trees, coco or synthetic, got {dataset!r}")
    extra = SYNTHETIC_OPTS if dataset == "synthetic" else []
    if suite == "retinanet":
        cfg = "configs/retinanet_R50.yaml" if dataset == "coco" else "configs/trees/retinanet.yaml"
        return [(name, cfg, opts + extra) for name, opts in RETINANET_VARIANTS.items()]
    if suite == "rpn":
        def path(v):
            return f"configs/faster_rcnn_R50_{v}.yaml" if dataset == "coco" else f"configs/trees/{v}.yaml"
        return [(v, path(v), list(extra)) for v in RPN_VARIANTS]
    raise ValueError(f"--suite must be 'rpn' or 'retinanet', got {suite!r}")


def read_final_metrics(run_dir: str) -> Dict[str, float]:
    """Final evaluation (bbox/*, box_proposals/*) and median s/iter from a run's metrics.json."""
    path = os.path.join(run_dir, "metrics.json")
    out: Dict[str, float] = {}
    times = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "time" in row:
                times.append(row["time"])
            for k, v in row.items():
                if k.startswith(("bbox/", "box_proposals/")):
                    out[k.split("/", 1)[1]] = v
    out["s/iter"] = statistics.median(times) if times else float("nan")
    return out


def is_finished(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, "run_stats.json"))


def run_one(config: str, opts: List[str], run_dir: str, seed: int, num_gpus: int) -> None:
    """Trains and evaluates one run (resuming when it has a checkpoint) and records its wall time
    and peak resident memory in run_dir/run_stats.json."""
    os.makedirs(run_dir, exist_ok=True)
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", os.path.join(ROOT, config),
           "--num-gpus", str(num_gpus)]
    if os.path.isfile(os.path.join(run_dir, "last_checkpoint")):
        cmd.append("--resume")
    cmd += opts + ["OUTPUT_DIR", run_dir, "SEED", str(seed)]
    t0 = time.time()
    with open(os.path.join(run_dir, "stdout.txt"), "a") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"run failed (exit {code}): {' '.join(cmd)}; see {run_dir}/stdout.txt")
    stats = {"wall_s": time.time() - t0, "peak_rss_mb": usage.ru_maxrss / 1024}
    with open(os.path.join(run_dir, "run_stats.json"), "w") as f:
        json.dump(stats, f)


def summarise(rows: List[dict], out_dir: str, title: str) -> None:
    """Writes results.csv, results.md and results.png into ``out_dir``."""
    keys = ["variant", "seed"] + METRICS + PROPOSAL_METRICS + ["s/iter", "peak_rss_mb", "wall_s"]
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    cols = [k for k in METRICS + PROPOSAL_METRICS + ["s/iter", "peak_rss_mb"] if any(k in r for r in rows)]
    lines = [f"### {title}", "", "| variant | seeds | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    agg = {}
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        cells = []
        for k in cols:
            vals = [r[k] for r in rs if k in r and not math.isnan(r[k])]
            m = statistics.mean(vals) if vals else float("nan")
            s = statistics.stdev(vals) if len(vals) > 1 else 0.0
            agg[(v, k)] = (m, s)
            cells.append(f"{m:.2f} ± {s:.2f}" if len(rs) > 1 else f"{m:.2f}")
        lines.append(f"| {v} | {len(rs)} | " + " | ".join(cells) + " |")
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(variants, agg, os.path.join(out_dir, "results.png"), title)


def _plot(variants, agg, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(variants)), 4))
    width = 0.4
    for i, k in enumerate(["AP50", "AP"]):
        means = [agg.get((v, k), (float("nan"), 0))[0] for v in variants]
        stds = [agg.get((v, k), (0, 0))[1] for v in variants]
        ax.bar([j + (i - 0.5) * width for j in range(len(variants))], means, width, yerr=stds, capsize=3, label=k)
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels(variants, rotation=30, ha="right")
    ax.set_ylabel("box AP (%)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True, choices=["rpn", "retinanet"])
    ap.add_argument("--dataset", default="trees", choices=["trees", "coco", "synthetic"])
    ap.add_argument("--seeds", type=int, default=1, help="runs per variant, with seeds 0..N-1")
    ap.add_argument("--num-gpus", type=int, default=1, help="processes per run (CPU: gloo workers)")
    ap.add_argument("--variants", nargs="*", help="only these variants")
    ap.add_argument("--out", default="output/ablate")
    ap.add_argument("--report", action="store_true",
                    help="train nothing: tabulate every finished run (any seed) already in --out")
    ap.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config options for every run")
    args = ap.parse_args(argv)
    runs = suite_runs(args.suite, args.dataset)
    if args.variants:
        unknown = set(args.variants) - {r[0] for r in runs}
        if unknown:
            ap.error(f"unknown variants {sorted(unknown)}; choose from {[r[0] for r in runs]}")
        runs = [r for r in runs if r[0] in args.variants]
    out_dir = os.path.join(args.out, f"{args.suite}-{args.dataset}")
    if args.report:
        _report(runs, out_dir, args.suite, args.dataset)
        return
    jobs = [(v, cfg, opts, seed) for v, cfg, opts in runs for seed in range(args.seeds)]
    durations, rows = [], []
    for i, (variant, cfg, opts, seed) in enumerate(jobs, start=1):
        run_dir = os.path.join(out_dir, variant, f"seed{seed}")
        if is_finished(run_dir):
            print(f"[{i}/{len(jobs)}] {variant} seed {seed}: finished, skipped")
        else:
            remaining = len([j for j in jobs[i - 1:] if not is_finished(os.path.join(out_dir, j[0], f"seed{j[3]}"))])
            eta = f", ETA {time.strftime('%H:%M:%S', time.gmtime(statistics.mean(durations) * remaining))}" if durations else ""
            print(f"[{i}/{len(jobs)}] {variant} seed {seed}: running{eta}", flush=True)
            t0 = time.time()
            run_one(cfg, opts + list(args.opts), run_dir, seed, args.num_gpus)
            durations.append(time.time() - t0)
        rows.append(read_run(run_dir, variant, seed))
    summarise(rows, out_dir, f"{args.suite} suite on {args.dataset}")
    print(f"Results: {os.path.abspath(out_dir)}/results.md, results.csv, results.png")


def read_run(run_dir: str, variant: str, seed: int) -> dict:
    """One results row: variant, seed, final metrics, s/iter, wall time and peak memory."""
    with open(os.path.join(run_dir, "run_stats.json")) as f:
        stats = json.load(f)
    return {"variant": variant, "seed": seed, **read_final_metrics(run_dir), **stats}


def _report(runs, out_dir: str, suite: str, dataset: str) -> None:
    rows = []
    for variant, _, _ in runs:
        vdir = os.path.join(out_dir, variant)
        names = os.listdir(vdir) if os.path.isdir(vdir) else []
        seeds = sorted(int(d[4:]) for d in names if d.startswith("seed") and d[4:].isdigit())
        rows += [read_run(os.path.join(vdir, f"seed{k}"), variant, k) for k in seeds
                 if is_finished(os.path.join(vdir, f"seed{k}"))]
    if not rows:
        raise SystemExit(f"no finished run under {out_dir}: nothing to report")
    summarise(rows, out_dir, f"{suite} suite on {dataset}")
    print(f"Results: {os.path.abspath(out_dir)}/results.md, results.csv, results.png")


if __name__ == "__main__":
    main()
