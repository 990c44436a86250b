"""PAN: Pixel Attention Network (Zhao et al., ECCV Workshops 2020).

Architecture facts follow the authors' release (github.com/zhaohengyuan1/PAN); names match its
checkpoints (``PANx4_DF2K.pth``), so they load with ``strict=True``:

    conv_first -> SCPA_trunk (nb SCPA blocks) -> trunk_conv (+ conv_first)
    -> [nearest x2 -> upconv -> pixel attention -> HRconv] (twice for x4, once x s for x2/x3)
    -> conv_last, plus a bilinear upsampling of the input as global residual.

An SCPA block (self-calibrated conv with pixel attention) splits into two 1x1-reduced branches of
``nf // 2`` channels: a plain 3x3 conv, and a PA-conv whose 3x3 output is gated by a sigmoid
1x1 map before a second 3x3 conv; a 1x1 conv fuses both with a residual skip. LeakyReLU slope 0.2.
Takes and returns RGB in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PAN", "SCPA", "PAConv", "PA"]

_SLOPE = 0.2  # LeakyReLU negative slope used throughout PAN


def _lrelu(t: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(t, _SLOPE, inplace=True)


class PA(nn.Module):
    """Pixel attention: ``x * sigmoid(conv1x1(x))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


class PAConv(nn.Module):
    """Pixel-attention conv: ``k4(k3(x) * sigmoid(k2(x)))`` with bias-free 3x3 ``k3``, ``k4``."""

    def __init__(self, channels: int, k_size: int = 3) -> None:
        super().__init__()
        pad = (k_size - 1) // 2
        self.k2 = nn.Conv2d(channels, channels, 1)
        self.k3 = nn.Conv2d(channels, channels, k_size, padding=pad, bias=False)
        self.k4 = nn.Conv2d(channels, channels, k_size, padding=pad, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k4(self.k3(x) * torch.sigmoid(self.k2(x)))


class SCPA(nn.Module):
    """Self-calibrated block with pixel attention; ``nf`` channels in and out."""

    def __init__(self, nf: int, reduction: int = 2) -> None:
        super().__init__()
        width = nf // reduction
        self.conv1_a = nn.Conv2d(nf, width, 1, bias=False)
        self.conv1_b = nn.Conv2d(nf, width, 1, bias=False)
        self.k1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False))
        self.PAConv = PAConv(width)
        self.conv3 = nn.Conv2d(width * reduction, nf, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = _lrelu(self.k1(_lrelu(self.conv1_a(x))))
        b = _lrelu(self.PAConv(_lrelu(self.conv1_b(x))))
        out = self.conv3(torch.cat((a, b), dim=1))
        out += x
        return out


class PAN(nn.Module):
    """Pixel Attention Network; takes and returns RGB in [0, 1] (NCHW float).

    Args:
        upscale: 2, 3 or 4 (x4 upsamples in two nearest x2 stages, with ``upconv2``/``att2``/``HRconv2``).
        in_nc / out_nc: input and output channels.
        nf: trunk channels (40); unf: upsampling-branch channels (24); nb: SCPA blocks (16).
    """

    def __init__(self, upscale: int = 4, in_nc: int = 3, out_nc: int = 3, nf: int = 40, unf: int = 24,
                 nb: int = 16) -> None:
        super().__init__()
        if upscale not in (2, 3, 4):
            raise ValueError(f"PAN supports upscale 2, 3 or 4, got {upscale}")
        self.upscale = upscale
        self.conv_first = nn.Conv2d(in_nc, nf, 3, padding=1)
        self.SCPA_trunk = nn.Sequential(*(SCPA(nf) for _ in range(nb)))
        self.trunk_conv = nn.Conv2d(nf, nf, 3, padding=1)
        self.upconv1 = nn.Conv2d(nf, unf, 3, padding=1)
        self.att1 = PA(unf)
        self.HRconv1 = nn.Conv2d(unf, unf, 3, padding=1)
        if upscale == 4:
            self.upconv2 = nn.Conv2d(unf, unf, 3, padding=1)
            self.att2 = PA(unf)
            self.HRconv2 = nn.Conv2d(unf, unf, 3, padding=1)
        self.conv_last = nn.Conv2d(unf, out_nc, 3, padding=1)

    @staticmethod
    def _up_stage(fea: torch.Tensor, factor: int, upconv: nn.Conv2d, att: PA, hrconv: nn.Conv2d) -> torch.Tensor:
        """Nearest upsampling by ``factor``, conv, pixel attention, conv (LeakyReLU after each of the last two)."""
        fea = upconv(F.interpolate(fea, scale_factor=factor, mode="nearest"))
        fea = _lrelu(att(fea))
        return _lrelu(hrconv(fea))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.conv_first(x)
        trunk = self.trunk_conv(self.SCPA_trunk(fea))
        trunk += fea
        if self.upscale == 4:
            fea = self._up_stage(trunk, 2, self.upconv1, self.att1, self.HRconv1)
            fea = self._up_stage(fea, 2, self.upconv2, self.att2, self.HRconv2)
        else:
            fea = self._up_stage(trunk, self.upscale, self.upconv1, self.att1, self.HRconv1)
        out = self.conv_last(fea)
        out += F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        return out
