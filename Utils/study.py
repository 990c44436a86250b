"""Seeded studies: arms x seeds of ``main.py`` runs, each evaluated by ``main_for_infer.py``, then
means with 95% confidence intervals and paired differences to a baseline arm.

    python -m Utils.study studies/finetune_rfdn.yaml            # run (or finish) the study
    python -m Utils.study studies/finetune_rfdn.yaml --report   # only rebuild the tables and the plot

A study file (YAML; relative paths are relative to the folder you run from, as for ``main.py``)::

    name: finetune_rfdn                 # optional (default: the file's stem)
    out: studies/finetune_rfdn          # optional (default: studies/<name>)
    cache: studies/.cache               # optional: decoded-image and teacher caches, shared by studies
    seeds: [0, 1, 2]
    baseline: fidelity                  # the arm the paired differences are taken against
    defaults: {model_name: RFDN, iters: 300, ...}   # main.py flags shared by every arm
    arms:                               # arm name -> main.py flags over the defaults
      gt: {}
      fidelity: {train_by_TT: true, t2_checkpoint: ''}
    test_folders: [../shared/data/benchmark/Set5/LR_bicubic/X4]
    test_gt: null                       # optional: one ground-truth folder per test folder
    metrics: [psnr, ssim, niqe]         # psnr and ssim always; niqe and lpips on request
    niqe_params: ../shared/data/weights/perceptual/niqe_pris_params.npz   # optional
    workers: 2                          # parallel runs (default: the number of cores)
    threads: 1                          # torch threads per run (default 1)
    extends: finetune_rfdn.yaml         # optional: start from another study file (path relative to this one)
    only_arms: [dtkd_adv, gt]           # optional: run only these arms, in this order
    references:                         # optional: checkpoints evaluated once (cached), rows and plot markers
      start: {model_name: RFDN, checkpoint: ../shared/data/weights/MTKDSR/RFDN_x4.pth}
      P: {model_name: RFDN, checkpoint: ../shared/data/weights/SRDTKD/DTKD-RFDN-perceptual.pth}
    line: [start, P]                    # optional: each arm's margin = PSNR above this line at its NIQE
    eval_marks: [250, 500, 750]         # optional: also evaluate every run's weights at these iterations
    origin: start                       # optional: the reference every trajectory starts from
    control: adv_gt                     # optional: each arm's PSNR difference to this arm's trajectory at matched NIQE

``extends`` takes every key of the named file except ``name`` and ``out`` (a study always writes its own
results); this file's ``defaults`` are merged flag by flag over the parent's, its ``arms`` are added to
the parent's (an arm of the same name replaces the parent's), and any other key replaces the parent's.
Files may extend files that extend others (not in a cycle). ``only_arms`` keeps the named arms of the
merged set, in the order given (list the slowest first: two workers then end together).

Each run is an ordinary experiment folder ``<out>/exp/<arm>_s<seed>/`` (``--auto_resume``), evaluated
into ``<out>/eval/<arm>_s<seed>/`` (``summary.csv`` of ``main_for_infer.py``, then ``result.json``,
written last and atomically: a run with a ``result.json`` is finished and never redone). Killed at
any moment and restarted, the study resumes interrupted runs exactly where their ``latest.pth``
stands; a training process dies with the runner (``DTKD_PARENT_PID``: it gets SIGTERM, saves
``latest.pth`` and stops), and a per-run lock, held by the runner and inherited by its training
process, keeps two runners from ever training the same run at once. A run whose flags changed since it
started is an error, never silently mixed in.

Results in ``<out>/``: ``runs.csv`` (one row per run and test set), ``summary.csv`` (per arm and test
set: n, mean and 95% Student-t interval of each metric, paired difference to the baseline over the
seeds both have, its interval and whether it excludes zero), ``summary.md`` and
``perception_distortion.png`` (PSNR against NIQE, or SSIM, with the intervals as error bars).

The perception-distortion front (:mod:`Utils.front`): ``references`` are evaluated once by the same
engine (cached in ``<cache>/references/`` under a key of the file's contents, the preset and the test
sets) into ``references.csv``, rows of ``summary.md`` and labelled markers of the plot, which also draws
the ``line``. With ``eval_marks`` the runs are trained with ``--snapshots`` (kept weights; not part of a
run's flags, which they do not change) and each mark is evaluated once into ``<out>/eval/<run>/marks/``
(``result.json`` written last; a restarted or extended study evaluates only the marks it lacks; a mark
added after a run finished has no weights and is reported as such); ``marks.csv`` holds every run's
trajectory and the plot each arm's mean curve. ``summary.csv`` and ``summary.md`` then give each arm's
margin above the line and its difference to ``control`` at matched NIQE, with 95% intervals over seeds.
A figure that cannot be computed (no NIQE) is a ``cannot judge: ...`` line, never a number.
Exit status: 0 when every run finished, 1 when some failed (the others are kept and summarised),
2 for a bad study file (one line naming the file, the key and the problem; no run is started).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd

from Utils.compare import save_atomic, write_text_atomic
from Utils.front import CONFIDENCE, front_summary, mean_curves, t_interval

log = logging.getLogger("study")
PathLike = Union[str, Path]
REPO = Path(__file__).resolve().parent.parent

STUDY_KEYS = {"name", "description", "out", "cache", "seeds", "baseline", "defaults", "arms", "test_folders",
              "test_gt", "metrics", "niqe_params", "workers", "threads", "extends", "only_arms",
              "references", "line", "origin", "control", "eval_marks",
              "launcher", "gpus_per_run", "cpus_per_run", "mem_gb", "timeout_min", "partition"}  # and slurm_*
NOT_INHERITED = {"name", "out", "extends"}  # a study that extends another writes its own results
RUNNER_FLAGS = {"name", "experiments_root", "seed", "auto_resume", "resume", "quiet", "config", "Train", "snapshots"}
METRICS = ("psnr", "ssim", "niqe", "lpips")
LOWER_IS_BETTER = {"niqe", "lpips"}


class StudyError(ValueError):
    """A bad study file: the message is one line naming the file, the key and the problem."""


# ----------------------------------------------------------------------------- the study file

@dataclass
class Run:
    """One (arm, seed) training run and its evaluation."""

    arm: str
    seed: int
    argv: list[str]
    exp_dir: Path
    eval_dir: Path
    model_name: str
    iters: int = 0
    launch: tuple[str, ...] = ()  # words between python and main.py (torchrun for a multi-GPU job)

    def mark_dir(self, mark: int) -> Path:
        """Where the evaluation of the weights at iteration ``mark`` goes."""
        return self.eval_dir / "marks" / f"iter_{mark}"

    @property
    def run_id(self) -> str:
        return f"{self.arm}_s{self.seed}"

    @property
    def flags_hash(self) -> str:
        return hashlib.sha256("\0".join(self.argv).encode()).hexdigest()[:16]

    @property
    def result_path(self) -> Path:
        return self.eval_dir / "result.json"


@dataclass
class Study:
    """A parsed, validated study file."""

    path: Path
    name: str
    out: Path
    seeds: list[int]
    baseline: str
    arms: dict[str, dict]
    test_folders: list[Path]
    test_gt: Optional[list[Path]]
    metrics: list[str]
    niqe_params: Optional[Path]
    workers: int
    threads: int
    runs: list[Run] = field(default_factory=list)
    cache: Optional[Path] = None
    references: dict[str, dict] = field(default_factory=dict)  # name -> {model_name, checkpoint}
    line: Optional[tuple[str, str]] = None
    origin: Optional[str] = None
    control: Optional[str] = None
    eval_marks: list[int] = field(default_factory=list)
    launcher: str = "local"  # local | slurm | submitit_local (Utils.launchers)
    resources: Optional[Any] = None  # Utils.launchers.Resources: per-run resources of the submitit launchers


def _flag_argv(key: str, value: Any, action: argparse.Action) -> list[str]:
    """``main.py`` command-line words for one flag value (as YAML gives it)."""
    opt = action.option_strings[-1]
    if isinstance(action, argparse._StoreTrueAction):
        return [opt] if value else []
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        if action.nargs not in ("+", "*"):
            raise ValueError(f"takes one value, got a list")
        return [opt, *[str(v) for v in value]]
    if isinstance(value, dict):
        raise ValueError("takes a value, got a mapping")
    return [opt, str(value)]


def _check_flags(where: str, flags: Any, actions: dict[str, argparse.Action], path: Path) -> dict:
    if flags is None:
        return {}
    if not isinstance(flags, dict):
        raise StudyError(f"{path}: {where}: expected a mapping of main.py flags, got {type(flags).__name__}")
    for key in flags:
        if key in RUNNER_FLAGS:
            raise StudyError(f"{path}: {where}.{key}: set by the study runner, not by the study file")
        if key not in actions:
            raise StudyError(f"{path}: {where}.{key}: not a main.py flag (python main.py --help lists them)")
    return dict(flags)


def _raising_parser():
    """``main.py``'s parser, raising instead of exiting on a bad value."""
    import main as train_cli

    parser = train_cli.build_parser()

    def error(message: str):
        raise ValueError(message)

    parser.error = error  # type: ignore[method-assign]
    return parser


def _read_study_data(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The study file's mapping with its ``extends`` chain merged in (see the module docstring)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise StudyError(f"{path}: cannot read the study file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()
        raise StudyError(f"{path}: not valid YAML ({' '.join(first[:3])})") from None
    if not isinstance(data, dict):
        raise StudyError(f"{path}: a study file is a mapping (name, seeds, baseline, defaults, arms, test_folders)")
    unknown = sorted(k for k in set(data) - STUDY_KEYS if not str(k).startswith("slurm_"))
    if unknown:
        raise StudyError(f"{path}: {unknown[0]}: unknown key (known: {', '.join(sorted(STUDY_KEYS))})")
    parent_name = data.get("extends")
    if parent_name is None:
        return data
    if not isinstance(parent_name, str) or not parent_name:
        raise StudyError(f"{path}: extends: expected the path of another study file, got {parent_name!r}")
    parent_path = path.parent / parent_name
    if not parent_path.is_file():
        raise StudyError(f"{path}: extends: {parent_path}: no such file")
    if parent_path.resolve() in {p.resolve() for p in (*chain, path)}:
        raise StudyError(f"{path}: extends: {parent_name}: a cycle of study files extending each other")
    parent = _read_study_data(parent_path, (*chain, path))
    merged = {k: v for k, v in parent.items() if k not in NOT_INHERITED}
    for key, value in data.items():
        if key in ("defaults", "arms") and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        elif key != "extends":
            merged[key] = value
    return merged


def load_study(path: PathLike) -> Study:
    """Read and validate a study file; every problem is a one-line :class:`StudyError`."""
    from Utils.objectives import OBJECTIVES

    path = Path(path)
    data = _read_study_data(path)
    for key in ("seeds", "baseline", "arms", "test_folders"):
        if key not in data:
            raise StudyError(f"{path}: {key}: missing")

    seeds = data["seeds"]
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                             for s in seeds)):
        raise StudyError(f"{path}: seeds: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"{path}: seeds: repeated seed in {seeds}")
    parser = _raising_parser()
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    defaults = _check_flags("defaults", data.get("defaults"), actions, path)
    arms_raw = data["arms"]
    if not isinstance(arms_raw, dict) or not arms_raw:
        raise StudyError(f"{path}: arms: expected a mapping of arm names to main.py flags")
    only = data.get("only_arms")
    if only is not None:
        if not isinstance(only, list) or not only or len(set(map(str, only))) != len(only):
            raise StudyError(f"{path}: only_arms: expected a non-empty list of distinct arm names, got {only!r}")
        missing = [a for a in only if a not in arms_raw]
        if missing:
            raise StudyError(f"{path}: only_arms: {missing[0]!r} is not an arm ({', '.join(map(str, arms_raw))})")
        arms_raw = {a: arms_raw[a] for a in only}
    arms = {}
    for arm, flags in arms_raw.items():
        if not isinstance(arm, str) or not arm.replace("-", "_").isidentifier():
            raise StudyError(f"{path}: arms.{arm}: an arm name is letters, digits, '_' or '-'")
        arms[arm] = _check_flags(f"arms.{arm}", flags, actions, path)
    baseline = data["baseline"]
    if baseline not in arms:
        raise StudyError(f"{path}: baseline: {baseline!r} is not an arm ({', '.join(arms)})")

    metrics = data.get("metrics", ["psnr", "ssim", "niqe"])
    if not isinstance(metrics, list) or any(m not in METRICS for m in metrics):
        raise StudyError(f"{path}: metrics: expected a list drawn from {', '.join(METRICS)}, got {metrics!r}")
    metrics = ["psnr", "ssim"] + [m for m in ("niqe", "lpips") if m in metrics]

    folders = data["test_folders"]
    if not isinstance(folders, list) or not folders:
        raise StudyError(f"{path}: test_folders: expected a non-empty list of LR folders")
    test_folders = [Path(str(f)) for f in folders]
    for f in test_folders:
        if not f.is_dir():
            raise StudyError(f"{path}: test_folders: {f}: no such folder")
    test_gt = data.get("test_gt")
    if test_gt is not None:
        if not isinstance(test_gt, list) or len(test_gt) != len(test_folders):
            raise StudyError(f"{path}: test_gt: expected one ground-truth folder per test folder")
        test_gt = [Path(str(g)) for g in test_gt]
        for g in test_gt:
            if not g.is_dir():
                raise StudyError(f"{path}: test_gt: {g}: no such folder")
    else:
        from Utils.evaluate import find_gt_folder

        for f in test_folders:
            if find_gt_folder(f) is None:
                raise StudyError(f"{path}: test_folders: {f}: no ground truth beside it; give test_gt")
    niqe = data.get("niqe_params")
    if niqe is not None and not Path(str(niqe)).is_file():
        raise StudyError(f"{path}: niqe_params: {niqe}: no such file")

    def positive_int(key: str, default: int) -> int:
        v = data.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise StudyError(f"{path}: {key}: expected a positive integer, got {v!r}")
        return v

    name = str(data.get("name") or path.stem)
    out = Path(str(data.get("out") or Path("studies") / name))
    cache = Path(str(data.get("cache") or out / "cache"))
    study = Study(path=path, name=name, out=out, seeds=list(seeds), baseline=baseline, arms=arms,
                  test_folders=test_folders, test_gt=test_gt, metrics=metrics,
                  niqe_params=Path(str(niqe)) if niqe is not None else None,
                  workers=positive_int("workers", os.cpu_count() or 1), threads=positive_int("threads", 1),
                  cache=cache, **_front_keys(data, path, arms))
    from Utils.launchers import parse_resources

    study.launcher, study.resources = parse_resources(data, path, StudyError)

    for arm, flags in arms.items():
        merged = {**defaults, **flags}
        merged.setdefault("cache_dir", str(cache / "decoded"))
        distils = str(merged.get("train_by_TT", False)).lower() in ("true", "1", "yes")
        method = merged.get("kd_method") or ("dtkd" if distils else "gt")
        if getattr(OBJECTIVES.get(method), "reads_teacher_cache", False):  # feature methods need the live teacher
            merged.setdefault("teacher_cache", str(cache / "teachers"))
        merged.setdefault("valid_dataset", "")
        for key, value in merged.items():
            if key in ("checkpoint", "t1_checkpoint", "t2_checkpoint") and value:
                if not Path(str(value)).is_file():
                    raise StudyError(f"{path}: arms.{arm}.{key}: {value}: no such file")
        for seed in seeds:
            argv: list[str] = []
            for key, value in sorted(merged.items()):
                try:
                    argv += _flag_argv(key, value, actions[key])
                except ValueError as exc:
                    raise StudyError(f"{path}: arms.{arm}.{key}: {exc}") from None
            run_id = f"{arm}_s{seed}"
            argv += ["--seed", str(seed), "--name", run_id, "--experiments_root", str(out / "exp"),
                     "--auto_resume", "--quiet"]
            try:
                ns = parser.parse_args(argv)
            except ValueError as exc:
                raise StudyError(f"{path}: arms.{arm}: {exc}") from None
            study.runs.append(Run(arm, seed, argv, out / "exp" / run_id, out / "eval" / run_id, ns.model_name,
                                  ns.iters))
            late = [m for m in study.eval_marks if m > ns.iters]
            if late:
                raise StudyError(f"{path}: eval_marks: {late[0]} is past arm {arm}'s last iteration ({ns.iters})")
    return study


def _front_keys(data: dict, path: Path, arms: dict) -> dict:
    """``references``, ``line``, ``origin``, ``control`` and ``eval_marks``, checked (see the module docstring)."""
    refs_raw = data.get("references") or {}
    if not isinstance(refs_raw, dict):
        raise StudyError(f"{path}: references: expected a mapping of names to {{model_name, checkpoint}}")
    refs = {}
    for name, spec in refs_raw.items():
        if isinstance(spec, str):
            spec = {"checkpoint": spec}
        if not isinstance(name, str) or not isinstance(spec, dict) or "checkpoint" not in spec:
            raise StudyError(f"{path}: references.{name}: expected {{model_name, checkpoint}}, got {spec!r}")
        unknown = sorted(set(spec) - {"model_name", "checkpoint"})
        if unknown:
            raise StudyError(f"{path}: references.{name}.{unknown[0]}: unknown key (model_name, checkpoint)")
        if not Path(str(spec["checkpoint"])).is_file():
            raise StudyError(f"{path}: references.{name}.checkpoint: {spec['checkpoint']}: no such file")
        if name in arms:
            raise StudyError(f"{path}: references.{name}: also an arm's name; use another")
        refs[name] = {"model_name": str(spec.get("model_name", "auto")), "checkpoint": str(spec["checkpoint"])}
    line = data.get("line")
    if line is not None:
        if not isinstance(line, list) or len(line) != 2 or any(x not in refs for x in line) or line[0] == line[1]:
            raise StudyError(f"{path}: line: expected two different references' names, got {line!r} "
                             f"(references: {', '.join(refs) or 'none'})")
        line = (line[0], line[1])
    origin = data.get("origin")
    if origin is not None and origin not in refs:
        raise StudyError(f"{path}: origin: {origin!r} is not a reference ({', '.join(refs) or 'none'})")
    control = data.get("control")
    if control is not None and control not in arms:
        raise StudyError(f"{path}: control: {control!r} is not an arm ({', '.join(arms)})")
    marks = data.get("eval_marks") or []
    if (not isinstance(marks, list) or any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in marks)
            or len(set(marks)) != len(marks)):
        raise StudyError(f"{path}: eval_marks: expected a list of distinct positive iterations, got {marks!r}")
    return {"references": refs, "line": line, "origin": origin, "control": control, "eval_marks": sorted(marks)}


# ----------------------------------------------------------------------------- running

def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["DTKD_PARENT_PID"] = str(os.getpid())  # main.py then dies with the runner (and saves latest.pth)
    return env


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def _run_logged(cmd: list[str], log_path: Path, env: dict, lock_fd: Optional[int]) -> int:
    with open(log_path, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                pass_fds=(lock_fd,) if lock_fd is not None else (),
                                stdin=subprocess.DEVNULL)
        return proc.wait()


def read_result(run: Run) -> Optional[dict]:
    """The finished run's result, None if it has not finished; an error if its flags changed since."""
    if not run.result_path.is_file():
        return None
    result = json.loads(run.result_path.read_text())
    if result.get("flags_hash") != run.flags_hash:
        raise StudyError(f"{run.result_path}: run {run.run_id} was made with other flags than the study file "
                         f"now gives; use another 'out' folder or delete {run.exp_dir} and {run.eval_dir}")
    return result


def _check_started_flags(run: Run) -> None:
    marker = run.exp_dir / "study_run.json"
    if marker.is_file():
        old = json.loads(marker.read_text()).get("flags_hash")
        if old != run.flags_hash:
            raise StudyError(f"{marker}: run {run.run_id} was started with other flags than the study file now "
                             f"gives; use another 'out' folder or delete {run.exp_dir}")


def execute_run(study: Study, run: Run) -> dict:
    """Train (or resume) one run and evaluate its final weights; returns its result (also on disk)."""
    run.exp_dir.mkdir(parents=True, exist_ok=True)
    run.eval_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run.exp_dir.parent / f".{run.run_id}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s: another process is running it; waiting for it to finish", run.run_id)
            fcntl.flock(fd, fcntl.LOCK_EX)
        done = read_result(run)
        if done is not None:
            evaluate_marks(study, run, done, env=_child_env(study.threads), lock_fd=fd)
            return done
        _check_started_flags(run)
        _write_json_atomic(run.exp_dir / "study_run.json",
                           {"arm": run.arm, "seed": run.seed, "flags_hash": run.flags_hash,
                            "command": ["python", "main.py", *run.argv]})
        env = _child_env(study.threads)
        final = run.exp_dir / "weights" / "final.pth"
        t0 = time.perf_counter()
        if not final.is_file():
            # snapshots for eval_marks: not part of the run's flags (they do not change its training)
            snaps = [str(m) for m in study.eval_marks if m < run.iters]
            cmd = [sys.executable, *run.launch, str(REPO / "main.py"), *run.argv, *(["--snapshots", *snaps] if snaps else [])]
            rc = _run_logged(cmd, run.exp_dir / "stdout.log", env, fd)
            if rc != 0 or not final.is_file():
                raise RuntimeError(f"training exited with status {rc}; see {run.exp_dir / 'stdout.log'}")
        t_train = time.perf_counter() - t0
        t1 = time.perf_counter()
        rows = _evaluate(study, run.model_name, final, run.eval_dir, env, fd, cpu="--cpu" in run.argv)
        train_log = run.exp_dir / "log.csv"
        elapsed = float(pd.read_csv(train_log)["elapsed"].dropna().iloc[-1]) if train_log.is_file() else math.nan
        result = {"arm": run.arm, "seed": run.seed, "flags_hash": run.flags_hash, "rows": rows,
                  "train_seconds": elapsed, "wall_train_seconds": t_train,
                  "eval_seconds": time.perf_counter() - t1, "weights": str(final)}
        _write_json_atomic(run.result_path, result)  # last: its presence means "finished"
        evaluate_marks(study, run, result, env=env, lock_fd=fd)
        return result
    finally:
        os.close(fd)


def _evaluate(study: Study, model_name: str, checkpoint: Path, out_dir: Path, env: dict, lock_fd: Optional[int],
              cpu: bool) -> list[dict]:
    """``main_for_infer.py`` on the study's test sets (the project's one evaluation engine): its summary rows."""
    cmd = [sys.executable, str(REPO / "main_for_infer.py"), "--model_name", model_name, "--checkpoint",
           str(checkpoint), "--output_folder", str(out_dir), "--no_save", "--quiet",
           "--test_folder", *map(str, study.test_folders)]
    if study.test_gt:
        cmd += ["--gt_folder", *map(str, study.test_gt)]
    if "niqe" not in study.metrics:
        cmd.append("--no_niqe")
    elif study.niqe_params is not None:
        cmd += ["--niqe_params", str(study.niqe_params)]
    if "lpips" in study.metrics:
        cmd.append("--lpips")
    if cpu:
        cmd.append("--cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = out_dir / "summary.csv"
    summary.unlink(missing_ok=True)  # a summary left by an interrupted evaluation is not this one's
    rc = _run_logged(cmd, out_dir / "stdout.log", env, lock_fd)
    if rc != 0 or not summary.is_file():
        raise RuntimeError(f"evaluation of {checkpoint} exited with status {rc}; see {out_dir / 'stdout.log'}")
    return pd.read_csv(summary).to_dict("records")


def evaluate_marks(study: Study, run: Run, result: dict, env: dict, lock_fd: Optional[int]) -> None:
    """Evaluate the run's weights at each of the study's ``eval_marks`` not evaluated yet (each mark's
    ``result.json`` is written last and atomically; the last iteration's is the run's own result)."""
    from Trainer import snapshot_path

    for mark in study.eval_marks:
        if mark >= run.iters:
            continue
        done = run.mark_dir(mark) / "result.json"
        if done.is_file():
            continue
        weights = snapshot_path(run.exp_dir, mark)
        if not weights.is_file():
            log.warning("%s: no weights at iteration %d (%s): the run was trained without this mark; delete %s "
                        "and %s to retrain it", run.run_id, mark, weights, run.exp_dir, run.eval_dir)
            continue
        rows = _evaluate(study, run.model_name, weights, run.mark_dir(mark), env, lock_fd, cpu="--cpu" in run.argv)
        _write_json_atomic(done, {"arm": run.arm, "seed": run.seed, "mark": mark, "flags_hash": run.flags_hash,
                                  "rows": rows, "weights": str(weights)})


def run_study(study: Study, progress: bool = True) -> list[str]:
    """Run every unfinished run (``study.workers`` at a time); returns the ids of the runs that failed."""
    from tqdm import tqdm

    for run in study.runs:  # before any run: a changed study file is an error, not a silent mix
        read_result(run)
        _check_started_flags(run)
    todo = [r for r in study.runs if not r.result_path.is_file()]
    log.info("study %s: %d runs, %d finished, %d to do (%d at a time, %d thread(s) each) -> %s", study.name,
             len(study.runs), len(study.runs) - len(todo), len(todo), study.workers, study.threads, study.out)
    failed: list[str] = []
    bar = tqdm(total=len(study.runs), initial=len(study.runs) - len(todo), desc=f"study {study.name}",
               disable=not progress, dynamic_ncols=True, unit="run")
    if study.launcher != "local":  # slurm, submitit_local: one job per run (Utils.launchers)
        from Utils.launchers import run_with_submitit

        def job_ended(run: Run, error: Optional[str]) -> None:
            if error is None:
                res = read_result(run) or {}
                log.info("%s finished (train %.0f s, eval %.0f s)", run.run_id, res.get("wall_train_seconds", math.nan),
                         res.get("eval_seconds", math.nan))
            else:
                log.error("%s failed: %s", run.run_id, error)
            bar.update(1)

        failed = run_with_submitit(study, todo, job_ended, execute_run, read_result)
        bar.close()
        return failed
    with ThreadPoolExecutor(max_workers=study.workers) as pool:
        futures = {pool.submit(execute_run, study, run): run for run in todo}
        for fut in as_completed(futures):
            run = futures[fut]
            try:
                res = fut.result()
                log.info("%s finished (train %.0f s, eval %.0f s)", run.run_id, res["wall_train_seconds"],
                         res["eval_seconds"])
            except Exception as exc:  # one failed run must not stop the others
                failed.append(run.run_id)
                log.error("%s failed: %s", run.run_id, exc)
            bar.update(1)
    bar.close()
    return failed


def evaluate_pending_marks(study: Study) -> None:
    """Evaluate the missing ``eval_marks`` of finished runs (a study whose marks were extended)."""
    for run in study.runs:
        result = read_result(run)
        if result is None or all((run.mark_dir(m) / "result.json").is_file()
                                 for m in study.eval_marks if m < run.iters):
            continue
        fd = os.open(run.exp_dir.parent / f".{run.run_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            evaluate_marks(study, run, result, env=_child_env(study.threads), lock_fd=fd)
        finally:
            os.close(fd)


def evaluate_references(study: Study) -> pd.DataFrame:
    """Each reference checkpoint evaluated once by the same engine as the runs (cached in the study's
    cache folder under a key of its file's contents, preset and the test sets); one row per reference
    and test set: name, dataset, the metrics."""
    from Utils.download import sha256_file

    rows = []
    cpu = any("--cpu" in r.argv for r in study.runs)
    for name, spec in study.references.items():
        ckpt = Path(spec["checkpoint"])
        key = hashlib.sha256(json.dumps([spec["model_name"], sha256_file(ckpt), [str(f) for f in study.test_folders],
                                         [str(g) for g in study.test_gt or []], study.metrics,
                                         str(study.niqe_params)]).encode()).hexdigest()[:16]
        where = Path(study.cache or study.out / "cache") / "references" / f"{name}_{key}"
        done = where / "result.json"
        if done.is_file():
            result = json.loads(done.read_text())
        else:
            log.info("reference %s: evaluating %s", name, ckpt)
            result = {"name": name, "checkpoint": str(ckpt), "model_name": spec["model_name"],
                      "rows": _evaluate(study, spec["model_name"], ckpt, where, _child_env(study.threads), None, cpu)}
            _write_json_atomic(done, result)
        for r in result["rows"]:
            rows.append({"name": name, "dataset": r["dataset"], **{m: r.get(m, math.nan) for m in study.metrics}})
    return pd.DataFrame(rows, columns=["name", "dataset", *study.metrics])


def collect_marks(study: Study) -> pd.DataFrame:
    """One row per finished run, evaluated mark and test set (the last iteration is the run's result):
    arm, seed, mark, dataset, the metrics."""
    rows = []
    for run in study.runs:
        res = read_result(run)
        if res is None:
            continue
        found = [(run.iters, res["rows"])]
        for m in study.eval_marks:
            p = run.mark_dir(m) / "result.json"
            if m < run.iters and p.is_file():
                found.append((m, json.loads(p.read_text())["rows"]))
        for mark, rs in sorted(found, key=lambda x: x[0]):
            for r in rs:
                rows.append({"arm": run.arm, "seed": run.seed, "mark": mark, "dataset": r["dataset"],
                             **{m: r.get(m, math.nan) for m in study.metrics}})
    return pd.DataFrame(rows, columns=["arm", "seed", "mark", "dataset", *study.metrics])


# ----------------------------------------------------------------------------- statistics

def collect_runs(study: Study) -> pd.DataFrame:
    """One row per finished run and test set: arm, seed, dataset, the metrics, seconds."""
    rows = []
    for run in study.runs:
        res = read_result(run)
        if res is None:
            continue
        for r in res["rows"]:
            rows.append({"arm": run.arm, "seed": run.seed, "dataset": r["dataset"],
                         **{m: r.get(m, math.nan) for m in study.metrics},
                         "train_seconds": res["train_seconds"], "eval_seconds": res["eval_seconds"]})
    return pd.DataFrame(rows, columns=["arm", "seed", "dataset", *study.metrics, "train_seconds", "eval_seconds"])


def summarize(runs: pd.DataFrame, baseline: str, metrics: Sequence[str],
              confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per (arm, dataset): n, mean and t-interval half-width of each metric, and the paired difference
    (arm minus baseline, over the seeds both have) with its interval and whether it excludes zero."""
    out = []
    arms = list(dict.fromkeys(runs["arm"]))
    for dataset in dict.fromkeys(runs["dataset"]):
        ds = runs[runs["dataset"] == dataset]
        base = ds[ds["arm"] == baseline].set_index("seed")
        for arm in arms:
            cur = ds[ds["arm"] == arm].set_index("seed")
            if cur.empty:
                continue
            row: dict[str, Any] = {"arm": arm, "dataset": dataset, "n": len(cur)}
            for m in metrics:
                row[f"{m}_mean"], row[f"{m}_ci"], _ = t_interval(cur[m].tolist(), confidence)
                seeds = cur.index.intersection(base.index)
                if arm == baseline or len(seeds) == 0:
                    row[f"{m}_diff"] = row[f"{m}_diff_ci"] = math.nan
                    row[f"{m}_sig"] = False
                    row[f"{m}_pairs"] = 0 if arm != baseline else len(seeds)
                    continue
                d, half, n = t_interval((cur.loc[seeds, m] - base.loc[seeds, m]).tolist(), confidence)
                row[f"{m}_diff"], row[f"{m}_diff_ci"], row[f"{m}_pairs"] = d, half, n
                row[f"{m}_sig"] = bool(n >= 2 and not math.isnan(half) and abs(d) > half)
            out.append(row)
    return pd.DataFrame(out)


_DIGITS = {"psnr": 3, "ssim": 4, "niqe": 3, "lpips": 4}
_TITLES = {"psnr": "PSNR", "ssim": "SSIM", "niqe": "NIQE ↓", "lpips": "LPIPS ↓"}


def _pm(mean: float, half: float, digits: int, signed: bool = False) -> str:
    if math.isnan(mean):
        return "–"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if math.isnan(half) else f"{text} ± {half:.{digits}f}"


def summary_markdown(summary: pd.DataFrame, baseline: str, metrics: Sequence[str],
                     descriptions: Optional[dict[str, str]] = None) -> str:
    """One markdown table per test set: mean ± 95% half-width, and paired differences to the baseline
    (``*``: the interval excludes zero)."""
    parts = []
    for dataset, ds in summary.groupby("dataset", sort=False):
        head = ["arm", "n", *[_TITLES[m] for m in metrics], *[f"Δ{_TITLES[m].split()[0]} vs {baseline}" for m in metrics]]
        lines = [f"**{dataset}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in ds.iterrows():
            cells = [str(r["arm"]), str(int(r["n"]))]
            cells += [_pm(r[f"{m}_mean"], r[f"{m}_ci"], _DIGITS[m]) for m in metrics]
            for m in metrics:
                if r["arm"] == baseline:
                    cells.append("(baseline)")
                else:
                    cells.append(_pm(r[f"{m}_diff"], r[f"{m}_diff_ci"], _DIGITS[m], signed=True)
                                 + (" *" if r[f"{m}_sig"] else ""))
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    note = (f"Means over seeds ± the half-width of the {CONFIDENCE:.0%} Student-t interval; Δ: paired difference "
            f"(arm − {baseline}, same seeds), * where its interval excludes zero.")
    if descriptions:
        note += "\n\n" + "\n".join(f"- `{a}`: {d}" for a, d in descriptions.items())
    missing = [f"cannot judge: {_TITLES[m].split()[0]} unavailable for {r['arm']} on {r['dataset']} (no value in any "
               f"run: see the runs' evaluation logs)" for _, r in summary.iterrows() for m in metrics
               if math.isnan(r[f"{m}_mean"])]
    if missing:
        note += "\n\n" + "\n".join(missing)
    return "\n\n".join(parts) + "\n\n" + note + "\n"


def plot_summary(summary: pd.DataFrame, path: PathLike, title: str = "", refs: Optional[pd.DataFrame] = None,
                 curves: Optional[pd.DataFrame] = None, line: Optional[tuple[str, str]] = None) -> Path:
    """Perception-distortion plane per test set: PSNR (x) against NIQE (or LPIPS, or SSIM) with 95% error
    bars; with ``refs`` the references as labelled black markers, ``line`` the dashed line through two of
    them, ``curves`` each arm's mean trajectory over its evaluated marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ycol = next((m for m in ("niqe", "lpips", "ssim") if f"{m}_mean" in summary
                 and summary[f"{m}_mean"].notna().any()), "ssim")
    datasets = list(dict.fromkeys(summary["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.6 * len(datasets), 4.6), squeeze=False)
    arms = list(dict.fromkeys(summary["arm"]))
    colors = plt.get_cmap("tab10")
    for ax, dataset in zip(axes[0], datasets):
        ds = summary[summary["dataset"] == dataset]
        for i, arm in enumerate(arms):
            r = ds[ds["arm"] == arm]
            if r.empty:
                continue
            r = r.iloc[0]
            if curves is not None and ycol in curves:
                c = curves[(curves["arm"] == arm) & (curves["dataset"] == dataset)].sort_values("mark")
                if len(c) > 1:
                    ax.plot(c["psnr"], c[ycol], "-", lw=1, marker=".", ms=4, color=colors(i % 10), alpha=0.7)
            ax.errorbar(r["psnr_mean"], r[f"{ycol}_mean"], xerr=np.nan_to_num(r["psnr_ci"]),
                        yerr=np.nan_to_num(r[f"{ycol}_ci"]), fmt="o", capsize=3, color=colors(i % 10), label=arm)
        if refs is not None and ycol in refs:
            rd = refs[refs["dataset"] == dataset]
            for _, r in rd.iterrows():
                ax.plot(r["psnr"], r[ycol], "kD", ms=5)
                ax.annotate(str(r["name"]), (r["psnr"], r[ycol]), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
            pts = [rd[rd["name"] == n] for n in line or ()]
            if line and all(not p.empty for p in pts):
                (x0, y0), (x1, y1) = [(float(p["psnr"].iloc[0]), float(p[ycol].iloc[0])) for p in pts]
                if x1 != x0:  # across the axes the data set, without widening them
                    (lo, hi), ylim = ax.get_xlim(), ax.get_ylim()
                    xs = np.array([lo, hi])
                    ax.plot(xs, y0 + (xs - x0) * (y1 - y0) / (x1 - x0), "--", color="0.5", lw=1,
                            label=f"line {line[0]}–{line[1]}")
                    ax.set_xlim(lo, hi)
                    ax.set_ylim(*ylim)
        ax.set_xlabel("PSNR (dB, Y) →")
        ax.set_ylabel(f"{_TITLES[ycol]}" + ("" if ycol in LOWER_IS_BETTER else " →"))
        ax.set_title(f"{title} {dataset}".strip())
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    save_atomic(lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"), path)
    plt.close(fig)
    return path


def front_markdown(front: pd.DataFrame, refs: pd.DataFrame, study: Study) -> str:
    """The references' rows, and per test set each arm's margin above the line and its difference to the
    control at matched NIQE; a line for every figure that cannot be judged (NIQE unavailable)."""
    parts = []
    metrics = [m for m in study.metrics if m in refs]
    if not refs.empty:
        head = ["reference", "test set", *[_TITLES[m] for m in metrics]]
        lines = ["**References** (evaluated once by the same engine)", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in refs.iterrows():
            lines.append("| " + " | ".join([str(r["name"]), str(r["dataset"]),
                                            *[_pm(float(r[m]), math.nan, _DIGITS[m]) for m in metrics]]) + " |")
        parts.append("\n".join(lines))
    unjudged = []
    if not front.empty and (study.line or study.control):
        for dataset, ds in front.groupby("dataset", sort=False):
            head = ["arm"]
            if study.line:
                head.append(f"margin above {study.line[0]}–{study.line[1]} (dB)")
            if study.control:
                head.append(f"ΔPSNR vs {study.control} at matched NIQE (dB)")
            lines = [f"**{dataset}: the perception–distortion front**", "", "| " + " | ".join(head) + " |",
                     "|" + "---|" * len(head)]
            for _, r in ds.iterrows():
                cells = [str(r["arm"])]
                if study.line:
                    cells.append(_pm(r["margin_mean"], r["margin_ci"], 3, signed=True)
                                 + f" (n={int(r['margin_n'])})" + (" *" if r["margin_sig"] else ""))
                    if r["margin_n"] == 0:
                        unjudged.append(f"cannot judge: margin of {r['arm']} on {dataset} (NIQE unavailable for "
                                        f"the arm or the line's references)")
                if study.control:
                    if r["arm"] == study.control:
                        cells.append("(control)")
                    else:
                        cells.append(_pm(r["matched_diff"], r["matched_ci"], 3, signed=True)
                                     + f" (n={int(r['matched_n'])})" + (" *" if r["matched_sig"] else ""))
                lines.append("| " + " | ".join(cells) + " |")
            parts.append("\n".join(lines))
        note = []
        if study.line:
            note.append(f"Margin: the arm's PSNR minus the PSNR of the line through {study.line[0]} and "
                        f"{study.line[1]} at the arm's NIQE (per seed, then mean ± 95% half-width).")
        if study.control:
            note.append(f"Matched NIQE: per seed, the arm's final PSNR minus {study.control}'s PSNR where its "
                        f"trajectory ({'from ' + study.origin + ', ' if study.origin else ''}marks "
                        f"{', '.join(map(str, study.eval_marks)) or 'none'} and the last iteration) crosses the "
                        f"arm's final NIQE (the highest crossing; no extrapolation: n counts the seeds it reaches).")
        note.append("* where the interval excludes zero.")
        parts.append(" ".join(note))
    if unjudged:
        parts.append("\n".join(unjudged))
    return "\n\n".join(parts) + ("\n" if parts else "")


def write_report(study: Study) -> Optional[pd.DataFrame]:
    """``runs.csv``, ``summary.csv``, ``summary.md`` and ``perception_distortion.png`` from the finished runs."""
    runs = collect_runs(study)
    if runs.empty:
        log.warning("study %s: no finished run yet", study.name)
        return None
    study.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(study.out / "runs.csv", runs.to_csv(index=False, float_format="%.6f"))
    summary = summarize(runs, study.baseline, study.metrics)
    per_run = runs.drop_duplicates(["arm", "seed"])
    timing = (f"\n{len(per_run)} runs: {per_run['train_seconds'].sum() / 60:.1f} min of training and "
              f"{per_run['eval_seconds'].sum() / 60:.1f} min of evaluation in total (summed over runs).\n")
    refs = evaluate_references(study) if study.references else pd.DataFrame(columns=["name", "dataset"])
    marks = collect_marks(study)
    curves = None
    front_md = ""
    if study.references or study.eval_marks or study.control:
        if not refs.empty:
            write_text_atomic(study.out / "references.csv", refs.to_csv(index=False, float_format="%.6f"))
        if study.eval_marks:
            write_text_atomic(study.out / "marks.csv", marks.to_csv(index=False, float_format="%.6f"))
            curves = mean_curves(marks, refs, study.origin)
        if "niqe" in study.metrics:
            finals = runs[["arm", "seed", "dataset", "psnr", "niqe"]]
            front = front_summary(finals, marks, refs, study.line, study.control, study.origin)
            summary = summary.merge(front, on=["arm", "dataset"], how="left")
            front_md = front_markdown(front, refs, study)
        else:
            front_md = front_markdown(pd.DataFrame(), refs, study)
            if study.line or study.control:
                front_md += ("cannot judge: margins and matched-NIQE differences need NIQE, which this study "
                             "does not measure (metrics)\n")
    write_text_atomic(study.out / "summary.csv", summary.to_csv(index=False, float_format="%.6f"))
    write_text_atomic(study.out / "summary.md", f"# Study `{study.name}`\n\n" + summary_markdown(
        summary, study.baseline, study.metrics) + ("\n" + front_md if front_md else "") + timing)
    plot_summary(summary, study.out / "perception_distortion.png", title=study.name, refs=refs,
                 curves=curves, line=study.line)
    return summary


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m Utils.study``."""
    p = argparse.ArgumentParser(prog="python -m Utils.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="study file (YAML)")
    p.add_argument("--report", action="store_true", help="only rebuild the tables and the plot from finished runs")
    p.add_argument("--workers", type=int, default=None, help="parallel runs (overrides the study file)")
    p.add_argument("--launcher", choices=("local", "slurm", "submitit_local"), default=None,
                   help="where runs execute (overrides the study file's launcher; see Utils/launchers.py)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        study = load_study(args.study)
        if args.workers is not None:
            if args.workers < 1:
                raise StudyError(f"--workers must be at least 1, got {args.workers}")
            study.workers = args.workers
        if args.launcher is not None:
            study.launcher = args.launcher
        t0 = time.perf_counter()
        failed = [] if args.report else run_study(study, progress=not args.quiet)
        if not args.report:
            evaluate_pending_marks(study)
        summary = write_report(study)
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.report:
        log.info("study %s: wall time %.1f min", study.name, (time.perf_counter() - t0) / 60)
    if summary is not None:
        print(summary_markdown(summary, study.baseline, study.metrics))
        log.info("results: %s (runs.csv, summary.csv, summary.md, perception_distortion.png)", study.out)
    if failed:
        log.error("%d run(s) failed: %s (the others are kept; run the study again to retry them)",
                  len(failed), ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
