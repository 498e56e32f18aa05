"""The ablation suite as cluster jobs, through submitit (``focal_rpn.tools.ablate --launcher submitit``).

Every variant × seed without a current summary becomes one job. A job runs ``train_net.py``'s
``main`` through Detectron2's ``launch``: ``--gpus-per-run`` processes on each of
``--nodes-per-run`` machines (one submitit task per node; the first node's host is the
``--dist-url``). It always passes ``--resume``, so a job that SLURM preempts or that reaches its
time limit is checkpointed by submitit's protocol (:meth:`StudyRun.checkpoint`), requeued, and
continues from ``OUTPUT_DIR/last_checkpoint`` (it redoes at most SOLVER.CHECKPOINT_PERIOD
iterations). Node 0 writes the run's summary, atomically, after training and evaluation finish.

Job ids are kept in ``OUT/SUITE-DATASET/jobs.json`` and each job's logs in
``OUT/SUITE-DATASET/submitit/`` (``<job id>_0_log.out``, ``.err``). Without SLURM (no ``srun`` on PATH) submitit's local
executor runs the jobs as processes of this machine, which is what the tests use.
"""
import contextlib
import datetime
import json
import os
import pickle
import resource
import time
import zlib
from typing import Dict, List, Optional, Tuple
from unittest import mock

from . import summaries as results

LEDGER = "jobs.json"
# States of a run in --status; "done" = its current summary exists.
# "earlier recipe": a summary of another config is kept there (replaced only with --rerun-stale).
STATES = ("done", "running", "pending", "failed", "not submitted", "earlier recipe")
_SLURM_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED",
                  "PREEMPTED"}  # submitit requeues a preempted job
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT"}


class StudyRun:
    """One variant × seed as a submitit job: a picklable callable, checkpointable for requeues."""

    def __init__(self, variant, seed: int, opts: List[str], run_dir: str, summary_path: str,
                 gpus_per_node: int, nodes: int):
        self.variant, self.seed, self.opts = variant, seed, list(opts)
        self.run_dir, self.summary_path = run_dir, summary_path
        self.gpus_per_node, self.nodes = gpus_per_node, nodes
        self.elapsed = 0.0  # wall seconds of earlier attempts of this job (before requeues)
        self._started: Optional[float] = None

    def _args(self, machine_rank: int, dist_url: str):
        from detectron2.engine import default_argument_parser

        from .suites import ROOT

        return default_argument_parser().parse_args([
            "--config-file", os.path.join(ROOT, self.variant.config), "--resume",
            "--num-gpus", str(max(1, self.gpus_per_node)), "--num-machines", str(self.nodes),
            "--machine-rank", str(machine_rank), "--dist-url", dist_url,
            *self.variant.opts, *self.opts, "SEED", str(self.seed), "OUTPUT_DIR", self.run_dir])

    def __call__(self) -> Optional[str]:
        """Trains (or continues) and evaluates the run; node 0 then writes its summary. Returns the
        summary's path on node 0, None on the other nodes."""
        import submitit
        from detectron2.engine import launch

        from ..engine.autocast import refuse_fallback_env
        from ..engine.main import main as train_net_main
        from .lock import run_lock
        from .runner import summarize

        self._started = time.time()
        env = submitit.JobEnvironment()
        # "auto" picks a free local port; across nodes every machine must name the same one.
        port = 20000 + zlib.crc32(env.job_id.encode()) % 20000
        dist_url = "auto" if self.nodes == 1 else f"tcp://{env.hostnames[0]}:{port}"
        args = self._args(env.node, dist_url)
        os.makedirs(self.run_dir, exist_ok=True)
        with (run_lock(self.run_dir) if env.node == 0 else contextlib.nullcontext()) as lock:
            if lock is not None and lock.holder is not None:
                print(f"{self.run_dir} is being trained by {lock.holder}: this job leaves it", flush=True)
                return None
            try:
                with mock.patch.dict(os.environ, refuse_fallback_env()):  # for this training only
                    launch(train_net_main, args.num_gpus, num_machines=args.num_machines,
                           machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
            except Exception as e:
                if env.node == 0:  # recorded, then raised: submitit marks the job failed
                    self._record_failure(e, env)
                raise
        if env.node != 0:
            return None
        # ru_maxrss is in KiB; the training ran in this process (1 GPU) or its children (launch).
        rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
        summary = summarize(self.variant, self.seed, self.opts, self.run_dir, rss,
                            self.elapsed + time.time() - self._started)
        summary["job_id"] = env.job_id
        results.write_summary(self.summary_path, summary)
        return self.summary_path

    def _record_failure(self, error: Exception, env) -> None:
        """Writes the run's ``failed`` summary: the error, the last iteration, the job's log."""
        from submitit.core.utils import JobPaths

        from .suites import run_config

        cfg = run_config(self.variant, self.seed, self.opts)
        log = str(JobPaths(env.paths.folder, job_id=env.job_id, task_id=0).stderr)
        record = results.failure(self.run_dir, log, 1)
        record["cause"] = f"{type(error).__name__}: {str(error)[:500]}"
        results.write_summary(self.summary_path, {
            "variant": self.variant.name, "seed": self.seed, **results.config_record(cfg, self.opts),
            "job_id": env.job_id,
            "wall_s": self.elapsed + time.time() - self._started, "failed": record})

    def checkpoint(self):
        """submitit calls this on preemption or time-out: requeue the same run. Training state is in
        OUTPUT_DIR (Detectron2's periodic checkpoints), which ``--resume`` loads."""
        import multiprocessing

        from submitit.helpers import DelayedSubmission

        # Detectron2's launch trains in spawned worker processes (--gpus-per-run > 1): they stop
        # with this attempt, or they would train on beside the requeued one, into the same folder
        # (SLURM ends a requeued job's processes; submitit's local executor does not).
        workers = multiprocessing.active_children()
        for p in workers:
            p.terminate()
        for p in workers:
            p.join(timeout=60)
        if self._started is not None:
            self.elapsed += time.time() - self._started
            self._started = None
        return DelayedSubmission(self)


def parse_extra(items: List[str]) -> Tuple[Dict[str, object], Dict[str, str]]:
    """``--slurm-extra KEY=VALUE ...``: submitit's own SLURM parameters (``cpus_per_task=10``,
    ``mem_gb=400``, ``constraint=volta32gb``, ``account=X``...) and, for any other key, an
    ``#SBATCH --KEY=VALUE`` line. Returns (executor parameters, additional sbatch parameters)."""
    import submitit

    generic = {"mem_gb", "cpus_per_task", "name", "stderr_to_stdout"}
    slurm = submitit.SlurmExecutor._valid_parameters()
    params: Dict[str, object] = {}
    extra: Dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--slurm-extra takes KEY=VALUE items, got {item!r}")
        key = key.lstrip("-").replace("-", "_")
        typed: object = int(value) if value.isdigit() else value
        if key in generic:
            params[key] = typed
        elif key in slurm:
            params[f"slurm_{key}"] = typed
        else:
            extra[key] = value
    return params, extra


def make_executor(jobs_root: str, name: str, cluster: Optional[str], partition: Optional[str],
                  gpus_per_run: int, nodes_per_run: int, timeout_min: int, slurm_extra: List[str]):
    """A submitit executor for one run per job: 1 task per node (``launch`` starts the processes)."""
    import submitit

    executor = submitit.AutoExecutor(folder=jobs_root, cluster=cluster)
    params, extra = parse_extra(slurm_extra)
    params.update(name=name, timeout_min=timeout_min, nodes=nodes_per_run, tasks_per_node=1,
                  gpus_per_node=gpus_per_run)
    if executor.cluster == "slurm":
        if partition:
            params["slurm_partition"] = partition
        if extra:
            params["slurm_additional_parameters"] = extra
    elif nodes_per_run > 1 or partition or extra:
        raise ValueError(f"--nodes-per-run > 1, --slurm-partition and --slurm-extra need SLURM; "
                         f"submitit found the {executor.cluster!r} executor (no srun on PATH)")
    executor.update_parameters(**params)
    return executor


def _ledger_path(suite_dir: str) -> str:
    return os.path.join(suite_dir, LEDGER)


def load_ledger(suite_dir: str) -> dict:
    """``{"VARIANT/seedK": {"job_id", "cluster", "folder", "submitted"}}`` of a suite's jobs."""
    path = _ledger_path(suite_dir)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a submitit job ledger ({e}); delete it to forget the jobs") from e


def save_ledger(suite_dir: str, ledger: dict) -> None:
    results.write_summary(_ledger_path(suite_dir), ledger)  # atomic json write


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a finished child of this process stays a zombie until reaped: not alive
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def job_state(record: dict) -> Tuple[str, str]:
    """(state, log path) of a submitted job from its files and, on SLURM, ``sacct``.

    A job that left no result is running or pending while its process (local) or SLURM says so;
    a job whose result is an error, or that is gone without a result, has failed."""
    import submitit
    from submitit.core.utils import JobPaths

    paths = JobPaths(record["folder"], job_id=record["job_id"], task_id=0)
    log = str(paths.stderr)
    if paths.result_pickle.exists():
        try:
            with open(paths.result_pickle, "rb") as f:
                outcome = pickle.load(f)[0]
        except Exception:  # noqa: BLE001 - a result being written or unreadable: look again later
            return "running", log
        return ("done" if outcome == "success" else "failed"), log
    if record["cluster"] == "slurm":
        state = submitit.SlurmJob(record["folder"], record["job_id"]).state.split()[0]
        if state in _SLURM_PENDING:
            return "pending", log
        if state in _SLURM_RUNNING:
            return "running", log
        if state == "UNKNOWN":
            # sacct did not answer: never submit a run twice; delete its jobs.json entry to force it
            return "running", log
        return "failed", log
    return ("running" if _pid_alive(int(record["job_id"])) else "failed"), log


def run_states(keys: List[Tuple[str, int, str]], expected: Dict[Tuple[str, int], str], ledger: dict,
               rerun_stale: bool = False, run_dirs: Optional[Dict[Tuple[str, int], str]] = None
               ) -> Dict[Tuple[str, int], Tuple[str, str]]:
    """State and log path of every (variant, seed, summary path): done when its summary is
    current (``expected`` config hash), failed when its summary records a failure, "earlier
    recipe" when it holds another config's summary (unless ``rerun_stale``), running when its
    folder (``run_dirs``) is locked by a live process (a local runner's), else from its job in the
    ledger."""
    from .lock import holder

    out = {}
    for name, seed, path in keys:
        summary_state = results.summary_state(path, expected[(name, seed)])
        if summary_state == "current":
            out[(name, seed)] = ("done", "")
            continue
        if summary_state == "failed":
            out[(name, seed)] = ("failed", results.load_summary(path)["failed"]["log"])
            continue
        if summary_state == "stale" and not rerun_stale:
            out[(name, seed)] = ("earlier recipe", path)
            continue
        record = ledger.get(f"{name}/seed{seed}")
        owner = holder((run_dirs or {}).get((name, seed), ""))
        if owner is not None:
            out[(name, seed)] = ("running", f"locked by {owner}")
            continue
        if record is None:
            out[(name, seed)] = ("not submitted", "")
            continue
        state, log = job_state(record)
        # a job that succeeded for another config than today's: its summary is stale
        out[(name, seed)] = ("not submitted" if state == "done" else state, log)
    return out


def print_status(states: Dict[Tuple[str, int], Tuple[str, str]], title: str) -> Dict[str, int]:
    """Prints the counts per state and the failed runs' logs; returns the counts."""
    counts = {s: sum(1 for st, _ in states.values() if st == s) for s in STATES}
    print(f"{title}: {len(states)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for (name, seed), (state, log) in states.items():
        if state == "failed":
            print(f"  failed: {name} seed {seed}: see {log}")
    return counts


def submit(runs: List[StudyRun], states, suite_dir: str, executor, retry_failed: bool = False
           ) -> Dict[Tuple[str, int], object]:
    """Submits every run not done, pending or running, nor failed (unless ``retry_failed``), nor
    holding an earlier recipe's summary, and records it in the ledger. Returns the submitted
    submitit jobs by (variant, seed)."""
    from .runner import set_aside_other_training
    from .suites import run_config

    ledger = load_ledger(suite_dir)
    jobs = {}
    for run in runs:
        key = (run.variant.name, run.seed)
        state, _ = states[key]
        if state in ("done", "running", "pending", "earlier recipe") or (state == "failed" and not retry_failed):
            print(f"{run.variant.name} seed {run.seed}: {state}, not submitted"
                  + (" (--retry-failed submits it again)" if state == "failed" else "")
                  + (" (--rerun-stale replaces it)" if state == "earlier recipe" else ""))
            continue
        # not in the job: a requeued job must resume its own checkpoints, and nodes would race
        set_aside_other_training(run.run_dir, run_config(run.variant, run.seed, run.opts))
        job = executor.submit(run)
        jobs[key] = job
        ledger[f"{run.variant.name}/seed{run.seed}"] = {
            "job_id": job.job_id, "cluster": executor.cluster, "folder": executor.folder.as_posix(),
            "submitted": datetime.datetime.now().isoformat(timespec="seconds")}
        save_ledger(suite_dir, ledger)  # after every job: an interrupted submission loses none
        print(f"{run.variant.name} seed {run.seed}: submitted job {job.job_id} ({executor.cluster})", flush=True)
    return jobs


def wait(get_states, poll_s: float = 10.0):
    """Blocks until no run is running or pending; returns the final states."""
    while True:
        states = get_states()
        if not any(state in ("running", "pending") for state, _ in states.values()):
            return states
        time.sleep(poll_s)
