"""ONNX export: the students (RFDN, LBNet) and IMDN exported from the published checkpoints run in
onnxruntime within 1e-4 of PyTorch and give the same Set5 PSNR to 0.001 dB; float16 stays within its
tolerance; a preset that cannot be exported, and bad input, fail with one line."""
from __future__ import annotations

import re

import pytest
import torch

from tests.conftest import BENCHMARK, WEIGHTS, need

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from Utils import export as ex  # noqa: E402

SET5 = BENCHMARK / "Set5"


def _set5_psnr(sr_fn) -> list[float]:
    """Per-image Y PSNR on Set5 x4 through the project's evaluation engine."""
    from Utils.evaluate import MetricOptions, evaluate_pairs, pair_images

    pairs = pair_images(need(SET5 / "LR_bicubic" / "X4"), need(SET5 / "HR"), 4)
    opts = MetricOptions(scale=4, niqe=False, ag=False)
    result = evaluate_pairs(None, pairs, opts, sr_fn=sr_fn, progress=False)
    assert not result.failures and len(result.rows) == 5
    return [r["psnr"] for r in result.rows]


@pytest.mark.parametrize("checkpoint, preset", [
    ("MTKDSR/RFDN_x4.pth", "RFDN"), ("SRDTKD/DTKD-LBNet.pth", "LBNet"), ("IMDN/IMDN_x4.pth", "IMDN")])
def test_export_runs_in_onnxruntime_with_pytorchs_set5_psnr(tmp_path, capsys, one_thread, checkpoint, preset):
    from Model import load_model
    from Utils.inference import super_resolve

    ckpt = need(WEIGHTS / checkpoint)
    out = tmp_path / f"{preset}.onnx"
    assert ex.main(["--checkpoint", str(ckpt), "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    diffs = [float(d) for d in re.findall(r"PyTorch\| = (\S+) on", printed)]
    assert len(diffs) == 2 and max(diffs) <= 1e-4, printed  # the random input and the real image
    assert f"{preset} x4 fp32" in printed

    model = load_model("auto", None, ckpt).model
    onnx_model = ex.OnnxModel(out, threads=1)
    torch_psnr = _set5_psnr(lambda x: super_resolve(model, x, scale=4))
    onnx_psnr = _set5_psnr(onnx_model)
    assert torch_psnr == pytest.approx(onnx_psnr, abs=1e-3)
    assert sum(onnx_psnr) / 5 == pytest.approx(sum(torch_psnr) / 5, abs=1e-3)


def test_fp16_export_within_its_tolerance(tmp_path, capsys, one_thread):
    ckpt = need(WEIGHTS / "MTKDSR" / "RFDN_x4.pth")
    assert ex.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "r16.onnx"), "--fp16", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    diffs = [float(d) for d in re.findall(r"PyTorch\| = (\S+) on", printed)]
    # float16 arithmetic really happened (not float32 in disguise) and stayed within the tolerance
    assert diffs and 1e-5 < max(diffs) <= ex.TOLERANCE["fp16"], printed
    import onnx

    kinds = {init.data_type for init in onnx.load(str(tmp_path / "r16.onnx")).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in kinds


def test_a_preset_that_cannot_be_exported_says_why_in_one_line(tmp_path, capsys, one_thread):
    from Model import build_model

    ckpt = tmp_path / "swinir.pth"
    torch.save(build_model("SwinIR", 4).state_dict(), ckpt)
    assert ex.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "s.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: SwinIR x4 cannot be exported to ONNX: "), err
    assert not (tmp_path / "s.onnx").exists()


def test_bad_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert ex.main(["--checkpoint", str(bad), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err, err
