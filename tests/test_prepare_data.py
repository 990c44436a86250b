"""Datasets2023 preparation: official LR reproduced, idempotent verification, mismatch reporting."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import BENCHMARK, REPO, SHARED_DATA, need
from Utils.image_io import read_image, write_image
from Utils.imresize import imresize, modcrop
from Utils.prepare_data import (default_lr_dir, default_set_name, main, prepare_div2k, prepare_testset,
                                dataset_dirs)

SET5 = ["baby", "bird", "butterfly", "head", "woman"]


@pytest.fixture
def set5_hr() -> Path:
    return need(BENCHMARK / "Set5" / "HR")


def _official_lr(name: str) -> np.ndarray:
    return read_image(BENCHMARK / "Set5" / "LR_bicubic" / "X4" / f"{name}x4.png")


def test_mod4_tree_reproduces_official_lr(set5_hr: Path, tmp_path: Path) -> None:
    """With HR cropped to a multiple of 4 (as the official LR was made) every LR file is identical."""
    res = prepare_testset(set5_hr, "Set5", tmp_path, scale=4, mod=4)
    assert (res["written"], res["verified"], res["mismatched"], res["failed"]) == (15, 0, 0, 0)
    lr_dir = tmp_path / "GTmod4_LRx4" / "Set5_LRbicx4"
    for name in SET5:
        assert np.array_equal(read_image(lr_dir / f"{name}.png"), _official_lr(name)), name


def test_mod12_tree(set5_hr: Path, tmp_path: Path) -> None:
    """The default Datasets2023 tree: LR made from the mod-12 crop.

    Only bird (288x288) is a multiple of 12 in both sides, so only its LR can equal the official
    (mod-4) file. For the others the crop removes 4 or 8 HR rows/columns: the LR is smaller and its
    last two rows/columns differ (their kernels reached the removed pixels); the rest is identical.
    """
    res = prepare_testset(set5_hr, "Set5", tmp_path)
    assert (res["written"], res["mismatched"], res["failed"]) == (15, 0, 0)
    dirs = dataset_dirs(tmp_path, "Set5")
    assert dirs == res["dirs"]
    assert dirs["lr"] == tmp_path / "GTmod12_LRx4" / "Set5_LRbicx4"
    for name in SET5:
        hr = read_image(set5_hr / f"{name}.png")
        gt = read_image(dirs["gt"] / f"{name}.png")
        gtmod = read_image(dirs["gtmod"] / f"{name}.png")
        lr = read_image(dirs["lr"] / f"{name}.png")
        official = _official_lr(name)
        assert (set5_hr / f"{name}.png").read_bytes() == (dirs["gt"] / f"{name}.png").read_bytes()
        assert np.array_equal(gt, hr)
        h12, w12 = hr.shape[0] // 12 * 12, hr.shape[1] // 12 * 12
        assert np.array_equal(gtmod, hr[:h12, :w12])
        assert lr.shape == (h12 // 4, w12 // 4, 3)
        assert np.array_equal(lr, imresize(modcrop(hr, 12), 0.25))
        if name == "bird":
            assert np.array_equal(lr, official)
        else:
            assert lr.shape != official.shape
            h, w = lr.shape[:2]
            assert np.array_equal(lr[: h - 2, : w - 2], official[: h - 2, : w - 2]), name


def test_second_run_verifies_and_tamper_is_reported(set5_hr: Path, tmp_path: Path, caplog) -> None:
    prepare_testset(set5_hr, "Set5", tmp_path)
    files = sorted(tmp_path.rglob("*.png"))
    assert len(files) == 15
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    res = prepare_testset(set5_hr, "Set5", tmp_path)
    assert (res["written"], res["verified"], res["mismatched"]) == (0, 15, 0)
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes

    tampered = dataset_dirs(tmp_path, "Set5")["lr"] / "head.png"
    img = read_image(tampered).copy()
    img[0, 0, 0] ^= 1
    write_image(tampered, img)
    stamp = tampered.stat().st_mtime_ns
    with caplog.at_level(logging.ERROR, logger="Utils.prepare_data"):
        res = prepare_testset(set5_hr, "Set5", tmp_path)
    assert (res["verified"], res["mismatched"]) == (14, 1)
    assert res["mismatched_files"] == [str(tampered)]
    assert str(tampered) in caplog.text
    assert tampered.stat().st_mtime_ns == stamp  # never overwritten silently

    # The CLI exits non-zero naming the file; --overwrite repairs it.
    assert main(["--hr", str(set5_hr), "--out", str(tmp_path), "-q"]) == 1
    assert main(["--hr", str(set5_hr), "--out", str(tmp_path), "--overwrite", "-q"]) == 0
    assert main(["--hr", str(set5_hr), "--out", str(tmp_path), "-q"]) == 0
    assert np.array_equal(read_image(tampered), imresize(modcrop(read_image(set5_hr / "head.png"), 12), 0.25))


def test_cli_subprocess(set5_hr: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "Datasets2023"
    with caplog.at_level(logging.INFO, logger="Utils.prepare_data"):
        assert main(["--hr", str(set5_hr), "--out", str(out)]) == 0
    assert "15 written" in caplog.text
    written = sorted(p.name for p in (out / "GTmod12_LRx4" / "Set5_LRbicx4").iterdir())
    assert written == [f"{n}.png" for n in SET5]
    (out / "GTmod12" / "Set5_GTmod12" / "baby.png").write_bytes(b"not a png")
    cmd = [sys.executable, "-m", "Utils.prepare_data", "--hr", str(set5_hr), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "mismatch" in run.stderr and str(out / "GTmod12" / "Set5_GTmod12" / "baby.png") in run.stderr
    assert "14 verified, 1 mismatched" in run.stderr


def test_div2k_lr_matches_reference_with_pool(tmp_path: Path) -> None:
    """BMP sources, ``<stem>x4.png`` names, the default LR folder and a worker pool (T91 reference LR)."""
    t91 = need(SHARED_DATA / "train" / "T91")
    hr_dir = tmp_path / "T91_train_HR"
    hr_dir.mkdir()
    names = sorted(p.name for p in (t91 / "HR").glob("*.bmp"))[:6]
    for n in names:
        shutil.copyfile(t91 / "HR" / n, hr_dir / n)
    res = prepare_div2k(hr_dir, workers=2)
    assert res["lr_dir"] == tmp_path / "T91_train_LR_bicubic" / "X4"
    assert (res["written"], res["mismatched"], res["failed"]) == (6, 0, 0)
    for n in names:
        stem = Path(n).stem
        ours = read_image(res["lr_dir"] / f"{stem}x4.png")
        assert np.array_equal(ours, read_image(t91 / "LR_bicubic" / "X4" / f"{stem}x4.png")), n
    again = prepare_div2k(hr_dir, workers=2)
    assert (again["written"], again["verified"]) == (0, 6)
    custom = prepare_div2k(hr_dir, tmp_path / "lr", workers=1)
    assert custom["written"] == 6 and (tmp_path / "lr" / f"{Path(names[0]).stem}x4.png").is_file()


def test_names_and_errors(tmp_path: Path) -> None:
    assert default_set_name("/data/Set5/HR") == "Set5"
    assert default_set_name("/data/Urban100") == "Urban100"
    assert default_lr_dir("/data/DIV2K_train_HR") == Path("/data/DIV2K_train_LR_bicubic/X4")
    assert default_lr_dir("/data/Set5/HR", 3) == Path("/data/Set5/LR_bicubic/X3")
    hr = tmp_path / "HR"
    hr.mkdir()
    write_image(hr / "a.png", np.zeros((30, 30, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="mod"):
        prepare_testset(hr, "x", tmp_path / "out", scale=4, mod=6)
    write_image(hr / "tiny.png", np.zeros((8, 8, 3), dtype=np.uint8))
    res = prepare_testset(hr, "x", tmp_path / "out")
    assert res["failed"] == 2 and res["written"] == 4  # tiny.png: GT copy only
    write_image(hr / "a.bmp", np.zeros((24, 24, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="a.png"):
        prepare_testset(hr, "x", tmp_path / "out2")
    with pytest.raises(SystemExit):
        main(["--name", "x"])  # --name without a preceding --hr
