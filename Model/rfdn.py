"""RFDN: Residual Feature Distillation Network (Liu et al., ECCV Workshops 2020).

Architecture facts follow the authors' release (github.com/njulj/RFDN); parameter and buffer
names match its checkpoints, so they load with ``strict=True``:

    fea_conv -> B1 .. B4 (RFDB) -> c (1x1 fuse + LeakyReLU) -> LR_conv (+ fea_conv) -> upsampler

Each residual feature distillation block (RFDB) splits off half the channels with a 1x1 conv at
three stages (``c1_d``, ``c2_d``, ``c3_d``) while a 3x3 residual conv refines the rest
(``c1_r`` ..), fuses the four halves with ``c5`` and gates the result with enhanced spatial
attention (ESA). All LeakyReLUs use slope 0.05.

Two presets use this class: ``RFDN`` (nf 64, the SRDTKD student, [0, 1] input) and ``RFDN_AIM``
(nf 50, the AIM 2020 release, trained on 0-255 input: ``img_range=255`` scales inside ``forward``
so that the module still takes and returns [0, 1]).

ESA pools a stride-2 map with a 7x7 window, so inputs must be at least 15x15 pixels.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["RFDN", "RFDB", "ESA"]

_SLOPE = 0.05  # LeakyReLU negative slope used throughout RFDN


def _conv(in_ch: int, out_ch: int, k: int, stride: int = 1, padding: int | None = None) -> nn.Conv2d:
    """A biased conv with 'same' padding unless ``padding`` is given."""
    return nn.Conv2d(in_ch, out_ch, k, stride=stride, padding=(k - 1) // 2 if padding is None else padding)


class ESA(nn.Module):
    """Enhanced spatial attention: a cheap, large-receptive-field sigmoid mask over ``x``.

    ``channels`` is reduced to ``channels // 4`` by ``conv1``; a strided conv, a 7x7/3 max pool and
    three 3x3 convs build a coarse map that is upsampled bilinearly, added to a 1x1 skip
    (``conv_f``) and expanded back by ``conv4`` before the sigmoid.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        f = channels // 4
        self.conv1 = _conv(channels, f, 1)
        self.conv_f = _conv(f, f, 1)
        self.conv_max = _conv(f, f, 3)
        self.conv2 = _conv(f, f, 3, stride=2, padding=0)
        self.conv3 = _conv(f, f, 3)
        self.conv3_ = _conv(f, f, 3)
        self.conv4 = _conv(f, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1(x)
        coarse = F.max_pool2d(self.conv2(reduced), kernel_size=7, stride=3)
        coarse = F.relu(self.conv_max(coarse), inplace=True)
        coarse = F.relu(self.conv3(coarse), inplace=True)
        coarse = self.conv3_(coarse)
        mask = F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
        mask += self.conv_f(reduced)
        return x * torch.sigmoid_(self.conv4(mask))


class RFDB(nn.Module):
    """Residual feature distillation block with ``channels`` in and out (distils ``channels // 2``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        dc = channels // 2
        self.c1_d = _conv(channels, dc, 1)
        self.c1_r = _conv(channels, channels, 3)
        self.c2_d = _conv(channels, dc, 1)
        self.c2_r = _conv(channels, channels, 3)
        self.c3_d = _conv(channels, dc, 1)
        self.c3_r = _conv(channels, channels, 3)
        self.c4 = _conv(channels, dc, 3)
        self.c5 = _conv(4 * dc, channels, 1)
        self.esa = ESA(channels)

    @staticmethod
    def _act(t: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(t, _SLOPE, inplace=True)

    def _refine(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """Shallow residual unit: LeakyReLU(conv(x) + x)."""
        out = conv(x)
        out += x
        return self._act(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self._act(self.c1_d(x))
        r1 = self._refine(self.c1_r, x)
        d2 = self._act(self.c2_d(r1))
        r2 = self._refine(self.c2_r, r1)
        d3 = self._act(self.c3_d(r2))
        r3 = self._refine(self.c3_r, r2)
        d4 = self._act(self.c4(r3))
        return self.esa(self.c5(torch.cat((d1, d2, d3, d4), dim=1)))


class RFDN(nn.Module):
    """Residual Feature Distillation Network; takes and returns RGB in [0, 1] (NCHW float).

    Args:
        upscale: output scale factor (pixel-shuffle upsampler).
        in_nc / out_nc: input and output channels.
        nf: feature channels (64 for the SRDTKD student, 50 for the AIM release).
        num_modules: number of RFDB blocks, named ``B1`` .. ``B<n>`` (4 in every release).
        img_range: the range the weights were trained on; input is multiplied by it and output
            divided by it (255 for ``RFDN_AIM.pth``, 1 otherwise).
    """

    def __init__(self, upscale: int = 4, in_nc: int = 3, nf: int = 64, num_modules: int = 4,
                 out_nc: int = 3, img_range: float = 1.0) -> None:
        super().__init__()
        self.upscale = upscale
        self.img_range = float(img_range)
        self.fea_conv = _conv(in_nc, nf, 3)
        self._block_names = tuple(f"B{i}" for i in range(1, num_modules + 1))
        for name in self._block_names:
            self.add_module(name, RFDB(nf))
        self.c = nn.Sequential(_conv(nf * num_modules, nf, 1), nn.LeakyReLU(_SLOPE, inplace=True))
        self.LR_conv = _conv(nf, nf, 3)
        self.upsampler = nn.Sequential(_conv(nf, out_nc * upscale ** 2, 3), nn.PixelShuffle(upscale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.img_range != 1.0:
            x = x * self.img_range
        fea = self.fea_conv(x)
        outs = []
        h = fea
        for name in self._block_names:
            h = getattr(self, name)(h)
            outs.append(h)
        lr = self.LR_conv(self.c(torch.cat(outs, dim=1)))
        lr += fea
        out = self.upsampler(lr)
        if self.img_range != 1.0:
            out = out / self.img_range
        return out
