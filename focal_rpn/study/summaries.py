"""Per-run summaries of the ablation study, kept as data in the repository: what a summary
holds, which config it ran, and reading them back (the tables and plots: :mod:`.report`).

One finished run leaves ``RESULTS/<dataset>/<suite>/<variant>/seed<K>.json``::

    {"variant", "seed", "iterations", "s_per_iter", "peak_rss_mb", "wall_s", "config_sha256",
     "config", "opts", "git_commit", "machine", "precision", "metrics": {"bbox/AP": ..., "bbox/AP50": ..., ...}}

``config`` is the dump of the run's config (:func:`comparable_config`) and ``config_sha256`` its
SHA-256. A summary whose hash differs from what its variant builds today ran an *earlier recipe*:
it is reported on its own, titled by what differs (:func:`recipe_difference`), and never replaced
unless asked. A run that failed leaves ``{"variant", "seed", "failed": {"cause", "iteration",
"log"}, ...}`` without metrics: listed apart, retried only when asked.
"""
import functools
import glob
import hashlib
import json
import math
import os
import statistics
import subprocess
from types import MappingProxyType
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional

import yaml


# Keys that change how fast a run goes but not one bit of what it computes (each has a test that
# shows bitwise-equal training): left out of the hash, so that runs made with either value, or
# before the key existed, stay current.
RESULT_NEUTRAL_KEYS = ("MODEL.IMAGE_THREADS",)

# Config nodes of features added after runs were made, left out of the hash while their ENABLED is
# False: a switched-off feature is the run as it was before the keys existed, so it stays current.
SWITCHED_OFF_NODES = ("SOLVER.WEIGHT_AVERAGE", "TEST.TTA")

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


def machine() -> dict:
    """The machine a run trained on, as its summary keeps it (``machine``): CPU model, cores,
    torch's CPU capability and whether it has bfloat16 units (the CPU recipes' speed and precision
    depend on it), torch's version, the GPU if any."""
    import platform

    import torch

    from ..engine.autocast import cpu_has_bfloat16

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "bfloat16_units": cpu_has_bfloat16(), "torch": torch.__version__}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


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


# libyaml's parser where PyYAML was built with it: a results page reads ~1,000 recorded configs,
# which the pure-Python parser takes a minute for
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=4096)
def _flat(cfg_dump: str) -> Mapping[str, object]:
    """{"A.B.C": value} of a config dump (YAML), read-only (cached: a summary's config is read for
    its precision and for its recipe difference)."""
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
    walk(yaml.load(cfg_dump, Loader=_YAML_LOADER) or {}, "")
    return MappingProxyType(out)


def flat_value(flat: Mapping[str, object], key: str):
    """``flat[key]`` of a flattened config (:func:`comparable_config`'s, tuples as lists); a key
    left out at its :data:`ADDED_KEYS` default holds that default; "<absent>" otherwise."""
    default = ADDED_KEYS.get(key, "<absent>")
    return flat.get(key, list(default) if isinstance(default, tuple) else default)


def config_value(summary: dict, key: str):
    """The value of ``key`` in the config a summary recorded (:func:`flat_value`); "<absent>" for
    a summary that recorded no config."""
    return flat_value(_flat(summary.get("config", "")), key)


def recipe_difference(summary: dict, today) -> str:
    """What the config a summary recorded differs in from ``today`` (the config its variant and
    seed build now), as "KEY VALUE ..." (the --opts that rebuild the run's config from today's
    yaml), or a note when the summary recorded no config."""
    if "config" not in summary:
        return f"config not recorded; commit {summary.get('git_commit', 'unknown')[:10]}"
    old, new = _flat(summary["config"]), _flat(comparable_config(today).dump())
    keys = sorted(k for k in set(old) | set(new) if flat_value(old, k) != flat_value(new, k))
    return " ".join(f"{k} {json.dumps(v) if isinstance(v := flat_value(old, k), (list, str)) else v}" for k in keys)


def config_precision(summary: dict) -> str:
    """The precision a summary's config asks for (focal_rpn.engine.autocast.requested_precision);
    "float32" for a summary that recorded no config."""
    from ..engine.autocast import requested_precision

    cfg = _flat(summary.get("config", ""))
    return requested_precision(str(cfg.get("MODEL.DEVICE", "cuda")).split(":")[0], bool(cfg.get("SOLVER.AMP.ENABLED", False)))


def precision(summary: dict) -> str:
    """What a run trained in (``precision``). Summaries written before runs recorded it trained in
    what their config asks for, unless their machine had no bfloat16 units and the config asks for
    bfloat16: those may have fallen back to float32, and read "unrecorded"."""
    if "precision" in summary:
        return summary["precision"]
    asked = config_precision(summary)
    if asked == "bfloat16" and not summary.get("machine", {}).get("bfloat16_units", True):
        return "unrecorded"
    return asked


def in_asked_precision(summary: dict) -> bool:
    """Whether a run trained in the precision its config asks for (not a float32 fallback)."""
    return precision(summary) == config_precision(summary)


def speed_runs(runs: List[dict]) -> List[dict]:
    """The runs whose ``s_per_iter`` and ``peak_rss_mb`` a table may average: those that trained in
    the precision their config asks for, or all of them when none did. A float32 fallback trains on
    another machine at about twice the step time, so a mean over both would describe neither."""
    return [r for r in runs if in_asked_precision(r)] or runs


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
