"""The study's reports, rebuilt from the summaries alone (:mod:`.summaries`): per variant the mean
and 95% CI of each metric, the paired difference to the suite's reference with a verdict, per
class where a dataset has several, a generated reading with the suite's power, and results.md /
.csv / .png."""
import csv
import math
import os
import statistics
from typing import Callable, Dict, List, Optional, Sequence

from .stats import Interval, mean_ci, paired_difference, seeds_for_half_width, verdict
from .summaries import Summaries, config_precision, in_asked_precision, precision, speed_runs

METRICS = ["bbox/AP", "bbox/AP50", "bbox/AP75", "deeppcb/mAP", "deeppcb/F"]
PROPOSAL_METRICS = ["box_proposals/AR@100", "box_proposals/AR@1000"]

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


def tabulate(summaries: List[dict], variants: List[str], reference: str, title: str, notes: Sequence[str] = ()) -> str:
    """Markdown: per variant mean ± 95% CI half-width (Student t) of each metric, and the paired
    difference to ``reference`` over the seeds both have, with its CI and a verdict; ``notes``: paragraphs
    under the title."""
    present = [v for v in variants if any(s["variant"] == v for s in summaries)]
    metrics = [m for m in METRICS + PROPOSAL_METRICS if any(m in s["metrics"] for s in summaries)]
    short = [_short(m) for m in metrics]
    by = {v: {s["seed"]: s for s in summaries if s["variant"] == v} for v in present}
    lines = [f"### {title}", "", *(line for note in notes for line in (note, "")),
             "Mean ± half-width of the 95% confidence interval of the mean (Student t, n - 1 "
             "degrees of freedom); one seed: the value alone.", "",
             "| variant | seeds | " + " | ".join(short) + " | s/iter | peak RSS (MB) |",
             "|---|---|" + "---|" * (len(metrics) + 2)]
    for v in present:
        runs = list(by[v].values())
        cells = [_fmt(mean_ci([r["metrics"].get(m, math.nan) for r in runs])) for m in metrics]
        timed = speed_runs(runs)
        cells += [_fmt(mean_ci([r["s_per_iter"] for r in timed])), _fmt(mean_ci([r["peak_rss_mb"] for r in timed]), 0)]
        lines.append(f"| {v} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += precision_note(by) + mixed_pairs_note(by, reference)
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
        lines += [""] + reading(diffs, reference)
    lines += per_class_table(by, present, reference) + per_class_table(by, present, reference, "AP50")
    return "\n".join(lines) + "\n"


def _seed_groups(by: Dict[str, Dict[int, dict]], odd: Callable[[str, int, dict], Optional[tuple]]) -> Dict[tuple, List[int]]:
    """(variant, *what ``odd`` found) -> the seeds (ascending) of the runs for which ``odd(variant,
    seed, run)`` returns a tuple rather than None."""
    groups: Dict[tuple, List[int]] = {}
    for v, runs in by.items():
        for seed, run in sorted(runs.items()):
            found = odd(v, seed, run)
            if found is not None:
                groups.setdefault((v, *found), []).append(seed)
    return groups


def _seeds(variant: str, seeds: List[int]) -> str:
    """"`ce` seeds 0, 1" / "`ce` seed 3"."""
    return f"`{variant}` seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def precision_note(by: Dict[str, Dict[int, dict]]) -> List[str]:
    """A paragraph naming the runs that did not train in the precision their config asks for (a
    bfloat16 config on a CPU without bfloat16 units under ``FOCAL_RPN_CPU_BF16=auto`` trains in
    float32), so that a table never mixes precisions silently; nothing when every run did."""
    odd = _seed_groups(by, lambda v, seed, s: None if in_asked_precision(s) else (precision(s), config_precision(s)))
    if not odd:
        return []
    parts = [_seeds(v, seeds) + " " + (f"trained in {got}" if got != "unrecorded" else "recorded no precision")
             + f" where the config asks for {asked}" for (v, got, asked), seeds in odd.items()]
    return ["", "Precision: " + "; ".join(parts) + " (SOLVER.AMP.ENABLED on a CPU without bfloat16 units, "
            "`FOCAL_RPN_CPU_BF16=auto`: docs/config.md). A variant's s/iter and peak RSS are of its runs in "
            "the precision its config asks for, where it has any."]


def mixed_pairs_note(by: Dict[str, Dict[int, dict]], reference: str) -> List[str]:
    """A line naming the paired seeds whose two runs trained in different precisions (a bfloat16
    reference run against a float32 fallback, or the reverse): such a difference holds the precision's
    effect too, so a suite completed on another CPU should train every variant of a seed alike."""
    ref = by.get(reference, {})
    mixed = _seed_groups(by, lambda v, seed, run: (precision(run), precision(ref[seed]))
                         if v != reference and seed in ref and precision(run) != precision(ref[seed]) else None)
    if not mixed:
        return []
    parts = [f"{_seeds(v, seeds)} ({own} against {theirs})" for (v, own, theirs), seeds in mixed.items()]
    return ["", f"Pairs of two precisions (the difference holds the precision's effect too): {'; '.join(parts)}."]


def per_class_table(by: Dict[str, Dict[int, dict]], present: List[str], reference: str,
                    metric: str = "AP") -> List[str]:
    """Markdown lines for datasets of more than one class: each variant's COCO ``metric`` ("AP" or
    "AP50") per class (``bbox/<metric>-<class>``), mean ± 95% CI, and below it each other
    variant's paired Δ to ``reference`` per class with its verdict; none for one class or without
    the metric. The seeds (pairs) column counts the runs that have the metric: summaries written
    before the evaluator had it may lack it ("2 of 5": ``ablate --reevaluate all`` adds it)."""
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
    having = {v: {s for s, r in runs.items() if any(k in r["metrics"] for k in keys)} for v, runs in by.items()}

    def count(have: set, of: int) -> str:
        return f"{len(have)}" if len(have) == of else f"{len(have)} of {of}"

    lines = ["", f"{metric} per class ({what}), mean ± 95% CI{paired}", "",
             "| variant | seeds | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
    for v in present:
        lines.append(f"| {v} | {count(having[v], len(by[v]))} | "
                     + " | ".join(_fmt(mean_ci([r["metrics"].get(k, math.nan) for r in by[v].values()]))
                                  for k in keys) + " |")
    if not others:
        return lines
    ref = by.get(reference, {})
    lines += ["", "| Δ to " + f"`{reference}` | pairs | " + " | ".join(classes) + " |",
              "|---|---|" + "---|" * len(classes)]
    for v in others:
        cells = [count(having[v] & having.get(reference, set()), len(set(by[v]) & set(ref)))]
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


def report_markdown(groups: Summaries, variants: List[str], reference: str, title: str, opts: Sequence[str] = ()) -> str:
    """The tables of today's configs (with the ``--opts`` they ran under, if any), the failed runs,
    then one set of tables per earlier recipe."""
    parts = []
    if groups.current:
        shipped = "the shipped configs" + (f" with `--opts {' '.join(opts)}`" if opts else "")
        parts.append(tabulate(groups.current, variants, reference, f"{title}: {shipped}"))
    if groups.failed:
        parts.append("Failed runs (left out of the means; `--retry-failed` runs them again):\n\n" + "\n".join(
            f"- {s['variant']} seed {s['seed']}: {s['failed']['cause']} at iteration {s['failed']['iteration']} "
            f"(log: {s['failed']['log']})" for s in groups.failed) + "\n")
    for diff, summaries in groups.earlier.items():
        commits = sorted({s.get("git_commit", "unknown")[:7] for s in summaries})
        parts.append(tabulate(summaries, variants, reference,
                              f"{title}: recipe of commit {', '.join(commits)}, options `{diff}`"))
    return "\n".join(parts)


def write_report(groups: Summaries, variants: List[str], reference: str, out_dir: str, title: str,
                 opts: Sequence[str] = ()) -> str:
    """Writes results.md (see :func:`report_markdown`), results.csv (one row per run, with the
    recipe it ran) and results.png (AP50 and AP, means with 95% CIs, of today's configs, or else of
    the first earlier recipe) into ``out_dir``. Returns the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    md = report_markdown(groups, variants, reference, title, opts)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(md)
    rows = [(s, "shipped") for s in groups.current] + [(s, d) for d, g in groups.earlier.items() for s in g]
    metrics = [m for m in METRICS + PROPOSAL_METRICS if any(m in s["metrics"] for s, _ in rows)]
    keys = ["variant", "seed"] + metrics + ["iterations", "s_per_iter", "peak_rss_mb", "git_commit", "precision", "recipe"]
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for s, recipe in rows:
            w.writerow({**{k: s["metrics"].get(k, s.get(k, "")) for k in keys[:-2]}, "precision": precision(s), "recipe": recipe})
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
