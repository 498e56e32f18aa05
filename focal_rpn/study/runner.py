"""Running the study's runs one after another in this shell, and reporting a suite: plan (the
jobs of a call), run (locked, resumed, failures recorded), summarise, report."""
import os
import statistics
import subprocess
import sys
import time
from typing import List

from ..engine.autocast import (CPU_BF16_ENV, cpu_bf16_mode, cpu_has_bfloat16, no_cpu_bfloat16_message, refuse_fallback_env,
                               training_precision)
from . import summaries as results, sweep
from .report import write_report
from .suites import REFERENCES, ROOT, Variant, run_config, run_dir


def summarize(variant: Variant, seed: int, opts: List[str], run_dir: str, peak_rss_mb: float,
              wall_s: float) -> dict:
    """The summary of a finished run in ``run_dir`` (read from its metrics.json), whichever launcher
    ran it."""
    cfg = run_config(variant, seed, opts)
    metrics = results.final_metrics(run_dir)
    summary = {
        "variant": variant.name, "seed": seed, "iterations": cfg.SOLVER.MAX_ITER,
        "s_per_iter": metrics.pop("s_per_iter"), "peak_rss_mb": peak_rss_mb, "wall_s": wall_s,
        **results.config_record(cfg, opts), "git_commit": results.git_commit(ROOT), "machine": results.machine(),
        # what it trained in: a bfloat16 config trains in float32 on a CPU without bfloat16 units
        # when FOCAL_RPN_CPU_BF16=auto is set (the training saw this process's environment or "refuse")
        "precision": training_precision(cfg.MODEL.DEVICE.split(":")[0], cfg.SOLVER.AMP.ENABLED),
        "metrics": metrics,
    }
    if cfg.MODEL.ANCHOR_GENERATOR.FIT:  # the anchors the run fitted, from the config it wrote
        from ..config import load_config

        summary["anchors"] = results.fitted_anchors(load_config(os.path.join(run_dir, "config.yaml"), check_datasets=[]))
    return summary


def set_aside_other_training(run_dir: str, cfg) -> None:
    """Renames ``run_dir`` to ``run_dir.stale-N`` (files kept) when it holds checkpoints of a config
    other than ``cfg`` (the variant changed since: its summary is stale), so that ``--resume``
    cannot continue, or take as finished, weights trained under the old config."""
    if not os.path.isfile(os.path.join(run_dir, "last_checkpoint")):
        return
    saved = os.path.join(run_dir, "config.yaml")  # written by train_net.py's default_setup
    try:
        from ..config import load_config

        trained = load_config(saved, check_datasets=[])
        if results.same_training(trained, cfg) and results.fitted_anchors(trained) == results.fitted_anchors(cfg):
            return
        why = "trained under another config" + (", or with anchors fitted otherwise" if cfg.MODEL.ANCHOR_GENERATOR.FIT else "")
    except Exception as e:  # no config.yaml, or one this version cannot read: not the same run
        why = f"its config.yaml cannot be compared ({type(e).__name__}: {e})"
    n = 1
    while os.path.exists(f"{run_dir}.stale-{n}"):
        n += 1
    os.rename(run_dir, f"{run_dir}.stale-{n}")
    print(f"{run_dir}: {why}; moved to {run_dir}.stale-{n}, training from scratch", flush=True)


def run_one(variant: Variant, seed: int, opts: List[str], run_dir: str, num_gpus: int, lock_fd: int = -1) -> dict:
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
        # the training process inherits the run's locked file: the run stays locked while it lives
        proc = subprocess.Popen(cmd, cwd=os.path.dirname(ROOT), stdout=log, stderr=subprocess.STDOUT,
                                pass_fds=(lock_fd,) if lock_fd >= 0 else (), env={**os.environ, **refuse_fallback_env()})
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        cfg = run_config(variant, seed, opts)
        return {"variant": variant.name, "seed": seed, **results.config_record(cfg, opts),
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
    md = write_report(groups, names, REFERENCES[suite], out_dir, f"{suite} suite on {dataset}", opts)
    if suite in sweep.SPECS:  # and its own reading: the gain of focal loss against the measured imbalance
        section = sweep.write(groups.current, out_dir, f"imbalance sweep ({suite}) on {dataset}", suite)
        md += "\n" + section
        with open(os.path.join(out_dir, "results.md"), "a") as f:
            f.write("\n" + section)
    print(md)
    print(f"Results: {os.path.abspath(out_dir)}/results.md, results.csv, results.png")
    return md


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


def _will_train(state, args) -> bool:
    """Whether a run whose summary is in ``state`` (:func:`results.summary_state`) trains in this call."""
    return state is None or (state == "stale" and args.rerun_stale) or (state == "failed" and args.retry_failed)


def check_cpu_bfloat16(jobs, args) -> None:
    """Stops before the first run when a run that will train asks for bfloat16 autocast on a CPU
    that has no bfloat16 units (where each run would fail: :func:`run_one` refuses the float32
    fallback unless ``FOCAL_RPN_CPU_BF16`` is set), naming the ways out."""
    mode = cpu_bf16_mode()  # a value it does not know is an error naming the variable
    if cpu_has_bfloat16() or (CPU_BF16_ENV in os.environ and mode != "refuse"):  # set: the user's call
        return
    asking = []
    for v, seed, path, expected in jobs:
        cfg = run_config(v, seed, args.opts)
        if cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu" and _will_train(results.summary_state(path, expected), args):
            asking.append(f"{v.name} seed {seed}")
    if asking:
        raise SystemExit(f"{no_cpu_bfloat16_message()}. {len(asking)} run(s) would train so ({asking[0]}, ...), "
                         f"and a float32 run must not be kept as one of this config's. Run the suite on a CPU with "
                         f"bfloat16 units, or set {CPU_BF16_ENV}=emulate to train in bfloat16 anyway, or pass "
                         "--opts SOLVER.AMP.ENABLED False (float32: another config, its own results folder); "
                         f"{CPU_BF16_ENV}=auto accepts float32 runs under this config")


def run_local(jobs, args) -> int:
    """Runs the jobs one after another in this shell (``--launcher local``); a run locked by another
    process is skipped, a failed one recorded and the next one started. Returns how many failed."""
    from .lock import run_lock

    check_cpu_bfloat16(jobs, args)
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
        with run_lock(out) as lock:
            if lock.holder is not None:
                print(f"{head}: being trained by {lock.holder} (lock {out}/run.lock), skipped")
                continue
            if results.summary_state(path, expected) == "current":  # finished while we waited our turn
                print(f"{head}: summary exists, skipped")
                continue
            # (hours, not a clock time: a suite can take days), over this run and the later ones
            # that will train: those with a current summary, of another recipe or failed are skipped
            left = sum(_will_train(results.summary_state(p, e), args) for _, _, p, e in jobs[i:]) + 1
            eta = f", about {statistics.mean(durations) * left / 3600:.1f} h left" if durations else ""
            print(f"{head}: running{eta}", flush=True)
            t0 = time.time()
            summary = run_one(v, seed, args.opts, out, args.num_gpus, lock_fd=lock.fd)
            results.write_summary(path, summary)
        if "failed" in summary:
            failed += 1
            print(f"{head}: FAILED: {summary['failed']['cause']}; recorded in {path}", flush=True)
        else:
            durations.append(time.time() - t0)
    return failed


def reevaluate(jobs, args, include_current: bool = False) -> None:
    """``--reevaluate``: each stale summary of ``jobs`` (with ``include_current``, each current one
    too) rewritten from its run's final checkpoint evaluated under today's config; a summary copied
    from an identical run (``same_run_as``) is copied again from its source. A run that cannot be
    (no folder, training config changed, a metric not reproduced) is named with the reason and left
    as it was."""
    from .reevaluate import reevaluate_run

    refused = []
    for v, seed, path, expected in jobs:
        state = results.summary_state(path, expected)
        if state not in ("stale", "current") or (state == "current" and not include_current):
            print(f"{v.name} seed {seed}: {state or 'no summary (train it)'}, skipped")
            continue
        summary = results.load_summary(path)
        if "same_run_as" in summary:
            try:
                _copy_again(summary, path, expected, args)
            except ValueError as e:
                refused.append(f"{v.name} seed {seed}: {e}")
            continue
        try:
            new = reevaluate_run(summary, run_config(v, seed, args.opts),
                                 run_dir(args.out, args.suite, args.dataset, v.name, seed), results.git_commit(ROOT))
        except ValueError as e:
            refused.append(f"{v.name} seed {seed}: {e}")
            continue
        results.write_summary(path, new)
        done = new["reevaluated"]
        what = "; ".join(done["changed"]) or "no setting"
        added = f", {len(done['added'])} metric(s) added" if done["added"] else ""
        print(f"{v.name} seed {seed}: re-evaluated ({what}{added}): {ap50_change(summary, new)}")
    for line in refused:
        print(f"not re-evaluated, left as it was: {line}")


def ap50_change(before: dict, after: dict) -> str:
    """"AP50 88.06 -> 88.61" of two summaries of a run; each figure names its test datasets when
    they differ ("AP50 88.06 on bccd_test -> 85.20 on bccd_val"), since then the two are not one
    measure that changed."""
    tests = [results.config_value(s, "DATASETS.TEST") for s in (before, after)]
    named = tests[0] != tests[1] and all(isinstance(t, list) for t in tests)  # "<absent>": no config recorded
    figures = [f"{s['metrics'].get('bbox/AP50', float('nan')):.2f}" + (f" on {', '.join(t)}" if named else "")
               for s, t in zip((before, after), tests)]
    return f"AP50 {figures[0]} -> {figures[1]}"


def _copy_again(summary: dict, path: str, expected: str, args) -> None:
    """Rewrites the copied summary at ``path`` from its ``same_run_as`` source when that is a current
    summary of the same run; ValueError otherwise."""
    source_path = os.path.join(args.results, args.dataset, summary["same_run_as"])
    source = results.load_summary(source_path) if os.path.isfile(source_path) else None
    if source is None or results.summary_identity(source) != expected or "failed" in source:
        raise ValueError(f"copied from {source_path}, which is no longer a summary of the same run; "
                         "re-evaluate or train that one first")
    copy = {**{k: v for k, v in source.items() if k != "path"}, "variant": summary["variant"],
            "same_run_as": summary["same_run_as"]}
    if copy == {k: v for k, v in summary.items() if k != "path"}:
        print(f"{summary['variant']} seed {summary['seed']}: the same as its source {summary['same_run_as']}, kept")
        return
    results.write_summary(path, copy)
    print(f"{summary['variant']} seed {summary['seed']}: copied again from {summary['same_run_as']}")
