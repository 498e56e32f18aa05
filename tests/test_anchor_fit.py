"""MODEL.ANCHOR_GENERATOR.FIT: the IoU model checked against Detectron2's own anchors and
pairwise_iou, the fit against boxes drawn from known anchors, and the config round trip."""
import numpy as np
import pytest
import torch
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.structures import Boxes, pairwise_iou

from focal_rpn.modeling.anchor_fit import best_iou, fit_anchors, positives_per_box


def _boxes_from(sizes, ratios, n, rng, jitter=0.03, lo=40, hi=400):
    """n boxes per (size, ratio), sides jittered by ``jitter`` (log-normal), centres uniform."""
    wh = []
    for s in sizes:
        for r in ratios:
            w = np.sqrt(s * s / r)
            wh.append(np.array([w, w * r]) * np.exp(rng.normal(0, jitter, (n, 2))))
    wh = np.concatenate(wh)
    c = rng.uniform(lo, hi, (len(wh), 2))
    return np.concatenate([c - wh / 2, c + wh / 2], 1)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_best_iou_equals_detectron2_anchors_and_pairwise_iou(offset):
    """The best IoU of each box over every anchor Detectron2 lays on a 512 px image, level by level,
    equals the closed form (nearest grid centre, per shape)."""
    rng = np.random.RandomState(0)
    boxes = _boxes_from([20, 45, 90], [0.5, 1.0, 2.2], 10, rng, jitter=0.3, lo=100, hi=400)
    sizes, ratios, strides = [[16, 24], [40, 60], [100, 150]], [0.5, 1.0, 2.0], [8, 16, 32]
    gen = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=[ratios], strides=strides, offset=offset)
    feats = [torch.zeros(1, 1, 512 // s, 512 // s) for s in strides]
    per_level = [pairwise_iou(Boxes(torch.tensor(boxes, dtype=torch.float64)), Boxes(a.tensor.double())).max(1).values
                 for a in gen(feats)]
    reference = torch.stack(per_level, 1)
    ours, level = best_iou(boxes, sizes, ratios, strides, offset)
    np.testing.assert_allclose(ours, reference.max(1).values.numpy(), rtol=1e-5, atol=1e-6)  # its anchors are float32
    np.testing.assert_array_equal(level, reference.argmax(1).numpy())


def test_fit_recovers_the_anchors_the_boxes_were_drawn_from():
    rng = np.random.RandomState(1)
    boxes = _boxes_from([32, 64, 128], [0.5, 2.0], 300, rng)
    # started far off: the config's anchors are twice too large and square-ish
    fit = fit_anchors(boxes, [4, 8, 16], 1, 2, 0.5, initial_sizes=[[64], [128], [256]], initial_ratios=[0.8, 1.25])
    np.testing.assert_allclose(np.array(fit.sizes).ravel(), [32, 64, 128], rtol=0.05)
    np.testing.assert_allclose(fit.aspect_ratios, [0.5, 2.0], rtol=0.05)
    assert fit.matched_after == 1.0 and fit.matched_before < 0.7
    assert fit.boxes_per_level == [600, 600, 600] and fit.empty_levels == []


def test_fit_reports_the_matched_share_of_the_anchors_it_writes():
    """On mixed shapes (12-160 px, h/w 0.3-3) the fitted anchors, as rounded into the config, give
    the share of boxes with an anchor at IoU >= 0.5 the fit reports, above the recipe's anchors."""
    rng = np.random.RandomState(2)
    boxes = _boxes_from([12, 30, 70, 160], [0.3, 1.0, 3.0], 60, rng, jitter=0.25)
    fit = fit_anchors(boxes, [8, 16, 32], 3, 3, 0.5, initial_sizes=[[32, 40, 50], [64, 80, 100], [128, 160, 200]],
                      initial_ratios=[0.5, 1.0, 2.0])
    assert fit.matched_after > fit.matched_before
    best, _ = best_iou(boxes, fit.sizes, fit.aspect_ratios, [8, 16, 32])
    assert np.mean(best >= 0.5) == pytest.approx(fit.matched_after)


def test_a_level_without_boxes_still_gets_valid_anchors():
    """Boxes of 10-20 px on five levels (strides 8-128): the coarse levels hold no box's best anchor,
    are reported as such, and still get finite, positive sizes (the finest level's scaled by the
    stride ratio) that Detectron2's anchor generator accepts."""
    rng = np.random.RandomState(3)
    boxes = _boxes_from([10, 14, 20], [1.0], 50, rng, jitter=0.1)
    strides = [8, 16, 32, 64, 128]
    fit = fit_anchors(boxes, strides, 3, 1, 0.5)
    assert fit.empty_levels and sum(fit.boxes_per_level) == len(boxes)
    sizes = np.array(fit.sizes)
    assert np.isfinite(sizes).all() and (sizes > 0).all()
    for i in fit.empty_levels:
        np.testing.assert_allclose(sizes[i], sizes[0] * strides[i] / strides[0], rtol=0.01)
    gen = DefaultAnchorGenerator(sizes=fit.sizes, aspect_ratios=[fit.aspect_ratios], strides=strides, offset=0.0)
    assert gen.num_anchors == [3] * 5


def test_positives_per_box_counts_detectron2_anchors_over_the_threshold():
    """The positives the fit reports for a box are the anchors Detectron2 lays on the image (every
    level) whose pairwise_iou with that box reaches the threshold."""
    rng = np.random.RandomState(4)
    boxes = _boxes_from([20, 45, 90], [0.5, 1.0, 2.2], 8, rng, jitter=0.3, lo=150, hi=350)
    sizes, ratios, strides = [[16, 24], [40, 60], [100, 150]], [0.5, 1.0, 2.0], [8, 16, 32]
    for offset in (0.0, 0.5):
        gen = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=[ratios], strides=strides, offset=offset)
        anchors = Boxes.cat(gen([torch.zeros(1, 1, 512 // s, 512 // s) for s in strides]))
        iou = pairwise_iou(Boxes(torch.tensor(boxes, dtype=torch.float64)), Boxes(anchors.tensor.double()))
        reference = (iou >= 0.5).sum(1).numpy()
        assert reference.max() > 5 and (reference == 0).any()  # counts both ways
        np.testing.assert_array_equal(positives_per_box(boxes, sizes, ratios, strides, 0.5, offset), reference)


def test_fit_balances_positives_between_small_and_large_boxes():
    """Few small boxes among many large ones (BCCD's platelets among red cells): the fitted anchors
    are multiples of the stride, so the small boxes keep a share of the positives. Sizes placed
    where most boxes are (two of three at the large boxes on the finest level) match every box too,
    but give a large box ~30x a small one's positives."""
    rng = np.random.RandomState(5)
    small = _boxes_from([28], [1.0], 60, rng, jitter=0.1, lo=100, hi=300)
    large = _boxes_from([90], [1.0], 700, rng, jitter=0.1, lo=100, hi=300)
    strides = [8, 16, 32]
    fit = fit_anchors(np.concatenate([small, large]), strides, 3, 1, 0.5)
    crowded = [[28, 90, 95], [90, 95, 100], [180, 190, 200]]

    def ratio(sizes):
        small_pos, large_pos = (np.median(positives_per_box(b, sizes, [1.0], strides, 0.5)) for b in (small, large))
        assert small_pos >= 1
        return large_pos / small_pos

    assert fit.matched_after == 1.0 and np.mean(best_iou(small, crowded, [1.0], strides)[0] >= 0.5) == 1.0
    assert ratio(crowded) > 20 and ratio(fit.sizes) < ratio(crowded) / 3


def test_fit_without_boxes_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="MODEL.ANCHOR_GENERATOR.FIT"):
        fit_anchors(np.zeros((0, 4)), [8], 1, 1, 0.5)


def test_fitted_config_is_written_explicit_and_is_the_same_run(tmp_path):
    """setup() fits before the config is dumped: the run's config.yaml has the fitted anchors and
    FITTED_ON, loads without fitting again, and is the same training as the config as written
    (the study's stale-run check)."""
    from focal_rpn.config import load_config
    from focal_rpn.engine.main import setup
    from focal_rpn.study.summaries import config_sha256, same_training
    from detectron2.engine import default_argument_parser

    args = default_argument_parser().parse_args(["--config-file", "configs/synthetic/retinanet.yaml",
                                         "MODEL.ANCHOR_GENERATOR.FIT", "True", "OUTPUT_DIR", str(tmp_path)])
    cfg = setup(args)
    # the project's own log records reach the run's log.txt (as Detectron2's do)
    assert "anchors fitted to the boxes of synthetic_train" in (tmp_path / "log.txt").read_text()
    ag = cfg.MODEL.ANCHOR_GENERATOR
    assert ag.FITTED_ON == ("synthetic_train",) and ag.SIZES != [[16, 20, 25], [32, 40, 50], [64, 80, 100]]
    saved = load_config(str(tmp_path / "config.yaml"))
    assert saved.MODEL.ANCHOR_GENERATOR.SIZES == ag.SIZES
    assert saved.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS == ag.ASPECT_RATIOS
    as_written = load_config("configs/synthetic/retinanet.yaml", ["MODEL.ANCHOR_GENERATOR.FIT", "True",
                                                                  "OUTPUT_DIR", str(tmp_path)], fit_anchors=False)
    assert same_training(saved, as_written) and config_sha256(cfg) == config_sha256(as_written)
    plain = load_config("configs/synthetic/retinanet.yaml")
    assert not same_training(plain, as_written)


def _modified_anchors(cfg):
    """A copy of a fitted ``cfg`` whose anchors are another fit's (sizes 10% larger)."""
    other = cfg.clone()
    other.defrost()
    other.MODEL.ANCHOR_GENERATOR.SIZES = [[round(1.1 * s, 1) for s in level] for level in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
    other.freeze()
    return other


def test_resume_keeps_the_anchors_the_run_fitted(tmp_path):
    """--resume of a fitted run takes the anchors from the run's config.yaml (its checkpoint was
    trained with them) instead of fitting again; without --resume, or without a checkpoint, the fit
    is made."""
    from detectron2.engine import default_argument_parser

    from focal_rpn.config import load_config
    from focal_rpn.engine.main import setup

    argv = ["--config-file", "configs/synthetic/retinanet.yaml", "MODEL.ANCHOR_GENERATOR.FIT", "True",
            "OUTPUT_DIR", str(tmp_path)]
    fitted = setup(default_argument_parser().parse_args(argv))
    earlier = _modified_anchors(fitted)  # as if an earlier version of the fit had trained this run
    (tmp_path / "config.yaml").write_text(earlier.dump())
    assert setup(default_argument_parser().parse_args(["--resume"] + argv)).MODEL.ANCHOR_GENERATOR.SIZES == \
        fitted.MODEL.ANCHOR_GENERATOR.SIZES  # no checkpoint yet: nothing to keep
    (tmp_path / "config.yaml").write_text(earlier.dump())
    (tmp_path / "last_checkpoint").write_text("model_0000004.pth")
    resumed = setup(default_argument_parser().parse_args(["--resume"] + argv))
    assert resumed.MODEL.ANCHOR_GENERATOR.SIZES == earlier.MODEL.ANCHOR_GENERATOR.SIZES
    assert "not fitted again" in (tmp_path / "log.txt").read_text()
    assert load_config(str(tmp_path / "config.yaml")).MODEL.ANCHOR_GENERATOR.SIZES == earlier.MODEL.ANCHOR_GENERATOR.SIZES
    assert setup(default_argument_parser().parse_args(argv)).MODEL.ANCHOR_GENERATOR.SIZES == \
        fitted.MODEL.ANCHOR_GENERATOR.SIZES


def test_study_runs_with_anchors_fitted_otherwise_are_other_runs(tmp_path):
    """The study plans a fitted variant with the anchors its training will fit: a summary, or a run
    folder with a checkpoint, whose anchors were fitted otherwise (other code, other data) is not
    that run (stale; set aside rather than resumed; not re-evaluated), though its config as written
    is the same."""
    from focal_rpn.study import summaries
    from focal_rpn.study.runner import set_aside_other_training
    from focal_rpn.study.suites import run_config, suite_variants

    fitted_variant = [v for v in suite_variants("anchor_fit", "synthetic") if v.name == "fitted"][0]
    cfg = run_config(fitted_variant, 0, [])
    assert cfg.MODEL.ANCHOR_GENERATOR.FITTED_ON == ("synthetic_train",)
    other = _modified_anchors(cfg)
    assert summaries.config_sha256(other) == summaries.config_sha256(cfg)  # the config as written
    path = str(tmp_path / "seed0.json")
    for anchors_of, state in ((cfg, "current"), (other, "stale")):
        summaries.write_summary(path, {"variant": "fitted", "seed": 0, "config_sha256": summaries.config_sha256(cfg),
                                       "anchors": summaries.fitted_anchors(anchors_of), "metrics": {"bbox/AP50": 1.0}})
        assert summaries.summary_state(path, summaries.run_identity(cfg)) == state
    for trained, kept in ((cfg, True), (other, False)):
        run = tmp_path / f"run_{kept}"
        run.mkdir()
        (run / "config.yaml").write_text(trained.dump())
        (run / "last_checkpoint").write_text("model_final.pth")
        set_aside_other_training(str(run), cfg)
        assert run.exists() == kept and (tmp_path / f"run_{kept}.stale-1").exists() != kept
    # and --reevaluate refuses weights trained with other anchors as a training change
    from focal_rpn.study.reevaluate import config_differences

    assert config_differences(cfg, cfg) == {"evaluation": [], "training": []}
    assert [d.split(":")[0] for d in config_differences(other, cfg)["training"]] == ["fitted anchors"]
