"""The inference helper: padding, tiling and precision selection."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

from Model import build_model
from Utils.inference import pad_to_multiple, resolve_amp, super_resolve


class _SizeRecorder(nn.Module):
    """x4 nearest upsampler that records the input sizes it was given."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.seen: list[tuple[int, int]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        return nn.functional.interpolate(x, scale_factor=4, mode="nearest") * self.w


def test_pad_to_multiple_mirrors_and_keeps_content():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    y = pad_to_multiple(x, 8)
    assert y.shape == (2, 3, 8, 8)
    assert torch.equal(y[..., :5, :7], x)
    assert torch.equal(y[..., 5, :7], x[..., 4, :7])  # the flip continues with the last row
    assert pad_to_multiple(x, 1) is x


def test_padding_is_cropped_back():
    rec = _SizeRecorder()
    x = torch.rand(1, 3, 19, 27)
    out = super_resolve(rec, x, scale=4, pad_multiple=8)
    assert rec.seen == [(24, 32)] and out.shape == (1, 3, 76, 108)
    assert torch.equal(out, nn.functional.interpolate(x, scale_factor=4, mode="nearest"))


def test_tiles_equal_whole_image_for_a_local_model():
    torch.manual_seed(0)
    # Receptive field of two 3x3 convs is 5x5: an overlap of 8 LR pixels makes tiling exact.
    model = nn.Sequential(nn.Conv2d(3, 48, 3, padding=1), nn.ReLU(), nn.Conv2d(48, 48, 3, padding=1),
                          nn.PixelShuffle(4)).eval()
    x = torch.rand(1, 3, 45, 61)
    whole = super_resolve(model, x)
    tiled = super_resolve(model, x, tile=16, tile_overlap=8)
    assert tiled.shape == whole.shape
    # seams sit mid-overlap, 4 LR pixels from any tile border: more than the receptive radius of 2
    assert torch.allclose(tiled, whole, atol=1e-6)


def test_tiles_with_a_real_preset_and_padding():
    torch.manual_seed(0)
    model = build_model("RFDN").eval()
    x = torch.rand(1, 3, 40, 52)
    whole = super_resolve(model, x)
    tiled = super_resolve(model, x, tile=24, tile_overlap=16)
    assert tiled.shape == whole.shape == (1, 3, 160, 208)
    assert (tiled - whole).abs().mean() < 2e-3  # RFDN's ESA has a large receptive field: close, not equal


def test_tile_overlap_must_be_smaller_than_tile():
    with pytest.raises(ValueError, match="overlap"):
        super_resolve(_SizeRecorder(), torch.rand(1, 3, 40, 40), tile=16, tile_overlap=16)


def test_resolve_amp(caplog):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_amp("bf16", cpu) is None  # autocast only on CUDA
    assert resolve_amp(None, cuda) is None
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_amp("int8", cpu)
    if torch.cuda.is_available():
        with caplog.at_level(logging.WARNING):
            assert resolve_amp("fp16", cuda, half_ok=False) in (torch.bfloat16, None)
        assert "float16" in caplog.text
