"""SwinIR: official state-dict layout, exact outputs against the official code, checkpoint filter."""
from __future__ import annotations

import json

import pytest
import torch

from Model import get_preset
from Model.swinir import SwinIR, checkpoint_filter, relative_position_index, shift_window_mask
from tests.conftest import FIXTURES, need

PRESET_KWARGS = dict(upscale=4, in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=(6, 6, 6, 6),
                     embed_dim=60, num_heads=(6, 6, 6, 6), mlp_ratio=2.0, upsampler="pixelshuffledirect",
                     resi_connection="1conv")
DERIVABLE = ("relative_position_index", "attn_mask")


@pytest.fixture(scope="module")
def swinir_s() -> SwinIR:
    return SwinIR(**PRESET_KWARGS).eval()


@pytest.fixture(scope="module")
def random_weights() -> dict:
    sd = torch.load(need(FIXTURES / "swinir_s_random_weights.pth"), map_location="cpu", weights_only=True)
    return sd.get("params", sd)


def _is_derivable(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in DERIVABLE


def test_state_dict_equals_official_keys_and_shapes(swinir_s: SwinIR) -> None:
    expected = json.loads(need(FIXTURES / "swinir_s_keys.json").read_text())
    got = {k: list(v.shape) for k, v in swinir_s.state_dict().items()}
    assert sorted(got) == sorted(expected)
    assert got == expected


def test_preset_builds_the_same_architecture(swinir_s: SwinIR) -> None:
    net = get_preset("SwinIR").build(4)
    assert isinstance(net, SwinIR)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in swinir_s.state_dict().items()}
    assert sum(p.numel() for p in net.parameters()) == 929_628


def test_reproduces_official_outputs(swinir_s: SwinIR, random_weights: dict) -> None:
    assert not any(_is_derivable(k) for k in random_weights)  # the fixture omits the derivable buffers
    swinir_s.load_state_dict(checkpoint_filter(random_weights, swinir_s), strict=True)
    io = torch.load(need(FIXTURES / "swinir_s_random_io.pth"), map_location="cpu", weights_only=True)
    assert set(io) == {"24x24", "19x27"}
    with torch.no_grad():
        for name, pair in io.items():
            out = swinir_s(pair["input"])
            assert out.shape == pair["output"].shape, name
            assert (out - pair["output"]).abs().max().item() < 1e-4, name


def test_checkpoint_filter_without_and_with_buffers(swinir_s: SwinIR, random_weights: dict) -> None:
    filled = checkpoint_filter(random_weights, swinir_s)
    assert set(filled) == set(swinir_s.state_dict())
    for key, value in random_weights.items():  # other keys pass through untouched
        assert filled[key] is value
    model = SwinIR(**PRESET_KWARGS)
    model.load_state_dict(filled, strict=True)

    full = {k: v.clone() for k, v in model.state_dict().items()}  # an export that keeps the buffers
    kept = checkpoint_filter(full, model)
    assert set(kept) == set(full) and all(kept[k] is full[k] for k in full)
    model.load_state_dict(kept, strict=True)

    partial = {k: v for k, v in full.items() if not k.endswith("attn_mask")}  # only some present
    model.load_state_dict(checkpoint_filter(partial, model), strict=True)


def test_checkpoint_filter_rejects_wrong_buffers(swinir_s: SwinIR) -> None:
    full = {k: v.clone() for k, v in swinir_s.state_dict().items()}
    key = "layers.0.residual_group.blocks.1.attn_mask"
    bad = dict(full, **{key: torch.zeros_like(full[key])})
    with pytest.raises(ValueError, match=key) as err:
        checkpoint_filter(bad, swinir_s)
    assert "\n" not in str(err.value)
    other_size = SwinIR(**dict(PRESET_KWARGS, img_size=48)).state_dict()[key]  # a mask made for 48x48
    with pytest.raises(ValueError, match="shape"):
        checkpoint_filter(dict(full, **{key: other_size}), swinir_s)
    idx = "layers.2.residual_group.blocks.0.attn.relative_position_index"
    with pytest.raises(ValueError):
        checkpoint_filter(dict(full, **{idx: full[idx].flip(0)}), swinir_s)


def test_checkpoint_filter_leaves_architecture_errors_to_strict_load(swinir_s: SwinIR, random_weights: dict) -> None:
    broken = {k: v for k, v in random_weights.items() if k != "conv_after_body.weight"}
    broken["upsample.2.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError):
        swinir_s.load_state_dict(checkpoint_filter(broken, swinir_s), strict=True)


def test_derived_buffers() -> None:
    assert relative_position_index(2).tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    # 4x4 map, window 2, shift 1: only windows touching the wrap-around are masked
    mask = shift_window_mask(4, 4, 2, 1)
    assert mask.shape == (4, 4, 4)
    assert set(mask.unique().tolist()) <= {0.0, -100.0}
    assert mask[0].eq(0).all()  # top-left window lies inside one region
    assert mask[3].ne(0).sum() == 12  # bottom-right window: four regions of one token each


def test_any_input_size_and_batch(swinir_s: SwinIR) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 11, 21)
    with torch.no_grad():
        y = swinir_s(x)
        single = swinir_s(x[1:])
        tiny = swinir_s(torch.rand(1, 3, 3, 2))  # too small to reflect: replicate padding
    assert y.shape == (2, 3, 44, 84) and tiny.shape == (1, 3, 12, 8)
    assert torch.allclose(y[1:], single, atol=1e-5)


@pytest.mark.parametrize("upsampler,resi,scale,out_hw", [
    ("pixelshuffle", "3conv", 2, (18, 22)), ("pixelshuffle", "1conv", 3, (27, 33)),
    ("nearest+conv", "1conv", 4, (36, 44)), ("", "3conv", 1, (9, 11)),
])
def test_other_configurations(upsampler: str, resi: str, scale: int, out_hw: tuple) -> None:
    net = SwinIR(upscale=scale, img_size=16, window_size=4, depths=(2,), num_heads=(2,), embed_dim=16,
                 upsampler=upsampler, resi_connection=resi).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 9, 11)).shape[-2:] == out_hw


def test_gradients_flow_in_training_mode() -> None:
    net = SwinIR(img_size=16, window_size=4, depths=(2,), num_heads=(2,), embed_dim=16).train()
    net(torch.rand(2, 3, 12, 8)).mean().backward()
    table = net.layers[0].residual_group.blocks[1].attn.relative_position_bias_table
    assert table.grad is not None and table.grad.abs().sum() > 0
