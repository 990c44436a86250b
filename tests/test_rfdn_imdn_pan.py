"""RFDN, IMDN and PAN: parameter counts, checkpoint layouts, forward shapes and fidelity.

Fidelity is checked on Set5 ``butterfly`` (64x64 LR, to stay fast): the expected PSNR-Y values
were measured with each model's official implementation (Y not rounded, 4-pixel border); over
the five Set5 images the same implementations give the reference figures of
``../shared/data/README.md``, which this code reproduces as well.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from Model import get_preset
from tests.conftest import BENCHMARK, WEIGHTS, need
from Utils.image_io import img2tensor, read_image, tensor2img

PARAMS = {"RFDN": 704_560, "RFDN_AIM": 433_448, "IMDN": 715_176, "PAN": 272_419}

# checkpoint (relative to data/weights) -> (preset, x4 PSNR-Y on Set5 butterfly by the official code)
CHECKPOINTS = {
    "SRDTKD/DTKD-RFDN.pth": ("RFDN", 27.4648),
    "SRDTKD/DTKD-RFDN-perceptual.pth": ("RFDN", 27.1476),
    "MTKDSR/RFDN_x4.pth": ("RFDN", 28.2963),
    "IMDN/IMDN_x4.pth": ("IMDN", 28.5594),
    "RFDN/RFDN_AIM.pth": ("RFDN_AIM", 28.6407),
    "PAN/PANx4_DF2K.pth": ("PAN", 28.3496),
}


def _state_dict(rel: str) -> dict[str, torch.Tensor]:
    """Checkpoint as a plain state dict, DataParallel's ``module.`` prefix removed (IMDN)."""
    sd = torch.load(need(WEIGHTS / rel), map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _loaded(rel: str) -> torch.nn.Module:
    model = get_preset(CHECKPOINTS[rel][0]).build(4).eval()
    model.load_state_dict(_state_dict(rel), strict=True)
    return model


def _psnr_y(sr: np.ndarray, hr: np.ndarray, border: int = 4) -> float:
    """PSNR on unrounded BT.601 Y of uint8 RGB images, ``border`` pixels cropped, peak 255."""
    coef = np.array([65.481, 128.553, 24.966]) / 255.0
    y_sr = sr.astype(np.float64) @ coef + 16.0
    y_hr = hr.astype(np.float64) @ coef + 16.0
    diff = (y_sr - y_hr)[border:-border, border:-border]
    return float(10.0 * np.log10(255.0**2 / np.mean(diff**2)))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count(name: str) -> None:
    model = get_preset(name).build(4)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.mark.parametrize("rel", sorted(CHECKPOINTS))
def test_checkpoint_keys_and_shapes(rel: str) -> None:
    sd = _state_dict(rel)
    model = get_preset(CHECKPOINTS[rel][0]).build(4)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in sd.items()}
    assert ours == theirs
    model.load_state_dict(sd, strict=True)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_forward_odd_size(name: str) -> None:
    torch.manual_seed(0)
    model = get_preset(name).build(4).eval()
    x = torch.rand(1, 3, 17, 19)  # odd sizes; RFDN's ESA needs at least 15x15
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, 68, 76)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_backward_reaches_input_and_weights(name: str) -> None:
    """The in-place ops in the forward passes must stay autograd-safe (students are trained)."""
    torch.manual_seed(0)
    model = get_preset(name).build(4).train()
    x = torch.rand(2, 3, 16, 15, requires_grad=True)
    model(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_rfdn_aim_scales_inside() -> None:
    """img_range=255 multiplies the input and divides the output: [0, 1] in, [0, 1] out."""
    torch.manual_seed(0)
    aim = get_preset("RFDN_AIM").build(4).eval()
    raw = type(aim)(upscale=4, nf=50, img_range=1.0).eval()
    raw.load_state_dict(aim.state_dict())
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(aim(x), raw(x * 255.0) / 255.0)


@pytest.mark.parametrize("rel", sorted(CHECKPOINTS))
def test_butterfly_psnr_matches_official(rel: str) -> None:
    set5 = need(BENCHMARK / "Set5")
    model = _loaded(rel)
    lr = read_image(set5 / "LR_bicubic" / "X4" / "butterflyx4.png")
    hr = read_image(set5 / "HR" / "butterfly.png")[: 4 * lr.shape[0], : 4 * lr.shape[1]]
    with torch.no_grad():
        sr = tensor2img(model(img2tensor(lr)))
    assert _psnr_y(sr, hr) == pytest.approx(CHECKPOINTS[rel][1], abs=0.01)
