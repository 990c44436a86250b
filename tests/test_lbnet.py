"""LBNet / LBNet-T: checkpoint compatibility and arbitrary-size forward."""
from __future__ import annotations

import pytest
import torch

from Model.lbnet import LBNet, chunked_attention
from tests.conftest import WEIGHTS, need

PRESETS = {"LBNet": dict(num_feat=32, num_head=8), "LBNet_tiny": dict(num_feat=18, num_head=6)}
CHECKPOINTS = [
    ("LBNet", "SRDTKD/DTKD-LBNet.pth", 741_668),
    ("LBNet", "SRDTKD/DTKD-LBNet-perceptual.pth", 741_668),
    ("LBNet_tiny", "LBNet/LBNet-T_X4.pt", 410_501),
]


@pytest.mark.parametrize("preset,ckpt,n_params", CHECKPOINTS)
def test_state_dict_matches_checkpoint(preset: str, ckpt: str, n_params: int) -> None:
    state = torch.load(need(WEIGHTS / ckpt), map_location="cpu", weights_only=True)
    model = LBNet(upscale=4, **PRESETS[preset])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == n_params == sum(v.numel() for v in state.values())
    model.load_state_dict(state, strict=True)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_odd_size_forward(preset: str) -> None:
    torch.manual_seed(0)
    model = LBNet(upscale=4, **PRESETS[preset]).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 19, 27))
    assert out.shape == (1, 3, 76, 108)
    assert torch.isfinite(out).all()


def test_chunked_attention_matches_loop() -> None:
    """Fused chunked attention equals attention run run-by-run (incl. the short last run)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 37, 3, 5) for _ in range(3))  # 37 tokens, runs of 2 -> 18 full + 1
    got = chunked_attention(q, k, v, chunk=2, scale=0.3)
    parts = []
    for s in range(0, 37, 2):
        qs, ks, vs = (t[:, s:s + 2].transpose(1, 2) for t in (q, k, v))
        att = ((qs @ ks.transpose(-2, -1)) * 0.3).softmax(-1)
        parts.append((att @ vs).transpose(1, 2))
    want = torch.cat(parts, 1).reshape(2, 37, 15)
    torch.testing.assert_close(got, want)
