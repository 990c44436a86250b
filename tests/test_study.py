"""The study runner: aggregation against hand-computed values, exact kill-and-restart, bad study files."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from Utils import study as st

REPO = Path(__file__).resolve().parents[1]
T_975_2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom (tables: 4.303)


# ----------------------------------------------------------------------------- aggregation

def _runs_frame() -> pd.DataFrame:
    rows = []
    base = {0: (30.0, 0.80, 6.0), 1: (30.2, 0.81, 6.2), 2: (30.4, 0.82, 6.4)}
    arm = {0: (30.1, 0.80, 5.5), 1: (30.4, 0.815, 5.6), 2: (30.55, 0.83, 5.8)}
    for name, vals in (("base", base), ("new", arm)):
        for seed, (p, s, n) in vals.items():
            rows.append({"arm": name, "seed": seed, "dataset": "Set5", "psnr": p, "ssim": s, "niqe": n})
    rows.append({"arm": "new", "seed": 3, "dataset": "Set5", "psnr": 99.0, "ssim": 0.9, "niqe": 1.0})  # unpaired
    return pd.DataFrame(rows)


def test_summary_means_intervals_and_paired_differences_by_hand():
    s = st.summarize(_runs_frame(), "base", ["psnr", "ssim", "niqe"]).set_index("arm")
    # baseline PSNR 30.0, 30.2, 30.4: mean 30.2, sd 0.2, half-width t * 0.2 / sqrt(3)
    assert s.loc["base", "n"] == 3
    assert s.loc["base", "psnr_mean"] == pytest.approx(30.2, abs=1e-12)
    assert s.loc["base", "psnr_ci"] == pytest.approx(T_975_2 * 0.2 / math.sqrt(3), rel=1e-9)
    assert math.isnan(s.loc["base", "psnr_diff"]) and not s.loc["base", "psnr_sig"]
    # "new" has 4 seeds; its own mean uses all four
    assert s.loc["new", "n"] == 4
    assert s.loc["new", "psnr_mean"] == pytest.approx((30.1 + 30.4 + 30.55 + 99.0) / 4, abs=1e-12)
    # paired PSNR differences over seeds 0..2 only: 0.1, 0.2, 0.15 -> mean 0.15, sd 0.05
    assert s.loc["new", "psnr_pairs"] == 3
    assert s.loc["new", "psnr_diff"] == pytest.approx(0.15, abs=1e-12)
    assert s.loc["new", "psnr_diff_ci"] == pytest.approx(T_975_2 * 0.05 / math.sqrt(3), rel=1e-9)
    assert s.loc["new", "psnr_sig"]  # 0.15 > 0.1242
    # NIQE differences -0.5, -0.6, -0.6: mean -0.5667, sd 0.05774 -> interval excludes zero
    d = np.array([-0.5, -0.6, -0.6])
    assert s.loc["new", "niqe_diff"] == pytest.approx(d.mean(), abs=1e-12)
    assert s.loc["new", "niqe_diff_ci"] == pytest.approx(T_975_2 * d.std(ddof=1) / math.sqrt(3), rel=1e-9)
    assert s.loc["new", "niqe_sig"]
    # SSIM differences 0, 0.005, 0.01: mean 0.005, sd 0.005 -> half 0.0124 > 0.005: not significant
    assert s.loc["new", "ssim_diff"] == pytest.approx(0.005, abs=1e-12)
    assert not s.loc["new", "ssim_sig"]


def test_t_interval_edge_cases():
    assert st.t_interval([]) [2] == 0
    mean, half, n = st.t_interval([1.5])
    assert (mean, n) == (1.5, 1) and math.isnan(half)
    mean, half, n = st.t_interval([1.0, 3.0])  # sd sqrt(2), t(0.975, 1) = 12.7062
    assert half == pytest.approx(12.706204736174696 * math.sqrt(2) / math.sqrt(2), rel=1e-9)


def test_markdown_marks_significant_differences():
    summary = st.summarize(_runs_frame(), "base", ["psnr", "ssim", "niqe"])
    md = st.summary_markdown(summary, "base", ["psnr", "ssim", "niqe"])
    new_line = next(line for line in md.splitlines() if line.startswith("| new "))
    cells = [c.strip() for c in new_line.strip("|").split("|")]
    assert cells[5].endswith("*") and cells[5].startswith("+0.150 ±")  # ΔPSNR
    assert not cells[6].endswith("*")  # ΔSSIM
    assert cells[7].startswith("-0.567") and cells[7].endswith("*")  # ΔNIQE
    assert "(baseline)" in next(line for line in md.splitlines() if line.startswith("| base "))


# ----------------------------------------------------------------------------- running

def _write_images(folder: Path, n: int, size: int, seed: int) -> list[np.ndarray]:
    from Utils.image_io import write_image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    imgs = []
    for i in range(n):
        img = np.zeros((size, size, 3))
        for c in range(3):
            for _ in range(4):
                fx, fy, ph = rng.uniform(0.02, 0.4, 2).tolist() + [rng.uniform(0, 6.3)]
                img[..., c] += np.sin(fx * xx + fy * yy + ph)
        img = np.clip(127.5 + 30 * img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        write_image(folder / f"im{i}.png", img)
        imgs.append(img)
    return imgs


def write_sr_folders(root: Path, parts: tuple[tuple[str, int, int, int], ...]) -> Path:
    """Synthetic HR images and their MATLAB-bicubic x4 LR in the EDSR layout: ``(part, count, size, seed)``
    gives ``root/part/HR`` and ``root/part/LR_bicubic/X4``."""
    from Utils.image_io import write_image
    from Utils.imresize import imresize

    for part, n, size, seed in parts:
        for i, hr in enumerate(_write_images(root / part / "HR", n, size, seed)):
            write_image(root / part / "LR_bicubic" / "X4" / f"im{i}x4.png", imresize(hr, 0.25))
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """Synthetic training images (HR and MATLAB-bicubic x4 LR) and a two-image test set, EDSR layout."""
    return write_sr_folders(tmp_path_factory.mktemp("study_data"), (("train", 4, 96, 0), ("test", 2, 64, 1)))


def _study_file(data: Path, out: Path, path: Path, **over) -> Path:
    spec = {
        "name": "tiny", "out": str(out), "cache": str(out.parent / "cache"), "seeds": [0, 1],
        "baseline": "gt", "workers": 1, "metrics": ["psnr", "ssim"],
        "defaults": {"model_name": "RFDN", "train_hr": [str(data / "train" / "HR")],
                     "train_lr": [str(data / "train" / "LR_bicubic" / "X4")], "patch_size": 64,
                     "batch_size": 2, "iters": 6, "save_every": 2, "lr": 1e-3, "num_workers": 0, "cpu": True},
        "arms": {"gt": {}, "edge": {"Rate_lm": 0.1, "Rate_tex": 0.5}},
        "test_folders": [str(data / "test" / "LR_bicubic" / "X4")],
    }
    spec.update(over)
    path.write_text(yaml.safe_dump(spec))
    return path


def study_cli(study_file: Path) -> subprocess.Popen:
    """``python -m Utils.study FILE --quiet`` from the repository, one thread, output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "Utils.study", str(study_file), "--quiet"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_study_restarts_to_the_same_summary_without_redoing_finished_runs(tiny_data, tmp_path):
    ref_file = _study_file(tiny_data, tmp_path / "ref", tmp_path / "ref.yaml")
    proc = study_cli(ref_file)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    ref = pd.read_csv(tmp_path / "ref" / "summary.csv")
    assert len(pd.read_csv(tmp_path / "ref" / "runs.csv")) == 4
    assert (tmp_path / "ref" / "perception_distortion.png").stat().st_size > 0

    study_file = _study_file(tiny_data, tmp_path / "cut", tmp_path / "cut.yaml")
    cut_dir = tmp_path / "cut"
    first = cut_dir / "eval" / "gt_s0" / "result.json"
    second = cut_dir / "exp" / "gt_s1" / "checkpoints" / "latest.pth"  # saved at iteration 2 of 6
    proc = study_cli(study_file)
    deadline = time.time() + 300
    while not second.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert first.is_file() and second.is_file(), "the study never reached its second run"
    proc.send_signal(signal.SIGKILL)  # the runner dies; its training process saves latest.pth and exits
    proc.wait()
    finished = sorted(p.parent.name for p in (cut_dir / "eval").glob("*/result.json"))
    assert "gt_s0" in finished
    stamps = {r: ((cut_dir / "eval" / r / "result.json").stat().st_mtime_ns,
                  (cut_dir / "exp" / r / "weights" / "final.pth").stat().st_mtime_ns,
                  (cut_dir / "exp" / r / "log.csv").read_text()) for r in finished}

    proc = study_cli(study_file)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert f"{len(finished)} finished, {4 - len(finished)} to do" in out, out
    for r, stamp in stamps.items():  # finished runs are not redone
        assert ((cut_dir / "eval" / r / "result.json").stat().st_mtime_ns,
                (cut_dir / "exp" / r / "weights" / "final.pth").stat().st_mtime_ns,
                (cut_dir / "exp" / r / "log.csv").read_text()) == stamp, r
    cut = pd.read_csv(tmp_path / "cut" / "summary.csv")
    pd.testing.assert_frame_equal(cut, ref)  # exact resume: the same numbers

    # a third start finds everything finished and trains nothing
    proc = study_cli(study_file)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "4 finished, 0 to do" in out, out


def test_changed_arm_flags_are_an_error_not_a_silent_mix(tiny_data, tmp_path):
    out = tmp_path / "s"
    run = out / "exp" / "gt_s0"
    run.mkdir(parents=True)
    (run / "study_run.json").write_text('{"flags_hash": "0000"}')
    f = _study_file(tiny_data, out, tmp_path / "s.yaml")
    with pytest.raises(st.StudyError, match="started with other flags"):
        st.run_study(st.load_study(f), progress=False)


@pytest.mark.parametrize("change, message", [
    ({"arms": {"gt": {"Rate_l": 1}}}, "arms.gt.Rate_l: not a main.py flag"),
    ({"arms": {"gt": {"seed": 3}}}, "arms.gt.seed: set by the study runner"),
    ({"baseline": "nope"}, "baseline: 'nope' is not an arm"),
    ({"seeds": [0, 0]}, "seeds: repeated seed"),
    ({"seeds": "0"}, "seeds: expected a non-empty list of integers"),
    ({"metrics": ["psnr", "fid"]}, "metrics: expected a list"),
    ({"test_folders": ["/no/such/folder"]}, "test_folders: /no/such/folder: no such folder"),
    ({"arms": {"gt": {"lr": "fast"}}}, "arms.gt: argument --lr: invalid float value"),
    ({"arms": {"gt": {"t1_checkpoint": "/no/such.pth"}}}, "arms.gt.t1_checkpoint: /no/such.pth: no such file"),
    ({"workers": 0}, "workers: expected a positive integer"),
    ({"colour": 1}, "colour: unknown key"),
])
def test_bad_study_file_is_one_line_and_exit_2(tiny_data, tmp_path, capsys, change, message):
    f = _study_file(tiny_data, tmp_path / "bad", tmp_path / "bad.yaml", **change)
    assert st.main([str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(f) in err and message in err, err
    assert not (tmp_path / "bad" / "exp").exists()  # no run started


def test_missing_key_and_bad_yaml(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text("seeds: [0]\nbaseline: a\narms: {a: {}}\n")
    assert st.main([str(f)]) == 2
    assert "test_folders: missing" in capsys.readouterr().err
    f.write_text("seeds: [0\n")
    assert st.main([str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not valid YAML" in err


def test_teacher_cache_only_for_methods_that_read_it(tiny_data, tmp_path):
    """Methods reading teacher outputs (dtkd, output, dukd) share the study's teacher cache; the feature
    methods, which need the live teacher's features, get no --teacher_cache."""
    ckpt = tmp_path / "teacher.pth"
    ckpt.write_bytes(b"x")
    arms = {"gt": {}, "output": {"kd_method": "output"}, "dukd": {"kd_method": "dukd"},
            "fakd": {"kd_method": "fakd"}, "tt": {"train_by_TT": True, "t2_checkpoint": ""}}
    f = _study_file(tiny_data, tmp_path / "out", tmp_path / "s.yaml", arms=arms)
    spec = yaml.safe_load(f.read_text())
    spec["defaults"]["t1_checkpoint"] = str(ckpt)
    f.write_text(yaml.safe_dump(spec))
    study = st.load_study(f)
    cached = {r.arm for r in study.runs if "--teacher_cache" in r.argv}
    assert cached == {"output", "dukd", "tt"}


def test_extends_merges_defaults_and_arms_and_only_arms_selects_in_order(tiny_data, tmp_path):
    parent = _study_file(tiny_data, tmp_path / "parent", tmp_path / "parent.yaml")
    sub = tmp_path / "sub"
    sub.mkdir()
    child = sub / "child.yaml"
    child.write_text(yaml.safe_dump({"extends": "../parent.yaml", "defaults": {"iters": 4},
                                     "arms": {"edge": {"Rate_lm": 0.2}, "tex": {"Rate_tex": 1.0}},
                                     "only_arms": ["tex", "gt", "edge"]}))
    study = st.load_study(child)
    base = st.load_study(parent)
    assert study.name == "child" and study.out == Path("studies/child")  # name and out are never inherited
    assert study.seeds == base.seeds and study.test_folders == base.test_folders and study.baseline == "gt"
    assert list(study.arms) == ["tex", "gt", "edge"]
    assert study.arms["edge"] == {"Rate_lm": 0.2}  # a child arm replaces the parent's whole arm
    gt_child = next(r for r in study.runs if r.arm == "gt" and r.seed == 0).argv
    gt_parent = next(r for r in base.runs if r.arm == "gt" and r.seed == 0).argv
    assert gt_child[gt_child.index("--iters") + 1] == "4" and gt_parent[gt_parent.index("--iters") + 1] == "6"
    assert gt_child[gt_child.index("--patch_size") + 1] == "64"  # the other defaults come from the parent
    # a grandchild: chains work, and without only_arms every merged arm runs
    (sub / "grand.yaml").write_text(yaml.safe_dump({"extends": "child.yaml", "only_arms": ["gt"]}))
    assert [r.run_id for r in st.load_study(sub / "grand.yaml").runs] == ["gt_s0", "gt_s1"]


@pytest.mark.parametrize("child, message", [
    ({"extends": "nope.yaml"}, "extends: {dir}/nope.yaml: no such file"),
    ({"extends": "s.yaml"}, "extends: s.yaml: a cycle of study files"),
    ({"extends": 3}, "extends: expected the path of another study file"),
    ({"extends": "parent.yaml", "only_arms": ["gt", "nope"]}, "only_arms: 'nope' is not an arm (edge, gt)"),
    ({"extends": "parent.yaml", "only_arms": ["gt", "gt"]}, "only_arms: expected a non-empty list of distinct"),
])
def test_bad_extends_or_only_arms_is_one_line_and_exit_2(tiny_data, tmp_path, capsys, child, message):
    _study_file(tiny_data, tmp_path / "parent", tmp_path / "parent.yaml")
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(child))
    assert st.main([str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(f) in err and message.format(dir=tmp_path) in err, err


def test_the_timing_studies_extend_the_finetuning_study_with_its_runs_unchanged():
    """timing_rfdn.yaml extends finetune_rfdn.yaml (6 of its arms) and timing_rfdn_bf16.yaml extends it
    (plus --amp bf16): each run's flags are the parent's, so the committed results stay theirs."""
    if not (REPO.parent / "shared" / "data" / "train" / "T91").is_dir():
        pytest.skip("needs ../shared/data (the study files' paths are relative to it)")
    ft = {r.run_id: r.argv for r in st.load_study(REPO / "studies" / "finetune_rfdn.yaml").runs}
    timing = st.load_study(REPO / "studies" / "timing_rfdn.yaml")
    bf16 = st.load_study(REPO / "studies" / "timing_rfdn_bf16.yaml")
    assert list(timing.arms) == ["dtkd_adv", "gt", "fidelity", "perceptual", "dtkd", "dtkd_no_routing"]
    strip = lambda argv: [a for a in argv if "cache" not in a and "timing" not in a and "finetune" not in a]  # noqa: E731
    for run in timing.runs:
        assert strip(run.argv) == strip(ft[run.run_id]), run.run_id
    for run, ref in zip(bf16.runs, timing.runs):
        i = run.argv.index("--amp")
        assert run.argv[i + 1] == "bf16" and strip(run.argv[:i] + run.argv[i + 2:]) == strip(ref.argv), run.run_id


# ----------------------------------------------------------------------------- the perception-distortion front

def _front_spec(tmp_path: Path) -> dict:
    import torch

    from Model import build_model

    refs = {}
    for i, name in enumerate(("start", "other")):
        torch.manual_seed(i)
        refs[name] = {"model_name": "RFDN", "checkpoint": str(tmp_path / f"{name}.pth")}
        torch.save(build_model("RFDN").state_dict(), refs[name]["checkpoint"])
    return {"references": refs, "line": ["start", "other"], "origin": "start", "control": "gt",
            "eval_marks": [2, 4]}


def test_marks_are_evaluated_once_and_reused_after_a_restart(tiny_data, tmp_path):
    out = tmp_path / "front"
    f = _study_file(tiny_data, out, tmp_path / "front.yaml", seeds=[0], arms={"gt": {}, "edge": {"Rate_lm": 0.1}},
                    metrics=["psnr", "ssim", "niqe"], **_front_spec(tmp_path))
    proc = study_cli(f)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    marks = pd.read_csv(out / "marks.csv")
    assert sorted(map(tuple, marks[["arm", "mark"]].drop_duplicates().values.tolist())) == [
        ("edge", 2), ("edge", 4), ("edge", 6), ("gt", 2), ("gt", 4), ("gt", 6)]
    # the last mark is the run's own result; the others are the snapshots' evaluations
    runs = pd.read_csv(out / "runs.csv").set_index("arm")
    assert marks[(marks["arm"] == "gt") & (marks["mark"] == 6)]["psnr"].iloc[0] == pytest.approx(runs.loc["gt", "psnr"])
    assert (out / "exp" / "gt_s0" / "weights" / "iter_2.pth").is_file()
    refs = pd.read_csv(out / "references.csv")
    assert sorted(refs["name"]) == ["other", "start"]
    summary = pd.read_csv(out / "summary.csv")
    assert {"margin_mean", "matched_diff"} <= set(summary.columns)
    md = (out / "summary.md").read_text()
    assert "**References**" in md and "perception–distortion front" in md
    # the test images are too small for NIQE: no margin is made up, each says so
    assert "cannot judge: margin of edge on test" in md and "PASS" not in md
    stamps = {p: p.stat().st_mtime_ns for p in (out / "eval").glob("*/marks/*/result.json")}
    ref_stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "references").glob("*/result.json")}
    assert len(stamps) == 4 and len(ref_stamps) == 2
    # a restart evaluates nothing again; a lost mark is evaluated alone
    lost = out / "eval" / "edge_s0" / "marks" / "iter_4" / "result.json"
    lost.unlink()
    proc = study_cli(f)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "2 finished, 0 to do" in log, log
    assert lost.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != lost)
    assert all(p.stat().st_mtime_ns == t for p, t in ref_stamps.items())
    pd.testing.assert_frame_equal(pd.read_csv(out / "marks.csv"), marks)


@pytest.mark.parametrize("change, message", [
    ({"eval_marks": [2, 7]}, "'s last iteration (6)"),
    ({"eval_marks": [0]}, "eval_marks: expected a list of distinct positive iterations"),
    ({"line": ["start", "nope"]}, "line: expected two different references' names"),
    ({"origin": "nope"}, "origin: 'nope' is not a reference"),
    ({"control": "nope"}, "control: 'nope' is not an arm"),
    ({"references": {"x": {"checkpoint": "/no/such.pth"}}}, "references.x.checkpoint: /no/such.pth: no such file"),
])
def test_bad_front_keys_are_one_line_and_exit_2(tiny_data, tmp_path, capsys, change, message):
    spec = {**_front_spec(tmp_path), **change}
    if "references" in change:
        spec.update(line=None, origin=None)
    f = _study_file(tiny_data, tmp_path / "bad", tmp_path / "bad.yaml", **spec)
    assert st.main([str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_a_summary_without_niqe_says_it_cannot_judge():
    runs = pd.DataFrame([{"arm": a, "seed": s, "dataset": "Set5", "psnr": 30.0 + s, "ssim": 0.8, "niqe": math.nan}
                         for a in ("base", "new") for s in (0, 1)])
    md = st.summary_markdown(st.summarize(runs, "base", ["psnr", "ssim", "niqe"]), "base", ["psnr", "ssim", "niqe"])
    assert "cannot judge: NIQE unavailable for new on Set5" in md and "PASS" not in md
