"""Compare run summaries from any folders, seed by seed: the study's table for configs that are
not in a suite (a tweak of a recipe against the recipe, a GPU run against a CPU one).

    python -m focal_rpn.tools.compare results/trees/retinanet/gamma_2 results/precision/trees/retinanet/gamma_2 \
        --names bf16 float32 [--output compare.md]

Each folder holds ``seed<K>.json`` summaries (what ``focal_rpn.tools.ablate`` writes; see
:mod:`focal_rpn.study.summaries`) of *one* config: a folder whose summaries name different variants or
schedules (``iterations``) is refused, naming the files, since its seeds would not be repeats. The first folder
is the reference: every other one gets its paired difference to it over the seeds both have
(same ``SEED`` = same initialisation and data order), with the 95% CI and a verdict, exactly as in
``ablate --report``'s tables (:func:`focal_rpn.study.report.tabulate`).

A file written with ``--output`` ends with the command that wrote it, so that
``python -m focal_rpn.tools.compare --rebuild results/*/compare_*.md`` writes every such file again
from the summaries of today (after more seeds, or a change to the report), from the folder the
commands were run in.
"""
import argparse
import json
import os
import re
import shlex
import sys
from typing import Dict, List, Optional, Tuple

from ..study.report import tabulate
from ..study.summaries import load_summary, summary_paths


def read_folder(folder: str, name: str) -> List[dict]:
    """The ``seed<K>.json`` summaries in ``folder``, labelled ``name``. Errors name the folder or
    files: no summaries, two files of one seed, or more than one variant or schedule."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: not a folder of run summaries")
    runs = [load_summary(path) for path in summary_paths(folder)]
    if not runs:
        raise ValueError(f"{folder}: no seed<K>.json run summaries in it")
    seeds = [int(r["seed"]) for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{folder}: more than one summary of one seed ({sorted(seeds)})")
    # config_sha256 includes SEED, so it cannot tell repeats of one config apart from a mix; what
    # the summaries do say is their variant and schedule.
    for field in ("variant", "iterations"):
        values = {str(r.get(field)) for r in runs}
        if len(values) > 1:
            by = {v: [os.path.basename(r["path"]) for r in runs if str(r.get(field)) == v] for v in values}
            raise ValueError(f"{folder}: its summaries differ in {field} ("
                             + "; ".join(f"{v}: {', '.join(files)}" for v, files in sorted(by.items()))
                             + "); a folder must hold the seeds of one config")
    return [{**r, "variant": name, "seed": int(r["seed"])} for r in runs]


def _run_key(summary: dict) -> str:
    """What makes two summaries one run: its config (with its seed) and every number it measured.
    A summary copied between folders (by hand, or the study's ``same_run_as``) keeps all of them."""
    return json.dumps([summary.get("config_sha256"), summary["seed"], summary.get("wall_s"), summary["metrics"]],
                      sort_keys=True)


def drop_shared_runs(runs: List[dict]) -> Tuple[List[dict], List[str]]:
    """``runs`` without those held by more than one folder (labelled ``variant``), and a note per
    such run. A run in two folders pairs with itself, a difference of exactly 0 that would narrow
    the interval while measuring nothing, and it belongs to neither side alone: it leaves both.
    (A folder holds one summary per seed and the key holds the seed, so a group of two spans two folders.)"""
    groups: Dict[str, List[dict]] = {}
    for r in runs:
        groups.setdefault(_run_key(r), []).append(r)
    notes = [f"seed {g[0]['seed']} (" + ", ".join(f"`{r['variant']}`" for r in g) + ")" for g in groups.values() if len(g) > 1]
    return [r for r in runs if len(groups[_run_key(r)]) == 1], notes


def compare(folders: List[str], names: Optional[List[str]] = None) -> str:
    """Markdown: mean ± 95% CI per folder and the paired difference of each to the first."""
    if len(folders) < 2:
        raise ValueError("compare needs at least two folders (the first is the reference)")
    names = names or [os.path.normpath(f) for f in folders]
    if len(names) != len(folders) or len(set(names)) != len(names):
        raise ValueError(f"--names needs one distinct name per folder, got {names} for {len(folders)} folders")
    runs, shared = drop_shared_runs([r for folder, name in zip(folders, names) for r in read_folder(folder, name)])
    notes = [f"The same run in several folders, left out of all of them (it would pair with itself): "
             f"{'; '.join(shared)}."] if shared else []
    return tabulate(runs, names, names[0], f"{names[0]} against {', '.join(names[1:])}", notes)


COMMAND = "python -m focal_rpn.tools.compare"
_RECORDED = re.compile(r"^Written from the summaries by `" + re.escape(COMMAND) + r" (.+)`\.$")


def written_text(args: argparse.Namespace) -> str:
    """What ``--output`` writes: the table, and the command that rebuilds it (its last line)."""
    names = f" --names {' '.join(map(shlex.quote, args.names))}" if args.names else ""
    command = f"{COMMAND} {' '.join(map(shlex.quote, args.folders))}{names} --output {shlex.quote(args.output)}"
    return compare(args.folders, args.names) + f"\nWritten from the summaries by `{command}`.\n"


def recorded_args(path: str) -> argparse.Namespace:
    """The arguments ``path`` was written with (its last line, :func:`written_text`)."""
    with open(path) as f:
        lines = f.read().rstrip("\n").split("\n")
    match = _RECORDED.match(lines[-1])
    if not match:
        raise ValueError(f"{path}: its last line names no `{COMMAND} ... --output` command to rebuild it from")
    args = _parser().parse_args(shlex.split(match.group(1)))
    if os.path.abspath(args.output) != os.path.abspath(path):
        raise ValueError(f"{path}: its recorded command writes {args.output}, another file")
    return args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", help="folders of seed<K>.json summaries; the first is the reference")
    parser.add_argument("--names", nargs="+", help="a short name per folder for the table (default: the paths)")
    parser.add_argument("--output", help="also write the markdown table here, with the command that rebuilds it")
    parser.add_argument("--rebuild", nargs="+", metavar="FILE",
                        help="write each FILE again from today's summaries, with the command its last line recorded "
                             "(paths as given then: run from the same folder, the repository root for results/)")
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.rebuild:
            if args.folders or args.output:
                raise ValueError("--rebuild takes the folders and --output from each file, not from this command line")
            for path in args.rebuild:
                text = written_text(recorded_args(path))
                with open(path) as f:
                    same = f.read() == text
                if not same:
                    with open(path, "w") as f:
                        f.write(text)
                print(f"{path}: {'unchanged' if same else 'rewritten'}")
            return 0
        text = written_text(args) if args.output else compare(args.folders, args.names)
    except (ValueError, OSError) as e:  # OSError: a --rebuild FILE or a summary that cannot be read
        parser.error(str(e))
    print(text, end="")
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
