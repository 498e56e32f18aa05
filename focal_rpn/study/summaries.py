"""Per-run summaries of the ablation study, kept as data in the repository, and the tables and
plot rebuilt from them alone.

One finished run leaves ``RESULTS/<dataset>/<suite>/<variant>/seed<K>.json``::

    {"variant", "seed", "iterations", "s_per_iter", "peak_rss_mb", "wall_s", "config_sha256",
     "config", "opts", "git_commit", "metrics": {"bbox/AP": ..., "bbox/AP50": ..., ...}}

``config`` is the dump of the run's config (:func:`comparable_config`) and ``config_sha256`` its
SHA-256. A summary whose hash differs from what its variant builds today ran an *earlier recipe*:
it is reported on its own, titled by what differs (:func:`recipe_difference`), and never replaced
unless asked. A run that failed leaves ``{"variant", "seed", "failed": {"cause", "iteration",
"log"}, ...}`` without metrics: listed apart, retried only when asked.
"""
import csv
import glob
import hashlib
import json
import math
import os
import statistics
import subprocess
from typing import Callable, Dict, List, NamedTuple, Optional

import yaml

from .stats import Interval, mean_ci, paired_difference, seeds_for_half_width, verdict

METRICS = ["bbox/AP", "bbox/AP50", "bbox/AP75", "deeppcb/mAP", "deeppcb/F"]
PROPOSAL_METRICS = ["box_proposals/AR@100", "box_proposals/AR@1000"]


# Keys that change how fast a run goes but not one bit of what it computes (each has a test that
# shows bitwise-equal training): left out of the hash, so that runs made with either value, or
# before the key existed, stay current.
RESULT_NEUTRAL_KEYS = ("MODEL.IMAGE_THREADS",)

# Config nodes of features added after runs were made, left out of the hash while their ENABLED is
# False: a switched-off feature is the run as it was before the keys existed, so it stays current.
SWITCHED_OFF_NODES = ("SOLVER.WEIGHT_AVERAGE",)

# Keys added after runs were made, left out of the hash while they hold the value that builds what
# those runs built (their default): such a run is the run as it was before the key existed.
ADDED_KEYS = {"MODEL.ROI_ALIGN_IMPL": "torchvision", "MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS": [],
              "MODEL.ROI_BOX_HEAD.BACKGROUND_WEIGHT": -1.0, "MODEL.ANCHOR_GENERATOR.FIT": False,
              "MODEL.ANCHOR_GENERATOR.FIT_MAX_IMAGES": 1000, "MODEL.ANCHOR_GENERATOR.FITTED_ON": (),
              "MODEL.RETINANET.NEG_POS_RATIO": 0.0, "MODEL.FOCAL_RPN.NEG_POS_RATIO": 0.0}

# With MODEL.ANCHOR_GENERATOR.FIT on, the anchors are an output of the fit: the hash is of the
# config as written (a run's config.yaml, fitted, and its variant's config hash alike), and the
# fitted anchors are compared beside it (run_identity).
FIT_OUTPUTS = ("SIZES", "ASPECT_RATIOS", "FITTED_ON")


def _parent(cfg, key: str):
    """(the node holding ``key``, its last name): ``"A.B.C"`` -> (cfg.A.B, "C"); {} if absent."""
    *path, leaf = key.split(".")
    for name in path:
        cfg = cfg.get(name, {})
    return cfg, leaf


def comparable_config(cfg):
    """A copy of ``cfg`` with OUTPUT_DIR blanked (where a run is written is not what it is),
    :data:`RESULT_NEUTRAL_KEYS` removed, :data:`SWITCHED_OFF_NODES` removed while off and
    :data:`ADDED_KEYS` removed while at their default; with anchors fitted, the :data:`FIT_OUTPUTS`."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = ""
    for key in RESULT_NEUTRAL_KEYS:
        parent, leaf = _parent(cfg, key)
        parent.pop(leaf, None)
    for key in SWITCHED_OFF_NODES:
        parent, leaf = _parent(cfg, key)
        if parent.get(leaf) is not None and not parent[leaf].get("ENABLED", False):
            parent.pop(leaf)
    if cfg.MODEL.ANCHOR_GENERATOR.get("FIT", False):
        for leaf in FIT_OUTPUTS:
            cfg.MODEL.ANCHOR_GENERATOR.pop(leaf, None)
    for key, default in ADDED_KEYS.items():
        parent, leaf = _parent(cfg, key)
        if leaf in parent and parent[leaf] == default:
            parent.pop(leaf)
    return cfg


def config_sha256(cfg) -> str:
    """SHA-256 of the dump of :func:`comparable_config` ``(cfg)``."""
    return hashlib.sha256(comparable_config(cfg).dump().encode()).hexdigest()


def fitted_anchors(cfg) -> Optional[dict]:
    """With MODEL.ANCHOR_GENERATOR.FIT, the anchors of ``cfg`` as a summary keeps them (``anchors``);
    else None."""
    ag = cfg.MODEL.ANCHOR_GENERATOR
    if not ag.get("FIT", False):
        return None
    return {"sizes": [[float(x) for x in s] for s in ag.SIZES], "aspect_ratios": [[float(r) for r in a] for a in ag.ASPECT_RATIOS]}


def config_record(cfg, opts) -> dict:
    """The fields by which a summary records its run's config: the hash, the comparable config,
    the extra options and, with anchors fitted, the anchors (see :func:`run_identity`)."""
    record = {"config_sha256": config_sha256(cfg), "config": comparable_config(cfg).dump(), "opts": list(opts)}
    anchors = fitted_anchors(cfg)
    return record if anchors is None else {**record, "anchors": anchors}


def _identity(sha256: str, anchors: Optional[dict]) -> str:
    return sha256 if anchors is None else f"{sha256} anchors {json.dumps(anchors, sort_keys=True)}"


def run_identity(cfg) -> str:
    """What makes two runs the same run: :func:`config_sha256`, and with anchors fitted, the anchors
    (a fit of other data, or by other code, trains another model from the same config as written)."""
    return _identity(config_sha256(cfg), fitted_anchors(cfg))


def summary_identity(summary: dict) -> str:
    """:func:`run_identity` of the run a summary records."""
    return _identity(summary["config_sha256"], summary.get("anchors"))


def same_training(a, b) -> bool:
    """Whether configs ``a`` and ``b`` train the same run (OUTPUT_DIR and RESULT_NEUTRAL_KEYS
    aside), compared as data: a config read back from a run's config.yaml dumps shared lists
    without the YAML anchors of the config it was written from, so their hashes can differ."""
    return yaml.safe_load(comparable_config(a).dump()) == yaml.safe_load(comparable_config(b).dump())


def git_commit(root: str) -> str:
    """HEAD of the repository at ``root``, with "-dirty" when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# Training scalars whose median over a run's logged iterations goes into its summary: the anchor
# imbalance it trained under (RetinaNet's labelled anchors, and the negatives its loss saw).
LOGGED_MEDIANS = ("retinanet/neg_pos_ratio", "retinanet/loss_neg_pos_ratio", "retinanet/num_pos_per_image",
                  "retinanet/num_neg_per_image", "rpn/neg_pos_ratio", "rpn/num_pos_per_image", "rpn/num_neg_per_image")


def final_metrics(run_dir: str) -> Dict[str, float]:
    """The last evaluation's bbox/*, box_proposals/* and deeppcb/* values, the median training step time
    (``s_per_iter``) and the medians of :data:`LOGGED_MEDIANS` from a run's metrics.json."""
    out: Dict[str, float] = {}
    times = []
    logged: Dict[str, List[float]] = {k: [] for k in LOGGED_MEDIANS}
    with open(os.path.join(run_dir, "metrics.json")) as f:
        for line in f:
            row = json.loads(line)
            if "time" in row:
                times.append(row["time"])
            out.update({k: v for k, v in row.items() if k.startswith(("bbox/", "box_proposals/", "deeppcb/"))})
            for k in logged.keys() & row.keys():
                logged[k].append(row[k])
    if "bbox/AP50" not in out:
        raise ValueError(f"{run_dir}/metrics.json has no evaluation (bbox/AP50): the run did not finish")
    out["s_per_iter"] = statistics.median(times) if times else math.nan
    out.update({k: statistics.median(v) for k, v in logged.items() if v})
    return out


def summary_path(results_dir: str, dataset: str, suite: str, variant: str, seed: int) -> str:
    return os.path.join(results_dir, dataset, suite, variant, f"seed{seed}.json")


def write_summary(path: str, summary: dict) -> None:
    """Writes ``summary`` atomically (a temporary file renamed): never a half summary."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def summary_state(path: str, expected: str) -> Optional[str]:
    """"current" when ``path`` holds a summary of the run :func:`run_identity` ``expected``, "failed"
    when it records a failed run of it, "stale" when it is a summary of another config (an
    earlier recipe, or anchors fitted otherwise), None when there is no summary."""
    if not os.path.isfile(path):
        return None
    s = load_summary(path)
    if summary_identity(s) != expected:
        return "stale"
    return "failed" if "failed" in s else "current"


def failure(run_dir: str, log: str, exit_code: int) -> dict:
    """The ``failed`` record of a run that ended with ``exit_code``: the cause read from the last
    lines of ``log`` (its exception), the last iteration in its metrics.json, and the log's path."""
    cause = f"exit code {exit_code}"
    try:
        with open(log, errors="replace") as f:
            lines = [line.strip() for line in f.readlines()[-400:] if line.strip()]
        errors = [line for line in lines if "Error" in line or "Exception" in line or "Killed" in line]
        if errors:
            cause = f"{errors[-1][:500]} (exit code {exit_code})"
    except OSError:
        pass
    iteration = None
    try:
        with open(os.path.join(run_dir, "metrics.json")) as f:
            for line in f:
                iteration = json.loads(line).get("iteration", iteration)
    except (OSError, ValueError):
        pass
    return {"cause": cause, "iteration": iteration, "log": log}


def find_same_run(results_dir: str, dataset: str, seed: int, identity: str, path: str) -> Optional[dict]:
    """A summary under ``results_dir/dataset`` other than ``path`` (another suite or variant) of a run
    whose :func:`run_identity` is ``identity``, with the same seed: the same training and evaluation, so its
    result stands for the run at ``path`` (e.g. the ``rpn_lambda`` suite's ``lambda_1`` is the ``rpn``
    suite's ``rpn_fl_sigmoid``). None when there is none; files that are not summaries are passed
    over (their own suite's report names them)."""
    for other in sorted(glob.glob(os.path.join(results_dir, dataset, "*", "*", f"seed{seed}.json"))):
        if os.path.abspath(other) == os.path.abspath(path):
            continue
        try:
            s = load_summary(other)
        except ValueError:
            continue
        if summary_identity(s) == identity and "failed" not in s:  # the seed is part of the config, so of the hash
            return s
    return None


def load_summary(path: str) -> dict:
    """A summary file; anything else is an error naming the file."""
    try:
        with open(path) as f:
            s = json.load(f)
        int(s["seed"]), s["config_sha256"], s["failed"]["cause"] if "failed" in s else s["metrics"]["bbox/AP50"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a run summary ({type(e).__name__}: {e})") from e
    return {**s, "path": path}


def summary_paths(folder: str) -> List[str]:
    """The ``seed<K>.json`` files in ``folder`` (a variant's), sorted; none if it does not exist."""
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return [os.path.join(folder, n) for n in names if n.startswith("seed") and n.endswith(".json") and n[4:-5].isdigit()]


def _flat(cfg_dump: str) -> Dict[str, object]:
    """{"A.B.C": value} of a config dump (YAML)."""
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
    walk(yaml.safe_load(cfg_dump) or {}, "")
    return out


def recipe_difference(summary: dict, today) -> str:
    """What the config a summary recorded differs in from ``today`` (the config its variant and
    seed build now), as "KEY VALUE ..." (the --opts that rebuild the run's config from today's
    yaml), or a note when the summary recorded no config."""
    if "config" not in summary:
        return f"config not recorded; commit {summary.get('git_commit', 'unknown')[:10]}"
    old, new = _flat(summary["config"]), _flat(comparable_config(today).dump())
    # a key left out of the hash at its default (ADDED_KEYS) holds that default
    value = lambda cfg, k: cfg.get(k, ADDED_KEYS.get(k, "<absent>"))  # noqa: E731
    keys = sorted(k for k in set(old) | set(new) if value(old, k) != value(new, k))
    return " ".join(f"{k} {json.dumps(v) if isinstance(v := value(old, k), (list, str)) else v}" for k in keys)


class Summaries(NamedTuple):
    """The summaries of a suite's folder, by what they can be compared with."""
    current: List[dict]  # of the configs the variants build today
    earlier: Dict[str, List[dict]]  # recipe difference (see recipe_difference) -> its summaries
    failed: List[dict]  # failed runs


def read_summaries(results_dir: str, dataset: str, suite: str, variants: List[str],
                   build_config: Callable[[str, int], object]) -> Summaries:
    """The summaries of ``variants`` under results_dir/dataset/suite, split by whether they ran the
    config ``build_config(variant, seed)`` gives today (current), another (grouped by what
    differs), or failed. A file that is not a summary is an error naming it."""
    current, earlier, failed = [], {}, []
    for v in variants:
        for path in summary_paths(os.path.join(results_dir, dataset, suite, v)):
            s = load_summary(path)
            cfg = build_config(v, int(s["seed"]))
            if "failed" in s:
                failed.append(s)
            elif summary_identity(s) != run_identity(cfg):
                earlier.setdefault(recipe_difference(s, cfg), []).append(s)
            else:
                current.append(s)
    order = lambda s: (variants.index(s["variant"]), s["seed"])  # noqa: E731
    return Summaries(sorted(current, key=order), {k: sorted(g, key=order) for k, g in earlier.items()},
                     sorted(failed, key=order))


# Column names of metrics whose short name would read as COCO's
_SHORT = {"deeppcb/mAP": "mAP@0.33", "deeppcb/F": "F@0.33"}


def _short(metric: str) -> str:
    """"bbox/AP50" -> "AP50"; DeepPCB's IoU > 0.33 measures say so."""
    return _SHORT.get(metric, metric.split("/", 1)[1])


def _fmt(iv: Interval, digits: int = 2) -> str:
    if iv.n == 0:
        return "-"
    if iv.n == 1:
        return f"{iv.mean:.{digits}f}"
    return f"{iv.mean:.{digits}f} ± {iv.half_width:.{digits}f}"


def tabulate(summaries: List[dict], variants: List[str], reference: str, title: str) -> str:
    """Markdown: per variant mean ± 95% CI half-width (Student t) of each metric, and the paired
    difference to ``reference`` over the seeds both have, with its CI and a verdict."""
    present = [v for v in variants if any(s["variant"] == v for s in summaries)]
    metrics = [m for m in METRICS + PROPOSAL_METRICS if any(m in s["metrics"] for s in summaries)]
    short = [_short(m) for m in metrics]
    by = {v: {s["seed"]: s for s in summaries if s["variant"] == v} for v in present}
    lines = [f"### {title}", "",
             "Mean ± half-width of the 95% confidence interval of the mean (Student t, n - 1 "
             "degrees of freedom); one seed: the value alone.", "",
             "| variant | seeds | " + " | ".join(short) + " | s/iter | peak RSS (MB) |",
             "|---|---|" + "---|" * (len(metrics) + 2)]
    for v in present:
        runs = list(by[v].values())
        cells = [_fmt(mean_ci([r["metrics"].get(m, math.nan) for r in runs])) for m in metrics]
        cells += [_fmt(mean_ci([r["s_per_iter"] for r in runs])), _fmt(mean_ci([r["peak_rss_mb"] for r in runs]), 0)]
        lines.append(f"| {v} | {len(runs)} | " + " | ".join(cells) + " |")
    others = [v for v in present if v != reference]
    if others:  # a suite of one variant (a recipe's seeds) has nothing to pair
        lines += ["", f"Paired difference to `{reference}` (same seeds), mean ± 95% CI half-width; "
                  "verdict `better`/`worse` when the interval excludes 0.", "",
                  "| variant | pairs | " + " | ".join(f"Δ{m} | verdict" for m in short) + " |",
                  "|---|---|" + "---|---|" * len(metrics)]
    ref = by.get(reference, {})
    diffs: Dict[str, Dict[str, Interval]] = {}
    for v in others:
        diffs[v] = {m: paired_difference({k: r["metrics"].get(m, math.nan) for k, r in by[v].items()},
                                         {k: r["metrics"].get(m, math.nan) for k, r in ref.items()})
                    for m in metrics}
        cells = [c for m in metrics for c in (_fmt(diffs[v][m]), verdict(diffs[v][m]))]
        lines.append(f"| {v} | {len(set(by[v]) & set(ref))} | " + " | ".join(cells) + " |")
    if others:
        lines += [""] + reading(diffs, reference)
    lines += per_class_table(by, present, reference) + per_class_table(by, present, reference, "AP50")
    return "\n".join(lines) + "\n"


def per_class_table(by: Dict[str, Dict[int, dict]], present: List[str], reference: str,
                    metric: str = "AP") -> List[str]:
    """Markdown lines for datasets of more than one class: each variant's COCO ``metric`` ("AP" or
    "AP50") per class (``bbox/<metric>-<class>``), mean ± 95% CI, and below it each other
    variant's paired Δ to ``reference`` per class with its verdict; none for one class or without
    the metric."""
    prefix = f"bbox/{metric}-"
    classes = sorted({m[len(prefix):] for runs in by.values() for r in runs.values() for m in r["metrics"]
                      if m.startswith(prefix)})
    if len(classes) < 2:
        return []
    keys = [f"{prefix}{c}" for c in classes]
    what = "COCO's AP at IoU 0.5:0.95" if metric == "AP" else "AP at IoU 0.5"
    others = [v for v in present if v != reference]
    paired = (f"; below it the paired Δ to `{reference}` per class, with `better`/`worse` where the "
              "interval excludes 0." if others else ".")
    lines = ["", f"{metric} per class ({what}), mean ± 95% CI{paired}", "",
             "| variant | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for v in present:
        lines.append(f"| {v} | " + " | ".join(_fmt(mean_ci([r["metrics"].get(k, math.nan) for r in by[v].values()]))
                                               for k in keys) + " |")
    if not others:
        return lines
    ref = by.get(reference, {})
    lines += ["", "| Δ to " + f"`{reference}` | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for v in others:
        cells = []
        for k in keys:
            d = paired_difference({s: r["metrics"].get(k, math.nan) for s, r in by[v].items()},
                                  {s: r["metrics"].get(k, math.nan) for s, r in ref.items()})
            word = verdict(d)
            cells.append(_fmt(d) + ("" if word == "not resolved" else f" {word}"))
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return lines


def reading(diffs: Dict[str, Dict[str, Interval]], reference: str, headline: str = "bbox/AP50",
            confidence: float = 0.95) -> List[str]:
    """Markdown lines that read the paired differences ``diffs[variant][metric]`` out: which
    comparisons resolved, how many would resolve by chance alone (each comparison of two equal
    variants resolves with probability 1 - ``confidence``), and, for the ``headline`` metric,
    the half-width inside which each unresolved difference lies."""
    tested = [(v, m, d) for v, row in diffs.items() for m, d in row.items() if d.n >= 2]
    resolved = [(v, m, d) for v, m, d in tested if verdict(d) != "not resolved"]
    lines = [f"Reading (generated): {len(resolved)} of {len(tested)} paired comparisons with at least 2 "
             f"pairs resolved at {confidence:.0%}; if no variant differed from `{reference}`, about "
             f"{(1 - confidence) * len(tested):.1f} would resolve by chance, so a lone resolved "
             "comparison, above all one of 2 pairs, is a lead rather than a finding."]
    for v, m, d in resolved:
        lines.append(f"- resolved: `{v}` {verdict(d)} than `{reference}` on {_short(m)}, "
                     f"{d.mean:+.2f} ± {d.half_width:.2f} ({d.n} pairs)")
    for v, row in diffs.items():
        d = row.get(headline)
        if d is None or verdict(d) != "not resolved":
            continue
        if d.n < 2:
            lines.append(f"- not resolved: `{v}` on {_short(headline)}, {d.n} pair(s): no interval yet")
        else:
            lines.append(f"- not resolved: `{v}` on {_short(headline)}, {d.mean:+.2f}, within "
                         f"±{d.half_width:.2f} ({d.n} pairs)")
    return lines + power(diffs, confidence=confidence)


def power(diffs: Dict[str, Dict[str, Interval]], metric: str = "bbox/AP", target: float = 1.0,
          confidence: float = 0.95, most: int = 1000) -> List[str]:
    """A markdown line on the suite's power for ``metric``: the median half-width of the paired
    differences with at least 3 pairs (2 give a standard deviation of one degree of freedom), and
    how many seeds (up to ``most``) the median paired standard deviation needs for a half-width of
    ``target``."""
    ds = [row[metric] for row in diffs.values() if metric in row and row[metric].n >= 3]
    if not ds:
        return []
    sd = statistics.median(d.std for d in ds)
    need = seeds_for_half_width(sd, target, confidence, most)
    lo, hi = min(d.n for d in ds), max(d.n for d in ds)
    return [f"- power: paired Δ{_short(metric)} half-widths median ±{statistics.median(d.half_width for d in ds):.2f} "
            f"({len(ds)} comparison{'s' * (len(ds) > 1)} of {lo if lo == hi else f'{lo}-{hi}'} pairs); "
            f"at their median paired SD ({sd:.2f}) ±{target:g} would take "
            + (f"about {need} seeds" if need else f"more than {most} seeds")]


def report_markdown(groups: Summaries, variants: List[str], reference: str, title: str) -> str:
    """The tables of today's configs, the failed runs, then one set of tables per earlier recipe."""
    parts = []
    if groups.current:
        parts.append(tabulate(groups.current, variants, reference, f"{title}: the shipped configs"))
    if groups.failed:
        parts.append("Failed runs (left out of the means; `--retry-failed` runs them again):\n\n" + "\n".join(
            f"- {s['variant']} seed {s['seed']}: {s['failed']['cause']} at iteration {s['failed']['iteration']} "
            f"(log: {s['failed']['log']})" for s in groups.failed) + "\n")
    for diff, summaries in groups.earlier.items():
        commits = sorted({s.get("git_commit", "unknown")[:7] for s in summaries})
        parts.append(tabulate(summaries, variants, reference,
                              f"{title}: recipe of commit {', '.join(commits)}, options `{diff}`"))
    return "\n".join(parts)


def write_report(groups: Summaries, variants: List[str], reference: str, out_dir: str, title: str) -> str:
    """Writes results.md (see :func:`report_markdown`), results.csv (one row per run, with the
    recipe it ran) and results.png (AP50 and AP, means with 95% CIs, of today's configs, or else of
    the first earlier recipe) into ``out_dir``. Returns the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    md = report_markdown(groups, variants, reference, title)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(md)
    rows = [(s, "shipped") for s in groups.current] + [(s, d) for d, g in groups.earlier.items() for s in g]
    metrics = [m for m in METRICS + PROPOSAL_METRICS if any(m in s["metrics"] for s, _ in rows)]
    keys = ["variant", "seed"] + metrics + ["iterations", "s_per_iter", "peak_rss_mb", "git_commit", "recipe"]
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for s, recipe in rows:
            w.writerow({**{k: s["metrics"].get(k, s.get(k, "")) for k in keys[:-1]}, "recipe": recipe})
    plotted = groups.current or next(iter(groups.earlier.values()), [])
    if plotted:
        _plot(plotted, variants, os.path.join(out_dir, "results.png"), title)
    return md


def _plot(summaries, variants, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [v for v in variants if any(s["variant"] == v for s in summaries)]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(present)), 4))
    width = 0.4
    for i, m in enumerate(["bbox/AP50", "bbox/AP"]):
        ivs = [mean_ci([s["metrics"].get(m, math.nan) for s in summaries if s["variant"] == v]) for v in present]
        err = [0 if math.isinf(iv.half_width) else iv.half_width for iv in ivs]
        ax.bar([j + (i - 0.5) * width for j in range(len(present))], [iv.mean for iv in ivs], width,
               yerr=err, capsize=3, label=m.split("/")[1])
    ax.set_xticks(range(len(present)))
    ax.set_xticklabels([f"{v}\n(n={sum(s['variant'] == v for s in summaries)})" for v in present],
                       rotation=30, ha="right")
    ax.set_ylabel("box AP (%), mean and 95% CI")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
