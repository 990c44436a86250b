"""x2 and x3 end to end, checkpoints that name their own preset and scale, and BasicSR's RRDBNet layout.

* IMDN x2 and x3 (the official weights in ../shared/data) on Set5 prepared by ``Utils.prepare_data``
  reproduce the IMDN paper's figures to the published precision with ``main_for_infer.py``;
* ``--model_name auto`` / ``get_model("auto", ...)`` finds the preset and scale of every checkpoint in
  ../shared/data/weights; unknown and ambiguous files fail with one line listing the candidates;
* a checkpoint asked to run at another scale says which scale it is for; a preset asked for a scale it
  is not defined for says which it is;
* a BasicSR-layout RRDBNet state dict loads into ESRGAN and gives the same output;
* training and distillation at x2: teachers and student share the scale, checked at start.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

import main_for_infer
from Model import MODELS, CheckpointFit, build_model, detect_checkpoint, get_model, load_model
from Utils.checkpoint import CheckpointError, read_state_dict
from tests.conftest import BENCHMARK, SHARED_DATA, WEIGHTS, need

IMDN_DIR = WEIGHTS / "IMDN"

# Every model checkpoint in ../shared/data/weights and what it is (data/README.md).
SHARED_CHECKPOINTS = {
    "SRDTKD/DTKD-RFDN.pth": ("RFDN", 4), "SRDTKD/DTKD-RFDN-perceptual.pth": ("RFDN", 4),
    "SRDTKD/DTKD-LBNet.pth": ("LBNet", 4), "SRDTKD/DTKD-LBNet-perceptual.pth": ("LBNet", 4),
    "MTKDSR/RFDN_x4.pth": ("RFDN", 4), "IMDN/IMDN_x4.pth": ("IMDN", 4), "IMDN/IMDN_x2.pth": ("IMDN", 2),
    "IMDN/IMDN_x3.pth": ("IMDN", 3), "RFDN/RFDN_AIM.pth": ("RFDN_AIM", 4), "LBNet/LBNet-T_X4.pt": ("LBNet_tiny", 4),
    "PAN/PANx4_DF2K.pth": ("PAN", 4),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _summary(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- IMDN x2 / x3 figures

@pytest.mark.parametrize("scale,mod,psnr,ssim", [
    (2, 2, 38.00, 0.9605),   # IMDN paper, Set5 x2
    (3, 3, 34.36, 0.9270),   # IMDN paper, Set5 x3
    (2, 12, 37.96, 0.9608),  # the seed's GTmod12 crop: not the paper's test set (documented in docs/models.md)
])
def test_imdn_reproduces_the_paper_on_set5(tmp_path, scale, mod, psnr, ssim):
    """``prepare_data --scale S --mod S`` then ``main_for_infer --model_name IMDN --checkpoint IMDN_xS.pth --scale S``."""
    from Utils import prepare_data

    ckpt = need(IMDN_DIR / f"IMDN_x{scale}.pth")
    data = tmp_path / "Datasets2023"
    assert prepare_data.main(["--hr", str(need(BENCHMARK / "Set5" / "HR")), "--scale", str(scale),
                              "--mod", "scale" if mod == scale else str(mod), "--out", str(data), "-q"]) == 0
    out = tmp_path / "Result"
    assert main_for_infer.main(["--model_name", "IMDN", "--checkpoint", str(ckpt), "--scale", str(scale),
                                "--test_datasets", "Set5", "--datasets_root", str(data), "--mod", str(mod),
                                "--output_folder", str(out), "--no_niqe", "--no_save", "--quiet"]) == 0
    (row,) = _summary(out / "summary.csv")
    assert (row["model"], row["dataset"], row["scale"], row["images"], row["failed"]) == ("IMDN", "Set5", str(scale),
                                                                                         "5", "0")
    assert round(float(row["psnr"]), 2) == psnr and round(float(row["ssim"]), 4) == ssim, row


def test_auto_finds_the_scale_of_a_named_preset_too(tmp_path):
    """Without --scale the x3 file runs at x3 (named preset or auto), on the x3 folder of --test_datasets."""
    from Utils import prepare_data

    ckpt = need(IMDN_DIR / "IMDN_x3.pth")
    data = tmp_path / "D"
    assert prepare_data.main(["--hr", str(need(BENCHMARK / "Set5" / "HR")), "--scale", "3", "--out", str(data),
                              "-q"]) == 0
    for name in ("auto", "IMDN"):
        out = tmp_path / f"R_{name}"
        assert main_for_infer.main(["--model_name", name, "--checkpoint", str(ckpt), "--test_datasets", "Set5",
                                    "--datasets_root", str(data), "--output_folder", str(out), "--no_niqe",
                                    "--quiet"]) == 0
        (row,) = _summary(out / "summary.csv")
        assert (row["model"], row["scale"]) == ("IMDN", "3")
        assert sorted(p.name for p in (out / "IMDN_x3" / "Set5_LRbicx3").glob("*.png"))[:1] == ["baby.png"]


# ----------------------------------------------------------------------------- detection

@pytest.mark.parametrize("rel", sorted(SHARED_CHECKPOINTS))
def test_auto_detects_every_shared_checkpoint(rel):
    path = need(WEIGHTS / rel)
    loaded = load_model("auto", checkpoint=path)
    assert (loaded.preset.name, loaded.scale) == SHARED_CHECKPOINTS[rel]
    assert loaded.checkpoint == path and not loaded.model.training


def test_every_shared_model_checkpoint_is_listed():
    """The table above covers every model file there (a new file needs a row)."""
    weights = need(WEIGHTS)  # skips without the shared data (rglob of a missing folder finds nothing)
    files = {str(p.relative_to(weights)) for p in weights.rglob("*") if p.suffix in (".pth", ".pt")
             and "perceptual" not in p.parts}
    assert files == set(SHARED_CHECKPOINTS)


def test_scan_prints_the_scale(capsys):
    from Model.__main__ import main

    need(IMDN_DIR)
    assert main(["--scan", str(WEIGHTS)]) == 0
    out = capsys.readouterr().out
    assert "| IMDN/IMDN_x2.pth | IMDN | x2 |" in out and "| IMDN/IMDN_x3.pth | IMDN | x3 |" in out
    assert "| perceptual/lpips/v0.1/alex.pth | no preset | - |" in out


def test_auto_bare_name_searches_the_checkpoint_folders(tmp_path):
    torch.save(build_model("IMDN", 3).state_dict(), tmp_path / "mine.pth")
    (tmp_path / "Checkpoints" / "IMDN").mkdir(parents=True)
    shutil.move(tmp_path / "mine.pth", tmp_path / "Checkpoints" / "IMDN" / "mine.pth")
    loaded = load_model("auto", checkpoint="mine.pth", checkpoint_root=tmp_path / "Checkpoints")
    assert (loaded.preset.name, loaded.scale) == ("IMDN", 3)
    with pytest.raises(CheckpointError, match=r"not found .*Checkpoints/\*/absent.pth"):
        load_model("auto", checkpoint="absent.pth", checkpoint_root=tmp_path / "Checkpoints")


@pytest.mark.parametrize("name,scale", [("RFDN", 2), ("RFDN_AIM", 3), ("LBNet_tiny", 2), ("IMDN", 3), ("PAN", 4),
                                        ("SwinIR", 3), ("EdgeSRN_small", 2), ("EdgeSRN_small", 4)])
def test_detection_of_every_family_and_scale(tmp_path, name, scale):
    torch.manual_seed(0)
    path = tmp_path / "w.pth"
    torch.save({"params": build_model(name, scale).state_dict()}, path)
    assert detect_checkpoint(read_state_dict(path), path) == CheckpointFit(name, scale, MODELS[name].convert_state_dict({})[1])
    model = get_model(name, checkpoint=path)  # the named preset takes the file's scale as well
    x = torch.rand(1, 3, 16, 18)
    assert model(x).shape == (1, 3, 16 * scale, 18 * scale)


def test_pan_x2_and_x3_share_their_shapes_and_need_the_scale(tmp_path):
    path = tmp_path / "pan.pth"
    torch.save(build_model("PAN", 3).state_dict(), path)
    for name in ("auto", "PAN"):
        with pytest.raises(CheckpointError, match="ambiguous, fits PAN x2, PAN x3 .*give the scale"):
            get_model(name, checkpoint=path)
    assert load_model("auto", 3, path).scale == 3 and load_model("PAN", 2, path).scale == 2
    with pytest.raises(CheckpointError, match="the file is for x2 / x3 \\(preset PAN x2 / PAN x3\\), not x4"):
        get_model("auto", 4, path)


def test_wrong_scale_says_which_scale_the_file_is_for(tmp_path):
    path = tmp_path / "imdn3.pth"
    torch.save(build_model("IMDN", 3).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        get_model("IMDN", 2, path)
    msg = str(err.value)
    assert str(path) in msg and "IMDN x2" in msg and "the file is for x3, not x2" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match="the file is for x3 \\(preset IMDN x3\\), not x4"):
        get_model("auto", 4, path)


def test_wrong_scale_in_main_for_infer_exits_2(tmp_path, caplog):
    path = tmp_path / "imdn3.pth"
    torch.save(build_model("IMDN", 3).state_dict(), path)
    lr = tmp_path / "lr"
    lr.mkdir()
    assert main_for_infer.main(["--model_name", "IMDN", "--checkpoint", str(path), "--scale", "2",
                                "--test_folder", str(lr), "--output_folder", str(tmp_path / "out")]) == 2
    assert "the file is for x3, not x2" in caplog.text


def test_preset_without_the_scale_is_a_clear_error():
    with pytest.raises(ValueError, match="ESRGAN is defined for x2, x4, not x3"):
        build_model("ESRGAN", 3)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        get_model("auto")


def test_unknown_file_lists_the_candidates(tmp_path):
    path = tmp_path / "rfdn48.pth"
    torch.save(build_model("RFDN", 4).state_dict() | {"fea_conv.weight": torch.zeros(48, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError) as err:
        get_model("auto", checkpoint=path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: fits no preset") and "candidates: RFDN" in msg and "RFDN_AIM" in msg
    assert "\n" not in msg


def test_ambiguous_file_lists_the_candidates(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "RFDN_twin", dataclasses.replace(MODELS["RFDN"], name="RFDN_twin"))
    path = tmp_path / "rfdn.pth"
    torch.save(build_model("RFDN", 2).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        get_model("auto", checkpoint=path)
    assert "ambiguous, fits RFDN x2, RFDN_twin x2" in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- BasicSR RRDBNet layout

def to_basicsr(state_dict: dict) -> dict:
    """Our (original ESRGAN) names -> BasicSR's RRDBNet names, as docs/models.md documents the renaming."""
    renames = [(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", r"body.\1.rdb\2."), (r"^trunk_conv\.", "conv_body."),
               (r"^upconv1\.", "conv_up1."), (r"^upconv2\.", "conv_up2."), (r"^HRconv\.", "conv_hr.")]
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


@pytest.mark.parametrize("scale", [4, 2])
def test_basicsr_layout_loads_into_esrgan_with_the_same_output(tmp_path, caplog, scale):
    torch.manual_seed(1)
    ours = build_model("ESRGAN", scale).eval()
    sd = to_basicsr(ours.state_dict())
    assert {"conv_first.weight", "body.22.rdb3.conv5.bias", "conv_body.weight", "conv_up1.weight", "conv_up2.bias",
            "conv_hr.weight", "conv_last.bias"} <= set(sd) and not any(k.startswith("RRDB_trunk") for k in sd)
    path = tmp_path / "esrgan_basicsr.pth"
    torch.save({"params_ema": sd}, path)  # BasicSR releases keep the weights under params(_ema)
    with caplog.at_level(logging.INFO):
        loaded = load_model("ESRGAN", checkpoint=path)
    assert "ESRGAN: checkpoint keys in the BasicSR layout" in caplog.text
    assert (loaded.scale, loaded.layout) == (scale, "BasicSR")
    x = torch.rand(1, 3, 12, 15)  # odd width: the x2 model pads before its pixel-unshuffle
    with torch.no_grad():
        assert torch.equal(loaded.model(x), ours(x))
    assert detect_checkpoint(read_state_dict(path)) == CheckpointFit("ESRGAN", scale, "BasicSR")


def test_basicsr_layout_is_checked_strictly_after_conversion(tmp_path):
    sd = to_basicsr(build_model("EdgeSRN_small", 4).state_dict())
    sd["body.0.rdb1.conv9.weight"] = torch.zeros(1)
    del sd["conv_hr.bias"]
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        get_model("EdgeSRN_small", 4, path)
    msg = str(err.value)
    assert "1 missing: HRconv.bias" in msg and "1 unexpected: RRDB_trunk.0.RDB1.conv9.weight" in msg
    assert "keys read in the BasicSR layout" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- training and DTKD at x2

T91 = SHARED_DATA / "train" / "T91"
SMALL = ("t20", "t24", "t9", "t12")  # the four smallest T91 images


@pytest.fixture(scope="module")
def x2_data(tmp_path_factory) -> dict:
    """Four small T91 HR images (LR made at x2 on the fly) and Set5 at x2 (mod 2) for validation."""
    from Utils import prepare_data

    need(IMDN_DIR / "IMDN_x2.pth")
    root = tmp_path_factory.mktemp("x2")
    (root / "HR").mkdir()
    for stem in SMALL:
        shutil.copy(need(T91 / "HR" / f"{stem}.bmp"), root / "HR")
    assert prepare_data.main(["--hr", str(need(BENCHMARK / "Set5" / "HR")), "--scale", "2", "--mod", "2",
                              "--out", str(root / "D"), "-q"]) == 0
    return {"hr": root / "HR", "valid": root / "D" / "GTmod2_LRx2" / "Set5_LRbicx2", "cache": root / "cache"}


def _train_argv(data: dict, exp: Path, *extra: str) -> list[str]:
    return ["--model_name", "RFDN", "--scale", "2", "--patch_size", "64", "--batch_size", "2", "--iters", "2",
            "--num_workers", "0", "--save_every", "1000", "--quiet", "--train_hr", str(data["hr"]),
            "--cache_dir", str(data["cache"]), "--experiments_root", str(exp), "--valid_dataset", str(data["valid"]),
            "--test_every", "2", *extra]


def test_dtkd_at_x2_end_to_end(x2_data, tmp_path):
    """Student RFDN x2, IMDN x2 teacher (cached), x2 validation; the weights reload as RFDN x2."""
    import main

    argv = _train_argv(x2_data, tmp_path, "--name", "dtkd2", "--train_by_TT", "True", "--t1_model_name", "IMDN",
                       "--t1_checkpoint", str(IMDN_DIR / "IMDN_x2.pth"), "--t2_checkpoint", "",
                       "--teacher_cache", str(tmp_path / "tcache"))
    assert main.main(argv) == 0
    with open(tmp_path / "dtkd2" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["val_psnr"]) > 0  # validated at x2 on Set5 (a mismatch of scales would have failed)
    cached = sorted((tmp_path / "tcache").rglob("*.npy"))
    assert len(cached) == len(SMALL)
    assert (load_model("auto", checkpoint=tmp_path / "dtkd2" / "weights" / "final.pth").preset.name,
            load_model("auto", checkpoint=tmp_path / "dtkd2" / "weights" / "final.pth").scale) == ("RFDN", 2)


@pytest.mark.parametrize("flag,file", [("--t1_checkpoint", "IMDN_x4.pth"), ("--checkpoint", "IMDN_x4.pth")])
def test_teacher_or_student_at_another_scale_fails_at_start(x2_data, tmp_path, caplog, flag, file):
    import main

    extra = ["--train_by_TT", "True", "--t1_model_name", "IMDN", "--t1_checkpoint", str(IMDN_DIR / "IMDN_x2.pth"),
             "--t2_checkpoint", ""]
    if flag == "--checkpoint":
        extra = ["--model_name", "IMDN", "--checkpoint", str(need(IMDN_DIR / file))]
    else:
        extra[extra.index(flag) + 1] = str(need(IMDN_DIR / file))
    assert main.main(_train_argv(x2_data, tmp_path, "--name", "bad", *extra)) == 1
    assert "the file is for x4, not x2" in caplog.text
    assert not (tmp_path / "bad" / "log.csv").exists()


# ----------------------------------------------------------------------------- data preparation and comparison

def test_prepare_data_names_every_scale(tmp_path):
    import numpy as np
    from PIL import Image

    from Utils import prepare_data

    rng = np.random.default_rng(0)
    hr = tmp_path / "Toy" / "HR"
    hr.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(hr / "0001.png")
    out = tmp_path / "D"
    assert prepare_data.main(["--hr", str(hr), "--scale", "2", "3", "--out", str(out), "-q"]) == 0
    assert prepare_data.main(["--hr", str(hr), "--scale", "2", "3", "--mod", "scale", "--out", str(out), "-q"]) == 0
    sizes = {str(p.relative_to(out)): Image.open(p).size for p in sorted(out.rglob("*.png"))}
    assert sizes == {"GT/Toy/0001.png": (52, 40), "GTmod12/Toy_GTmod12/0001.png": (48, 36),
                     "GTmod12_LRx2/Toy_LRbicx2/0001.png": (24, 18), "GTmod12_LRx3/Toy_LRbicx3/0001.png": (16, 12),
                     "GTmod2/Toy_GTmod2/0001.png": (52, 40), "GTmod2_LRx2/Toy_LRbicx2/0001.png": (26, 20),
                     "GTmod3/Toy_GTmod3/0001.png": (51, 39), "GTmod3_LRx3/Toy_LRbicx3/0001.png": (17, 13)}
    assert prepare_data.main(["--div2k_hr", str(hr), "--scale", "2", "3", "-q"]) == 0
    lr = tmp_path / "Toy" / "LR_bicubic"
    assert sorted(str(p.relative_to(lr)) for p in lr.rglob("*.png")) == ["X2/0001x2.png", "X3/0001x3.png"]
    from Utils.evaluate import find_gt_folder

    assert find_gt_folder(out / "GTmod3_LRx3" / "Toy_LRbicx3") == (out / "GTmod3" / "Toy_GTmod3").resolve()
    assert find_gt_folder(lr / "X3") == hr.resolve()


def test_compare_names_the_scale_when_summaries_mix_scales(tmp_path):
    from Utils.compare import load_summaries
    from Utils.evaluate import SUMMARY_COLUMNS, write_rows_csv

    def row(ckpt, scale):
        return {"model": "IMDN", "checkpoint": ckpt, "dataset": "Set5", "scale": scale, "images": 5, "failed": 0,
                "psnr": 30.0, "ssim": 0.9, "params": 1, "seconds": 1.0, "sha256": ckpt * 8, "results": "r"}

    write_rows_csv(tmp_path / "a.csv", [row("x2", 2), row("x4", 4)], SUMMARY_COLUMNS)
    assert [r["dataset"] for r in load_summaries([tmp_path / "a.csv"])] == ["Set5 x2", "Set5 x4"]
    # a summary written before the scale column existed is x4
    write_rows_csv(tmp_path / "old.csv", [row("x4", 4)], [c for c in SUMMARY_COLUMNS if c != "scale"])
    assert [(r["dataset"], r["scale"]) for r in load_summaries([tmp_path / "old.csv"])] == [("Set5", 4)]


@pytest.mark.parametrize("scale", [2, 3])
def test_download_catalogue_has_the_imdn_x2_x3_sums(tmp_path, scale):
    from Utils import download as dl

    src = need(IMDN_DIR / f"IMDN_x{scale}.pth")
    dest = dl.entry_path(f"IMDN-x{scale}", tmp_path)
    assert dest == tmp_path / "Checkpoints" / "IMDN" / f"IMDN_x{scale}.pth"
    dest.parent.mkdir(parents=True)
    dest.symlink_to(src.resolve())
    assert dl.entry_status(f"IMDN-x{scale}", tmp_path) == "verified"
    assert dl.entry_path(f"DIV2K_train_LR_bicubic_X{scale}", tmp_path).name == f"DIV2K_train_LR_bicubic_X{scale}.zip"
