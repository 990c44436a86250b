"""Study launchers: submitit_local gives the local launcher's summary and survives a killed runner without
running a job twice; a failed job is reported with its log; the slurm path builds its executor (sbatch text,
job array, job states) from the study's resources without a cluster, through submitit's own stand-in."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from Utils import launchers as la
from Utils import study as st

from .test_study import study_cli

pytest.importorskip("submitit")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """Four synthetic 96x96 training images and one 64x64 test image, EDSR layout (x4 MATLAB bicubic)."""
    from tests.test_study import write_sr_folders

    return write_sr_folders(tmp_path_factory.mktemp("launch_data"), (("train", 4, 96, 0), ("test", 1, 64, 1)))


def _study(data: Path, out: Path, launcher: str, workers: int = 2, iters: int = 4, **over) -> Path:
    spec = {
        "name": out.name, "out": str(out), "cache": str(out.parent / "cache"), "seeds": [0, 1, 2],
        "baseline": "gt", "workers": workers, "metrics": ["psnr", "ssim"], "launcher": launcher,
        "gpus_per_run": 0, "timeout_min": 20,
        "defaults": {"model_name": "RFDN", "train_hr": [str(data / "train" / "HR")],
                     "train_lr": [str(data / "train" / "LR_bicubic" / "X4")], "patch_size": 64,
                     "batch_size": 2, "iters": iters, "save_every": 2, "lr": 1e-3, "num_workers": 0, "cpu": True},
        "arms": {"gt": {}},
        "test_folders": [str(data / "test" / "LR_bicubic" / "X4")],
        **over,
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def local_summary(tiny_data, tmp_path_factory) -> pd.DataFrame:
    """The 3-run study through the local launcher (the reference)."""
    root = tmp_path_factory.mktemp("local")
    _finish(study_cli(_study(tiny_data, root / "local", "local")))
    return pd.read_csv(root / "local" / "summary.csv")


def _submitted_jobs(out: Path) -> int:
    return len(list((out / "submitit").glob("*_submitted.pkl")))


def test_submitit_local_killed_and_restarted_gives_the_local_summary(tiny_data, tmp_path, local_summary):
    """The 3-run study through submitit_local, its runner killed during the second run and started again:
    the same summary.csv as the local launcher's, the running job re-attached (never submitted twice), the
    finished run untouched."""
    out = tmp_path / "cut"
    study_file = _study(tiny_data, out, "submitit_local", workers=1)
    first = out / "eval" / "gt_s0" / "result.json"
    second = out / "exp" / "gt_s1" / "checkpoints" / "latest.pth"  # iteration 2 of 4 of the second run
    proc = study_cli(study_file)
    deadline = time.time() + 300
    while not second.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert first.is_file() and second.is_file(), "the study never reached its second run"
    proc.send_signal(signal.SIGKILL)  # the runner dies; its job (not a child to kill) goes on
    proc.wait()
    stamp = (first.stat().st_mtime_ns, (out / "exp" / "gt_s0" / "weights" / "final.pth").stat().st_mtime_ns)

    log = _finish(study_cli(study_file))
    assert "1 finished, 2 to do" in log, log
    assert "gt_s1: re-attached to job" in log, log  # the queued/running job is waited for, not resubmitted
    assert _submitted_jobs(out) == 3, "a job was submitted twice"
    assert (first.stat().st_mtime_ns, (out / "exp" / "gt_s0" / "weights" / "final.pth").stat().st_mtime_ns) == stamp
    train_log = (out / "exp" / "gt_s1" / "stdout.log").read_text()
    assert train_log.count("main.py") == 1, "the second run was trained twice"
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), local_summary)
    for run in ("gt_s0", "gt_s1", "gt_s2"):
        record = la.read_record(st.Run("gt", 0, [], out / "exp" / run, out / "eval" / run, "RFDN"))
        assert record["launcher"] == "submitit_local" and Path(record["stdout"]).is_file(), record


def test_failed_job_is_reported_with_its_log_and_the_others_kept(tiny_data, tmp_path):
    out = tmp_path / "bad"
    # patches larger than the training images: the run's training fails inside its job
    study_file = _study(tiny_data, out, "submitit_local", iters=2, arms={"gt": {}, "broken": {"patch_size": 400}},
                        seeds=[0])
    proc = study_cli(study_file)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, log
    assert "broken_s0 failed" in log and "log: " in log and str(out / "submitit") in log, log
    assert (out / "eval" / "gt_s0" / "result.json").is_file()
    assert "1 run(s) failed: broken_s0" in log


# ----------------------------------------------------------------------------- slurm, without a cluster

def test_slurm_executor_carries_the_study_resources(tiny_data, tmp_path):
    from submitit.slurm.slurm import SlurmJob
    from submitit.slurm.test_slurm import mocked_slurm  # submitit's own stand-in for srun/sbatch/sacct

    study_file = _study(tiny_data, tmp_path / "cluster", "slurm", gpus_per_run=2, cpus_per_run=12, mem_gb=48,
                        timeout_min=600, partition="gpu", slurm_account="srlab", slurm_qos="high",
                        slurm_constraint="a100")
    study = st.load_study(study_file)
    assert study.launcher == "slurm" and study.resources.gpus_per_run == 2
    with mocked_slurm() as mock:
        executor = la.make_executor("slurm", tmp_path / "jobs", study.resources, "study_cluster")
        sbatch = executor._executor._make_submission_file_text("python -m x", "uid")
        for line in ("#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=12", "#SBATCH --mem=48GB",
                     "#SBATCH --time=600", "#SBATCH --partition=gpu", "#SBATCH --account=srlab",
                     "#SBATCH --qos=high", "#SBATCH --constraint=a100", "#SBATCH --ntasks-per-node=1",
                     "#SBATCH --job-name=study_cluster"):
            assert line in sbatch, (line, sbatch)
        # three runs go out as one job array; each run records its job id
        jobs = la._submit(executor, "slurm", study, study.runs, la.torchrun_words(2), str(tmp_path), st.execute_run)
        assert [j.job_id for j in jobs] == ["12_0", "12_1", "12_2"]
        array_file = (tmp_path / "jobs" / "12_submission.sh").read_text()
        assert "#SBATCH --array=0-2" in array_file
        record = {"launcher": "slurm", "job_id": "12_1", "folder": str(tmp_path / "jobs")}
        assert la._is_active("slurm", tmp_path / "jobs", record)  # RUNNING: re-attach, do not resubmit
        mock.set_job_state("12", "COMPLETED", array=3)
        SlurmJob.watcher.clear()  # forget the cached state
        assert not la._is_active("slurm", tmp_path / "jobs", record)
        assert not la._is_active("submitit_local", tmp_path / "jobs", record)  # another launcher's record
    assert la.torchrun_words(1) == ()
    assert la.torchrun_words(2)[:2] == ("-m", "torch.distributed.run") and "2" in la.torchrun_words(2)


@pytest.mark.parametrize("over, message", [
    ({"launcher": "kubernetes"}, "launcher: expected one of local, slurm, submitit_local"),
    ({"gpus_per_run": -1}, "gpus_per_run: expected a whole number of at least 0"),
    ({"mem_gb": "lots"}, "mem_gb: expected a number"),
    ({"slurm_colour": "red"}, "slurm_colour: not a submitit SLURM parameter"),
    ({"partition": ""}, "partition: expected a partition name"),
])
def test_bad_launcher_keys_are_one_line_and_exit_2(tiny_data, tmp_path, capsys, over, message):
    over = dict(over)
    f = _study(tiny_data, tmp_path / "bad", over.pop("launcher", "local"), **over)
    assert st.main([str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(f) in err and message in err, err
