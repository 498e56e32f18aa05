"""The imbalance sweep's reading (suite ``sweep``): does focal loss gain more over cross-entropy
the more negatives per positive its classification loss sees, as the RetinaNet paper argues?

Per point of the dial (MODEL.RETINANET.NEG_POS_RATIO), the paired differences FL − CE and
FL − α-CE (same seeds) with 95% CIs, against the negatives per positive the runs' losses actually
saw (the median of their logged ``retinanet/loss_neg_pos_ratio``); then the slope of the
difference against log10 of that ratio (least squares over every seed's difference, t interval).
"""
import math
import os
from typing import Dict, List, NamedTuple

from .stats import Interval, mean_ci, paired_difference, t_quantile, verdict
from .suites import SWEEP_LOSSES, SWEEP_RATIOS, sweep_name

METRIC = "bbox/AP"
COMPARISONS = (("fl", "ce"), ("fl", "alpha_ce"))
# The ratio a run's loss saw; runs summarised before that scalar existed logged only the ratio of
# labelled anchors, the same thing when every negative is in the loss (NEG_POS_RATIO 0).
RATIO_KEYS = ("retinanet/loss_neg_pos_ratio", "retinanet/neg_pos_ratio")


class Point(NamedTuple):
    setting: float  # NEG_POS_RATIO (0: every negative)
    ratio: float  # measured negatives per positive in the loss (median over the point's runs)
    values: Dict[str, Dict[int, float]]  # loss -> seed -> METRIC
    diffs: Dict[str, Interval]  # "fl-ce", "fl-alpha_ce" -> paired difference


def _ratio(summary: dict) -> float:
    return next((summary["metrics"][k] for k in RATIO_KEYS if k in summary["metrics"]), math.nan)


def points(summaries: List[dict], metric: str = METRIC) -> List[Point]:
    """The sweep's points that have runs, in dial order (fewest negatives first)."""
    out = []
    for r in sorted(SWEEP_RATIOS, key=lambda r: math.inf if r == 0 else r):
        runs = {loss: {s["seed"]: s for s in summaries if s["variant"] == sweep_name(loss, r) and metric in s["metrics"]}
                for loss in SWEEP_LOSSES}
        if not any(runs.values()):
            continue
        ratios = sorted(x for by_seed in runs.values() for s in by_seed.values() if not math.isnan(x := _ratio(s)))
        values = {loss: {seed: s["metrics"][metric] for seed, s in by_seed.items()} for loss, by_seed in runs.items()}
        diffs = {f"{a}-{b}": paired_difference(values[a], values[b]) for a, b in COMPARISONS}
        out.append(Point(r, ratios[len(ratios) // 2] if ratios else math.nan, values, diffs))
    return out


def slope(pts: List[Point], a: str, b: str, confidence: float = 0.95) -> Interval:
    """Least-squares slope of the per-seed difference a − b against log10(measured ratio), with
    its t interval (n − 2 degrees of freedom); NaN without two ratios."""
    xs, ys = [], []
    for p in pts:
        if math.isnan(p.ratio):
            continue
        for seed in p.values[a].keys() & p.values[b].keys():
            xs.append(math.log10(p.ratio))
            ys.append(p.values[a][seed] - p.values[b][seed])
    n = len(xs)
    if n < 3 or len(set(xs)) < 2:
        return Interval(math.nan, math.nan, math.nan, n)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b1 = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    resid = sum((y - my - b1 * (x - mx)) ** 2 for x, y in zip(xs, ys))
    se = math.sqrt(resid / (n - 2) / sxx)
    return Interval(b1, se, t_quantile(confidence, n - 2) * se, n)


def _fmt(iv: Interval) -> str:
    if iv.n == 0 or math.isnan(iv.mean):
        return "-"
    if iv.n == 1 or math.isnan(iv.half_width):
        return f"{iv.mean:+.1f}"
    return f"{iv.mean:+.1f} ± {iv.half_width:.1f}"


def markdown(pts: List[Point], metric: str = METRIC) -> str:
    name = metric.split("/")[-1]
    lines = [f"### Imbalance sweep: {name} of FL, CE and α-CE against the negatives per positive in the loss", "",
             f"Per point, mean {name} and the paired difference (same seeds) with its 95% CI; `better`/`worse` "
             "when the interval excludes 0. The measured ratio is the median over the point's runs of the "
             "negatives per positive their classification loss saw (training crops).", "",
             "| NEG_POS_RATIO | measured neg:pos | seeds | FL | CE | α-CE | FL − CE | FL − α-CE |",
             "|---|---|---|---|---|---|---|---|"]
    for p in pts:
        seeds = min(len(v) for v in p.values.values())
        means = {loss: mean_ci(list(v.values())).mean if v else math.nan for loss, v in p.values.items()}
        mean = lambda loss: "-" if math.isnan(means[loss]) else f"{means[loss]:.1f}"  # noqa: E731
        cells = [f"{_fmt(p.diffs[f'{a}-{b}'])} {verdict(p.diffs[f'{a}-{b}']) if p.diffs[f'{a}-{b}'].n > 1 else ''}".strip()
                 for a, b in COMPARISONS]
        ratio = "-" if math.isnan(p.ratio) else f"{p.ratio:.0f}:1"
        lines.append(f"| {'all' if p.setting == 0 else f'{p.setting:g}'} | {ratio} | {seeds} | {mean('fl')} | "
                     f"{mean('ce')} | {mean('alpha_ce')} | {cells[0]} | {cells[1]} |")
    lines.append("")
    for a, b in COMPARISONS:
        s = slope(pts, a, b)
        text = "not enough points" if math.isnan(s.mean) else (
            f"{s.mean:+.2f} ± {s.half_width:.2f} {name} per tenfold ratio ({s.n} paired runs), "
            f"{'grows with the ratio' if s.mean - s.half_width > 0 else 'shrinks with the ratio' if s.mean + s.half_width < 0 else 'no resolved trend'}")
        lines.append(f"- slope of {a.upper() if a == 'fl' else a} − {b.replace('alpha_ce', 'α-CE').replace('ce', 'CE')} "
                     f"against log10(neg:pos): {text}")
    return "\n".join(lines) + "\n"


def plot(pts: List[Point], path: str, title: str, metric: str = METRIC) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    plotted = False
    for k, (a, b) in enumerate(COMPARISONS):
        shown = [p for p in pts if not math.isnan(p.ratio) and p.diffs[f"{a}-{b}"].n > 0]
        if not shown:
            continue
        xs = [p.ratio * (1.04 if k else 1 / 1.04) for p in shown]  # side by side
        ivs = [p.diffs[f"{a}-{b}"] for p in shown]
        err = [0 if math.isnan(iv.half_width) or math.isinf(iv.half_width) else iv.half_width for iv in ivs]
        label = "FL − CE" if b == "ce" else "FL − α-CE"
        ax.errorbar(xs, [iv.mean for iv in ivs], yerr=err, fmt="o-", capsize=3, label=label)
        plotted = True
    if not plotted:
        ax.text(0.5, 0.5, "no point with a measured ratio yet", transform=ax.transAxes, ha="center")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("negatives per positive in the classification loss (measured)")
    ax.set_ylabel(f"Δ {metric.split('/')[-1]} (paired, 95% CI)")
    ax.set_title(title)
    if plotted:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(summaries: List[dict], out_dir: str, title: str) -> str:
    """sweep.png into ``out_dir``; returns the markdown section (for results.md)."""
    pts = points(summaries)
    if not pts:
        return ""
    plot(pts, os.path.join(out_dir, "sweep.png"), title)
    return markdown(pts) + "\n![imbalance sweep](sweep.png)\n"
