"""LBNet: Lightweight Bimodal Network (Gao et al., IJCAI 2022), x2/x3/x4 super-resolution.

A symmetric CNN (three LFFM groups of FRDAB blocks, run twice with channel-attention
feedback) followed by a recursive transformer (two Efficient-Transformer blocks, each applied
three times with shared weights to the 3x3-unfolded feature map).

Reimplemented from the facts of the official code (github.com/wzx0826/LBNet, and the LBNet-T
variant distributed with SRDTKD); state-dict keys and shapes equal the published checkpoints,
so ``load_state_dict(..., strict=True)`` works for LBNet (``num_feat=32, num_head=8``) and
LBNet-T (``num_feat=18, num_head=6``).

Interface: RGB in [0, 1] (NCHW float) in, RGB in [0, 1] at ``upscale`` x out. Internally the
network works on 0-255 values, as the official one does: the input is multiplied by 255 before
``sub_mean`` and the output divided by 255 after ``add_mean``. Both MeanShift layers are ordinary
trainable 1x1 convolutions (the official code never froze them; the SRDTKD weights moved them).

Sizes: any H x W works, no padding is needed. The attention of each Efficient Transformer runs
over consecutive runs of ``H*W // 16`` pixels of the LR image in raster order (16 full chunks plus
a possibly shorter remainder), exactly as in the official code, so the result of a pixel
depends on the size of the whole input: tiling an image changes the output slightly. Inputs with
fewer than 16 pixels (where the official code fails) use chunks of one pixel.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LBNet"]

# DIV2K RGB mean used by the EDSR-family MeanShift layers (on the 0-255 scale).
_RGB_MEAN = (0.4488, 0.4371, 0.4040)
_RGB_RANGE = 255.0
_NUM_CHUNKS = 16  # attention runs within N // 16 consecutive tokens
_RECURSIONS = 3  # each transformer block is applied this many times, sharing weights


def _conv(in_ch: int, out_ch: int, kernel: int, groups: int = 1, bias: bool = True) -> nn.Conv2d:
    """Stride-1 convolution with 'same' zero padding."""
    return nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, groups=groups, bias=bias)


class MeanShift(nn.Conv2d):
    """1x1 convolution initialised to add (``sign=+1``) or subtract (``-1``) the RGB mean."""

    def __init__(self, sign: int = -1, rgb_range: float = _RGB_RANGE) -> None:
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(_RGB_MEAN))


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention (RCAN's CALayer)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // reduction
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))


class SpatialAttention(nn.Module):
    """CBAM-style spatial attention from the channel mean and max (7x7 conv, no bias)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv1 = _conv(2, 1, kernel_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv1(stats))


class FRDAB(nn.Module):
    """Feature Refinement Dual-Attention Block."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        half = n_feats // 2
        self.c1 = _conv(n_feats, n_feats, 1)
        self.c2 = _conv(n_feats, half, 3)
        self.c3 = _conv(n_feats, half, 3)
        self.c4 = _conv(2 * n_feats, n_feats, 3)
        self.c5 = _conv(half, half, 3)
        self.c6 = _conv(2 * n_feats, n_feats, 1)
        self.se = ChannelAttention(2 * n_feats, reduction=16)
        self.sa = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.c1(x))
        b = F.relu(self.c2(a))
        c = F.relu(self.c3(a))
        d = F.relu(self.c4(torch.cat([a, b, c], dim=1)))
        fused = torch.cat([b, self.c5(c), d], dim=1)
        return x + self.c6(self.se(fused) + self.sa(fused))


class LFFM(nn.Module):
    """Local Feature Fusion Module: three densely connected FRDABs."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.b1 = FRDAB(n_feats)
        self.b2 = FRDAB(n_feats)
        self.b3 = FRDAB(n_feats)
        self.c1 = _conv(2 * n_feats, n_feats, 1, groups=2)
        self.c2 = _conv(3 * n_feats, n_feats, 1, groups=2)
        self.c3 = _conv(4 * n_feats, n_feats, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1 = self.b1(x)
        o2 = self.b2(self.c1(torch.cat([x, o1], dim=1)))
        o3 = self.b3(self.c2(torch.cat([x, o1, o2], dim=1)))
        return x + self.c3(torch.cat([x, o1, o2, o3], dim=1))


class Mlp(nn.Module):
    """Two-layer ReLU MLP with a 4x narrower hidden layer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // 4)
        self.fc2 = nn.Linear(dim // 4, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def _runs_to_batch(t: torch.Tensor, start: int, count: int, length: int) -> torch.Tensor:
    """(B, N, heads, d) tokens ``[start, start + count*length)`` -> (B*count, heads, length, d)."""
    b, _, h, d = t.shape
    t = t[:, start:start + count * length].reshape(b, count, length, h, d)
    return t.permute(0, 1, 3, 2, 4).reshape(b * count, h, length, d)


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int, scale: float) -> torch.Tensor:
    """Softmax attention restricted to consecutive runs of ``chunk`` tokens.

    ``q, k, v``: (B, N, heads, d). Tokens ``[i*chunk, (i+1)*chunk)`` attend only to each other;
    a final shorter run takes the remaining tokens. Returns (B, N, heads*d). All full runs go
    through one fused ``scaled_dot_product_attention`` call (memory-efficient on CPU and GPU).
    """
    b, n, h, d = q.shape
    # the runs before the last, then the last (1 to ``chunk`` tokens): never an empty run, so that an
    # export with symbolic sizes (ONNX) holds no zero-length tensor whatever the image size
    n_full = (n - 1) // chunk
    last = n - n_full * chunk
    outs = []
    for start, count, length in ((0, n_full, chunk), (n_full * chunk, 1, last)):
        if count == 0:
            continue
        o = F.scaled_dot_product_attention(
            _runs_to_batch(q, start, count, length),
            _runs_to_batch(k, start, count, length),
            _runs_to_batch(v, start, count, length),
            scale=scale,
        )
        outs.append(o.view(b, count, h, length, d).permute(0, 1, 3, 2, 4).reshape(b, count * length, h * d))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


class EffAttention(nn.Module):
    """Efficient multi-head attention: linear width reduction, then chunked self-attention.

    The softmax temperature is ``(dim // num_heads) ** -0.5`` computed from the *unreduced*
    width, as in the official code (for LBNet that is 1/6 although the heads are 18 wide).
    """

    def __init__(self, dim: int, num_heads: int, reduction: int) -> None:
        super().__init__()
        inner = dim // reduction
        if inner % num_heads:
            raise ValueError(f"attention width {inner} is not divisible by num_head={num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.reduce = nn.Linear(dim, inner, bias=False)
        self.qkv = nn.Linear(inner, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.reduce(x)).view(b, n, 3, self.num_heads, -1)
        chunk = max(n // _NUM_CHUNKS, 1)
        out = chunked_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], chunk, self.scale)
        return self.proj(out)


class TransBlock(nn.Module):
    """Pre-norm transformer block (Efficient Transformer) on (B, N, dim) tokens."""

    def __init__(self, dim: int, num_heads: int, reduction: int) -> None:
        super().__init__()
        self.atten = EffAttention(dim, num_heads, reduction)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.atten(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LBNet(nn.Module):
    """LBNet / LBNet-T super-resolution network; [0, 1] RGB in and out.

    Args:
        upscale: scale factor (the tail is one conv and a PixelShuffle).
        num_in_ch, num_out_ch: must be 3 (the MeanShift layers are RGB).
        num_feat: feature width (32 for LBNet, 18 for LBNet-T).
        num_head: attention heads (8 for LBNet, 6 for LBNet-T).
        attn_reduction: width reduction inside the attention. ``None`` picks the published one:
            2 (LBNet) when ``num_feat*9//2`` is divisible by ``num_head``, otherwise 1 (LBNet-T).
    """

    def __init__(
        self,
        upscale: int = 4,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 32,
        num_head: int = 8,
        attn_reduction: Optional[int] = None,
    ) -> None:
        super().__init__()
        if num_in_ch != 3 or num_out_ch != 3:
            raise ValueError("LBNet's MeanShift layers are RGB: num_in_ch and num_out_ch must be 3")
        dim = num_feat * 9
        if attn_reduction is None:
            attn_reduction = 2 if (dim // 2) % num_head == 0 else 1
        self.upscale = upscale

        self.sub_mean = MeanShift(-1)
        self.head = _conv(num_in_ch, num_feat, 3)
        self.r1 = LFFM(num_feat)
        self.r2 = LFFM(num_feat)
        self.r3 = LFFM(num_feat)
        self.se1 = ChannelAttention(num_feat)
        self.se2 = ChannelAttention(num_feat)
        self.se3 = ChannelAttention(num_feat)
        self.attention = TransBlock(dim, num_head, attn_reduction)
        self.attention2 = TransBlock(dim, num_head, attn_reduction)
        self.c1 = _conv(6 * num_feat, num_feat, 1)
        self.c2 = _conv(num_feat, num_feat, 3)
        self.c3 = _conv(num_feat, num_feat, 3)
        self.tail = nn.Sequential(_conv(num_feat, num_out_ch * upscale * upscale, 3), nn.PixelShuffle(upscale))
        self.add_mean = MeanShift(+1)

    @staticmethod
    def _recursive_transformer(block: TransBlock, feat: torch.Tensor) -> torch.Tensor:
        """Unfold 3x3 neighbourhoods into tokens, apply ``block`` recursively, fold back (summing overlaps)."""
        h, w = feat.shape[-2:]
        tokens = F.unfold(feat, kernel_size=3, padding=1).transpose(1, 2)  # (B, H*W, C*9)
        for _ in range(_RECURSIONS):
            tokens = block(tokens)
        return F.fold(tokens.transpose(1, 2), output_size=(h, w), kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(self.sub_mean(x * _RGB_RANGE))

        # Symmetric CNN: a forward pass through r1..r3, then a second pass fed back with attention.
        y1 = self.r1(feat)
        y2 = self.r2(y1)
        y3 = self.r3(y2)
        z1 = self.r1(y3 + self.se1(y1))
        z2 = self.r2(z1 + self.se2(y2))
        z3 = self.r3(z2 + self.se3(y3))
        fused = self.c1(torch.cat([y1, y2, y3, z1, z2, z3], dim=1))

        # Recursive transformer.
        t = self.c2(self._recursive_transformer(self.attention, fused))
        t = self.c3(self._recursive_transformer(self.attention2, t))

        return self.add_mean(self.tail(t + feat)) / _RGB_RANGE
