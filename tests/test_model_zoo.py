"""Registry, checkpoint loader and every preset's forward/backward."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from Model import MODELS, CheckpointFit, build_model, checkpoint_fits, get_model, get_preset
from Model.profile import count_multi_adds, count_params, preset_profile
from Utils.checkpoint import CheckpointError, atomic_save, canonicalize_state_dict, load_weights, resolve_checkpoint
from tests.conftest import WEIGHTS, need

# DESIGN.md section 3 (SwinIR-S: the official count of the lightweight x4 model).
EXPECTED_PARAMS = {
    "RFDN": 704_560, "RFDN_AIM": 433_448, "LBNet": 741_668, "LBNet_tiny": 410_501, "IMDN": 715_176,
    "EdgeSRN": 7_345_475, "EdgeSRN_small": 398_755, "ESRGAN": 16_697_987, "PAN": 272_419, "SwinIR": 929_628,
}

# Each published checkpoint and the preset it belongs to (data/README.md).
CHECKPOINTS = {
    "SRDTKD/DTKD-RFDN.pth": "RFDN", "SRDTKD/DTKD-RFDN-perceptual.pth": "RFDN",
    "SRDTKD/DTKD-LBNet.pth": "LBNet", "SRDTKD/DTKD-LBNet-perceptual.pth": "LBNet",
    "MTKDSR/RFDN_x4.pth": "RFDN", "IMDN/IMDN_x4.pth": "IMDN", "RFDN/RFDN_AIM.pth": "RFDN_AIM",
    "LBNet/LBNet-T_X4.pt": "LBNet_tiny", "PAN/PANx4_DF2K.pth": "PAN",
}


def test_registry_names_and_unknown_name():
    assert set(EXPECTED_PARAMS) == set(MODELS)
    assert get_preset("rfdn").name == "RFDN" and get_preset("LBNET_TINY").name == "LBNet_tiny"
    with pytest.raises(KeyError) as err:
        get_model("NoSuchNet")
    msg = str(err.value)
    assert "NoSuchNet" in msg and all(name in msg for name in MODELS)


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_param_counts(name):
    assert preset_profile(name)["params"] == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_and_backward_reach_every_parameter(name):
    torch.manual_seed(0)
    model = build_model(name).train()
    x = torch.rand(1, 3, 16, 20)
    y = model(x)
    assert y.shape == (1, 3, 64, 80) and torch.isfinite(y).all()
    y.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"


def test_get_model_returns_eval_mode():
    assert not get_model("IMDN").training


def test_multi_adds_counts_real_operations():
    # One 3x3 conv 3->8 on a 10x10 input: 10*10*8*3*3*3 multiply-adds.
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert count_multi_adds(conv, (10, 10)) == 10 * 10 * 8 * 27
    assert count_params(conv) == 8 * 27 + 8
    # RFDN (nf 50, the AIM model) is reported with about 27 G Multi-Adds at 1280x720 output... ours counts
    # convs, so it must land in that range, and a bigger output costs proportionally more.
    small = preset_profile("RFDN_AIM", out_hw=(360, 640))["multi_adds"]
    big = preset_profile("RFDN_AIM")["multi_adds"]
    assert 20e9 < big < 30e9 and big == pytest.approx(4 * small, rel=1e-2)  # ESA pools: not exactly 4


# ---------------------------------------------------------------- checkpoint loader

def _tiny_state(name: str = "RFDN") -> dict:
    return build_model(name).state_dict()


@pytest.mark.parametrize("wrap", ["raw", "params", "params_ema", "state_dict", "model", "module.", "_orig_mod.",
                                  "nested"])
def test_canonicalize_wrappers_and_prefixes(wrap, tmp_path):
    sd = _tiny_state()
    if wrap in ("params", "params_ema", "state_dict", "model"):
        obj = {wrap: sd, "iter": 5}
    elif wrap in ("module.", "_orig_mod."):
        obj = {wrap + k: v for k, v in sd.items()}
    elif wrap == "nested":
        obj = {"model": {"module." + k: v for k, v in sd.items()}}
    else:
        obj = sd
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = get_model("RFDN", checkpoint=path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k])


def test_prefers_ema_weights():
    sd = _tiny_state()
    ema = {k: v + 1 for k, v in sd.items()}
    assert torch.equal(canonicalize_state_dict({"params": sd, "params_ema": ema})["fea_conv.bias"],
                       ema["fea_conv.bias"])


def test_bare_name_resolves_to_checkpoints_folder(tmp_path):
    (tmp_path / "RFDN").mkdir()
    torch.save(_tiny_state(), tmp_path / "RFDN" / "mine.pth")
    assert resolve_checkpoint("mine.pth", "RFDN", tmp_path) == tmp_path / "RFDN" / "mine.pth"
    get_model("rfdn", checkpoint="mine.pth", checkpoint_root=tmp_path)


def test_error_file_not_found_says_where_it_looked(tmp_path):
    with pytest.raises(CheckpointError) as err:
        get_model("RFDN", checkpoint="absent.pth", checkpoint_root=tmp_path)
    msg = str(err.value)
    assert "not found" in msg and str(tmp_path / "RFDN" / "absent.pth") in msg and "\n" not in msg


def test_error_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        get_model("RFDN", checkpoint=bad)
    assert str(bad) in str(err.value) and "not a PyTorch checkpoint" in str(err.value)
    assert "\n" not in str(err.value)


def test_error_not_a_checkpoint_pickle_of_object(tmp_path):
    bad = tmp_path / "list.pth"
    torch.save([1, 2, 3], bad)
    with pytest.raises(CheckpointError, match="not a state dict"):
        get_model("RFDN", checkpoint=bad)


def test_error_keys_of_another_architecture_names_the_fitting_preset(tmp_path):
    path = tmp_path / "imdn_like.pth"
    torch.save({"module." + k: v for k, v in _tiny_state("IMDN").items()}, path)
    with pytest.raises(CheckpointError) as err:
        get_model("RFDN", checkpoint=path)
    msg = str(err.value)
    assert str(path) in msg and "missing" in msg and "unexpected" in msg and "fit preset IMDN" in msg
    assert "\n" not in msg


def test_error_same_keys_other_shapes(tmp_path):
    path = tmp_path / "aim.pth"
    torch.save(_tiny_state("RFDN_AIM"), path)
    with pytest.raises(CheckpointError) as err:
        get_model("RFDN", checkpoint=path)
    assert "other shape" in str(err.value) and "RFDN_AIM" in str(err.value)


def test_atomic_save_roundtrip_and_no_temp_left(tmp_path):
    path = atomic_save({"a": torch.ones(2)}, tmp_path / "sub" / "x.pth")
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["x.pth"]


# ---------------------------------------------------------------- published checkpoints

@pytest.mark.parametrize("rel,preset", list(CHECKPOINTS.items()))
def test_published_checkpoint_loads_strictly_and_is_detected(rel, preset):
    path = need(WEIGHTS / rel)
    model = get_model(preset, checkpoint=path)
    assert count_params(model) == EXPECTED_PARAMS[preset]
    from Utils.checkpoint import read_state_dict

    assert checkpoint_fits(read_state_dict(path)) == [CheckpointFit(preset, 4)]


def test_scan_command_lists_presets(capsys):
    from Model.__main__ import main

    need(WEIGHTS / "SRDTKD")
    assert main(["--scan", str(WEIGHTS)]) == 0
    out = capsys.readouterr().out
    assert "| SRDTKD/DTKD-RFDN.pth | RFDN | x4 |" in out and "| LBNet/LBNet-T_X4.pt | LBNet_tiny | x4 |" in out


def test_load_weights_returns_resolved_path(tmp_path):
    shutil.rmtree(tmp_path, ignore_errors=True)
    (tmp_path / "PAN").mkdir(parents=True)
    torch.save(_tiny_state("PAN"), tmp_path / "PAN" / "p.pth")
    model = build_model("PAN")
    assert load_weights(model, "p.pth", get_preset("PAN"), tmp_path) == tmp_path / "PAN" / "p.pth"
