"""bench/gpu_check.sh --device cpu: the GPU check's own script at tiny sizes writes its CSV, and the bf16
kill-and-resume run equals the uninterrupted one."""
from __future__ import annotations

import os
import subprocess

import pandas as pd

from tests.conftest import REPO


def test_gpu_check_on_the_cpu_writes_its_csv_and_resume_is_equal(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(tmp_path)}
    env.pop("DTKD_PARENT_PID", None)
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--device", "cpu", "--inference-budget", "20"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(tmp_path / "gpu_check.csv")
    assert list(df.columns) == ["section", "name", "variant", "size", "value", "unit", "status", "detail", "device",
                                "time"]
    inf = df[df.section == "inference"]
    assert set(inf.name) == {"RFDN", "LBNet", "IMDN"} and set(inf.variant) == {"fp32", "fp32+cl"}
    ok = inf[inf.status == "ok"]
    assert len(ok) >= 1 and (ok.value > 0).all()
    steps = df[df.section == "train_step"].set_index("variant")
    assert set(steps.index) == {"teacher_cache", "on_the_fly"} and (steps.status == "ok").all(), steps
    resume = df[df.section == "resume"].iloc[0]
    assert resume.status == "equal" and resume.value == 0, resume.to_dict()
    assert df[df.section == "ddp"].iloc[0].status == "skipped"
