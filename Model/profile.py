"""Parameter and Multi-Adds counts, measured from the network's actual operations.

Multi-Adds are counted by running the network under ``torch.utils.flop_counter.FlopCounterMode``
(a dispatcher-level tracer that sees every convolution, matmul and attention op actually executed)
on the meta device, so even ESRGAN at 1280x720 is counted in a fraction of a second without
computing anything. FLOPs counts a multiply-add as 2, so Multi-Adds = FLOPs / 2. Element-wise
operations (activations, additions, normalisation) are not counted, as in the SR literature.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers excluded), as the papers report them."""
    return sum(p.numel() for p in model.parameters())


def count_multi_adds(model: nn.Module, lr_hw: tuple[int, int], in_ch: int = 3) -> int:
    """Multi-Adds of one forward pass on a 1 x in_ch x H x W input, counted on the meta device."""
    meta = model.to("meta") if next(model.parameters()).device.type != "meta" else model
    x = torch.zeros(1, in_ch, *lr_hw, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(x)
    return counter.get_total_flops() // 2


def preset_profile(name: str, scale: int = 4, out_hw: tuple[int, int] = (720, 1280)) -> dict:
    """Params and Multi-Adds (for an ``out_hw`` output) of a registry preset."""
    from Model import get_preset

    preset = get_preset(name)
    model = preset.build_meta(scale).eval()
    lr_hw = (out_hw[0] // scale, out_hw[1] // scale)
    return {"model": preset.name, "role": preset.role, "params": count_params(model),
            "multi_adds": count_multi_adds(model, lr_hw), "out_hw": out_hw}


def profile_table(names: Iterable[str], scale: int = 4, out_hw: tuple[int, int] = (720, 1280)) -> list[dict]:
    """Profiles of several presets, in order."""
    return [preset_profile(n, scale, out_hw) for n in names]
