"""The imbalance sweeps' reading (suites ``sweep`` and ``sweep_rpn``): does focal loss gain more
the more negatives per positive its loss sees, as the RetinaNet paper argues?

Per point of the dial (MODEL.RETINANET.NEG_POS_RATIO, MODEL.FOCAL_RPN.NEG_POS_RATIO), the paired
differences (same seeds) with 95% CIs, FL − CE and FL − α-CE in RetinaNet, FocalRPN − the sampled
RPN in Faster R-CNN, against the negatives per positive the focal runs' losses actually saw (the
median of their logged ratio); then the slope of each difference against log10 of that ratio
(least squares over every seed's difference, t interval).
"""
import math
import os
import statistics
from typing import Callable, Dict, List, NamedTuple, Tuple

from .stats import Interval, mean_ci, paired_difference, t_quantile, verdict
from .suites import SWEEP_LOSSES, SWEEP_RATIOS, sweep_name

METRIC = "bbox/AP"


class Spec(NamedTuple):
    roles: Dict[str, Callable[[float], str]]  # role -> its variant's name at a dial setting
    labels: Dict[str, str]  # role -> column label
    comparisons: Tuple[Tuple[str, str], ...]  # (a, b): a − b
    ratio_roles: Tuple[str, ...]  # the roles whose runs' logged ratio is the point's
    # Logged ratios, first found wins: runs summarised before the loss's own ratio was logged
    # have only the labelled anchors' ratio, the same thing when every negative is in the loss.
    ratio_keys: Tuple[str, ...]
    pos_key: str  # the logged positive anchors per image: the same at every point (the labels stay)


SPECS = {
    "sweep": Spec({loss: (lambda r, loss=loss: sweep_name(loss, r)) for loss in SWEEP_LOSSES},
                  {"fl": "FL", "ce": "CE", "alpha_ce": "α-CE"}, (("fl", "ce"), ("fl", "alpha_ce")),
                  tuple(SWEEP_LOSSES), ("retinanet/loss_neg_pos_ratio", "retinanet/neg_pos_ratio"),
                  "retinanet/num_pos_per_image"),
    "sweep_rpn": Spec({"focal": lambda r: sweep_name("focal", r), "sampled": lambda r: "sampled"},
                      {"focal": "FocalRPN", "sampled": "sampled RPN"}, (("focal", "sampled"),), ("focal",),
                      ("rpn/neg_pos_ratio",), "rpn/num_pos_per_image"),
}


class Point(NamedTuple):
    setting: float  # the dial (0: every negative)
    ratio: float  # measured negatives per positive in the loss (median over the point's runs)
    positives: float  # measured positive anchors per training image (median over the point's runs)
    values: Dict[str, Dict[int, float]]  # role -> seed -> metric
    diffs: Dict[str, Interval]  # "a-b" -> paired difference


def _logged(summary: dict, keys) -> float:
    """The first of ``keys`` a run's summary holds (its logged median), else NaN."""
    return next((summary["metrics"][k] for k in keys if k in summary["metrics"]), math.nan)


def _median(xs: List[float]) -> float:
    """The upper median of the values that are not NaN (one of the runs' own values); NaN if none."""
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median_high(xs) if xs else math.nan


def points(summaries: List[dict], spec: Spec = SPECS["sweep"], metric: str = METRIC) -> List[Point]:
    """The sweep's points that have runs of a focal role, fewest negatives first."""
    out = []
    for r in sorted(SWEEP_RATIOS, key=lambda r: math.inf if r == 0 else r):
        runs = {role: {s["seed"]: s for s in summaries if s["variant"] == name(r) and metric in s["metrics"]}
                for role, name in spec.roles.items()}
        if not any(runs[role] for role in spec.ratio_roles):
            continue
        focal_runs = [s for role in spec.ratio_roles for s in runs[role].values()]
        ratio = _median([_logged(s, spec.ratio_keys) for s in focal_runs])
        positives = _median([_logged(s, (spec.pos_key,)) for s in focal_runs])
        values = {role: {seed: s["metrics"][metric] for seed, s in by_seed.items()} for role, by_seed in runs.items()}
        diffs = {f"{a}-{b}": paired_difference(values[a], values[b]) for a, b in spec.comparisons}
        out.append(Point(r, ratio, positives, values, diffs))
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


def _common_seeds(p: Point) -> set:
    """The seeds every role with runs at point ``p`` has: a point part-way through a seed then
    compares like with like, and FL − CE is the difference of the FL and CE means."""
    have = [set(by_seed) for by_seed in p.values.values() if by_seed]
    return set.intersection(*have) if have else set()


def _role_mean(p: Point, role: str) -> Interval:
    """Mean and 95% CI of ``role``'s metric at point ``p`` over :func:`_common_seeds` (n 0: none)."""
    return mean_ci([p.values[role][k] for k in sorted(_common_seeds(p)) if k in p.values[role]])


def markdown(pts: List[Point], spec: Spec = SPECS["sweep"], metric: str = METRIC) -> str:
    name = metric.split("/")[-1]
    roles = list(spec.roles)
    pairs = [(a, b, f"{spec.labels[a]} − {spec.labels[b]}") for a, b in spec.comparisons]
    lines = [f"### Imbalance sweep: {name} against the negatives per positive in the loss", "",
             f"Per point, mean {name} over the seeds all its runs have and the paired difference (same "
             "seeds) with its 95% CI; `better`/`worse` "
             "when the interval excludes 0. The measured ratio is the median over the point's runs of the "
             "negatives per positive their loss saw (training crops), beside the positive anchors per "
             "crop, which the dial leaves alone.", "",
             "| NEG_POS_RATIO | measured neg:pos | positives / image | seeds | " + " | ".join(spec.labels[r] for r in roles) + " | "
             + " | ".join(label for _, _, label in pairs) + " |",
             "|---|---|---|---|" + "---|" * (len(roles) + len(pairs))]
    for p in pts:
        seeds = len(_common_seeds(p))
        means = [_role_mean(p, r).mean for r in roles]
        cells = []
        for a, b, _ in pairs:
            d = p.diffs[f"{a}-{b}"]
            cells.append(f"{_fmt(d)} {verdict(d) if d.n > 1 else ''}".strip())
        ratio = "-" if math.isnan(p.ratio) else f"{p.ratio:.0f}:1"
        pos = "-" if math.isnan(p.positives) else f"{p.positives:.0f}"
        lines.append(f"| {'all' if p.setting == 0 else f'{p.setting:g}'} | {ratio} | {pos} | {seeds} | "
                     + " | ".join("-" if math.isnan(m) else f"{m:.1f}" for m in means) + " | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {line}" for line in slope_lines(pts, spec, metric)]
    return "\n".join(lines) + "\n"


def slope_lines(pts: List[Point], spec: Spec = SPECS["sweep"], metric: str = METRIC) -> List[str]:
    """One sentence per comparison: its slope against log10(measured ratio) with CI and verdict."""
    name, out = metric.split("/")[-1], []
    for a, b in spec.comparisons:
        s = slope(pts, a, b)
        text = "not enough points" if math.isnan(s.mean) else (
            f"{s.mean:+.2f} ± {s.half_width:.2f} {name} per tenfold ratio ({s.n} paired runs), "
            f"{'grows with the ratio' if s.mean - s.half_width > 0 else 'shrinks with the ratio' if s.mean + s.half_width < 0 else 'no resolved trend'}")
        out.append(f"slope of {spec.labels[a]} − {spec.labels[b]} against log10(neg:pos): {text}")
    return out


def plot(pts: List[Point], path: str, title: str, spec: Spec = SPECS["sweep"], metric: str = METRIC) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_abs, ax) = plt.subplots(1, 2, figsize=(11, 4))
    name = metric.split("/")[-1]
    # left: each loss's own metric per point (over the seeds all its runs have), the curves whose
    # differences the right panel shows with their paired intervals
    for k, role in enumerate(spec.roles):
        shown = [(p, _role_mean(p, role)) for p in pts if not math.isnan(p.ratio)]
        shown = [(p, iv) for p, iv in shown if iv.n > 0]
        if shown:
            xs = [p.ratio * 1.04 ** (k - (len(spec.roles) - 1) / 2) for p, _ in shown]
            err = [0 if iv.n < 2 else iv.half_width for _, iv in shown]
            ax_abs.errorbar(xs, [iv.mean for _, iv in shown], yerr=err, fmt="o-", capsize=3, label=spec.labels[role])
    ax_abs.set_xscale("log")
    ax_abs.set_xlabel("negatives per positive in the loss (measured)")
    ax_abs.set_ylabel(f"{name} (mean, 95% CI)")
    ax_abs.set_title("each loss")
    if ax_abs.has_data():
        ax_abs.legend()
    plotted = False
    for k, (a, b) in enumerate(spec.comparisons):
        shown = [p for p in pts if not math.isnan(p.ratio) and p.diffs[f"{a}-{b}"].n > 0]
        if not shown:
            continue
        xs = [p.ratio * 1.04 ** (k - (len(spec.comparisons) - 1) / 2) for p in shown]  # side by side
        ivs = [p.diffs[f"{a}-{b}"] for p in shown]
        err = [0 if math.isnan(iv.half_width) or math.isinf(iv.half_width) else iv.half_width for iv in ivs]
        ax.errorbar(xs, [iv.mean for iv in ivs], yerr=err, fmt="o-", capsize=3,
                    label=f"{spec.labels[a]} − {spec.labels[b]}")
        plotted = True
    if not plotted:
        ax.text(0.5, 0.5, "no point with a measured ratio yet", transform=ax.transAxes, ha="center")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("negatives per positive in the loss (measured)")
    ax.set_ylabel(f"Δ {name} (paired, 95% CI)")
    ax.set_title("paired differences")
    fig.suptitle(title)
    if plotted:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(summaries: List[dict], out_dir: str, title: str, suite: str = "sweep") -> str:
    """sweep.png into ``out_dir``; returns the markdown section (for results.md)."""
    spec = SPECS[suite]
    pts = points(summaries, spec)
    if not pts:
        return ""
    plot(pts, os.path.join(out_dir, "sweep.png"), title, spec)
    return markdown(pts, spec) + "\n![imbalance sweep](sweep.png)\n"
