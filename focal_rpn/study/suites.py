"""The suites of the study: which variants, with which configs and options, and the config a
run of one variant and seed trains."""
import functools
import os
from typing import Dict, List, NamedTuple

# The package folder: the suites' configs are ROOT/configs/... (shipped with the package; in a
# checkout configs/ links there).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The checkout around the package, if any: its results/ holds the committed summaries. Installed
# without one, results/ of the working folder.
CHECKOUT = os.path.dirname(ROOT) if os.path.exists(os.path.join(os.path.dirname(ROOT), ".git")) else ""  # a worktree's .git is a file


def default_results() -> str:
    """Where the shipped configs' summaries go: the checkout's results/, else ./results."""
    return os.path.join(CHECKOUT, "results") if CHECKOUT else os.path.abspath("results")

# Table 1 of the RetinaNet paper: γ sweep with the α the paper pairs with each γ. γ = 0 with
# α = 0.75 is alpha_ce by construction (a test shows it instead of a run).
RETINANET_VARIANTS: Dict[str, List[str]] = {
    "ce": ["MODEL.RETINANET.LOSS_TYPE", "ce"],
    "alpha_ce": ["MODEL.RETINANET.LOSS_TYPE", "alpha_ce", "MODEL.RETINANET.FOCAL_LOSS_ALPHA", "0.75"],
    **{
        f"gamma_{g:g}": ["MODEL.RETINANET.FOCAL_LOSS_GAMMA", str(g), "MODEL.RETINANET.FOCAL_LOSS_ALPHA", str(a)]
        for g, a in [(0.5, 0.5), (1.0, 0.25), (2.0, 0.25), (5.0, 0.25)]
    },
    "fl_star": ["MODEL.RETINANET.LOSS_TYPE", "fl_star"],
    "ohem": ["MODEL.RETINANET.LOSS_TYPE", "ohem"],
    "ohem_1_3": ["MODEL.RETINANET.LOSS_TYPE", "ohem_1_3"],
}
RPN_VARIANTS = ["rpn_ce", "rpn_fl_sigmoid", "rpn_fl_softmax", "ohem", "ohem_1_3", "roi_fl"]
# λ of the sigmoid FocalRPN: the paper's 0.1 (set for a pretrained backbone) to 3.
RPN_LAMBDAS = [0.1, 0.3, 1.0, 3.0]
# Imbalance between object classes (the Faster R-CNN box classifier): cross-entropy, the focal
# classifier, each with the classes weighted by their box frequency (w_c = 1 / ln(1.10 + f_c)),
# and OHEM 1:3. Variant -> (two-stage config, options).
CLASSES_VARIANTS: Dict[str, tuple] = {
    "ce": ("rpn_ce", []),
    "ce_freq": ("roi_fl", ["MODEL.ROI_BOX_HEAD.FOCAL_GAMMA", "0.0", "MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS", "['frequency']"]),
    "focal": ("roi_fl", []),
    "focal_freq": ("roi_fl", ["MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS", "['frequency']"]),
    "ohem_1_3": ("ohem_1_3", []),
}
# The anchor fit on data a recipe was not tuned for: the trees RetinaNet recipe with its own
# anchors, and with anchors fitted to the dataset's boxes.
ANCHOR_FIT_VARIANTS: Dict[str, List[str]] = {"recipe_anchors": [], "fitted": ["MODEL.ANCHOR_GENERATOR.FIT", "True"]}
# The imbalance sweep: CE, α-balanced CE and FL (γ = 2, α = 0.25) while the negatives in the loss
# per positive are dialled (MODEL.RETINANET.NEG_POS_RATIO; 0: all, ~690:1 on DeepPCB's boards).
# Anchors, labels, data and budget stay the same; the loss sees fewer negatives, in the same mix of
# easy and hard. Anchor density, the other dial at hand, moved DeepPCB's ratio only 458:1 -> 760:1
# from 1 to 25 anchors per location (positives grow with the anchors; docs/results/deeppcb.md).
SWEEP_LOSSES = {"ce": "ce", "alpha_ce": "alpha_ce", "fl": "gamma_2"}  # name -> RETINANET_VARIANTS key
SWEEP_RATIOS = (10, 40, 160, 0)


def sweep_name(loss: str, ratio: float) -> str:
    return f"{loss}_{'all' if ratio == 0 else f'neg{ratio:g}'}"


# The variant every other one of a suite is compared with (paired by seed).
REFERENCES = {"rpn": "rpn_ce", "retinanet": "gamma_2", "rpn_lambda": "lambda_1", "classes": "ce",
              "anchor_fit": "recipe_anchors", "sweep": "fl_all", "sweep_rpn": "sampled"}
SUITES = tuple(REFERENCES)
# Suites whose reference is a dataset's shipped recipe as written (the results pages' recipe rows)
RECIPE_SUITES = ("retinanet", "rpn", "classes")
# configs/<dataset>/ holds each dataset's recipes (coco: configs/*_R50*.yaml)
DATASETS = ("trees", "deeppcb", "bccd", "coco", "synthetic")
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


class Variant(NamedTuple):
    name: str
    config: str  # relative to the configs root (ROOT by default)
    opts: List[str]


def suite_variants(suite: str, dataset: str) -> List[Variant]:
    """Every variant of ``suite`` on ``dataset``."""
    if dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {DATASETS}, got {dataset!r}")
    extra = SYNTHETIC_OPTS if dataset == "synthetic" else []
    folder = "trees" if dataset == "synthetic" else dataset  # synthetic: the trees configs, shrunk

    def frcnn(v):
        return f"configs/faster_rcnn_R50_{v}.yaml" if dataset == "coco" else f"configs/{folder}/{v}.yaml"

    if suite == "retinanet":
        cfg = "configs/retinanet_R50.yaml" if dataset == "coco" else f"configs/{folder}/retinanet.yaml"
        return [Variant(name, cfg, opts + extra) for name, opts in RETINANET_VARIANTS.items()]
    if suite == "rpn":
        return [Variant(v, frcnn(v), list(extra)) for v in RPN_VARIANTS]
    if suite == "rpn_lambda":
        return [Variant(f"lambda_{lam:g}", frcnn("rpn_fl_sigmoid"),
                        ["MODEL.FOCAL_RPN.CLS_LOSS_WEIGHT", str(lam)] + extra) for lam in RPN_LAMBDAS]
    if suite == "classes":
        if dataset == "trees":
            raise ValueError("--suite classes compares class weights: trees has one class (use bccd)")
        return [Variant(name, frcnn(cfg), opts + extra) for name, (cfg, opts) in CLASSES_VARIANTS.items()]
    if suite == "sweep":
        cfg = "configs/retinanet_R50.yaml" if dataset == "coco" else f"configs/{folder}/retinanet.yaml"
        return [Variant(sweep_name(loss, r), cfg, RETINANET_VARIANTS[key] + (["MODEL.RETINANET.NEG_POS_RATIO", str(float(r))] if r else []) + extra)
                for r in SWEEP_RATIOS for loss, key in SWEEP_LOSSES.items()]
    if suite == "sweep_rpn":
        # the same dial in the RPN (MODEL.FOCAL_RPN.NEG_POS_RATIO): the sigmoid FocalRPN at each point
        # against Detectron2's sampled RPN (256 anchors per image, at most half positives: ~1:1 throughout)
        return [Variant("sampled", frcnn("rpn_ce"), list(extra))] + [
            Variant(sweep_name("focal", r), frcnn("rpn_fl_sigmoid"),
                    (["MODEL.FOCAL_RPN.NEG_POS_RATIO", str(float(r))] if r else []) + extra) for r in SWEEP_RATIOS]
    if suite == "anchor_fit":
        # the trees recipe everywhere (configs/<dataset>/trees_recipe.yaml: only data and classes changed)
        cfg = {"coco": "configs/retinanet_R50.yaml", "trees": "configs/trees/retinanet.yaml",
               "synthetic": "configs/trees/retinanet.yaml"}.get(dataset, f"configs/{dataset}/trees_recipe.yaml")
        return [Variant(name, cfg, opts + extra) for name, opts in ANCHOR_FIT_VARIANTS.items()]
    raise ValueError(f"--suite must be one of {SUITES}, got {suite!r}")


def run_config(variant: Variant, seed: int, opts: List[str]):
    """The full config a run of ``variant`` with ``seed`` and the extra ``opts`` trains; with
    MODEL.ANCHOR_GENERATOR.FIT, with the anchors its training process will fit (the fit does not
    depend on the seed: it is made once per config)."""
    from ..config import load_config
    from ..modeling.anchor_fit import with_anchors

    cfg = load_config(os.path.join(ROOT, variant.config), variant.opts + list(opts) + ["SEED", str(seed)],
                      fit_anchors=False)
    ag = cfg.MODEL.ANCHOR_GENERATOR
    if ag.FIT and not ag.FITTED_ON:
        cfg = with_anchors(cfg, *_fitted_anchors(variant.config, tuple(variant.opts) + tuple(opts)))
    return cfg


@functools.lru_cache(maxsize=None)
def _fitted_anchors(config: str, opts: tuple):
    """(SIZES, ASPECT_RATIOS, FITTED_ON) the fit gives ``config`` with ``opts`` (no seed: the fit
    draws its images with a fixed one)."""
    from ..config import fit_config_anchors, load_config

    ag = fit_config_anchors(load_config(os.path.join(ROOT, config), list(opts), fit_anchors=False))[0].MODEL.ANCHOR_GENERATOR
    return ag.SIZES, ag.ASPECT_RATIOS, ag.FITTED_ON


def run_dir(out: str, suite: str, dataset: str, variant: str, seed: int) -> str:
    """The OUTPUT_DIR of one run (absolute: cluster jobs may start elsewhere)."""
    return os.path.abspath(os.path.join(out, f"{suite}-{dataset}", variant, f"seed{seed}"))


