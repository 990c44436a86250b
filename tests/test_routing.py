"""Utils.routing: entropies of hand-built patches, the router, the gate option."""
from __future__ import annotations

import argparse

import pytest
import torch

from Utils.routing import (EntropyRouter, GateValueError, RoutingStats, auto_gate, gray_entropy, gray_levels,
                           parse_gate, routing_stats)


def flat(value: float = 0.4, size: int = 16) -> torch.Tensor:
    return torch.full((3, size, size), value)


def ramp() -> torch.Tensor:
    """16x16 gray ramp 0..255 in all channels: every level once -> 8 bits."""
    levels = torch.arange(256, dtype=torch.float32).view(16, 16) / 255.0
    return levels.expand(3, 16, 16).clone()


def two_levels() -> torch.Tensor:
    """Half black, half white -> 1 bit."""
    x = torch.zeros(3, 16, 16)
    x[:, 8:] = 1.0
    return x


def four_levels() -> torch.Tensor:
    """Four equally frequent gray levels -> 2 bits."""
    x = torch.zeros(3, 16, 16)
    for k in range(4):
        x[:, 4 * k:4 * (k + 1)] = 85 * k / 255.0
    return x


def test_known_entropies() -> None:
    batch = torch.stack([flat(), ramp(), two_levels(), four_levels(), flat(0.0)])
    ent = gray_entropy(batch)
    assert ent.dtype == torch.float32 and ent.shape == (5,)
    assert ent.tolist() == pytest.approx([0.0, 8.0, 1.0, 2.0, 0.0], abs=1e-6)
    assert gray_entropy(ramp()).tolist() == pytest.approx([8.0], abs=1e-6)  # CHW accepted
    u8 = (ramp() * 255).round().to(torch.uint8).unsqueeze(0)
    assert gray_entropy(u8).item() == pytest.approx(8.0, abs=1e-6)


def test_gray_formula() -> None:
    rgb = torch.eye(3).view(3, 3, 1, 1)  # pure red, green, blue
    assert gray_levels(rgb).flatten().tolist() == [76, 150, 29]  # round(255 * (0.299, 0.587, 0.114))
    assert gray_levels((rgb * 255).to(torch.uint8)).flatten().tolist() == [76, 150, 29]
    assert gray_levels(torch.full((1, 3, 1, 1), 1.2)).item() == 255  # clamped
    with pytest.raises(ValueError, match="RGB"):
        gray_levels(torch.zeros(1, 1, 4, 4))


def test_router_by_gate() -> None:
    batch = torch.stack([flat(), ramp(), two_levels(), four_levels()])
    router = EntropyRouter(1.5)
    assert router.enabled
    assert router.route(batch).tolist() == [False, True, False, True]
    masks = router.masks(batch)
    assert masks.fidelity.tolist() == [True, False, True, False]
    assert masks.entropy.tolist() == pytest.approx([0, 8, 1, 2], abs=1e-6)
    # strictly above the gate
    assert EntropyRouter(1.0).route(batch).tolist() == [False, True, False, True]
    assert EntropyRouter(0.999).route(batch).tolist() == [False, True, True, True]
    assert routing_stats(masks) == pytest.approx({"frac_perceptual": 0.5, "frac_fidelity": 0.5,
                                                  "entropy_mean": 2.75})


def test_router_disabled() -> None:
    router = EntropyRouter(None)
    assert not router.enabled
    masks = router.masks(torch.stack([flat(), ramp(), two_levels()]))
    assert masks.perceptual.tolist() == [True] * 3 and masks.fidelity.tolist() == [True] * 3
    assert masks.entropy is None
    assert routing_stats(masks) == {"frac_perceptual": 1.0, "frac_fidelity": 1.0}


def test_running_stats() -> None:
    router = EntropyRouter(1.5)
    stats = RoutingStats()
    assert stats.summary() == {"frac_perceptual": 0.0, "frac_fidelity": 0.0}
    stats.update(router.masks(torch.stack([flat(), ramp()])))
    stats.update(router.masks(torch.stack([two_levels(), flat(), ramp(), ramp()])))
    got = stats.summary()
    assert got["frac_perceptual"] == pytest.approx(3 / 6)
    assert got["frac_fidelity"] == pytest.approx(3 / 6)
    assert got["entropy_mean"] == pytest.approx(25 / 6, abs=1e-6)
    stats.reset()
    assert stats.summary()["frac_perceptual"] == 0.0


@pytest.mark.parametrize("text, want", [("auto", "auto"), ("AUTO", "auto"), (" auto ", "auto"), ("none", None),
                                        ("None", None), ("4.5", 4.5), ("0", 0.0), ("8", 8.0), (6, 6.0)])
def test_parse_gate_good(text, want) -> None:
    assert parse_gate(text) == want


@pytest.mark.parametrize("text", ["abc", "", "-1", "8.5", "nan", "inf", "4 bits"])
def test_parse_gate_bad(text: str) -> None:
    with pytest.raises(ValueError, match="entropy gate"):
        parse_gate(text)


def test_parse_gate_in_argparse(capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entropy_gate", type=parse_gate, default="auto")
    assert parser.parse_args([]).entropy_gate == "auto"
    assert parser.parse_args(["--entropy_gate", "5.25"]).entropy_gate == 5.25
    assert parser.parse_args(["--entropy_gate", "none"]).entropy_gate is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--entropy_gate", "lots"])
    assert "entropy gate must be 'auto', 'none' or a number" in capsys.readouterr().err
    assert issubclass(GateValueError, ValueError)


def test_auto_gate_is_median() -> None:
    patches = [flat(), ramp(), two_levels()]  # 0, 8, 1 -> 1
    assert auto_gate(patches) == pytest.approx(1.0)
    assert auto_gate([flat(), ramp(), two_levels(), four_levels()]) == pytest.approx(1.5)  # mean of 1 and 2
    assert auto_gate(patches, n=2) == pytest.approx(4.0)  # only 0 and 8
    # loader batches (dicts of Bx3xHxW) and (lr, hr) pairs; each sample counts
    batches = [{"lr": None, "hr": torch.stack([flat(), ramp()])}, {"hr": torch.stack([two_levels()] * 3)}]
    assert auto_gate(batches) == pytest.approx(1.0)
    assert auto_gate(iter([(None, ramp()), (None, ramp()), (None, flat())])) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="no patches"):
        auto_gate([])
    with pytest.raises(KeyError, match="hr"):
        auto_gate([{"gt": ramp()}])
