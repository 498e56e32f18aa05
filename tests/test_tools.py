"""The ablation runner, the loss-CDF figure and the visualiser, end to end on tiny runs."""
import csv
import os

import numpy as np
import torch

from focal_rpn import ablate, loss_cdf, visualize

FAST = ["SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100"]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_rpn_suite_on_synthetic(tmp_path, capsys):
    ablate.main(["--suite", "rpn", "--dataset", "synthetic", "--out", str(tmp_path), "--opts", *FAST])
    out = tmp_path / "rpn-synthetic"
    rows = _rows(out / "results.csv")
    assert [r["variant"] for r in rows] == ablate.RPN_VARIANTS
    assert all(r["AR@100"] != "" and r["AP50"] != "" for r in rows)
    assert (out / "results.png").stat().st_size > 0 and (out / "results.md").exists()
    capsys.readouterr()
    ablate.main(["--suite", "rpn", "--dataset", "synthetic", "--out", str(tmp_path), "--opts", *FAST])
    assert capsys.readouterr().out.count("finished, skipped") == len(ablate.RPN_VARIANTS)


def test_retinanet_suite_on_synthetic_with_seeds(tmp_path):
    variants = ["ce", "gamma_2", "fl_star", "ohem_1_3"]
    ablate.main(["--suite", "retinanet", "--dataset", "synthetic", "--seeds", "2", "--variants", *variants,
                 "--out", str(tmp_path), "--opts", *FAST])
    rows = _rows(tmp_path / "retinanet-synthetic" / "results.csv")
    assert [(r["variant"], r["seed"]) for r in rows] == [(v, str(s)) for v in variants for s in (0, 1)]
    md = (tmp_path / "retinanet-synthetic" / "results.md").read_text()
    assert "±" in md and all(v in md for v in variants)
    # A third seed of one variant, then --report tabulates every finished run, uneven seeds included.
    ablate.main(["--suite", "retinanet", "--dataset", "synthetic", "--seeds", "3", "--variants", "ce",
                 "--out", str(tmp_path), "--opts", *FAST])
    ablate.main(["--suite", "retinanet", "--dataset", "synthetic", "--report", "--out", str(tmp_path)])
    rows = _rows(tmp_path / "retinanet-synthetic" / "results.csv")
    assert [(r["variant"], r["seed"]) for r in rows] == [("ce", "0"), ("ce", "1"), ("ce", "2")] + [
        (v, str(s)) for v in variants[1:] for s in (0, 1)]
    assert "| ce | 3 |" in (tmp_path / "retinanet-synthetic" / "results.md").read_text()


def test_loss_cdf_on_a_trained_checkpoint(trained, tmp_path):
    out, _ = trained
    loss_cdf.main(["--config-file", "configs/synthetic/retinanet.yaml", "--output", str(tmp_path),
                   "MODEL.WEIGHTS", os.path.join(out, "model_final.pth")])
    rows = _rows(tmp_path / "loss_cdf.csv")
    for kind in ("positive", "negative"):
        for g in ("0.0", "2.0"):
            ys = np.array([float(r["cumulative_normalized_loss"]) for r in rows if r["kind"] == kind and r["gamma"] == g])
            assert len(ys) == 101 and ys[0] == 0.0
            assert np.all(np.diff(ys) >= -1e-9) and abs(ys[-1] - 1.0) < 1e-6
    assert (tmp_path / "loss_cdf.png").stat().st_size > 0


def test_loss_cdf_hand_case():
    """Two negatives with p = 0.5 and 0.9: losses FL(γ=0) = ln 2, ln 10."""
    logits = torch.tensor([[0.0], [np.log(9.0)]])
    cdfs = loss_cdf.loss_cdfs(logits, torch.tensor([1, 1]), num_classes=1, gammas=[0.0], points=3)
    lo, hi = np.log(2), np.log(10)
    np.testing.assert_allclose(cdfs["negative"][0.0], [0.0, lo / (lo + hi), 1.0])


def test_visualize_writes_a_png(trained, tmp_path, capsys):
    out, _ = trained
    visualize.main(["--config-file", "configs/synthetic/retinanet.yaml", "--dataset", "synthetic_val",
                    "--output", str(tmp_path), "MODEL.WEIGHTS", os.path.join(out, "model_final.pth")])
    pngs = list(tmp_path.glob("*.png"))
    assert len(pngs) == 4 and "Detections drawn" in capsys.readouterr().out


def test_anchor_report_counts(tmp_path, capsys):
    from focal_rpn import anchor_report

    anchor_report.main(["--config-file", "configs/synthetic/retinanet.yaml", "--output", str(tmp_path)])
    rows = _rows(tmp_path / "anchor_report.csv")
    assert len(rows) == 12
    empty = [r for r in rows if r["positive"] == "0" and r["ignored"] == "0"]
    assert len(empty) >= 1  # the background-only image: every anchor negative
    totals = {int(r["positive"]) + int(r["negative"]) + int(r["ignored"]) for r in rows}
    assert len(totals) == 1  # same image size, same number of anchors
    assert "negative:positive" in capsys.readouterr().out
