"""The ablation runner, the loss-CDF figure and the visualiser, end to end on tiny runs."""
import csv
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from focal_rpn.study import runner, suites, summaries
from focal_rpn.tools import ablate
from focal_rpn.tools import loss_cdf
from focal_rpn.tools import visualize
FAST = ["SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100"]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _summaries(results_dir, suite):
    root = results_dir / "synthetic" / suite
    return {(p.parent.name, p.name): json.loads(p.read_text()) for p in sorted(root.glob("*/seed*.json"))}


def test_rpn_suite_on_synthetic(tmp_path, capsys):
    """Two of the suite's variants (each variant's training is tested in test_focal_rpn.py and
    test_ohem_roi_heads.py): summaries, the paired report, and a second call that trains nothing."""
    res = tmp_path / "results"
    variants = ["rpn_ce", "rpn_fl_softmax"]
    args = ["--suite", "rpn", "--dataset", "synthetic", "--variants", *variants, "--out", str(tmp_path / "runs"),
            "--results", str(res)]
    ablate.main(args + ["--opts", *FAST])
    summaries = _summaries(res, "rpn")
    assert sorted(summaries) == [(v, "seed0.json") for v in variants]
    s = summaries[("rpn_ce", "seed0.json")]
    assert {"seed", "iterations", "s_per_iter", "peak_rss_mb", "config_sha256", "git_commit"} <= set(s)
    assert s["iterations"] == 2 and s["peak_rss_mb"] > 100 and len(s["config_sha256"]) == 64
    # the machine, as torch and the OS tell it
    assert s["machine"]["cores"] == os.cpu_count() and s["machine"]["torch"] == torch.__version__
    if os.path.isfile("/proc/cpuinfo"):  # the kernel's CPU flags, not torch's
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
        assert s["machine"]["bfloat16_units"] == bool({"avx512_bf16", "amx_bf16"} & flags)
    assert s["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and s["machine"]["cpu"]
    # the synthetic configs ask for bfloat16 autocast; with FOCAL_RPN_CPU_BF16=auto (conftest) a CPU
    # without bfloat16 units trains them in float32
    assert s["precision"] == ("bfloat16" if s["machine"]["bfloat16_units"] else "float32")
    assert {"bbox/AP", "bbox/AP50", "bbox/AP75", "box_proposals/AR@100", "box_proposals/AR@1000"} <= set(s["metrics"])
    # metrics.json of the run holds the same final values under the same names
    with open(tmp_path / "runs" / "rpn-synthetic" / "rpn_ce" / "seed0" / "metrics.json") as f:
        last = [json.loads(line) for line in f if "bbox/AP50" in line][-1]
    assert last["bbox/AP50"] == s["metrics"]["bbox/AP50"]
    md = (res / "synthetic" / "rpn" / "results.md").read_text()
    assert "Paired difference to `rpn_ce`" in md and "AR@1000" in md
    assert (res / "synthetic" / "rpn" / "results.png").stat().st_size > 0
    capsys.readouterr()
    ablate.main(args + ["--opts", *FAST])  # a second call trains nothing
    assert capsys.readouterr().out.count("summary exists, skipped") == len(variants)


def test_retinanet_suite_seeds_report_and_stale_runs(tmp_path, capsys):
    res = tmp_path / "results"
    base = ["--suite", "retinanet", "--dataset", "synthetic", "--out", str(tmp_path / "runs"), "--results", str(res)]
    variants = ["ce", "gamma_2"]
    ablate.main(base + ["--seeds", "1", "--variants", *variants, "--opts", *FAST])
    ablate.main(base + ["--seeds", "2", "--variants", "ce", "--opts", *FAST])  # a second seed of one variant
    rows = _rows(res / "synthetic" / "retinanet" / "results.csv")
    assert [(r["variant"], r["seed"]) for r in rows] == [("ce", "0"), ("ce", "1"), ("gamma_2", "0")]
    md = (res / "synthetic" / "retinanet" / "results.md").read_text()
    assert "| ce | 2 |" in md and "| ce | 1 |" in md  # 2 seeds; 1 of them paired with gamma_2
    assert "retinanet suite on synthetic: the shipped configs with `--opts SOLVER.MAX_ITER 2 SOLVER.CHECKPOINT_PERIOD 100`" in md
    # --report rebuilds the same files from the summaries alone (run folders deleted)
    shutil.rmtree(tmp_path / "runs")
    (res / "synthetic" / "retinanet" / "results.md").unlink()
    ablate.main(base + ["--report", "--opts", *FAST])
    assert (res / "synthetic" / "retinanet" / "results.md").read_text() == md
    # a summary of another config (an earlier recipe) is reported apart and kept, never replaced
    # by an ordinary call; --rerun-stale replaces it
    path = res / "synthetic" / "retinanet" / "ce" / "seed1.json"
    s = json.loads(path.read_text())
    s["config"] = s["config"].replace("BASE_LR: 0.02", "BASE_LR: 0.03")
    s["config_sha256"] = "0" * 64
    path.write_text(json.dumps(s))
    ablate.main(base + ["--report", "--opts", *FAST])
    md = (res / "synthetic" / "retinanet" / "results.md").read_text()
    shipped, earlier = md.split("options `SOLVER.BASE_LR 0.03`")
    assert "| ce | 1 |" in shipped and "| gamma_2 | 1 |" in shipped and "| ce | 1 |" in earlier
    capsys.readouterr()
    ablate.main(base + ["--seeds", "2", "--variants", "ce", "--opts", *FAST])
    assert "ce seed 1: " in capsys.readouterr().out and json.loads(path.read_text()) == s
    ablate.main(base + ["--seeds", "2", "--variants", "ce", "--rerun-stale", "--opts", *FAST])
    assert json.loads(path.read_text())["config_sha256"] != "0" * 64


def test_runs_with_opts_never_write_the_shipped_configs_summaries(tmp_path, monkeypatch, capsys):
    """Without --results, a call with --opts keeps its summaries under OUT/results; the shipped
    configs' folder (results/ of the checkout) is left as it was."""
    args, _, _ = ablate.parse_args(["--suite", "rpn", "--dataset", "synthetic", "--out", str(tmp_path / "runs"),
                                    "--opts", *FAST])
    assert args.results == str(tmp_path / "runs" / "results")
    args, _, _ = ablate.parse_args(["--suite", "rpn", "--dataset", "synthetic"])
    assert args.results == suites.default_results()


def test_first_seed_trains_only_the_later_seeds(tmp_path, monkeypatch, capsys):
    """--seeds 5 --first-seed 3: seeds 3 and 4 of every variant, seed-major; a first seed outside
    0..N-1 is refused before any run."""
    trained = []
    monkeypatch.setattr(runner, "run_local", lambda jobs, args: trained.extend((v.name, s) for v, s, _, _ in jobs) or 0)
    monkeypatch.setattr(runner, "report", lambda *a: None)
    base = ["--suite", "rpn_lambda", "--dataset", "synthetic", "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results")]
    ablate.main(base + ["--seeds", "5", "--first-seed", "3"])
    names = [v.name for v in suites.suite_variants("rpn_lambda", "synthetic")]
    assert trained == [(n, 3) for n in names] + [(n, 4) for n in names]
    with pytest.raises(SystemExit):
        ablate.main(base + ["--seeds", "3", "--first-seed", "3"])
    assert "--first-seed 3 must be in 0..2" in capsys.readouterr().err


@pytest.mark.parametrize("opts, why", [(["SOLVER.NOPE", "1"], "Non-existent key: SOLVER.NOPE"),
                                       (["SOLVER.BASE_LR", "10000"], "Type mismatch")])
def test_bad_opts_are_one_line_before_any_run(opts, why, tmp_path, capsys):
    with pytest.raises(SystemExit):
        ablate.parse_args(["--suite", "retinanet", "--dataset", "synthetic", "--out", str(tmp_path), "--opts", *opts])
    err = capsys.readouterr().err
    assert f"--opts {' '.join(opts)}: " in err and why in err and "Traceback" not in err


def test_a_failed_run_is_recorded_and_the_suite_goes_on(tmp_path, capsys, monkeypatch):
    """A diverging run leaves a summary marked failed (cause, iteration, log), the report lists it
    apart, only --retry-failed runs it again, and the runs after it in the call still train."""
    res = tmp_path / "results"
    base = ["--suite", "retinanet", "--dataset", "synthetic", "--out", str(tmp_path / "runs"), "--results", str(res)]
    diverge = ["--opts", *FAST, "SOLVER.BASE_LR", "1e30", "SOLVER.CLIP_GRADIENTS.ENABLED", "False"]
    with pytest.raises(SystemExit, match="1 run"):
        ablate.main(base + ["--variants", "ce", *diverge])
    summary = json.loads((res / "synthetic" / "retinanet" / "ce" / "seed0.json").read_text())
    assert "metrics" not in summary and "Error" in summary["failed"]["cause"]
    assert summary["failed"]["iteration"] in (None, 0) and summary["failed"]["log"].endswith("stdout.txt")
    assert os.path.isfile(summary["failed"]["log"])
    md = (res / "synthetic" / "retinanet" / "results.md").read_text()
    assert "Failed runs" in md and "- ce seed 0: " in md
    capsys.readouterr()
    trained = []
    monkeypatch.setattr(runner, "run_one", lambda v, seed, opts, *a, **k: trained.append(v.name) or {
        "variant": v.name, "seed": seed, "config_sha256": summaries.config_sha256(suites.run_config(v, seed, opts)),
        "failed": {"cause": "E", "iteration": 1, "log": "l"}})
    with pytest.raises(SystemExit, match="1 run"):  # gamma_2 fails too; ce is not retried
        ablate.main(base + ["--variants", "ce", "gamma_2", *diverge])
    assert trained == ["gamma_2"] and "failed before" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="2 run"):
        ablate.main(base + ["--variants", "ce", "gamma_2", "--retry-failed", *diverge])
    assert trained == ["gamma_2", "ce", "gamma_2"]


def test_the_time_left_counts_only_the_runs_that_will_train(tmp_path, capsys, monkeypatch):
    """The estimate printed before a run is the mean run time so far times the runs still to train,
    this one included: a later run whose summary is already kept is not counted (here 1 run of
    1800 s each, not the 2 jobs left in the list)."""
    res = tmp_path / "results"

    def fake_run(v, seed, opts, *a, **k):
        return {"variant": v.name, "seed": seed, "config_sha256": summaries.config_sha256(suites.run_config(v, seed, opts)),
                "metrics": {"bbox/AP50": 1.0}}

    gamma_2 = [v for v in suites.suite_variants("retinanet", "synthetic") if v.name == "gamma_2"][0]
    summaries.write_summary(summaries.summary_path(str(res), "synthetic", "retinanet", "gamma_2", 0), fake_run(gamma_2, 0, FAST))
    clock = iter(range(0, 10**6, 1800))  # every reading of the clock 1800 s after the last
    monkeypatch.setattr(runner.time, "time", lambda: next(clock))
    monkeypatch.setattr(runner, "run_one", fake_run)
    monkeypatch.setattr(runner, "report", lambda *a: None)
    ablate.main(["--suite", "retinanet", "--dataset", "synthetic", "--variants", "ce", "alpha_ce", "gamma_2",
                 "--out", str(tmp_path / "runs"), "--results", str(res), "--opts", *FAST])
    out = capsys.readouterr().out
    assert "[1/3] ce seed 0: running\n" in out and "[2/3] alpha_ce seed 0: running, about 0.5 h left" in out
    assert "[3/3] gamma_2 seed 0: summary exists, skipped" in out


def test_a_locked_run_is_skipped(tmp_path, capsys, monkeypatch):
    """A run whose folder another live process holds is skipped with a message, not trained into
    the same folder; once that process is gone (however it ended) the lock is free."""
    import subprocess
    import sys

    from focal_rpn.study.lock import run_lock

    run = tmp_path / "runs" / "retinanet-synthetic" / "ce" / "seed0"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from focal_rpn.study.lock import run_lock\n"
        f"with run_lock({str(run)!r}) as lock:\n    print(lock.holder, flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "None"  # it holds the lock
        trained = []
        monkeypatch.setattr(runner, "run_one", lambda *a, **k: trained.append(a))
        monkeypatch.setattr(runner, "report", lambda *a: None)
        ablate.main(["--suite", "retinanet", "--dataset", "synthetic", "--variants", "ce", "--out",
                     str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--opts", *FAST])
        assert trained == [] and f"being trained by {os.uname().nodename} pid {holder.pid}" in capsys.readouterr().out
        ablate.main(["--suite", "retinanet", "--dataset", "synthetic", "--variants", "ce", "--out",
                     str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--status", "--opts", *FAST])
        assert "1 runs: 1 running" in capsys.readouterr().out  # --status sees the local run by its lock
    finally:
        holder.kill()  # no clean exit: the kernel releases the lock
        holder.wait()
    with run_lock(str(run)) as lock:
        assert lock.holder is None


def test_the_lock_outlives_a_killed_runner_while_its_training_lives(tmp_path):
    """The runner hands the locked file to its training process: killing the runner leaves the run
    locked until the training process ends too."""
    import signal
    import subprocess
    import sys

    from focal_rpn.study.lock import run_lock

    run = tmp_path / "seed0"
    runner_code = (
        "import os, subprocess, sys; from focal_rpn.study.lock import run_lock\n"
        f"with run_lock({str(run)!r}) as lock:\n"
        "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], pass_fds=(lock.fd,),\n"
        "                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "    print(child.pid, flush=True)\n"
        "    os.kill(os.getpid(), 9)\n")
    p = subprocess.run([sys.executable, "-c", runner_code], capture_output=True, text=True, timeout=60)
    child = int(p.stdout.split()[0])
    try:
        with run_lock(str(run)) as lock:
            assert lock.holder is not None  # the runner is dead, its training child holds the run
    finally:
        os.kill(child, signal.SIGKILL)
    import time
    for _ in range(100):  # the child's exit closes the last descriptor of the locked file
        with run_lock(str(run)) as lock:
            if lock.holder is None:
                break
        time.sleep(0.05)
    assert lock.holder is None


def test_a_broken_summary_is_named(tmp_path):
    bad = tmp_path / "synthetic" / "rpn_lambda" / "lambda_1" / "seed0.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="seed0.json is not a run summary"):
        ablate.main(["--suite", "rpn_lambda", "--dataset", "synthetic", "--report", "--results", str(tmp_path)])


def test_suites_and_references():
    for suite, ref in suites.REFERENCES.items():
        for dataset in suites.DATASETS:
            if (suite, dataset) == ("classes", "trees"):
                with pytest.raises(ValueError, match="one class"):
                    suites.suite_variants(suite, dataset)
                continue
            variants = suites.suite_variants(suite, dataset)
            assert ref in [v.name for v in variants]
            assert all(os.path.isfile(os.path.join(suites.ROOT, v.config)) for v in variants), (suite, dataset)
    classes = {v.name: v for v in suites.suite_variants("classes", "bccd")}
    assert classes["ce"].config == "configs/bccd/rpn_ce.yaml" and classes["ohem_1_3"].config == "configs/bccd/ohem_1_3.yaml"
    assert classes["ce_freq"].opts == ["MODEL.ROI_BOX_HEAD.FOCAL_GAMMA", "0.0", "MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS", "['frequency']"]
    fit = suites.suite_variants("anchor_fit", "deeppcb")
    assert [v.config for v in fit] == ["configs/deeppcb/trees_recipe.yaml"] * 2 and fit[1].opts == ["MODEL.ANCHOR_GENERATOR.FIT", "True"]
    lam = suites.suite_variants("rpn_lambda", "trees")
    assert [v.opts for v in lam] == [["MODEL.FOCAL_RPN.CLS_LOSS_WEIGHT", str(x)] for x in (0.1, 0.3, 1.0, 3.0)]
    assert all(v.config == "configs/trees/rpn_fl_sigmoid.yaml" for v in lam)
    assert "gamma_0" not in suites.RETINANET_VARIANTS  # alpha_ce by construction (test_retinanet)


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
    visualize.main(["--config-file", "configs/synthetic/retinanet.yaml", "--dataset", "synthetic_val", "--max-images",
                    "2", "--eval-view", "--output", str(tmp_path / "two"), "MODEL.WEIGHTS", os.path.join(out, "model_final.pth")])
    assert len(list((tmp_path / "two").glob("*.png"))) == 2


def test_anchor_report_counts(tmp_path, capsys):
    from focal_rpn.tools import anchor_report

    from detectron2.data import DatasetCatalog

    anchor_report.main(["--config-file", "configs/synthetic/retinanet.yaml", "--output", str(tmp_path),
                        "MODEL.ANCHOR_GENERATOR.FIT", "True"])
    rows = _rows(tmp_path / "anchor_report.csv")
    assert [r["anchors"] for r in rows] == ["the config's"] * 12 + ["fitted"] * 12  # before / after
    empty = [r for r in rows if r["positive"] == "0" and r["ignored"] == "0"]
    assert len(empty) >= 2  # the background-only image: every anchor negative
    totals = {int(r["positive"]) + int(r["negative"]) + int(r["ignored"]) for r in rows}
    assert len(totals) == 1  # same image size, same number of anchors (the fit keeps 9 per location)
    boxes = [len(d["annotations"]) for d in DatasetCatalog.get("synthetic_train")]
    assert [int(r["boxes"]) for r in rows] == boxes * 2
    assert all(int(r["matched"]) <= int(r["boxes"]) for r in rows)
    matched = {label: sum(int(r["matched"]) for r in rows if r["anchors"] == label) for label in ("the config's", "fitted")}
    assert matched["fitted"] > matched["the config's"]
    out = capsys.readouterr().out
    assert "negative:positive" in out and "anchors fitted to the boxes of synthetic_train" in out
    assert out.count("positives/box median") == 2  # three classes: a per-class table before and after


def test_anchor_report_per_box_positives_add_up_to_the_matchers_labels():
    """Every positive anchor is counted once, for the box the matcher gave it to; a box's class is
    its annotation's; a box is 'matched' exactly when some anchor reaches the positive IoU with it
    (pairwise_iou over Detectron2's anchors, computed here independently)."""
    from detectron2.data import DatasetCatalog
    from detectron2.structures import BoxMode, Boxes, pairwise_iou

    from focal_rpn.config import load_config
    from focal_rpn.tools import anchor_report

    cfg = load_config("configs/synthetic/retinanet.yaml")
    rows, per_box = anchor_report.report(cfg, "synthetic_train", "the config's")
    assert per_box[:, 1].sum() == sum(r[2] for r in rows) and len(per_box) == sum(r[5] for r in rows)
    dicts = DatasetCatalog.get("synthetic_train")
    assert per_box[:, 0].tolist() == [a["category_id"] for d in dicts for a in d["annotations"]]
    model = anchor_report.build_model(cfg).eval()
    gen = model.anchor_generator
    matched = []
    for d in dicts:  # synthetic images are fed at their own size (no resize at test time)
        feats = [torch.zeros(1, 1, d["height"] // s, d["width"] // s) for s in gen.strides]
        anchors = Boxes.cat(gen(feats))
        gt = Boxes(torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]],
                                dtype=torch.float32).reshape(-1, 4))
        if len(gt):
            matched += (pairwise_iou(gt, anchors).max(1).values >= 0.5).tolist()
    assert per_box[:, 2].astype(bool).tolist() == matched


def test_evaluation_view_counts_and_colours():
    """Two crowns, three detections: one true positive, a lower-scored duplicate of the same crown
    (a false positive, as in COCO), one detection on nothing; the second crown is missed."""
    from detectron2.structures import BoxMode, Boxes, Instances

    img = np.full((260, 300, 3), 255, dtype=np.uint8)  # boxes below the legend (top left)
    gt = {"annotations": [{"bbox": [10, 100, 30, 120], "bbox_mode": BoxMode.XYXY_ABS},
                          {"bbox": [150, 150, 180, 180], "bbox_mode": BoxMode.XYXY_ABS}]}
    inst = Instances((260, 300))
    inst.pred_boxes = Boxes(torch.tensor([[11.0, 101, 31, 121], [12.0, 100, 30, 122], [200.0, 100, 230, 120],
                                          [150.0, 150, 180, 180]]))
    inst.scores = torch.tensor([0.9, 0.8, 0.7, 0.1])  # the last is below the score threshold
    is_tp, matched = visualize.match_detections(inst.pred_boxes.tensor[:3], torch.tensor([[10.0, 100, 30, 120], [150.0, 150, 180, 180]]))
    assert is_tp.tolist() == [True, False, False] and matched.tolist() == [True, False]
    out = visualize.draw_evaluation(img, inst, gt, score_thresh=0.3)
    c = visualize.EVAL_COLORS
    assert tuple(out[180, 165]) == c["missed"]  # bottom edge of the missed crown
    assert tuple(out[120, 215]) == c["false positive"]  # bottom edge of the detection on nothing
    assert tuple(out[121, 20]) == c["true positive"]  # bottom edge of the true positive


def _same_metrics(a, b):
    return a.keys() == b.keys() and all(x == y or (np.isnan(x) and np.isnan(y)) for x, y in zip(a.values(), (b[k] for k in a)))


REEVAL_ITERS = ["SOLVER.MAX_ITER", "20", "SOLVER.CHECKPOINT_PERIOD", "100"]


@pytest.fixture(scope="module")
def _gamma_2_trained(tmp_path_factory):
    """One short synthetic run of the retinanet suite's gamma_2 (its folder and summary), trained
    once for the re-evaluation tests."""
    root = tmp_path_factory.mktemp("gamma_2")
    ablate.main(["--suite", "retinanet", "--dataset", "synthetic", "--variants", "gamma_2", "--out", str(root / "runs"),
                 "--results", str(root / "results"), "--opts", *REEVAL_ITERS])
    return root


@pytest.fixture
def gamma_2_run(_gamma_2_trained, tmp_path):
    """A copy of that run's ``runs/`` and ``results/`` in this test's tmp_path, for it to change."""
    for d in ("runs", "results"):
        shutil.copytree(_gamma_2_trained / d, tmp_path / d)
    return tmp_path


def test_reevaluate_a_test_time_change_instead_of_training(gamma_2_run, tmp_path, capsys):
    """--reevaluate: a summary made stale by an evaluation-only setting is rewritten from the run's
    checkpoint, equal to what training again with the new setting gives (the independent
    reference: a fresh run); a training change is refused, naming the key."""
    iters = REEVAL_ITERS
    test_change = ["MODEL.RETINANET.TOPK_CANDIDATES_TEST", "3", "TEST.DETECTIONS_PER_IMAGE", "4"]
    res = tmp_path / "results"
    base = ["--suite", "retinanet", "--dataset", "synthetic", "--variants", "gamma_2",
            "--out", str(tmp_path / "runs"), "--results", str(res)]
    path = res / "synthetic" / "retinanet" / "gamma_2" / "seed0.json"
    before = json.loads(path.read_text())
    ablate.main(["--suite", "retinanet", "--dataset", "synthetic", "--variants", "gamma_2", "--out", str(tmp_path / "fresh"),
                 "--results", str(tmp_path / "fresh_results"), "--opts", *iters, *test_change])
    fresh = json.loads((tmp_path / "fresh_results" / "synthetic" / "retinanet" / "gamma_2" / "seed0.json").read_text())
    assert not _same_metrics(before["metrics"], fresh["metrics"])  # the setting matters to the metrics
    capsys.readouterr()
    ablate.main(base + ["--reevaluate", "--opts", *iters, *test_change])
    assert "gamma_2 seed 0: re-evaluated (MODEL.RETINANET.TOPK_CANDIDATES_TEST: 6000 -> 3; " \
           "TEST.DETECTIONS_PER_IMAGE: 500 -> 4)" in capsys.readouterr().out
    after = json.loads(path.read_text())
    assert _same_metrics(after["metrics"], fresh["metrics"]) and after["config_sha256"] == fresh["config_sha256"]
    assert after["s_per_iter"] == before["s_per_iter"] and after["git_commit"] == before["git_commit"]
    assert after["reevaluated"]["previous_config_sha256"] == before["config_sha256"]
    assert set(after) == set(before) | {"reevaluated"}  # the same fields as a trained run's, nothing more
    ablate.main(base + ["--opts", *iters, *test_change])  # now current: nothing to train
    assert "summary exists, skipped" in capsys.readouterr().out
    ablate.main(base + ["--reevaluate", "--opts", *iters, *test_change, "SOLVER.BASE_LR", "0.001"])
    out = capsys.readouterr().out
    assert "not re-evaluated, left as it was: gamma_2 seed 0:" in out and "SOLVER.BASE_LR: 0.02 -> 0.001" in out
    kept = json.loads(path.read_text())  # left as it was
    assert kept["config_sha256"] == after["config_sha256"] and _same_metrics(kept["metrics"], after["metrics"])
    # training it again under the changed config starts from scratch: the old folder's finished
    # checkpoint must not be resumed (it would be taken as a finished run of the new config)
    run = tmp_path / "runs" / "retinanet-synthetic" / "gamma_2" / "seed0"
    ablate.main(base + ["--rerun-stale", "--opts", *iters, *test_change, "SOLVER.BASE_LR", "0.001"])
    with open(run / "metrics.json") as f:  # a fresh folder: one training, one evaluation
        rows = [json.loads(line) for line in f]
    assert sum("total_loss" in r for r in rows) >= 1 and sum("bbox/AP50" in r for r in rows) == 1
    assert (run.parent / "seed0.stale-1" / "model_final.pth").is_file()  # the old run's files are kept
    assert "moved to" in capsys.readouterr().out
    assert json.loads(path.read_text())["config_sha256"] != kept["config_sha256"]


def test_a_reevaluation_on_other_test_data_names_each_figures_datasets():
    """The AP50 line of --reevaluate names the test datasets when the re-evaluation changed them,
    since then the two figures measure different images; otherwise it shows the change alone."""
    def summary(ap50, test):
        return {"metrics": {"bbox/AP50": ap50}, "config": f"DATASETS:\n  TEST:\n  - {test}\nSEED: 0\n"}
    assert runner.ap50_change(summary(88.06, "bccd_test"), summary(85.2, "bccd_val")) == \
        "AP50 88.06 on bccd_test -> 85.20 on bccd_val"
    assert runner.ap50_change(summary(88.06, "bccd_test"), summary(88.61, "bccd_test")) == "AP50 88.06 -> 88.61"
    assert runner.ap50_change({"metrics": {}}, summary(88.61, "bccd_test")) == "AP50 nan -> 88.61"  # no config recorded


def test_reevaluate_all_adds_a_metric_the_evaluator_has_gained(gamma_2_run, tmp_path, capsys):
    """--reevaluate all: a current summary written before the evaluator had the per-class AP50 gets it
    from the run's checkpoint, every metric it had reproduced exactly (the reference: the summary
    of the training itself); a copied summary (same_run_as) is copied again from its source; one
    whose metrics do not come back is left as it was."""
    iters = REEVAL_ITERS
    res = tmp_path / "results"
    base = ["--dataset", "synthetic", "--out", str(tmp_path / "runs"), "--results", str(res)]
    ablate.main(["--suite", "sweep", "--variants", "fl_all", *base, "--opts", *iters])  # the same run: copied
    source, copy = res / "synthetic" / "retinanet" / "gamma_2" / "seed0.json", res / "synthetic" / "sweep" / "fl_all" / "seed0.json"
    trained = json.loads(source.read_text())
    per_class = sorted(k for k in trained["metrics"] if k.startswith("bbox/AP50-"))
    assert len(per_class) == 3 and json.loads(copy.read_text())["same_run_as"] == "retinanet/gamma_2/seed0.json"
    for path in (source, copy):  # as written before the evaluator had AP50 per class
        s = json.loads(path.read_text())
        path.write_text(json.dumps({**s, "metrics": {k: v for k, v in s["metrics"].items() if k not in per_class}}))
    older = json.loads(source.read_text())
    capsys.readouterr()
    ablate.main(["--suite", "retinanet", "--variants", "gamma_2", *base, "--reevaluate", "--opts", *iters])
    assert "gamma_2 seed 0: current, skipped" in capsys.readouterr().out and json.loads(source.read_text()) == older
    ablate.main(["--suite", "retinanet", "--variants", "gamma_2", *base, "--reevaluate", "all", "--opts", *iters])
    assert "gamma_2 seed 0: re-evaluated (no setting, 3 metric(s) added)" in capsys.readouterr().out
    after = json.loads(source.read_text())
    assert _same_metrics(after["metrics"], trained["metrics"]) and after["reevaluated"]["added"] == per_class
    assert after["config_sha256"] == trained["config_sha256"] and after["s_per_iter"] == trained["s_per_iter"]
    ablate.main(["--suite", "sweep", "--variants", "fl_all", *base, "--reevaluate", "all", "--opts", *iters])
    assert "fl_all seed 0: copied again from retinanet/gamma_2/seed0.json" in capsys.readouterr().out
    assert json.loads(copy.read_text()) == {**after, "variant": "fl_all", "same_run_as": "retinanet/gamma_2/seed0.json"}
    # a summary whose AP the checkpoint does not give back (another run's, say) is not overwritten
    tampered = {**after, "metrics": {**after["metrics"], "bbox/AP": after["metrics"]["bbox/AP"] + 1}}
    source.write_text(json.dumps(tampered))
    ablate.main(["--suite", "retinanet", "--variants", "gamma_2", *base, "--reevaluate", "all", "--opts", *iters])
    out = capsys.readouterr().out
    assert "not re-evaluated, left as it was: gamma_2 seed 0:" in out and "bbox/AP came back" in out
    assert json.loads(source.read_text()) == tampered


def test_a_run_folder_of_another_config_is_set_aside(tmp_path):
    v = [x for x in suites.suite_variants("retinanet", "synthetic") if x.name == "gamma_2"][0]
    cfg = suites.run_config(v, 0, [])
    run = tmp_path / "seed0"
    run.mkdir()
    (run / "last_checkpoint").write_text("model_final.pth")
    (run / "config.yaml").write_text(cfg.dump())
    runner.set_aside_other_training(str(run), suites.run_config(v, 0, ["MODEL.IMAGE_THREADS", "2"]))
    assert run.is_dir()  # the same training (a result-neutral key aside): resumed, not moved
    runner.set_aside_other_training(str(run), suites.run_config(v, 1, []))  # another seed
    assert not run.exists() and (tmp_path / "seed0.stale-1" / "config.yaml").is_file()
    run.mkdir()
    (run / "last_checkpoint").write_text("model_final.pth")  # no config.yaml: cannot be compared
    runner.set_aside_other_training(str(run), cfg)
    assert (tmp_path / "seed0.stale-2" / "last_checkpoint").is_file()


def test_config_differences_split_evaluation_from_training():
    from focal_rpn.config import load_config
    from focal_rpn.study.reevaluate import EVAL_ONLY_KEYS, config_differences, flatten_config

    a = load_config("configs/trees/rpn_ce.yaml", [])
    b = load_config("configs/trees/rpn_ce.yaml", ["MODEL.RPN.POST_NMS_TOPK_TEST", "100", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
                                                  "TEST.PRECISE_BN.ENABLED", "True", "OUTPUT_DIR", "elsewhere",
                                                  "MODEL.IMAGE_THREADS", "3"])
    diffs = config_differences(a, b)
    assert diffs["evaluation"] == ["MODEL.RPN.POST_NMS_TOPK_TEST: 3000 -> 100"]
    assert diffs["training"] == ["MODEL.RPN.POST_NMS_TOPK_TRAIN: 500 -> 100", "TEST.PRECISE_BN.ENABLED: False -> True"]
    assert EVAL_ONLY_KEYS <= set(flatten_config(a))  # every listed key exists in the config
    # every key of test-time augmentation is evaluation-only (the node, not a list to keep up to date)
    tta = load_config("configs/trees/rpn_ce.yaml", ["TEST.TTA.ENABLED", "True"])
    assert config_differences(a, tta)["training"] == [] and "TEST.TTA.VIEWS: '<absent>' -> 8" in config_differences(a, tta)["evaluation"]
    assert config_differences(tta, load_config("configs/trees/rpn_ce.yaml", ["TEST.TTA.ENABLED", "True", "TEST.TTA.VOTE_IOU", "0.8"])) == {
        "evaluation": ["TEST.TTA.VOTE_IOU: 0.6 -> 0.8"], "training": []}
    # a key added after the runs, left out of the hash at its default, shows that default
    assert config_differences(a, load_config("configs/trees/rpn_ce.yaml", ["MODEL.FOCAL_RPN.NEG_POS_RATIO", "10.0"])) == {
        "evaluation": [], "training": ["MODEL.FOCAL_RPN.NEG_POS_RATIO: 0.0 -> 10.0"]}


# A value other than the default for each key added after the study's runs were made
ADDED_KEY_VALUES = {"MODEL.ROI_ALIGN_IMPL": "gather", "MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS": ["frequency"],
                    "MODEL.ROI_BOX_HEAD.BACKGROUND_WEIGHT": 0.5, "MODEL.ANCHOR_GENERATOR.FIT": True,
                    "MODEL.ANCHOR_GENERATOR.FIT_MAX_IMAGES": 50, "MODEL.ANCHOR_GENERATOR.FITTED_ON": ("trees_train",),
                    "MODEL.RETINANET.NEG_POS_RATIO": 10.0, "MODEL.FOCAL_RPN.NEG_POS_RATIO": 10.0}


@pytest.mark.parametrize("key", sorted(ADDED_KEY_VALUES))
def test_a_key_added_later_keeps_earlier_runs_current_at_its_default(key):
    """Runs made before a key existed hash as today's config with the key at its default (so the
    committed studies stay current); another value is another run."""
    from conftest import load_repo_config
    from focal_rpn.study.summaries import ADDED_KEYS, _parent, config_sha256

    assert set(ADDED_KEY_VALUES) == set(ADDED_KEYS)
    cfg = load_repo_config("configs/trees/rpn_ce.yaml")
    parent, leaf = _parent(cfg, key)
    parent[leaf] = ADDED_KEYS[key]  # rpn_ce ships some (MODEL.ROI_ALIGN_IMPL) at another value
    today = config_sha256(cfg)
    del parent[leaf]  # the config as it was before the key
    assert config_sha256(cfg) == today
    parent[leaf] = ADDED_KEY_VALUES[key]
    assert config_sha256(cfg) != today


# The committed trees suites (results root, suite): the shipped recipes' and the earlier ones'.
_REPORTS = [("results", "rpn"), ("results", "retinanet"), (os.path.join("results", "earlier", "float32"), "retinanet"),
            (os.path.join("results", "earlier", "rpn_iou07_float32"), "rpn"),
            (os.path.join("results", "earlier", "rpn_iou07_float32"), "rpn_lambda"),
            (os.path.join("results", "earlier", "it650"), "rpn")]


@pytest.mark.parametrize("results_dir, suite", _REPORTS)
def test_committed_study_reports_rebuild_from_their_summaries(results_dir, suite, tmp_path):
    """The committed results.md of each trees suite is what --report makes of the committed
    summaries alone (no --opts: each summary carries its config): a config change or a report
    change shows up here, not in docs that no longer match their data."""
    from conftest import ROOT

    src = os.path.join(ROOT, results_dir, "trees", suite)
    if not os.path.isfile(os.path.join(src, "results.md")):
        pytest.skip(f"no committed {suite} report")
    shutil.copytree(src, tmp_path / "trees" / suite)
    (tmp_path / "trees" / suite / "results.md").unlink()
    ablate.main(["--suite", suite, "--dataset", "trees", "--report", "--results", str(tmp_path)])
    with open(os.path.join(src, "results.md")) as f:
        assert (tmp_path / "trees" / suite / "results.md").read_text() == f.read()


@pytest.mark.parametrize("folder, suite", [("float32", "retinanet"), ("rpn_iou07_float32", "rpn")])
def test_an_earlier_recipe_is_titled_by_the_options_that_rebuild_it(tmp_path, folder, suite):
    """A report titles the summaries of an earlier recipe by what differs from today's configs;
    those options, passed as --opts, build exactly the configs the runs recorded (their hashes)."""
    from conftest import ROOT

    shutil.copytree(os.path.join(ROOT, "results", "earlier", folder, "trees", suite), tmp_path / "trees" / suite)
    report = ["--suite", suite, "--dataset", "trees", "--report", "--results", str(tmp_path)]
    ablate.main(report)
    md = (tmp_path / "trees" / suite / "results.md").read_text()
    (title,) = re.findall(r"options `([^`]*)`", md)  # one earlier recipe, no run of today's
    assert "shipped configs" not in md
    opts = [x for kv in re.findall(r"(\S+) (\[[^\]]*\]|\S+)", title) for x in kv]  # KEY VALUE, lists whole
    ablate.main(report + ["--opts", *opts])
    md = (tmp_path / "trees" / suite / "results.md").read_text()
    assert "the shipped configs" in md and "options `" not in md  # every run current under those options


def test_an_identical_run_of_another_suite_is_not_trained_again(tmp_path, capsys, monkeypatch):
    """rpn_lambda's lambda_1 builds the same config as rpn's rpn_fl_sigmoid: its summary is copied."""
    res = tmp_path / "results"
    common = ["--dataset", "synthetic", "--out", str(tmp_path / "runs"), "--results", str(res)]
    lam1 = next(v for v in suites.suite_variants("rpn_lambda", "synthetic") if v.name == "lambda_1")
    sigmoid = next(v for v in suites.suite_variants("rpn", "synthetic") if v.name == "rpn_fl_sigmoid")
    sha = summaries.config_sha256(suites.run_config(lam1, 0, FAST))
    assert sha == summaries.config_sha256(suites.run_config(sigmoid, 0, FAST))
    assert sha != summaries.config_sha256(suites.run_config(sigmoid, 1, FAST))  # the seed is in it
    kept = {"variant": "rpn_fl_sigmoid", "seed": 0, "iterations": 2, "s_per_iter": 0.1, "peak_rss_mb": 300.0,
            "wall_s": 5.0, "config_sha256": sha, "git_commit": "abc", "metrics": {"bbox/AP50": 12.5, "bbox/AP": 3.0}}
    summaries.write_summary(str(res / "synthetic" / "rpn" / "rpn_fl_sigmoid" / "seed0.json"), kept)
    trained = []
    monkeypatch.setattr(runner, "run_one", lambda v, seed, *a, **k: trained.append((v.name, seed)) or dict(
        kept, variant=v.name, seed=seed, config_sha256=summaries.config_sha256(suites.run_config(v, seed, FAST)),
        metrics={"bbox/AP50": 1.0, "bbox/AP": 0.1}))
    ablate.main(["--suite", "rpn_lambda", "--variants", "lambda_1", "lambda_3", "--seeds", "2", *common, "--opts", *FAST])
    assert sorted(trained) == [("lambda_1", 1), ("lambda_3", 0), ("lambda_3", 1)]
    copied = json.loads((res / "synthetic" / "rpn_lambda" / "lambda_1" / "seed0.json").read_text())
    assert copied["same_run_as"] == os.path.join("rpn", "rpn_fl_sigmoid", "seed0.json")
    assert copied["variant"] == "lambda_1" and copied["metrics"] == kept["metrics"] and copied["config_sha256"] == sha
    assert "lambda_1 seed 0: the same config and seed as rpn/rpn_fl_sigmoid/seed0.json" in capsys.readouterr().out
    # once copied it is an ordinary current summary: a second call trains nothing
    trained.clear()
    ablate.main(["--suite", "rpn_lambda", "--variants", "lambda_1", "lambda_3", "--seeds", "2", *common, "--opts", *FAST])
    assert trained == []


def _readme_study_commands():
    """The README's local `ablate ... --seeds N` commands, as argument lists."""
    import shlex

    from conftest import ROOT

    with open(os.path.join(ROOT, "README.md")) as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [shlex.split(line)[3:] for line in lines
            if line.startswith("python -m focal_rpn.tools.ablate") and "--seeds" in line and "--launcher" not in line]


@pytest.mark.parametrize("command", _readme_study_commands(), ids=lambda c: " ".join(c[:4]))
def test_the_readme_study_commands_change_no_committed_summary(command, tmp_path, monkeypatch, capsys):
    """Each `ablate --suite S --dataset D --seeds N` command as the README writes it, on a copy of
    the committed results/: every kept summary stays byte for byte (earlier recipes' included); only
    runs without a summary are trained (here a stub stands in for the training)."""
    from conftest import ROOT

    shutil.copytree(os.path.join(ROOT, "results"), tmp_path / "results")
    before = {p: p.read_bytes() for p in (tmp_path / "results").rglob("seed*.json")}
    trained = []
    monkeypatch.setattr(runner, "cpu_has_bfloat16", lambda: True)  # the CPU recipes' bfloat16, on any CPU
    monkeypatch.setattr(runner, "run_one", lambda v, seed, opts, *a, **k: trained.append((v.name, seed)) or {
        "variant": v.name, "seed": seed, "config_sha256": summaries.config_sha256(suites.run_config(v, seed, opts)),
        "failed": {"cause": "not trained in this test", "iteration": 0, "log": "-"}})
    dataset, suite = command[command.index("--dataset") + 1], command[command.index("--suite") + 1]
    seeds = int(command[command.index("--seeds") + 1])
    kept = {(p.parent.name, int(p.stem[4:])) for p in before if p.parent.parent == tmp_path / "results" / dataset / suite}
    missing = {(v.name, s) for v in suites.suite_variants(suite, dataset) for s in range(seeds)} - kept
    call = command + ["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    if missing:
        with pytest.raises(SystemExit):  # the stub's runs are recorded as failed
            ablate.main(call)
    else:  # a complete study: the call trains nothing and succeeds
        ablate.main(call)
    assert all(p.read_bytes() == data for p, data in before.items())
    assert set(trained) <= missing and (trained or not missing)  # only runs without a summary are trained


def test_the_readme_has_study_commands():
    suites_run = {(c[c.index("--suite") + 1], c[c.index("--dataset") + 1]) for c in _readme_study_commands()}
    assert {("retinanet", "deeppcb"), ("rpn", "deeppcb"), ("sweep", "deeppcb"), ("classes", "bccd")} <= suites_run


def test_a_suite_of_bfloat16_runs_stops_on_a_cpu_without_bfloat16_units(tmp_path, monkeypatch, capsys):
    """Where the CPU has no bfloat16 units a run of a SOLVER.AMP.ENABLED config would fall back to
    float32 under its config's hash: the local launcher stops before the first run and names the
    ways out; with FOCAL_RPN_CPU_BF16=emulate it trains, and its training processes refuse the
    fallback unless told otherwise."""
    monkeypatch.setattr(runner, "cpu_has_bfloat16", lambda: False)
    monkeypatch.delenv("FOCAL_RPN_CPU_BF16", raising=False)
    envs = []

    class Refused(Exception):
        pass

    def popen(cmd, env=None, **kwargs):
        envs.append(env)
        raise Refused

    monkeypatch.setattr(runner.subprocess, "Popen", popen)
    call = ["--suite", "retinanet", "--dataset", "synthetic", "--variants", "ce", "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results"), "--opts", "SOLVER.AMP.ENABLED", "True"]
    with pytest.raises(SystemExit, match="no bfloat16 instructions.*FOCAL_RPN_CPU_BF16=emulate.*SOLVER.AMP.ENABLED False"):
        ablate.main(call)
    assert not envs and not (tmp_path / "results").exists()
    monkeypatch.setenv("FOCAL_RPN_CPU_BF16", "yes")
    with pytest.raises(ValueError, match="FOCAL_RPN_CPU_BF16='yes'"):
        ablate.main(call)
    monkeypatch.setenv("FOCAL_RPN_CPU_BF16", "emulate")
    with pytest.raises(Refused):
        ablate.main(call)
    assert envs[0]["FOCAL_RPN_CPU_BF16"] == "emulate"
    monkeypatch.setattr(runner, "cpu_has_bfloat16", lambda: True)
    monkeypatch.delenv("FOCAL_RPN_CPU_BF16")
    with pytest.raises(Refused):
        ablate.main(call)
    assert envs[1]["FOCAL_RPN_CPU_BF16"] == "refuse"
    monkeypatch.setattr(runner, "cpu_has_bfloat16", lambda: False)
    monkeypatch.setenv("FOCAL_RPN_CPU_BF16", "auto")  # set explicitly: float32 accepted
    with pytest.raises(Refused):
        ablate.main(call)
    assert envs[2]["FOCAL_RPN_CPU_BF16"] == "auto"
    monkeypatch.delenv("FOCAL_RPN_CPU_BF16")
    # float32 runs are another config: they train anywhere
    with pytest.raises(Refused):
        ablate.main(call[:-1] + ["False"])
