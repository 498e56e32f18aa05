"""benchmarks/bench_trainings.py: variants parsed with errors that name them, and a real (tiny)
turn of two trainings read from train_net.py's own log."""
import json
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import bench_trainings  # noqa: E402


def test_parse_variant():
    assert bench_trainings.parse_variant("a=configs/trees/rpn_ce.yaml:SOLVER.IMS_PER_BATCH 4 X '[1, 2]'") == (
        "a", "configs/trees/rpn_ce.yaml", ["SOLVER.IMS_PER_BATCH", "4", "X", "[1, 2]"])
    assert bench_trainings.parse_variant("b=configs/trees/retinanet.yaml") == ("b", "configs/trees/retinanet.yaml", [])
    with pytest.raises(SystemExit, match="NAME=CONFIG"):
        bench_trainings.parse_variant("configs/trees/retinanet.yaml")
    with pytest.raises(SystemExit, match="no config file 'configs/nope.yaml'"):
        bench_trainings.parse_variant("c=configs/nope.yaml")


def test_two_short_trainings_in_turn(tmp_path):
    out = tmp_path / "runs"
    medians = bench_trainings.main(["--reps", "1", "--iters", "6", "--out", str(out), "--json", str(tmp_path / "t.json"),
                                    "ref=configs/synthetic/retinanet.yaml",
                                    "one_image=configs/synthetic/retinanet.yaml:SOLVER.IMS_PER_BATCH 1 SOLVER.MAX_ITER 123"])
    assert medians["ref"] == 1.0 and medians["one_image"] > 0
    saved = json.loads((tmp_path / "t.json").read_text())
    # the variant's MAX_ITER is its schedule, not the benchmark's length (6 iterations were trained)
    ref_iters = saved["schedule_iters"]["ref"]
    assert saved["schedule_iters"]["one_image"] == 123 and ref_iters != 123
    assert saved["training_time_ratio"]["one_image"] == pytest.approx(medians["one_image"] * 123 / ref_iters)
    assert "  MAX_ITER: 6\n" in (out / "one_image-1" / "config.yaml").read_text()
    assert [r["variant"] for r in saved["runs"]] == ["ref", "one_image"]
    assert all(r["s_per_iter"] > 0 for r in saved["runs"])
    assert os.path.isfile(out / "one_image-1" / "log.txt")
