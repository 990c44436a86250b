"""demo.sh, the README's main job, end to end (with a short iteration count to keep CI fast)."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("amp", [None, "none"])  # the demo's own choice (auto), and float32 asked for
def test_demo_script_end_to_end(tmp_path, amp):
    out = tmp_path / "demo_output"
    # 12 iterations (the teacher: 20 in stage 1, 16 in stage 2 with the lr cut after 13) test the pipeline,
    # not the models
    env = {**os.environ, "DTKD_DEMO_OUT": str(out), "DTKD_DEMO_ITERS": "12", "DTKD_DEMO_TEACHER_ITERS": "20",
           "DTKD_DEMO_TEACHER_S2_ITERS": "16", "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}  # one thread: robust when the machine is shared
    env.pop("DTKD_DEMO_AMP", None)
    if amp is not None:
        env["DTKD_DEMO_AMP"] = amp
    proc = subprocess.run(["bash", str(REPO / "demo.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "Result" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["checkpoint"] for r in rows) == sorted(
        ["demo_teacher_imdn.pth", "demo_edgesrn_edge.pth", "demo_rfdn_gt.pth", "demo_rfdn_dtkd.pth"]), rows
    assert all(r["dataset"] == "Demo" and r["images"] == "3" and float(r["psnr"]) > 20 for r in rows)
    assert (out / "compare.csv").is_file() and (out / "compare.md").is_file()
    # NIQE runs on the parameters shipped in Utils/assets/: a figure for every model, a NIQE column, the plot
    assert all(r["niqe"] and 0 < float(r["niqe"]) < 100 for r in rows), rows
    assert "Demo NIQE" in (out / "compare.md").read_text()
    assert f"plot:   {out}/perception_distortion.png" in proc.stdout
    with Image.open(out / "perception_distortion.png") as im:
        assert im.format == "PNG" and im.size[0] > 400
    log = (out / "experiments" / "demo_rfdn_dtkd" / "log.csv").read_text().splitlines()
    assert log[0].startswith("iter,lr,l1,kd,adv,total,nonfinite,frac_perceptual,kd_err,kd_trust,d_loss") \
        and len(log) == 13
    teacher_log = (out / "experiments" / "demo_edgesrn_edge" / "log.csv").read_text().splitlines()
    assert ",adv," in teacher_log[0] and len(teacher_log) == 17  # stage 2 with the discriminator, 16 steps
    verdict = [line for line in proc.stdout.splitlines() if line.startswith(("PASS  ", "FAIL  "))]
    assert len(verdict) == 2 and "perceptual teacher demo_edgesrn_edge.pth" in verdict[0], proc.stdout[-2000:]
    native = re.search(r"\b(avx512_bf16|amx_bf16)\b", Path("/proc/cpuinfo").read_text()) if Path(
        "/proc/cpuinfo").is_file() else None
    native = bool(native) and amp is None
    want = {None: "bf16 (auto: native bfloat16)" if native else "none (auto: no native bfloat16)", "none": "none"}[amp]
    assert f"perceptual teacher's training precision: {want}" in proc.stdout, proc.stdout[:2000]
    config = {run: (out / "experiments" / run / "config.yaml").read_text() for run in
              ("demo_edgesrn_l1", "demo_edgesrn_edge", "demo_teacher_imdn", "demo_rfdn_gt", "demo_rfdn_dtkd")}
    for run, text in config.items():  # bf16 (and the discriminator's own update in it) for the teacher alone
        teacher = native and run.startswith("demo_edgesrn")
        assert ("amp: bf16" if teacher else "amp: none") in text and ("adv_amp: true" in text) == teacher, run
    # each precision its own teacher recipe: stage 2 at lr 2e-4 in bf16, 1e-4 in float32
    assert re.search(r"^lr: (\S+)$", config["demo_edgesrn_edge"], re.M).group(1) in (("0.0002", "2e-4") if native
                                                                                   else ("0.0001", "1e-4"))
    assert re.search(r"^done in \d+ min \d\d s$", proc.stdout, re.M)
    assert "cannot judge" not in proc.stdout and not any("nan" in line for line in verdict), verdict


def test_demo_rejects_an_unknown_precision(tmp_path):
    env = {**os.environ, "DTKD_DEMO_OUT": str(tmp_path / "out"), "DTKD_DEMO_AMP": "fp8", "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "demo.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "DTKD_DEMO_AMP must be auto, none or bf16, got 'fp8'" in proc.stderr
    assert not (tmp_path / "out" / "experiments").exists()  # nothing trained
