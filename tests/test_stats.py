"""Confidence intervals, paired differences and verdicts on hand-made numbers."""
import math

import pytest

from focal_rpn.study.stats import mean_ci, paired_difference, t_quantile, verdict

# Two-sided 95% Student-t quantiles from printed tables (e.g. NIST/SEMATECH e-Handbook, 1.3.6.7.2).
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 30: 2.042, 100: 1.984}


@pytest.mark.parametrize("df,expected", T_TABLE.items())
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.95, df) == pytest.approx(expected, abs=6e-4)


def test_t_quantile_other_levels():
    assert t_quantile(0.90, 4) == pytest.approx(2.132, abs=6e-4)
    assert t_quantile(0.99, 7) == pytest.approx(3.499, abs=6e-4)


def test_known_t_interval():
    # 1..5: mean 3, s = sqrt(2.5); half-width t(0.975, 4) * s / sqrt(5) = 2.776445 * 0.707107
    iv = mean_ci([1, 2, 3, 4, 5])
    assert (iv.mean, iv.n) == (3, 5)
    assert iv.std == pytest.approx(math.sqrt(2.5))
    assert iv.half_width == pytest.approx(2.776445 * math.sqrt(0.5), rel=1e-5)
    assert (iv.low, iv.high) == pytest.approx((3 - 1.963243, 3 + 1.963243), rel=1e-5)


def test_one_or_no_value():
    one = mean_ci([4.2])
    assert one.mean == 4.2 and one.std == 0 and math.isinf(one.half_width)
    assert verdict(one) == "not resolved"
    assert mean_ci([float("nan")]).n == 0


def test_paired_difference_uses_common_seeds_only():
    variant = {0: 30.0, 1: 31.0, 2: 29.5, 3: 40.0}
    reference = {0: 28.0, 1: 29.5, 2: 28.0, 4: 10.0}  # seeds 3 and 4 have no partner
    d = paired_difference(variant, reference)
    # differences 2.0, 1.5, 1.5: mean 5/3, s = sqrt(1/12), t(0.975, 2) = 4.302653
    assert d.n == 3 and d.mean == pytest.approx(5 / 3)
    assert d.half_width == pytest.approx(4.302653 * math.sqrt(1 / 12) / math.sqrt(3), rel=1e-5)
    assert verdict(d) == "better"  # [1.05, 2.28]: excludes 0


def test_pairing_resolves_what_unpaired_intervals_cannot():
    # seed-to-seed spread of ±3 shared by both variants; a constant +0.5 gain
    ref = {0: 25.0, 1: 28.0, 2: 31.0, 3: 27.0, 4: 29.0}
    var = {k: v + 0.5 + (0.05 if k % 2 else -0.05) for k, v in ref.items()}
    assert mean_ci(list(var.values())).half_width > 2
    assert verdict(paired_difference(var, ref)) == "better"
    assert verdict(paired_difference(ref, var)) == "worse"
    noisy = {0: 26.0, 1: 27.0, 2: 32.0, 3: 26.5, 4: 29.0}
    assert verdict(paired_difference(noisy, ref)) == "not resolved"


def test_generated_reading_of_hand_made_differences():
    from focal_rpn.study.report import reading

    ref = {0: 25.0, 1: 25.5, 2: 27.0}
    diffs = {
        "a": {"bbox/AP50": paired_difference({0: 20.0, 1: 21.0, 2: 22.0}, ref)},  # -5, -4.5, -5
        "b": {"bbox/AP50": paired_difference({0: 27.0, 1: 24.5, 2: 27.5}, ref)},  # +2, -1, +0.5
        "c": {"bbox/AP50": paired_difference({0: 30.0}, ref)},  # one pair: not a comparison yet
    }
    lines = reading(diffs, "ref")
    # a: mean -14.5/3, s = sqrt(1/12), half-width 4.302653 * s / sqrt(3) = 0.7171
    # b: mean 0.5, s = 1.5, half-width 4.302653 * 1.5 / sqrt(3) = 3.7262
    assert lines[0].startswith("Reading (generated): 1 of 2 paired comparisons") and "about 0.1" in lines[0]
    assert lines[1:] == [
        "- resolved: `a` worse than `ref` on AP50, -4.83 ± 0.72 (3 pairs)",
        "- not resolved: `b` on AP50, +0.50, within ±3.73 (3 pairs)",
        "- not resolved: `c` on AP50, 1 pair(s): no interval yet",
    ]


def test_seeds_for_a_half_width_by_hand():
    from focal_rpn.study.stats import seeds_for_half_width

    # std 2, target 1: n = 17 gives t(16) 2.1199 * 2 / sqrt(17) = 1.028; n = 18: t(17) 2.1098 * 2 / sqrt(18) = 0.995
    assert seeds_for_half_width(2.0, 1.0) == 18
    # std 1, target 1: n = 7: 2.4469 / sqrt(7) = 0.925; n = 6: 2.5706 / sqrt(6) = 1.049
    assert seeds_for_half_width(1.0, 1.0) == 7
    assert seeds_for_half_width(float("nan"), 1.0) is None and seeds_for_half_width(1e6, 1.0) is None


def test_power_line_of_the_reading():
    from focal_rpn.study.report import power

    ref = {0: 50.0, 1: 50.0, 2: 50.0}
    diffs = {
        "a": {"bbox/AP": paired_difference({0: 51.0, 1: 53.0, 2: 55.0}, ref)},  # +1, +3, +5: s = 2
        "b": {"bbox/AP": paired_difference({0: 50.0, 1: 52.0}, ref)},  # 2 pairs: left out
    }
    # a: half-width 4.302653 * 2 / sqrt(3) = 4.968; 18 seeds for ±1 at s = 2 (above)
    assert power(diffs) == ["- power: paired ΔAP half-widths median ±4.97 (1 comparison of 3 pairs); "
                            "at their median paired SD (2.00) ±1 would take about 18 seeds"]
    assert power({"b": diffs["b"]}) == []
    # a paired SD of 20: (1.96 * 20)^2 > 1000 seeds
    wide = {"w": {"bbox/AP": paired_difference({0: 70.0, 1: 50.0, 2: 30.0}, ref)}}
    assert power(wide)[0].endswith("at their median paired SD (20.00) ±1 would take more than 1000 seeds")


def test_per_class_ap_and_its_paired_difference_in_the_report():
    """Datasets of several classes: each class's AP and its paired Δ to the reference, by hand
    (x is a's AP + 1 at every seed: Δ 1.00 exactly; b's APs are the reference's: Δ 0, unresolved)."""
    from focal_rpn.study.report import tabulate

    def run(v, seed, extra):
        return {"variant": v, "seed": seed, "s_per_iter": 0.1, "peak_rss_mb": 1.0,
                "metrics": {"bbox/AP": 10.0, "bbox/AP50": 20.0, **extra}}

    runs = [run(v, s, {"bbox/AP-a": 5 + d + 0.1 * s, "bbox/AP-b": 7 + 0.5 * s}) for v, d in (("ref", 0), ("x", 1))
            for s in range(3)]
    md = tabulate(runs, ["ref", "x"], "ref", "t")
    # mean of 5.0, 5.1, 5.2 with t(0.975, 2) = 4.303 x sd 0.1 / sqrt(3) = 0.248
    assert "| ref | 3 | 5.10 ± 0.25 | 7.50 ± 1.24 |" in md and "| x | 3 | 1.00 ± 0.00 better | 0.00 ± 0.00 |" in md
    assert "AP50 per class" not in md  # summaries made before AP50-<class> existed: no such table
    with_ap50 = [run(v, s, {"bbox/AP-a": 5.0, "bbox/AP-b": 7.0, "bbox/AP50-a": 50 + 2 * d, "bbox/AP50-b": 70.0 + s})
                 for v, d in (("ref", 0), ("x", 1)) for s in range(3)]
    md = tabulate(with_ap50, ["ref", "x"], "ref", "t")
    assert "AP50 per class (AP at IoU 0.5)" in md and "| x | 3 | 2.00 ± 0.00 better | 0.00 ± 0.00 |" in md
    # seeds whose summaries predate a metric are counted apart: x's seed 0 and ref's seed 2 lack AP50-*
    # (x: 71, 72 over seeds 1, 2 -> 71.50 ± 6.35 with t(0.975, 1) = 12.706 x 0.707 / sqrt(2)); one pair left (seed 1)
    older = [{**r, "metrics": {k: v for k, v in r["metrics"].items() if "AP50-" not in k}}
             if (r["variant"], r["seed"]) in (("x", 0), ("ref", 2)) else r for r in with_ap50]
    md = tabulate(older, ["ref", "x"], "ref", "t")
    assert "| x | 2 of 3 | 52.00 ± 0.00 | 71.50 ± 6.35 |" in md and "| x | 1 of 3 | 2.00 | 0.00 |" in md
    one_class = [run(v, s, {"bbox/AP-tree": 1.0 + s}) for v in ("ref", "x") for s in range(2)]
    assert "AP per class" not in tabulate(one_class, ["ref", "x"], "ref", "t")
    # a recipe's seeds alone (one variant): its means per class, no paired tables and no reading
    alone = tabulate([r for r in runs if r["variant"] == "ref"], ["ref", "x"], "ref", "t")
    assert "| ref | 3 | 5.10 ± 0.25 | 7.50 ± 1.24 |" in alone and "AP per class (COCO's AP at IoU 0.5:0.95), mean ± 95% CI." in alone
    assert "Paired" not in alone and "Δ" not in alone and "Reading" not in alone


def test_sweep_points_and_slope_against_numpy_least_squares():
    """The sweep's paired differences per point and the slope of FL − CE against log10(measured
    ratio), checked against numpy's least squares (polyfit, covariance scaled by the residuals)."""
    import numpy as np

    from focal_rpn.study import sweep
    from focal_rpn.study.suites import SWEEP_RATIOS, sweep_name

    rng = np.random.RandomState(0)
    measured = {10: 10.0, 40: 39.0, 160: 150.0, 0: 650.0}
    summaries = []
    for r in SWEEP_RATIOS:
        for seed in range(4):
            base = 50 + rng.normal(0, 1)
            gain = 0.5 + 2.0 * np.log10(measured[r]) + rng.normal(0, 0.5)
            for loss, ap in (("fl", base + gain), ("ce", base), ("alpha_ce", base + 1.0)):
                summaries.append({"variant": sweep_name(loss, r), "seed": seed,
                                  "metrics": {"bbox/AP": ap, "retinanet/loss_neg_pos_ratio": measured[r],
                                              "retinanet/num_pos_per_image": 30.0 + seed}})
    pts = sweep.points(summaries)
    assert [p.setting for p in pts] == [10, 40, 160, 0] and [p.ratio for p in pts] == [10.0, 39.0, 150.0, 650.0]
    assert [p.positives for p in pts] == [32.0] * 4  # the upper median of 12 runs' 30-33
    for p in pts:
        d = [p.values["fl"][s] - p.values["ce"][s] for s in range(4)]
        assert p.diffs["fl-ce"].mean == pytest.approx(np.mean(d))
    xs = np.repeat(np.log10([10.0, 39.0, 150.0, 650.0]), 4)
    ys = np.array([p.values["fl"][s] - p.values["ce"][s] for p in pts for s in range(4)])
    coef, cov = np.polyfit(xs, ys, 1, cov=True)
    s = sweep.slope(pts, "fl", "ce")
    assert s.mean == pytest.approx(coef[0]) and s.std == pytest.approx(np.sqrt(cov[0, 0]))
    assert s.n == 16 and s.half_width == pytest.approx(2.1448 * np.sqrt(cov[0, 0]), rel=1e-3)  # t(0.975, 14)
    md = sweep.markdown(pts)
    assert "grows with the ratio" in md and "| all | 650:1 | 32 | 4 |" in md and "FL − α-CE" in md
    # part-way through a seed (FL's seed 3 at 10:1 not run yet): the point's columns are means over
    # seeds 0-2 for every loss, so FL − CE is the FL column minus the CE column (positives: the
    # median of the 11 runs' 30-33 is now 31)
    partial = sweep.points([x for x in summaries if not (x["variant"] == "fl_neg10" and x["seed"] == 3)])
    v = partial[0].values
    row = next(line for line in sweep.markdown(partial).splitlines() if line.startswith("| 10 |"))
    ce, alpha, fl = (np.mean([v[role][k] for k in range(3)]) for role in ("ce", "alpha_ce", "fl"))
    assert row.startswith(f"| 10 | 10:1 | 31 | 3 | {ce:.1f} | {alpha:.1f} | {fl:.1f} | {fl - ce:+.1f} ± ")


def test_rpn_sweep_compares_focal_rpn_with_the_one_sampled_run_per_seed():
    """sweep_rpn: every point's FocalRPN runs paired with the same sampled-RPN runs (one per seed),
    the ratio read from the FocalRPN runs only."""
    from focal_rpn.study import sweep

    summaries = [{"variant": "sampled", "seed": s, "metrics": {"bbox/AP": 10.0 + s, "rpn/neg_pos_ratio": 1.0}}
                 for s in range(3)]
    for r, ratio, gain in ((10, 10.0, 0.0), (0, 700.0, 2.0)):
        name = "focal_all" if r == 0 else f"focal_neg{r}"
        summaries += [{"variant": name, "seed": s, "metrics": {"bbox/AP": 10.0 + s + gain + 0.1 * s,
                                                                "rpn/neg_pos_ratio": ratio}} for s in range(3)]
    pts = sweep.points(summaries, sweep.SPECS["sweep_rpn"])
    assert [(p.setting, p.ratio) for p in pts] == [(10, 10.0), (0, 700.0)]
    assert [round(p.diffs["focal-sampled"].mean, 6) for p in pts] == [0.1, 2.1]
    md = sweep.markdown(pts, sweep.SPECS["sweep_rpn"])
    assert "| FocalRPN | sampled RPN | FocalRPN − sampled RPN |" in md and "| all | 700:1 | - | 3 |" in md
