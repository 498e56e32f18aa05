"""SOLVER.WEIGHT_AVERAGE: the schedule, the mean against a float64 reference built from a run
trained without it, resume, and rebuilding the mean of an old run from its checkpoints."""
import shutil

import pytest
import torch

from focal_rpn.engine.weight_average import average_of_checkpoints, snapshot_iterations

# 6 iterations, a checkpoint every 2; snapshots after 2, 4 and 6 iterations
RUN = ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "2",
       "DATASETS.TEST", "()", "SOLVER.WEIGHT_AVERAGE.START_ITER", "2", "SOLVER.WEIGHT_AVERAGE.PERIOD", "2"]


def test_snapshot_schedule():
    assert snapshot_iterations(400, 100, 650) == [400, 500, 600, 650]
    assert snapshot_iterations(650, 100, 650) == [650]
    assert snapshot_iterations(1, 2, 4) == [1, 3, 4]
    assert snapshot_iterations(700, 100, 650) == [650]  # a shortened run of the recipe: logged, no average
    with pytest.raises(ValueError, match="SOLVER.WEIGHT_AVERAGE.START_ITER"):
        snapshot_iterations(0, 100, 650)
    with pytest.raises(ValueError, match="SOLVER.WEIGHT_AVERAGE.PERIOD"):
        snapshot_iterations(400, 0, 650)


def _train(make_cfg, out, enabled, resume=False):
    from detectron2.utils.env import seed_all_rng

    from focal_rpn.engine import Trainer

    cfg = make_cfg("configs/synthetic/retinanet.yaml", *RUN, "SOLVER.WEIGHT_AVERAGE.ENABLED", str(enabled),
                   "OUTPUT_DIR", str(out))
    seed_all_rng(cfg.SEED)  # as train_net.py's default_setup: the same initialisation and data order
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()


def _model(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two trainings of the same config and seed, without and with the weight average."""
    from conftest import load_repo_config

    root = tmp_path_factory.mktemp("wa")
    _train(load_repo_config, root / "plain", False)
    _train(load_repo_config, root / "avg", True)
    return root, load_repo_config


def test_final_weights_are_the_mean_of_the_snapshots(runs):
    root, _ = runs
    plain, avg = root / "plain", root / "avg"
    # training is untouched: the periodic checkpoints are the same bits with and without it
    for name in ("model_0000001.pth", "model_0000003.pth"):
        _assert_same(_model(plain / name), _model(avg / name))
    # the final weights are the float64 mean of the plain run's weights after 2, 4 and 6 iterations
    snaps = [_model(plain / n) for n in ("model_0000001.pth", "model_0000003.pth", "model_final.pth")]
    final = _model(avg / "model_final.pth")
    changed = 0
    for k, v in final.items():
        if v.is_floating_point():
            ref = torch.stack([s[k].double() for s in snaps]).mean(0)
            torch.testing.assert_close(v.double(), ref, rtol=1e-6, atol=1e-7)
            changed += not torch.equal(v, snaps[-1][k])
        else:
            assert torch.equal(v, snaps[-1][k])  # num_batches_tracked: the newest
    assert changed > 10  # the mean is not the last iteration's weights
    # rebuilt from the plain run's checkpoints (what --reevaluate does): the same bits
    _assert_same(average_of_checkpoints(str(plain), 2, 2, 6), final)


def _interrupted_copy(src, dst):
    """``src`` as if training had stopped after 4 of 6 iterations."""
    shutil.copytree(src, dst)
    (dst / "model_final.pth").unlink()
    (dst / "last_checkpoint").write_text("model_0000003.pth")
    return dst


def test_resume_continues_the_mean(runs, tmp_path):
    root, make_cfg = runs
    # Detectron2's --resume restarts the data stream, so the reference is resumed too: the plain run
    # resumed without the average, its checkpoints after 2 and 4 iterations and its final weights
    ref = _interrupted_copy(root / "plain", tmp_path / "ref")
    _train(make_cfg, ref, False, resume=True)
    expected = average_of_checkpoints(str(ref), 2, 2, 6)
    # a run with the average, resumed: its checkpoint after 4 iterations carries the running sum
    run = _interrupted_copy(root / "avg", tmp_path / "resumed")
    (run / "model_0000001.pth").unlink()  # so the sum can only come from the checkpoint's state
    _train(make_cfg, run, True, resume=True)
    _assert_same(_model(run / "model_final.pth"), expected)
    # a run started without it, resumed with it: the missing snapshots come from its checkpoints
    run = _interrupted_copy(root / "plain", tmp_path / "switched")
    _train(make_cfg, run, True, resume=True)
    _assert_same(_model(run / "model_final.pth"), expected)


def test_a_missing_checkpoint_is_named(runs, tmp_path):
    root, _ = runs
    run = tmp_path / "gap"
    shutil.copytree(root / "plain", run)
    (run / "model_0000003.pth").unlink()
    with pytest.raises(FileNotFoundError, match="model_0000003.pth not found.*CHECKPOINT_PERIOD"):
        average_of_checkpoints(str(run), 2, 2, 6)


def test_reevaluate_takes_the_mean_of_a_run_trained_without_it(runs):
    from focal_rpn.study.reevaluate import _final_weights, config_differences

    root, make_cfg = runs
    off = make_cfg("configs/synthetic/retinanet.yaml", *RUN, "SOLVER.WEIGHT_AVERAGE.ENABLED", "False")
    on = make_cfg("configs/synthetic/retinanet.yaml", *RUN, "SOLVER.WEIGHT_AVERAGE.ENABLED", "True")
    assert config_differences(off, on) == {"training": [], "evaluation": [  # off: as if the keys did not exist
        "SOLVER.WEIGHT_AVERAGE.ENABLED: '<absent>' -> True", "SOLVER.WEIGHT_AVERAGE.PERIOD: '<absent>' -> 2",
        "SOLVER.WEIGHT_AVERAGE.START_ITER: '<absent>' -> 2"]}
    path = _final_weights(off, on, str(root / "plain"))
    assert path.endswith("reevaluate/model_average.pth")
    _assert_same(_model(path), _model(root / "avg" / "model_final.pth"))  # what training with it gives
    assert _final_weights(off, off, str(root / "plain")).endswith("model_final.pth")
    assert _final_weights(on, on, str(root / "avg")).endswith("model_final.pth")
    other = make_cfg("configs/synthetic/retinanet.yaml", *RUN, "SOLVER.WEIGHT_AVERAGE.ENABLED", "True",
                     "SOLVER.WEIGHT_AVERAGE.START_ITER", "4")
    with pytest.raises(ValueError, match="last iteration's weights are not kept"):
        _final_weights(on, other, str(root / "avg"))


def test_switched_off_the_average_leaves_the_config_hash_of_older_runs(make_cfg):
    """Summaries made before the keys existed stay current while the average is off."""
    from focal_rpn.study.summaries import config_sha256

    off = make_cfg("configs/trees/rpn_ce.yaml", "SOLVER.WEIGHT_AVERAGE.ENABLED", "False")
    before_the_keys = off.clone()
    del before_the_keys.SOLVER["WEIGHT_AVERAGE"]
    assert config_sha256(off) == config_sha256(before_the_keys)
    other_schedule = make_cfg("configs/trees/rpn_ce.yaml", "SOLVER.WEIGHT_AVERAGE.ENABLED", "False",
                              "SOLVER.WEIGHT_AVERAGE.START_ITER", "300")
    assert config_sha256(other_schedule) == config_sha256(off)  # off: its schedule does not matter
    on = make_cfg("configs/trees/rpn_ce.yaml", "SOLVER.WEIGHT_AVERAGE.ENABLED", "True")
    assert config_sha256(on) != config_sha256(off)
