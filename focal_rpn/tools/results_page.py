"""Writes a dataset's results page, ``docs/results/<dataset>.md``, and the README's results
table from the committed summaries alone (no options: each summary carries its config).

    python -m focal_rpn.tools.results_page --dataset trees
    python -m focal_rpn.tools.results_page --dataset deeppcb

Summaries are read from ``results/<dataset>/<suite>/`` (the shipped configs) and from
``results/earlier/<recipe>/<dataset>/<suite>/`` (studies of an earlier recipe, titled by the
options that rebuild it). The page keeps any hand-written text outside its generated block; the
README's block between ``<!-- results:<dataset>:begin -->`` and ``... :end -->`` is replaced.
"""
import argparse
import functools
import glob
import math
import os
import re
from typing import Dict, List, Tuple

from ..study import report, summaries as results, suites as ablate, sweep
from ..study.stats import mean_ci

BEGIN, END = "<!-- generated:begin -->", "<!-- generated:end -->"
TABLE_HEAD = "| config | seeds | AP | AP50 | mAP@0.33 | train min | summaries |\n|---|---|---|---|---|---|---|"


def suite_folders(root: str, dataset: str) -> List[Tuple[str, str]]:
    """(results root, suite) of every suite with summaries: the shipped root first, then the
    earlier recipes' roots in name order."""
    roots = [os.path.join(root, "results")] + sorted(glob.glob(os.path.join(root, "results", "earlier", "*")))
    return [(r, suite) for r in roots for suite in ablate.SUITES
            if glob.glob(os.path.join(r, dataset, suite, "*", "seed*.json"))]


@functools.lru_cache(maxsize=None)  # one read per suite folder and call (each builds every run's config)
def read_suite(results_root: str, dataset: str, suite: str) -> results.Summaries:
    variants = ablate.suite_variants(suite, dataset)
    by_name = {v.name: v for v in variants}
    return results.read_summaries(results_root, dataset, suite, [v.name for v in variants],
                                  lambda name, seed: ablate.run_config(by_name[name], seed, []))


def _ci(values) -> str:
    iv = mean_ci(values)
    return f"{iv.mean:.1f}" if iv.n == 1 else f"{iv.mean:.1f} ± {iv.half_width:.1f}"


def recipe_rows(root: str, dataset: str, link: str = "") -> List[str]:
    """One markdown row per shipped recipe (the reference variant of each of the
    :data:`RECIPE_SUITES` with summaries of today's config; links prefixed with ``link``): AP, AP50
    (and DeepPCB's mAP@0.33) with 95% CIs, seeds (with how many trained in another precision than
    their config asks for), training time (of the runs in the asked precision, :func:`speed_runs`)."""
    rows, listed = [], set()
    for results_root, suite in suite_folders(root, dataset):
        if results_root != os.path.join(root, "results") or suite not in ablate.RECIPE_SUITES:
            continue
        ref = ablate.REFERENCES[suite]
        runs = [s for s in read_suite(results_root, dataset, suite).current if s["variant"] == ref]
        config = next(v.config for v in ablate.suite_variants(suite, dataset) if v.name == ref)
        if not runs or config in listed:  # classes' reference is the rpn suite's: one row
            continue
        listed.add(config)
        metric = lambda m: _ci([s["metrics"][m] for s in runs]) if all(m in s["metrics"] for s in runs) else "-"  # noqa: E731
        minutes = [s["s_per_iter"] * s["iterations"] / 60 for s in results.speed_runs(runs) if not math.isnan(s["s_per_iter"])]
        fallback = [results.precision(s) for s in runs if not results.in_asked_precision(s)]
        seeds = f"{len(runs)} ({len(fallback)} in {', '.join(sorted(set(fallback)))})" if fallback else str(len(runs))
        rows.append(f"| [`{config}`]({link}{config}) | {seeds} | {metric('bbox/AP')} | {metric('bbox/AP50')} | "
                    f"{metric('deeppcb/mAP')} | {_ci(minutes) if minutes else '-'} | "
                    f"[`results/{dataset}/{suite}`]({link}results/{dataset}/{suite}) |")
    return rows


def suite_lines(root: str, dataset: str, link: str = "") -> List[str]:
    """One line per suite and recipe: how many paired comparisons resolved, and which (a sweep: its
    slopes against the measured ratio)."""
    lines = []
    for results_root, suite in suite_folders(root, dataset):
        groups = read_suite(results_root, dataset, suite)
        where = os.path.relpath(os.path.join(results_root, dataset, suite), root)
        recipe = "shipped configs" if results_root == os.path.join(root, "results") else "earlier recipe"
        for label, summaries in [("", groups.current)] + [(d, g) for d, g in groups.earlier.items()]:
            if len({s["variant"] for s in summaries}) < 2:  # nothing compared (a recipe's seeds: its row above)
                continue
            seeds = max(len({s["seed"] for s in summaries if s["variant"] == v}) for v in {s["variant"] for s in summaries})
            head = f"- `{suite}` on {dataset}, {recipe}{' (`' + label + '`)' if label and recipe == 'shipped configs' else ''}" \
                   f" ([`{where}`]({link}{where}), up to {seeds} seeds): "
            if suite in sweep.SPECS:  # a sweep's finding is its slopes, not each variant against one reference
                spec = sweep.SPECS[suite]
                lines.append(head + "; ".join(sweep.slope_lines(sweep.points(summaries, spec), spec)))
                continue
            md = report.tabulate(summaries, [v.name for v in ablate.suite_variants(suite, dataset)],
                                  ablate.REFERENCES[suite], "")
            m = re.search(r"Reading \(generated\): (\d+) of (\d+)", md)
            found: Dict[str, List[str]] = {}
            for ln in md.splitlines():
                r = re.match(r"- resolved: `(\S+)` (better|worse) than `\S+` on (\S+), (\S+ ± \S+)", ln)
                if r:
                    found.setdefault(f"`{r.group(1)}` {r.group(2)}", []).append(f"{r.group(3)} {r.group(4)}")
            if m.group(2) == "0":
                lines.append(head + "no comparison with two or more paired seeds yet")
                continue
            lines.append(head + f"{m.group(1)} of {m.group(2)} paired comparisons resolved"
                         + (": " + "; ".join(f"{k} on {', '.join(v)}" for k, v in found.items()) if found else ""))
    return lines


def page(root: str, dataset: str) -> str:
    """The generated block of docs/results/<dataset>.md."""
    parts = [BEGIN, "", "## Recipes", "",
             "Mean ± 95% CI half-width over seeds (Student t); training minutes = median s/iter × iterations "
             "on the machine each run records (a 2-core CPU developer machine unless noted).", "",
             TABLE_HEAD, *recipe_rows(root, dataset, "../../"), "", *suite_lines(root, dataset, "../../"), ""]
    for results_root, suite in suite_folders(root, dataset):
        where = os.path.relpath(os.path.join(results_root, dataset, suite), root)
        groups = read_suite(results_root, dataset, suite)
        md = report.report_markdown(groups, [v.name for v in ablate.suite_variants(suite, dataset)],
                                     ablate.REFERENCES[suite], f"{suite} suite on {dataset}")
        parts += [f"## `{where}`", "", md.replace("### ", "#### "), f"![{suite} on {dataset}](../../{where}/results.png)", ""]
        pts = sweep.points(groups.current, sweep.SPECS[suite]) if suite in sweep.SPECS else []
        if pts:  # the sweep's own table and figure (sweep.png, written by ablate --report)
            parts += [sweep.markdown(pts, sweep.SPECS[suite]).replace("### ", "#### "),
                      f"![imbalance sweep ({suite}) on {dataset}](../../{where}/sweep.png)", ""]
    return "\n".join(parts + [END]) + "\n"


def replace_block(text: str, begin: str, end: str, block: str) -> str:
    """``text`` with what lies between ``begin`` and ``end`` (markers included) replaced by
    ``block``, or ``block`` appended when the markers are absent."""
    if begin in text and end in text:
        return text[:text.index(begin)] + block.rstrip("\n") + text[text.index(end) + len(end):]
    return text.rstrip("\n") + "\n\n" + block


def write(root: str, dataset: str) -> List[str]:
    """Rewrites docs/results/<dataset>.md and the README's block for ``dataset``; returns the paths."""
    path = os.path.join(root, "docs", "results", f"{dataset}.md")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    old = open(path).read() if os.path.isfile(path) else f"# Results on {dataset}\n"
    # built before the file is opened: an error while building leaves the hand-written text as it was
    new = replace_block(old, BEGIN, END, page(root, dataset))
    with open(path, "w") as f:
        f.write(new)
    readme = os.path.join(root, "README.md")
    begin, end = f"<!-- results:{dataset}:begin -->", f"<!-- results:{dataset}:end -->"
    with open(readme) as f:
        text = f.read()
    if begin in text:
        block = "\n".join([begin, TABLE_HEAD, *recipe_rows(root, dataset), "", *suite_lines(root, dataset), end])
        with open(readme, "w") as f:
            f.write(replace_block(text, begin, end, block))
    return [path, readme]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=[d for d in ablate.DATASETS if d not in ("coco", "synthetic")])
    ap.add_argument("--root", default=ablate.CHECKOUT or ".", help="the checkout (results/, docs/, README.md)")
    args = ap.parse_args(argv)
    for path in write(args.root, args.dataset):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
