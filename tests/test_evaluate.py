"""main_for_infer.py: reference figures, output layout, summary rows and every bad-input case."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main_for_infer
from Model import build_model
from Utils.evaluate import dataset_name, link_benchmark_as_datasets2023, find_gt_folder, pair_images, results_folder_name
from Utils.image_io import ImageError
from Utils.niqe import shipped_params_path
from tests.conftest import BENCHMARK, WEIGHTS, need

NIQE_PARAMS = shipped_params_path()

# data/README.md, Set5 x4, Y unrounded, border 4.
REFERENCE_SET5 = {
    ("RFDN", "SRDTKD/DTKD-RFDN.pth"): (31.3418, 0.8773),
    ("RFDN", "SRDTKD/DTKD-RFDN-perceptual.pth"): (31.3367, 0.8766),
    ("LBNet", "SRDTKD/DTKD-LBNet.pth"): (32.0963, 0.8919),
    ("LBNet", "SRDTKD/DTKD-LBNet-perceptual.pth"): (31.7072, 0.8856),
    ("RFDN", "MTKDSR/RFDN_x4.pth"): (32.0887, 0.8933),
    ("IMDN", "IMDN/IMDN_x4.pth"): (32.2096, 0.8948),
    ("RFDN_AIM", "RFDN/RFDN_AIM.pth"): (32.1589, 0.8946),
    ("LBNet_tiny", "LBNet/LBNet-T_X4.pt"): (32.0755, 0.8933),
    ("PAN", "PAN/PANx4_DF2K.pth"): (32.1311, 0.8948),
}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def set5_all_checkpoints(tmp_path_factory):
    """Every published checkpoint evaluated with the seed's command line into ONE output folder."""
    need(WEIGHTS)
    tmp = tmp_path_factory.mktemp("ref")
    data = link_benchmark_as_datasets2023(need(BENCHMARK), tmp / "Datasets2023", ["Set5"])
    ckroot = tmp / "Checkpoints"
    for (model, rel) in REFERENCE_SET5:
        (ckroot / model).mkdir(parents=True, exist_ok=True)
        (ckroot / model / Path(rel).name).symlink_to((WEIGHTS / rel).resolve())
    out = tmp / "Result"
    codes = {}
    torch.set_num_threads(2)
    for (model, rel) in REFERENCE_SET5:
        codes[rel] = main_for_infer.main([
            "--Train", "False", "--model_name", model, "--checkpoint", Path(rel).name,
            "--test_folder", str(data / "GTmod12_LRx4" / "Set5_LRbicx4"), "--checkpoint_root", str(ckroot),
            "--output_folder", str(out), "--no_niqe", "--quiet"] + (["--no_save"] if model.startswith("LBNet") else []))
    return out, codes


def test_reference_figures_set5_every_checkpoint(set5_all_checkpoints):
    out, codes = set5_all_checkpoints
    assert all(c == 0 for c in codes.values()), codes
    rows = read_csv(out / "summary.csv")
    assert len(rows) == len(REFERENCE_SET5)
    got = {(r["model"], r["checkpoint"]): r for r in rows}
    for (model, rel), (psnr, ssim) in REFERENCE_SET5.items():
        r = got[(model, Path(rel).name)]
        assert r["dataset"] == "Set5" and r["images"] == "5" and r["failed"] == "0"
        assert abs(float(r["psnr"]) - psnr) <= 0.01, (rel, r["psnr"], psnr)
        assert abs(float(r["ssim"]) - ssim) <= 0.0005, (rel, r["ssim"], ssim)
        assert int(r["params"]) > 0 and float(r["seconds"]) > 0


def test_two_checkpoints_keep_separate_results(set5_all_checkpoints):
    out, _ = set5_all_checkpoints
    a = read_csv(out / "DTKD-RFDN" / "Set5_LRbicx4" / "metrics.csv")
    b = read_csv(out / "DTKD-RFDN-perceptual" / "Set5_LRbicx4" / "metrics.csv")
    assert [r["image"] for r in a] == [r["image"] for r in b] == [f"{n}.png" for n in
                                                                  ("baby", "bird", "butterfly", "head", "woman")]
    assert a[0]["psnr"] != b[0]["psnr"]
    assert sorted(p.name for p in (out / "DTKD-RFDN" / "Set5_LRbicx4").glob("*.png")) == [
        "baby.png", "bird.png", "butterfly.png", "head.png", "woman.png"]


# ----------------------------------------------------------------------------- small synthetic cases

@pytest.fixture
def tiny(tmp_path):
    """A random RFDN checkpoint and a 3-image test set (LR 52x56, HR 208x224) in the Datasets2023 layout."""
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth"
    torch.save(build_model("RFDN").state_dict(), ckpt)
    lr_dir = tmp_path / "Datasets2023" / "GTmod12_LRx4" / "Toy_LRbicx4"
    gt_dir = tmp_path / "Datasets2023" / "GTmod12" / "Toy_GTmod12"
    lr_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (52, 56, 3), dtype=np.uint8)).save(lr_dir / f"{name}.png")
        Image.fromarray(rng.integers(0, 256, (208, 224, 3), dtype=np.uint8)).save(gt_dir / f"{name}.png")
    return ckpt, lr_dir, gt_dir, tmp_path / "out"


def run(ckpt: Path, folders, out: Path, *extra: str) -> int:
    return main_for_infer.main(["--Train", "False", "--model_name", "RFDN", "--checkpoint", str(ckpt),
                                "--test_folder", *map(str, folders), "--output_folder", str(out),
                                "--niqe_params", str(NIQE_PARAMS), "--quiet", *extra])


def test_outputs_layout_and_columns(tiny):
    need(NIQE_PARAMS)
    ckpt, lr_dir, _, out = tiny
    assert run(ckpt, [lr_dir], out) == 0
    res = out / "tiny" / "Toy_LRbicx4"
    assert sorted(p.name for p in res.glob("*.png")) == ["a.png", "b.png", "c.png"]
    assert np.asarray(Image.open(res / "a.png")).shape == (208, 224, 3)
    rows = read_csv(res / "metrics.csv")
    assert list(rows[0]) == ["image", "psnr", "ssim", "niqe", "lpips", "ag", "seconds"]
    assert all(float(r["psnr"]) > 0 and r["niqe"] and r["lpips"] == "" for r in rows)
    summary = read_csv(out / "summary.csv")
    assert [(r["model"], r["checkpoint"], r["dataset"], r["images"]) for r in summary] == [
        ("RFDN", "tiny.pth", "Toy", "3")]
    # evaluating again replaces that row instead of adding a duplicate
    assert run(ckpt, [lr_dir], out) == 0
    assert len(read_csv(out / "summary.csv")) == 1


def test_seed_train_flag_parsing(tiny):
    ckpt, lr_dir, _, out = tiny
    with pytest.raises(SystemExit):
        main_for_infer.main(["--Train", "maybe", "--model_name", "RFDN", "--checkpoint", str(ckpt)])
    assert run(ckpt, [lr_dir], out, "--Train", "True") == 2


def test_unknown_model_and_bad_checkpoint_exit_2(tiny, caplog):
    ckpt, lr_dir, _, out = tiny
    assert main_for_infer.main(["--model_name", "Nope", "--checkpoint", str(ckpt), "--test_folder", str(lr_dir)]) == 2
    assert "valid names" in caplog.text
    assert main_for_infer.main(["--model_name", "IMDN", "--checkpoint", str(ckpt), "--test_folder", str(lr_dir),
                                "--output_folder", str(out)]) == 2
    assert "fit preset RFDN" in caplog.text


def test_same_stem_different_checkpoints_do_not_overwrite(tiny):
    ckpt, lr_dir, _, out = tiny
    other = ckpt.parent / "other" / "tiny.pth"
    other.parent.mkdir()
    torch.manual_seed(1)
    torch.save(build_model("RFDN").state_dict(), other)
    assert run(ckpt, [lr_dir], out, "--no_niqe") == 0
    assert run(other, [lr_dir], out, "--no_niqe") == 0
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(dirs) == 2 and dirs[0] == "tiny" and dirs[1].startswith("tiny_RFDN_")
    assert len(read_csv(out / "summary.csv")) == 2


def test_folder_without_ground_truth_gets_no_reference_measures(tiny):
    need(NIQE_PARAMS)
    ckpt, lr_dir, _, out = tiny
    real = lr_dir.parent.parent / "RealSRSet"
    real.mkdir()
    for p in lr_dir.glob("*.png"):
        (real / p.name).write_bytes(p.read_bytes())
    assert run(ckpt, [real], out) == 0
    rows = read_csv(out / "tiny" / "RealSRSet" / "metrics.csv")
    assert len(rows) == 3 and all(r["psnr"] == "" and float(r["niqe"]) > 0 and float(r["ag"]) > 0 for r in rows)


# ----------------------------------------------------------------------------- bad input

def test_missing_folder(tiny, caplog):
    ckpt, lr_dir, _, out = tiny
    assert run(ckpt, [lr_dir.parent / "Nope_LRbicx4"], out, "--no_niqe") == 1
    assert "Nope_LRbicx4: folder not found" in caplog.text


def test_empty_folder(tiny, caplog):
    ckpt, lr_dir, _, out = tiny
    empty = lr_dir.parent / "Empty_LRbicx4"
    empty.mkdir()
    assert run(ckpt, [empty], out, "--no_niqe") == 1
    assert "Empty_LRbicx4: no image files" in caplog.text


def test_missing_folder_does_not_stop_the_others(tiny):
    ckpt, lr_dir, _, out = tiny
    assert run(ckpt, [lr_dir.parent / "Nope_LRbicx4", lr_dir], out, "--no_niqe") == 1
    assert len(read_csv(out / "tiny" / "Toy_LRbicx4" / "metrics.csv")) == 3


def _bad_case(tiny, caplog, make, expect: str):
    ckpt, lr_dir, gt_dir, out = tiny
    bad = make(lr_dir, gt_dir)
    code = run(ckpt, [lr_dir], out, "--no_niqe")
    rows = read_csv(out / "tiny" / "Toy_LRbicx4" / "metrics.csv")
    assert code == 1, "an image that cannot be evaluated must give a non-zero exit"
    assert sorted(r["image"] for r in rows) == ["a.png", "b.png", "c.png"], "finished results are kept"
    assert str(bad) in caplog.text and expect in caplog.text
    assert len(read_csv(out / "summary.csv")) == 1 and read_csv(out / "summary.csv")[0]["failed"] == "1"


def test_corrupt_image(tiny, caplog):
    def make(lr_dir, gt_dir):
        (gt_dir / "d.png").write_bytes((gt_dir / "a.png").read_bytes())
        (lr_dir / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return lr_dir / "d.png"
    _bad_case(tiny, caplog, make, "not a readable image")


def test_rgba_with_transparency(tiny, caplog):
    def make(lr_dir, gt_dir):
        (gt_dir / "d.png").write_bytes((gt_dir / "a.png").read_bytes())
        rgba = np.full((52, 56, 4), 128, np.uint8)
        rgba[0, 0, 3] = 0
        Image.fromarray(rgba, "RGBA").save(lr_dir / "d.png")
        return lr_dir / "d.png"
    _bad_case(tiny, caplog, make, "transparency")


def test_16bit_image(tiny, caplog):
    def make(lr_dir, gt_dir):
        (gt_dir / "d.png").write_bytes((gt_dir / "a.png").read_bytes())
        Image.fromarray(np.full((52, 56), 40000, np.uint16)).save(lr_dir / "d.png")
        return lr_dir / "d.png"
    _bad_case(tiny, caplog, make, "16-bit")


def test_size_mismatch(tiny, caplog):
    def make(lr_dir, gt_dir):
        Image.fromarray(np.zeros((200, 224, 3), np.uint8)).save(gt_dir / "d.png")
        Image.fromarray(np.zeros((52, 56, 3), np.uint8)).save(lr_dir / "d.png")
        return gt_dir / "d.png"
    _bad_case(tiny, caplog, make, "does not match the x4 LR")


def test_lr_without_ground_truth(tiny, caplog):
    """A missing ground truth is a per-image failure like the others: named, the rest evaluated, exit 1."""
    def make(lr_dir, gt_dir):
        Image.fromarray(np.zeros((52, 56, 3), np.uint8)).save(lr_dir / "nogt.png")
        return lr_dir / "nogt.png"
    _bad_case(tiny, caplog, make, "no ground truth named nogt.*")
    _, lr_dir, _, out = tiny
    assert sorted(p.name for p in (out / "tiny" / "Toy_LRbicx4").glob("*.png")) == ["a.png", "b.png", "c.png"]


def test_pairing_is_strict_unless_asked(tmp_path):
    """Training validation keeps refusing a folder with a missing ground truth (pair_images with missing_gt_fails)."""
    lr, gt = tmp_path / "lr", tmp_path / "gt"
    lr.mkdir()
    gt.mkdir()
    for n in ("a", "b"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(lr / f"{n}.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(gt / "a.png")
    with pytest.raises(ImageError, match="b.png: no ground truth named b"):
        pair_images(lr, gt)
    pairs = pair_images(lr, gt, missing_gt_fails=False)
    assert [(p.name, p.gt is not None, p.problem is None) for p in pairs] == [("a", True, True), ("b", False, False)]


def test_grayscale_and_opaque_rgba_and_stray_files_are_fine(tiny, caplog):
    ckpt, lr_dir, gt_dir, out = tiny
    Image.fromarray(np.full((52, 56), 90, np.uint8), "L").save(lr_dir / "g.png")
    Image.fromarray(np.full((208, 224), 90, np.uint8), "L").save(gt_dir / "g.png")
    Image.fromarray(np.full((52, 56, 4), 255, np.uint8), "RGBA").save(lr_dir / "o.png")
    Image.fromarray(np.full((208, 224, 3), 255, np.uint8)).save(gt_dir / "o.png")
    (lr_dir / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        assert run(ckpt, [lr_dir], out, "--no_niqe") == 0
    assert "ignoring 1 non-image file(s): notes.txt" in caplog.text
    assert len(read_csv(out / "tiny" / "Toy_LRbicx4" / "metrics.csv")) == 5


# ----------------------------------------------------------------------------- folder conventions

def test_folder_conventions(tmp_path):
    d = tmp_path / "Datasets2023"
    (d / "GTmod12_LRx4" / "Set5_LRbicx4").mkdir(parents=True)
    (d / "GTmod12" / "Set5_GTmod12").mkdir(parents=True)
    assert find_gt_folder(d / "GTmod12_LRx4" / "Set5_LRbicx4") == (d / "GTmod12" / "Set5_GTmod12").resolve()
    assert dataset_name(d / "GTmod12_LRx4" / "Set5_LRbicx4") == "Set5"
    e = tmp_path / "Set14"
    (e / "LR_bicubic" / "X4").mkdir(parents=True)
    (e / "HR").mkdir()
    assert find_gt_folder(e / "LR_bicubic" / "X4") == (e / "HR").resolve()
    assert dataset_name(e / "LR_bicubic" / "X4") == "Set14" == results_folder_name(e / "LR_bicubic" / "X4")
    assert find_gt_folder(tmp_path / "RealSRSet") is None


def test_pairs_match_names_with_and_without_suffix(tmp_path):
    lr, gt = tmp_path / "lr", tmp_path / "gt"
    lr.mkdir()
    gt.mkdir()
    for n in ("babyx4.png", "bird.png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(lr / n)
    for n in ("baby.png", "bird.bmp"):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(gt / n)
    pairs = pair_images(lr, gt)
    assert [(p.name, p.gt.name) for p in pairs] == [("baby", "baby.png"), ("bird", "bird.bmp")]
    with pytest.raises(ImageError, match="folder not found"):
        pair_images(tmp_path / "none", gt)
