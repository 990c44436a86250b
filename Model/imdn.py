"""IMDN: Information Multi-Distillation Network (Hui et al., ACM Multimedia 2019).

Architecture facts follow the authors' release (github.com/Zheng222/IMDN); names match its
checkpoints once their ``module.`` prefix (from DataParallel) is stripped, which the project's
checkpoint loader does:

    fea_conv -> IMDB1 .. IMDB6 -> c (1x1 fuse + LeakyReLU) -> LR_conv (+ fea_conv) -> upsampler

Each information multi-distillation block (IMDB) runs three 3x3 convs that each keep a quarter of
their output channels (distilled) and pass the other three quarters on; a fourth conv yields the
last quarter. The four quarters are weighted by contrast-aware channel attention (CCA: per-channel
standard deviation plus mean, squeezed by 16) and fused by a 1x1 conv with a residual skip.
LeakyReLU slope 0.05. Takes and returns RGB in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["IMDN", "IMDModule", "CCALayer"]

_SLOPE = 0.05  # LeakyReLU negative slope used throughout IMDN


def _conv(in_ch: int, out_ch: int, k: int) -> nn.Conv2d:
    """A biased conv with 'same' padding."""
    return nn.Conv2d(in_ch, out_ch, k, padding=(k - 1) // 2)


class CCALayer(nn.Module):
    """Contrast-aware channel attention: gate channels by sigmoid(MLP(std + mean)).

    The spatial mean is computed once and shared by the standard deviation (population, i.e.
    divided by H*W) and the mean term.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).square_().mean(dim=(2, 3), keepdim=True).sqrt_()
        return x * self.conv_du(std + mean)


class IMDModule(nn.Module):
    """Information multi-distillation block with ``channels`` in and out (distils a quarter)."""

    def __init__(self, channels: int, distillation_rate: float = 0.25) -> None:
        super().__init__()
        self.distilled = int(channels * distillation_rate)
        self.remaining = channels - self.distilled
        self.c1 = _conv(channels, channels, 3)
        self.c2 = _conv(self.remaining, channels, 3)
        self.c3 = _conv(self.remaining, channels, 3)
        self.c4 = _conv(self.remaining, self.distilled, 3)
        self.c5 = _conv(4 * self.distilled, channels, 1)
        self.cca = CCALayer(4 * self.distilled)

    def _step(self, conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """conv + LeakyReLU, split into (distilled, remaining) channels."""
        out = F.leaky_relu(conv(x), _SLOPE, inplace=True)
        return torch.split(out, (self.distilled, self.remaining), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1, r = self._step(self.c1, x)
        d2, r = self._step(self.c2, r)
        d3, r = self._step(self.c3, r)
        d4 = self.c4(r)
        out = self.c5(self.cca(torch.cat((d1, d2, d3, d4), dim=1)))
        out += x
        return out


class IMDN(nn.Module):
    """Information Multi-Distillation Network; takes and returns RGB in [0, 1] (NCHW float).

    Args:
        upscale: output scale factor (pixel-shuffle upsampler).
        in_nc / out_nc: input and output channels.
        nf: feature channels (64 in the release).
        num_modules: number of IMDB blocks, named ``IMDB1`` .. ``IMDB<n>`` (6 in the release).
    """

    def __init__(self, upscale: int = 4, in_nc: int = 3, nf: int = 64, num_modules: int = 6,
                 out_nc: int = 3) -> None:
        super().__init__()
        self.upscale = upscale
        self.fea_conv = _conv(in_nc, nf, 3)
        self._block_names = tuple(f"IMDB{i}" for i in range(1, num_modules + 1))
        for name in self._block_names:
            self.add_module(name, IMDModule(nf))
        self.c = nn.Sequential(_conv(nf * num_modules, nf, 1), nn.LeakyReLU(_SLOPE, inplace=True))
        self.LR_conv = _conv(nf, nf, 3)
        self.upsampler = nn.Sequential(_conv(nf, out_nc * upscale ** 2, 3), nn.PixelShuffle(upscale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(x)
        outs = []
        h = fea
        for name in self._block_names:
            h = getattr(self, name)(h)
            outs.append(h)
        lr = self.LR_conv(self.c(torch.cat(outs, dim=1)))
        lr += fea
        return self.upsampler(lr)
