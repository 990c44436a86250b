"""Where a study's runs execute: ``local`` (processes on this machine, the default), ``slurm`` (one SLURM job
per run, submitted as a job array, through submitit) or ``submitit_local`` (submitit's local executor: the
``slurm`` code path on this machine, without a cluster).

Study keys (see :mod:`Utils.study`)::

    launcher: slurm            # local | slurm | submitit_local (--launcher overrides it)
    gpus_per_run: 1            # GPUs of one run; more than one trains under torchrun inside the job
    cpus_per_run: 8            # CPU cores of one run (default: 4 per GPU, at least 2)
    mem_gb: 32                 # memory of one run
    timeout_min: 1440          # wall-clock limit of one job (default one day)
    partition: gpu             # SLURM partition
    slurm_account: mylab       # any other slurm_<name> is passed to submitit as slurm_<name>
    slurm_qos: normal

A job runs :func:`Utils.study.execute_run` (train, then evaluate; a run with ``result.json`` is done and never
redone). Each submitted job is recorded in ``<exp>/<run>/launcher.json`` (launcher, job id, log paths):
a runner started again while jobs are queued or running re-attaches to them instead of submitting them a
second time; a recorded job that ended without finishing its run is submitted again and resumes from
``latest.pth``. Jobs do not die with the runner (they belong to the scheduler); the training process dies
with its job, and the per-run lock taken by ``execute_run`` keeps a second job from ever training a run
that another one still holds.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from Utils.compare import write_text_atomic

log = logging.getLogger("study.launcher")

LAUNCHERS = ("local", "slurm", "submitit_local")
RESOURCE_KEYS = ("launcher", "gpus_per_run", "cpus_per_run", "mem_gb", "timeout_min", "partition")
JOB_RECORD = "launcher.json"
DEFAULT_TIMEOUT_MIN = 24 * 60
POLL_SECONDS = 2.0
# SLURM states of a job that may still run (sacct's names); any other state is an ended job
ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                       "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "UNKNOWN", "READY"}
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Resources:
    """What one run asks of the scheduler (``slurm`` and ``submitit_local``)."""

    gpus_per_run: int = 1
    cpus_per_run: Optional[int] = None
    mem_gb: Optional[float] = None
    timeout_min: int = DEFAULT_TIMEOUT_MIN
    partition: Optional[str] = None
    slurm: dict[str, Any] = field(default_factory=dict)  # slurm_<name>: value, passed through

    def executor_parameters(self) -> dict[str, Any]:
        """Keyword arguments of ``submitit.AutoExecutor.update_parameters`` for one run: one task with all the
        run's GPUs (torchrun starts one process per GPU inside it)."""
        cpus = self.cpus_per_run or max(2, 4 * self.gpus_per_run)
        params: dict[str, Any] = {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": self.gpus_per_run,
                                  "cpus_per_task": cpus, "timeout_min": self.timeout_min}
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.partition:
            params["slurm_partition"] = self.partition
        params.update(self.slurm)
        return params


def parse_resources(data: dict, path: Path, error: Callable[[str], Exception]) -> tuple[str, Resources]:
    """The launcher and the per-run resources of a study file's mapping; a bad value raises ``error(message)``
    with a one-line message naming the file and the key."""
    launcher = data.get("launcher", "local")
    if launcher not in LAUNCHERS:
        raise error(f"{path}: launcher: expected one of {', '.join(LAUNCHERS)}, got {launcher!r}")

    def number(key: str, kind: type, default: Any, minimum: float) -> Any:
        v = data.get(key, default)
        if v is None:
            return None
        ok = isinstance(v, (int, float) if kind is float else int) and not isinstance(v, bool) and v >= minimum
        if not ok:
            raise error(f"{path}: {key}: expected a {'number' if kind is float else 'whole number'} "
                        f"of at least {minimum:g}, got {v!r}")
        return kind(v)

    partition = data.get("partition")
    if partition is not None and (not isinstance(partition, str) or not partition):
        raise error(f"{path}: partition: expected a partition name, got {partition!r}")
    slurm = {k: v for k, v in data.items() if str(k).startswith("slurm_")}
    if slurm:
        import inspect

        from submitit.slurm.slurm import _make_sbatch_string

        known = set(inspect.signature(_make_sbatch_string).parameters) - {"command", "folder"}
        for key in slurm:
            if key[len("slurm_"):] not in known:
                raise error(f"{path}: {key}: not a submitit SLURM parameter (known: "
                            f"{', '.join('slurm_' + k for k in sorted(known))})")
    res = Resources(gpus_per_run=number("gpus_per_run", int, 1, 0), cpus_per_run=number("cpus_per_run", int, None, 1),
                    mem_gb=number("mem_gb", float, None, 0.001),
                    timeout_min=number("timeout_min", int, DEFAULT_TIMEOUT_MIN, 1), partition=partition, slurm=slurm)
    return launcher, res


def torchrun_words(gpus: int) -> tuple[str, ...]:
    """Words between the Python interpreter and ``main.py`` for a run on ``gpus`` GPUs (none for one)."""
    if gpus <= 1:
        return ()
    return ("-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", str(gpus))


def make_executor(launcher: str, folder: Path, resources: Resources, name: str):
    """The submitit executor of ``launcher`` (``slurm`` or ``submitit_local``) with the run's resources."""
    import submitit

    if launcher not in ("slurm", "submitit_local"):
        raise ValueError(f"no submitit executor for launcher {launcher!r}")
    cluster = "slurm" if launcher == "slurm" else "local"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = resources.executor_parameters()
    if cluster == "local":  # the local executor knows the generic keys only
        params = {k: v for k, v in params.items() if not k.startswith("slurm_") and k not in ("mem_gb", "cpus_per_task")}
    executor.update_parameters(name=name, **params)
    return executor


def run_job(execute: Callable[[Any, Any], dict], study: Any, run: Any, cwd: str) -> dict:
    """The job's function (it runs inside the submitit job): ``execute(study, run)`` (the study runner's
    ``execute_run``, passed in so that this module never imports the runner) trains and evaluates one run
    in the runner's folder (the study's relative paths are relative to it)."""
    os.chdir(cwd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("job for run %s: %s", run.run_id, " ".join(["python", *run.launch, "main.py", *run.argv]))
    return execute(study, run)


# ----------------------------------------------------------------------------- job records

def read_record(run: Any) -> Optional[dict]:
    """The run's recorded job (``<exp>/launcher.json``), None when it has none."""
    path = Path(run.exp_dir) / JOB_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        log.warning("%s: unreadable job record; ignoring it", path)
        return None


def _write_record(run: Any, record: dict) -> None:
    Path(run.exp_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(run.exp_dir) / JOB_RECORD, json.dumps(record, indent=1, sort_keys=True))


def _local_job_alive(job_id: str) -> bool:
    """Whether submitit's local controller process ``job_id`` (its pid) still runs (not a zombie, not a
    reused pid)."""
    try:
        pid = int(job_id)
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ValueError, OSError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"submitit" in cmdline


@dataclass
class Tracked:
    """A job the runner waits for: submitted by it (``job``), or re-attached from a record."""

    run: Any
    record: dict
    job: Any = None  # a submitit Job

    def ended(self) -> bool:
        if self.job is not None:
            return bool(self.job.done())
        return not _local_job_alive(self.record["job_id"])

    def failure(self) -> str:
        """Why the job ended without finishing its run, with its log path."""
        why = "the job ended without a result"
        if self.job is not None:
            try:
                exc = self.job.exception()
                if exc is not None:
                    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                    error_lines = [ln for ln in lines if "Error" in ln]
                    why = (error_lines or lines or [type(exc).__name__])[-1].strip()[:300]
            except Exception as exc:  # noqa: BLE001 - a job that left no result pickle
                why = f"the job ended without a result ({type(exc).__name__})"
        return f"{why}; log: {self.record.get('stderr')}"


def _is_active(launcher: str, folder: Path, record: dict) -> bool:
    """Whether a recorded job may still run (queued, running); False for an ended or unknown one."""
    if record.get("launcher") != launcher:
        return False
    if launcher == "submitit_local":
        return _local_job_alive(str(record["job_id"]))
    import submitit

    try:
        state = submitit.SlurmJob(folder=record["folder"], job_id=str(record["job_id"])).state
    except Exception as exc:  # noqa: BLE001 - sacct unavailable: assume it may run rather than start it twice
        log.warning("job %s: cannot read its state (%s); waiting for it", record["job_id"], exc)
        return True
    return str(state).split()[0].upper() in ACTIVE_SLURM_STATES


# ----------------------------------------------------------------------------- the runner

def run_with_submitit(study: Any, todo: list, on_finished: Callable[[Any, Optional[str]], None],
                      execute: Callable[[Any, Any], dict], read_result: Callable[[Any], Optional[dict]]) -> list[str]:
    """Run ``todo`` through submitit (``study.launcher``) and wait for them all; each job calls
    ``execute(study, run)``, ``read_result(run)`` says whether it finished, and ``on_finished(run, error)`` is
    called as each ends (``error`` None when it finished). Returns the ids of the runs that failed."""
    launcher = study.launcher
    folder = (Path(study.out) / "submitit").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    executor = make_executor(launcher, folder, study.resources, f"study_{study.name}")
    # jobs import this package: from any folder, with the runner's own sys.path first
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cwd = os.getcwd()
    launch = torchrun_words(study.resources.gpus_per_run)

    tracked: dict[str, Tracked] = {}
    queue = []
    for run in todo:
        record = read_record(run)
        if record is not None and _is_active(launcher, folder, record):
            log.info("%s: re-attached to job %s (queued or running; not submitted again)", run.run_id,
                     record["job_id"])
            job = None
            if launcher == "slurm":
                import submitit

                job = submitit.SlurmJob(folder=record["folder"], job_id=str(record["job_id"]))
            tracked[run.run_id] = Tracked(run, record, job)
        else:
            queue.append(run)
    # submitit_local shares this machine: at most `workers` jobs at once; a cluster queues them all
    limit = study.workers if launcher == "submitit_local" else len(todo)
    failed: list[str] = []
    while queue or tracked:
        free = max(limit - len(tracked), 0)
        batch, queue = queue[:free], queue[free:]
        if batch:
            for run, job in zip(batch, _submit(executor, launcher, study, batch, launch, cwd, execute)):
                record = {"launcher": launcher, "job_id": str(job.job_id), "folder": str(folder),
                          "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                          "flags_hash": run.flags_hash, "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}
                _write_record(run, record)
                tracked[run.run_id] = Tracked(run, record, job)
                log.info("%s: submitted as job %s (log: %s)", run.run_id, record["job_id"], record["stdout"])
        for run_id, t in list(tracked.items()):
            if not t.ended():
                continue
            del tracked[run_id]
            error = None if read_result(t.run) is not None else t.failure()
            if error is not None:
                failed.append(run_id)
            on_finished(t.run, error)
        if queue or tracked:
            time.sleep(POLL_SECONDS)
    return failed


def _submit(executor: Any, launcher: str, study: Any, runs: list, launch: tuple[str, ...], cwd: str,
            execute: Callable[[Any, Any], dict]) -> list:
    """Submit one job per run: a job array on SLURM (one sbatch for all), separate processes locally."""
    jobs_runs = [dataclasses.replace(run, launch=launch) for run in runs]
    if launcher == "slurm" and len(runs) > 1:
        jobs = []
        with executor.batch():
            for run in jobs_runs:
                jobs.append(executor.submit(run_job, execute, study, run, cwd))
        return jobs
    return [executor.submit(run_job, execute, study, run, cwd) for run in jobs_runs]
