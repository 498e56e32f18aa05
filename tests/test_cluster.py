"""`focal_rpn.tools.ablate --launcher submitit` with submitit's local executor (no SLURM needed): runs as
separate processes, a preempted job requeued and resumed, a killed job resubmitted and resumed, and
the report of those runs the same as of the local launcher's."""
import json
import math
import os
import re
import signal
import time

import pytest

from focal_rpn.tools import ablate
from focal_rpn.study import slurm as cluster
from focal_rpn.study import suites
# 12 iterations with a checkpoint every 4: a job can be stopped after its first checkpoint.
# float32: the launchers' runs of one config are compared bit for bit below; in bf16 (the trees
# RetinaNet recipe's default since #13) a fresh-clone CI run once saw a submitit and a local run of
# the same config end with different metrics (cause not found; not seen in float32).
OPTS = ["SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "4", "SOLVER.AMP.ENABLED", "False"]


def _children(pid):
    """Processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def _tail(path, lines=12):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"({e})\n"


def _diagnosis(suite_dir):
    """What a timed-out wait shows: every job's submitit logs and every run's log.txt, last lines."""
    paths = sorted(suite_dir.glob("submitit/*_log.*")) + sorted(suite_dir.glob("*/seed*/log.txt"))
    return "".join(f"--- {path}\n{_tail(path)}" for path in paths)


def _wait_for(predicate, what, timeout=300, diagnose=lambda: ""):
    """Polls ``predicate`` until it is true; on time-out the error carries ``diagnose()`` (CI keeps
    no files, so the jobs' logs must be in the failure message)."""
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{diagnose()}")
        time.sleep(0.2)


def _stop_after_first_checkpoint(suite_dir, actions):
    """``actions``: {run dir: (job id, stop(job pid, task pid))}. Stops each run as soon as its
    first checkpoint exists, in whichever order they get there, so no run can finish first."""
    pending = dict(actions)

    def poll():
        for run_dir, (job_id, stop) in list(pending.items()):
            if os.path.isfile(os.path.join(run_dir, "last_checkpoint")):
                tasks = _children(int(job_id))
                assert len(tasks) == 1, (run_dir, tasks)
                stop(int(job_id), tasks[0])
                del pending[run_dir]
        return not pending

    _wait_for(poll, f"checkpoints in {sorted(map(str, actions))}", diagnose=lambda: _diagnosis(suite_dir))


def _metrics(path):
    with open(path) as f:
        return json.load(f)["metrics"]


def _same(a, b):
    return a.keys() == b.keys() and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in
                                        ((a[k], b[k]) for k in a))


def test_submitit_suite_preempted_killed_resumed_and_reported(tmp_path, capsys):
    out, res = tmp_path / "runs", tmp_path / "results"
    # three runs: one preempted, one killed, one left alone (compared with the local launcher's)
    base = ["--suite", "retinanet", "--dataset", "synthetic", "--variants", "ce", "gamma_2", "alpha_ce",
            "--out", str(out), "--results", str(res)]
    submit = base + ["--launcher", "submitit", "--submitit-cluster", "local", "--gpus-per-run", "0",
                     "--timeout-min", "30"]
    ablate.main(submit + ["--opts", *OPTS])  # returns once the 3 jobs are submitted
    suite_dir = out / "retinanet-synthetic"
    ledger = cluster.load_ledger(str(suite_dir))
    assert sorted(ledger) == ["alpha_ce/seed0", "ce/seed0", "gamma_2/seed0"]
    assert len({r["job_id"] for r in ledger.values()}) == 3  # one process per run

    # ce seed 0 is preempted (SLURM's USR2): submitit checkpoints and requeues it, and it resumes.
    # alpha_ce seed 0 is killed outright: its job fails and nothing requeues it.
    preempted, killed = suite_dir / "ce" / "seed0", suite_dir / "alpha_ce" / "seed0"
    job = int(ledger["alpha_ce/seed0"]["job_id"])

    def kill(job_id, task):
        os.kill(job_id, signal.SIGKILL)
        os.kill(task, signal.SIGKILL)

    _stop_after_first_checkpoint(suite_dir, {
        preempted: (ledger["ce/seed0"]["job_id"], lambda job_id, task: os.kill(task, signal.SIGUSR2)),
        killed: (job, kill)})

    capsys.readouterr()
    args = base + ["--status", "--opts", *OPTS]
    last = [""]

    def two_done():
        ablate.main(args)
        last[0] = capsys.readouterr().out
        return "2 done, 1 failed" in last[0]

    _wait_for(two_done, "2 runs done", diagnose=lambda: f"last --status: {last[0]}\n{_diagnosis(suite_dir)}")
    ablate.main(args)
    status = capsys.readouterr().out
    assert f"failed: alpha_ce seed 0: see {suite_dir}/submitit/{job}_0_log.err" in status
    assert not (res / "synthetic" / "retinanet" / "alpha_ce" / "seed0.json").exists()  # never a half summary

    # The same command again submits nothing: a failed run is retried only when asked
    with pytest.raises(SystemExit, match="1 run"):
        ablate.main(submit + ["--wait", "--opts", *OPTS])
    assert "alpha_ce seed 0: failed, not submitted (--retry-failed" in capsys.readouterr().out
    # --retry-failed submits only the failed run; --wait blocks until it ends, then reports.
    ablate.main(submit + ["--wait", "--retry-failed", "--opts", *OPTS])
    text = capsys.readouterr().out
    assert "ce seed 0: done, not submitted" in text and "alpha_ce seed 0: submitted job" in text
    assert "3 runs: 3 done" in text
    for run in (preempted, killed):
        log = (run / "log.txt").read_text()
        # first attempt from scratch, second from a checkpoint: iteration 4, 8 or 12 (the jobs run on
        # while the test waits; 12 = killed after training, during the evaluation)
        assert "No checkpoint found" in log and re.search(r"Starting training from iteration (4|8|12)\b", log), run
    logs = "".join(p.read_text() for p in (suite_dir / "submitit").glob(f"{ledger['ce/seed0']['job_id']}_0_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs

    # The local launcher's run of the same variant and seed: the same summary fields, config hash
    # and metrics, so --report treats both launchers' runs alike.
    local_res = tmp_path / "local"
    ablate.main(["--suite", "retinanet", "--dataset", "synthetic", "--variants", "gamma_2", "--out",
                 str(tmp_path / "local_runs"), "--results", str(local_res), "--opts", *OPTS])
    a = json.loads((res / "synthetic/retinanet/gamma_2/seed0.json").read_text())
    b = json.loads((local_res / "synthetic/retinanet/gamma_2/seed0.json").read_text())
    assert set(a) - {"job_id"} == set(b) and a["config_sha256"] == b["config_sha256"]
    assert _same(a["metrics"], b["metrics"])
    capsys.readouterr()
    ablate.main(base + ["--report", "--opts", *OPTS])
    md = (res / "synthetic" / "retinanet" / "results.md").read_text()
    assert all(f"| {v} | 1 |" in md for v in ("ce", "gamma_2", "alpha_ce"))


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_submitit_run_of_two_processes_preempted_and_requeued(tmp_path, capsys):
    """--gpus-per-run 2 on a CPU: Detectron2's launch starts 2 gloo workers inside the job (its
    entry point must pickle). Preempted (USR2) after its first checkpoint, the job stops both
    workers, is requeued, resumes from the checkpoint with 2 workers again, and node 0 writes the
    summary."""
    out, res = tmp_path / "runs", tmp_path / "results"
    base = ["--suite", "retinanet", "--dataset", "synthetic", "--variants", "gamma_2", "--out", str(out),
            "--results", str(res)]
    ablate.main(base + ["--launcher", "submitit", "--submitit-cluster", "local", "--gpus-per-run", "2",
                        "--timeout-min", "30", "--opts", *OPTS])
    suite_dir = out / "retinanet-synthetic"
    run = suite_dir / "gamma_2" / "seed0"
    workers = []

    def preempt(job_id, task):
        for pid in _children(task):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    workers.append(pid)
        os.kill(task, signal.SIGUSR2)

    _stop_after_first_checkpoint(suite_dir, {run: (cluster.load_ledger(str(suite_dir))["gamma_2/seed0"]["job_id"], preempt)})
    assert len(workers) == 2, workers
    _wait_for(lambda: not any(_alive(p) for p in workers), "the preempted attempt's workers to stop", timeout=90,
              diagnose=lambda: _diagnosis(suite_dir))
    capsys.readouterr()
    last = [""]

    def done():
        ablate.main(base + ["--status", "--opts", *OPTS])
        last[0] = capsys.readouterr().out
        return "1 done" in last[0]

    _wait_for(done, "the requeued run", diagnose=lambda: f"last --status: {last[0]}\n{_diagnosis(suite_dir)}")
    summary = json.loads((res / "synthetic/retinanet/gamma_2/seed0.json").read_text())
    assert summary["iterations"] == 12 and "bbox/AP50" in summary["metrics"]
    log = (run / "log.txt").read_text()
    assert log.count("World size: 2") >= 2  # both attempts ran 2 workers
    assert "No checkpoint found" in log and re.search(r"Starting training from iteration (4|8)\b", log), log[-3000:]
    assert "Requeued job" in "".join(p.read_text() for p in (suite_dir / "submitit").glob("*_log.*"))


def test_slurm_extra_is_split_into_submitit_and_sbatch_parameters():
    params, extra = cluster.parse_extra(["cpus_per_task=10", "mem_gb=400", "constraint=volta32gb",
                                         "--account=vision", "requeue=1", "reservation=big"])
    assert params == {"cpus_per_task": 10, "mem_gb": 400, "slurm_constraint": "volta32gb", "slurm_account": "vision"}
    assert extra == {"requeue": "1", "reservation": "big"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        cluster.parse_extra(["volta32gb"])


def test_slurm_only_options_need_slurm(tmp_path):
    with pytest.raises(ValueError, match="need SLURM"):
        cluster.make_executor(str(tmp_path), "x", "local", None, 0, 2, 10, [])


def test_a_multi_node_job_launches_every_node_with_the_first_nodes_address(tmp_path, monkeypatch):
    """Node k of a 2-node job calls Detectron2's launch with machine rank k, 8 processes, 2 machines
    and the first node's tcp address; only node 0 writes the summary (SLURM and launch faked)."""
    import submitit
    import detectron2.engine

    calls = []

    class Env:
        job_id, hostnames, node = "4242", ["gpu-a17", "gpu-b03"], 1

    monkeypatch.setattr(submitit, "JobEnvironment", Env)
    monkeypatch.setattr(detectron2.engine, "launch", lambda main, n, **kw: calls.append((n, kw)))
    variant = suites.suite_variants("rpn", "coco")[0]
    summary = tmp_path / "seed0.json"
    run = cluster.StudyRun(variant, 0, [], str(tmp_path / "run"), str(summary), gpus_per_node=8, nodes=2)
    assert run() is None and not summary.exists()
    (n, kw), = calls
    args = kw["args"][0]
    assert n == 8 and kw["num_machines"] == 2 and kw["machine_rank"] == 1
    assert kw["dist_url"].startswith("tcp://gpu-a17:") and args.resume
    assert args.opts[-4:] == ["SEED", "0", "OUTPUT_DIR", str(tmp_path / "run")]


@pytest.mark.parametrize("sacct, state", [("PENDING", "pending"), ("PREEMPTED", "pending"), ("RUNNING", "running"),
                                          ("UNKNOWN", "running"), ("FAILED", "failed"), ("CANCELLED by 12", "failed")])
def test_slurm_job_states(tmp_path, monkeypatch, sacct, state):
    """A SLURM job without a result file is pending, running or failed as sacct says; when sacct
    does not answer it counts as running, so that the same run is never submitted twice."""
    import submitit

    monkeypatch.setattr(submitit.SlurmJob, "state", property(lambda self: sacct))
    record = {"job_id": "77", "cluster": "slurm", "folder": str(tmp_path)}
    assert cluster.job_state(record) == (state, str(tmp_path / "77_0_log.err"))


def test_cluster_options_without_the_submitit_launcher_are_refused(capsys):
    with pytest.raises(SystemExit):
        ablate.main(["--suite", "rpn", "--dataset", "synthetic", "--wait"])
    assert "need --launcher submitit" in capsys.readouterr().err
