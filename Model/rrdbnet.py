"""RRDBNet with the original ESRGAN key names: the EdgeSRN (10 blocks) and ESRGAN (23 blocks) presets.

Architecture (Wang et al., ESRGAN, ECCVW 2018): a 3x3 head conv, a trunk of Residual-in-Residual
Dense Blocks, a trunk conv with a long skip, two nearest-neighbour x2 upsampling convs, and two
output convs. Keys: ``conv_first, RRDB_trunk.N.RDBk.convj, trunk_conv, upconv1, upconv2, HRconv,
conv_last`` so the official ESRGAN and the SRDTKD EdgeSRN checkpoints load strictly.

BasicSR's ``RRDBNet`` is the same network under other names (``body.N.rdbk.convj``, ``conv_body``,
``conv_up1``, ``conv_up2``, ``conv_hr``); :func:`convert_state_dict` renames such a state dict to
ours (every other key passes through untouched, so the strict load still checks it). x2 follows
BasicSR too: the input is pixel-unshuffled by 2 (``conv_first`` takes 12 channels) and the same
two x2 up-convs follow, so BasicSR x2 RRDBNet files load as well. x3 is not defined.

The SRDTKD release of EdgeSRN evaluates the trunk twice per forward and keeps one result; here it
is evaluated once, which gives the same output at about half the cost.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F


def _scaled_kaiming_(module: nn.Module, scale: float) -> None:
    """Kaiming-normal init of every conv in ``module`` multiplied by ``scale``; zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            m.weight.data.mul_(scale)
            if m.bias is not None:
                m.bias.data.zero_()


class ResidualDenseBlock5C(nn.Module):
    """Five densely connected 3x3 convs; the output is scaled by 0.2 and added to the input."""

    def __init__(self, nf: int = 64, gc: int = 32, bias: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1, bias=bias)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1, bias=bias)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1, bias=bias)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1, bias=bias)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1, bias=bias)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        _scaled_kaiming_(self, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual in Residual Dense Block: three dense blocks and a 0.2-scaled skip."""

    def __init__(self, nf: int, gc: int = 32):
        super().__init__()
        self.RDB1 = ResidualDenseBlock5C(nf, gc)
        self.RDB2 = ResidualDenseBlock5C(nf, gc)
        self.RDB3 = ResidualDenseBlock5C(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


SCALES = (2, 4)  # x4: two x2 up-convs; x2: BasicSR's pixel-unshuffle by 2 in front of them


class RRDBNet(nn.Module):
    """ESRGAN generator (old key layout). Input and output RGB in [0, 1]; x4, or x2 as in BasicSR."""

    def __init__(self, upscale: int = 4, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 23,
                 gc: int = 32):
        super().__init__()
        if upscale not in SCALES:
            raise ValueError(f"RRDBNet supports x4 (two x2 up-convs) and x2 (BasicSR's pixel-unshuffle), "
                             f"not x{upscale}")
        self.upscale = upscale
        self.unshuffle = 4 // upscale  # the input is pixel-unshuffled by this factor (1: not at all)
        self.conv_first = nn.Conv2d(in_nc * self.unshuffle ** 2, nf, 3, 1, 1, bias=True)
        self.RRDB_trunk = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.upconv1 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.upconv2 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1, bias=True)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.unshuffle > 1:  # x2: H and W must be even; pad the odd side by one pixel, crop it off after
            ph, pw = h % 2, w % 2
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > 1 else "replicate")
            x = F.pixel_unshuffle(x, self.unshuffle)
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.RRDB_trunk(fea))  # trunk evaluated once
        # On the CPU the upsampling stage (64-channel convs at 2x and 4x the input size) is faster in
        # channels-last format with oneDNN (EdgeSRN forward 1.89x -> 1.93x the published one, 1 thread).
        # It changes float32 rounding only: up to ~3e-6 with trained weights (NCHW float32 is itself ~2e-6
        # from a float64 reference); on Set5+Set14 about 1 uint8 value in 40,000 flips, PSNR moves < 2e-5 dB.
        to_cl = fea.device.type == "cpu" and not fea.is_contiguous(memory_format=torch.channels_last)
        if to_cl:
            fea = fea.contiguous(memory_format=torch.channels_last)
        fea = self.lrelu(self.upconv1(F.interpolate(fea, scale_factor=2, mode="nearest")))
        fea = self.lrelu(self.upconv2(F.interpolate(fea, scale_factor=2, mode="nearest")))
        out = self.conv_last(self.lrelu(self.HRconv(fea)))
        out = out.contiguous() if to_cl else out
        return out[..., : h * self.upscale, : w * self.upscale] if self.unshuffle > 1 else out


# BasicSR's RRDBNet names -> the original ESRGAN names used here.
_BASICSR_RENAMES = (
    (re.compile(r"^body\.(\d+)\.rdb(\d)\.(conv\d\.(?:weight|bias))$"), r"RRDB_trunk.\1.RDB\2.\3"),
    (re.compile(r"^conv_body\.(weight|bias)$"), r"trunk_conv.\1"),
    (re.compile(r"^conv_up1\.(weight|bias)$"), r"upconv1.\1"),
    (re.compile(r"^conv_up2\.(weight|bias)$"), r"upconv2.\1"),
    (re.compile(r"^conv_hr\.(weight|bias)$"), r"HRconv.\1"),
)


def convert_state_dict(state_dict: dict) -> tuple[dict, str]:
    """A state dict in our (original ESRGAN) names, and the name of the layout it was found in.

    BasicSR's layout is recognised by its trunk keys (``body.N.rdbk.convj``, ``conv_body``); its keys are
    renamed, keys that match no rule are kept as they are (the strict load reports them). Returns
    ``(state_dict, "BasicSR")`` after a conversion and ``(state_dict, "ESRGAN")`` for anything else.
    """
    if not any(k.startswith(("body.", "conv_body.")) for k in state_dict):
        return state_dict, "ESRGAN"
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _BASICSR_RENAMES:
            new, n = pattern.subn(repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out, "BasicSR"
