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
SHIPPED_TEACHER = "demo_edgesrn_small_x4.pth"  # Utils/assets/, the default perceptual teacher
# its Demo figures (Utils/assets/README.md; docs/results.md, the demo)
TEACHER_PSNR, TEACHER_NIQE = 28.7371, 5.3758


def _run_demo(out: Path, teacher: str) -> subprocess.CompletedProcess:
    # 12 iterations (a trained teacher: 20 in stage 1, 16 in stage 2 with the lr cut after 13) test the
    # pipeline, not the models.
    env = {**os.environ, "DTKD_DEMO_OUT": str(out), "DTKD_DEMO_ITERS": "12", "DTKD_DEMO_TEACHER": teacher,
           "DTKD_DEMO_TEACHER_ITERS": "20", "DTKD_DEMO_TEACHER_ADV_ITERS": "16",
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}  # one thread: robust when the machine is shared
    return subprocess.run(["bash", str(REPO / "demo.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.parametrize("teacher", ["shipped", "train"])
def test_demo_script_end_to_end(tmp_path, teacher):
    out = tmp_path / "demo_output"
    proc = _run_demo(out, teacher)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    p_name = SHIPPED_TEACHER if teacher == "shipped" else "demo_edgesrn_edge.pth"
    with open(out / "Result" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["checkpoint"] for r in rows) == sorted(
        ["demo_teacher_imdn.pth", p_name, "demo_rfdn_gt.pth", "demo_rfdn_dtkd.pth"]), rows
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
    teacher_log = out / "experiments" / "demo_edgesrn_edge" / "log.csv"
    if teacher == "train":
        lines = teacher_log.read_text().splitlines()
        assert ",adv," in lines[0] and len(lines) == 17  # stage 2 with the discriminator, 16 steps
    else:
        assert not teacher_log.exists() and f"shipped in Utils/assets/{SHIPPED_TEACHER}" in proc.stdout
    verdict = [line for line in proc.stdout.splitlines() if line.startswith(("PASS  ", "FAIL  "))]
    assert len(verdict) == 2 and f"perceptual teacher {p_name}" in verdict[0], proc.stdout[-2000:]
    if teacher == "shipped":  # the shipped teacher is perceptual against any 12-iteration F
        assert verdict[0].startswith("PASS  "), verdict[0]
    assert "training precision: none" in proc.stdout and re.search(r"^done in \d+ min \d\d s$", proc.stdout, re.M)
    assert "cannot judge" not in proc.stdout and not any("nan" in line for line in verdict), verdict


def test_demo_rejects_an_unknown_teacher_mode(tmp_path):
    proc = _run_demo(tmp_path / "demo_output", "published")
    assert proc.returncode == 2 and "DTKD_DEMO_TEACHER must be 'shipped' or 'train', got 'published'" in proc.stderr
    assert not (tmp_path / "demo_output" / "experiments").exists()  # refused before any training


def test_shipped_teacher_is_the_documented_file_and_reproduces_its_figures(tmp_path):
    """Utils/assets/demo_edgesrn_small_x4.pth: its SHA-256 is the README's, it loads into EdgeSRN_small with
    every key, and on the Demo photos it scores what docs/results.md reports for the run that made it."""
    import hashlib

    from Utils.demo_data import build_demo_data

    path = REPO / "Utils" / "assets" / SHIPPED_TEACHER
    assert path.is_file(), f"{path} is missing: it ships with the project (see Utils/assets/README.md)"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest in (path.parent / "README.md").read_text()
    build_demo_data(tmp_path / "demo")
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "main_for_infer.py", "--model_name", "EdgeSRN_small", "--checkpoint",
                           str(path), "--test_folder", str(tmp_path / "demo/Datasets2023/GTmod12_LRx4/Demo_LRbicx4"),
                           "--output_folder", str(out), "--no_save", "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "summary.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["psnr"]) == pytest.approx(TEACHER_PSNR, abs=2e-3)
    assert float(row["niqe"]) == pytest.approx(TEACHER_NIQE, abs=2e-3)
