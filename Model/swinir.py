"""SwinIR: image restoration with shifted-window transformers (Liang et al., ICCVW 2021).

Re-implementation with the official state-dict layout (``layers.i.residual_group.blocks.j...``,
buffers ``relative_position_index`` and ``attn_mask`` included), so the official releases load
strictly, e.g. the lightweight x4 model ``002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4.pth``
(``embed_dim=60``, depths and heads ``(6, 6, 6, 6)``, window 8, ``mlp_ratio=2``,
``upsampler="pixelshuffledirect"``) after :func:`checkpoint_filter`.

Differences from the official code are in speed only (outputs agree to ~1e-6):

* inference attention runs through ``F.scaled_dot_product_attention`` with the relative-position
  bias as an additive mask (CPU autograd keeps the explicit softmax, which is faster there);
* one cached gather per block and resolution replaces roll + window partition (and its inverse
  replaces merge + roll back); the gather puts the windows whose shift mask is all zero first,
  so only the few windows along the wrap-around pay for a per-window mask;
* masks and gather indices are built once per (batch, size) and kept in a small LRU shared by
  the model's blocks; the ``attn_mask`` buffers stay only for the official state-dict layout.

The input is RGB in [0, 1] (NCHW) of any size; it is reflect-padded to a multiple of the window
inside ``forward`` and the output is cropped back to ``upscale`` times the input size.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as grad_checkpoint

__all__ = ["SwinIR", "checkpoint_filter", "relative_position_index", "shift_window_mask"]

# Additive value the official code puts between tokens of different regions in shifted windows.
_MASK_VALUE = -100.0
_DERIVABLE = ("relative_position_index", "attn_mask")


def _pair(value: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _trunc_normal_(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """Truncated normal at +-2 (absolute), as timm's ``trunc_normal_`` defaults."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0, b=2.0)


# ----------------------------------------------------------------------------- derivable tensors
def relative_position_index(window: Union[int, Sequence[int]]) -> torch.Tensor:
    """(N, N) int64 index into the bias table for every token pair of a window (N = wh * ww)."""
    wh, ww = _pair(window)
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[:, None] - ys[None, :] + (wh - 1)
    dx = xs[:, None] - xs[None, :] + (ww - 1)
    return dy * (2 * ww - 1) + dx


def _partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C), windows in row-major order per image."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c)


def shift_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """(nW, N, N) float mask of a cyclically shifted layout: 0 within a region, -100 across.

    After the shift, rows (and columns) fall into three bands: the bulk, the last
    ``window - shift`` and the last ``shift``; each of the 3 x 3 band crossings is one region.
    """

    def bands(n: int) -> torch.Tensor:
        idx = torch.arange(n)
        return (idx >= n - window).long() + (idx >= n - shift).long()

    region = (bands(height)[:, None] * 3 + bands(width)[None, :]).float()
    region = _partition(region[None, :, :, None], window).squeeze(-1)  # nW, N
    differ = region[:, None, :] != region[:, :, None]
    return torch.zeros(differ.shape).masked_fill_(differ, _MASK_VALUE)


class _WindowPlan(NamedTuple):
    """How a batch of H x W token maps is cut into (shifted) windows.

    ``order`` lists flat token indices (over B * H * W) window by window: first every window
    whose shift mask is all zero (``n_plain`` windows, all images), then the windows that
    straddle the wrap-around (image-major), whose per-image masks are ``mask`` (nM, N, N).
    ``inverse`` undoes ``order``; together they replace roll + partition + merge + roll.
    """

    order: torch.Tensor
    inverse: torch.Tensor
    n_plain: int
    mask: Optional[torch.Tensor]


def _build_plan(batch: int, height: int, width: int, window: int, shift: int,
                device: torch.device, dtype: torch.dtype) -> _WindowPlan:
    length, n = height * width, window * window
    grid = torch.arange(length).view(1, height, width, 1)
    if shift:
        grid = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))
    windows = _partition(grid, window).view(-1, n)  # nW, N: source token of each window slot
    if shift:
        full_mask = shift_window_mask(height, width, window, shift)
        masked = full_mask.ne(0).flatten(1).any(1)
    else:
        full_mask, masked = None, torch.zeros(windows.shape[0], dtype=torch.bool)
    offsets = (torch.arange(batch) * length).view(batch, 1, 1)
    plain_ids, masked_ids = (~masked).nonzero().squeeze(1), masked.nonzero().squeeze(1)
    order = torch.cat(((offsets + windows[plain_ids]).reshape(-1), (offsets + windows[masked_ids]).reshape(-1)))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    mask = full_mask[masked_ids].to(device=device, dtype=dtype) if full_mask is not None and len(masked_ids) else None
    return _WindowPlan(order.to(device), inverse.to(device), batch * len(plain_ids), mask)


class _PlanCache:
    """Small LRU of window plans, shared by the blocks of one model (keyed by size, shift, device, dtype)."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._store: OrderedDict[tuple, _WindowPlan] = OrderedDict()

    def get(self, batch: int, height: int, width: int, window: int, shift: int,
            device: torch.device, dtype: torch.dtype) -> _WindowPlan:
        key = (batch, height, width, window, shift, device, dtype)
        plan = self._store.get(key)
        if plan is None:
            plan = self._store[key] = _build_plan(batch, height, width, window, shift, device, dtype)
            while len(self._store) > self.capacity:
                self._store.popitem(last=False)
        else:
            self._store.move_to_end(key)
        return plan

    def clear(self) -> None:
        self._store.clear()


# ----------------------------------------------------------------------------------- layers
class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or with p = 0)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        noise = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * noise.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Two-layer feed-forward network with GELU."""

    def __init__(self, dim: int, hidden: int, act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias."""

    def __init__(self, dim: int, window_size: tuple[int, int], num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = _pair(window_size)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        _trunc_normal_(self.relative_position_bias_table)

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N) additive bias gathered from the table."""
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B * nW, N, C); mask: (nW, N, N) additive or None. Returns (B * nW, N, C)."""
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B * nW, heads, N, hd)
        bias = self.position_bias().to(q.dtype)
        drop = self.attn_drop if self.training else 0.0
        if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or bias.requires_grad):
            # CPU autograd: SDPA falls back to a slower math path with a learnable mask; do it explicitly
            attn = torch.matmul(q * self.scale, k.transpose(-2, -1)) + bias
            if mask is not None:
                nw = mask.shape[0]
                attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).to(attn.dtype)
                attn = attn.view(bw, self.num_heads, n, n)
            out = torch.matmul(F.dropout(attn.softmax(-1), drop, self.training), v)
        else:
            if mask is None:
                additive = bias.unsqueeze(0)
            else:
                nw = mask.shape[0]
                additive = mask.unsqueeze(1).to(q.dtype) + bias.unsqueeze(0)  # nW, heads, N, N
                if bw != nw:  # the same per-image mask for every image of the batch
                    additive = additive.repeat(bw // nw, 1, 1, 1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive, dropout_p=drop, scale=self.scale)
        out = out.transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention and MLP, each with pre-norm and a residual connection."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int = 7,
                 shift_size: int = 0, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, act_layer: type[nn.Module] = nn.GELU,
                 norm_layer: type[nn.Module] = nn.LayerNorm, plan_cache: Optional[_PlanCache] = None) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = _pair(input_resolution)
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
        if min(self.input_resolution) <= self.window_size:
            # the training size fits in one window: no partition and no shift (as the official code)
            self.window_size = min(self.input_resolution)
            self.shift_size = 0
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError(f"shift_size {self.shift_size} must lie in [0, {self.window_size})")
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, _pair(self.window_size), num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                    attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self._plans = plan_cache if plan_cache is not None else _PlanCache()
        # kept for the official state-dict layout; forward derives the same mask for any size
        mask = (shift_window_mask(*self.input_resolution, self.window_size, self.shift_size)
                if self.shift_size > 0 else None)
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        """x: (B, H * W, C) tokens of an H x W map (H, W multiples of the window)."""
        h, w = x_size
        b, length, c = x.shape
        plan = self._plans.get(b, h, w, self.window_size, self.shift_size, x.device, x.dtype)
        # one gather does the cyclic shift and the window partition (plain windows first)
        y = self.norm1(x).reshape(b * length, c).index_select(0, plan.order)
        y = y.view(-1, self.window_size * self.window_size, c)
        if plan.mask is None:
            y = self.attn(y)
        elif plan.n_plain == 0:
            y = self.attn(y, plan.mask)
        else:
            y = torch.cat((self.attn(y[:plan.n_plain]), self.attn(y[plan.n_plain:], plan.mask)))
        y = y.view(b * length, c).index_select(0, plan.inverse).view(b, length, c)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, input_resolution={self.input_resolution}, num_heads={self.num_heads}, "
                f"window_size={self.window_size}, shift_size={self.shift_size}, mlp_ratio={self.mlp_ratio}")


class BasicLayer(nn.Module):
    """A stack of blocks alternating regular and shifted windows."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: Union[float, Sequence[float]] = 0.0,
                 norm_layer: type[nn.Module] = nn.LayerNorm, use_checkpoint: bool = False,
                 plan_cache: Optional[_PlanCache] = None) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        rates = list(drop_path) if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size=window_size,
                                 shift_size=0 if i % 2 == 0 else window_size // 2, mlp_ratio=mlp_ratio,
                                 qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
                                 drop_path=rates[i], norm_layer=norm_layer, plan_cache=plan_cache)
            for i in range(depth))

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                x = grad_checkpoint.checkpoint(block, x, x_size, use_reentrant=False)
            else:
                x = block(x, x_size)
        return x


def _residual_conv(dim: int, kind: str) -> nn.Module:
    """The conv closing a residual group: one 3x3 conv, or the 3-conv bottleneck."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if kind == "3conv":
        return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim, 3, 1, 1))
    raise ValueError(f"resi_connection must be '1conv' or '3conv', got {kind!r}")


def _tokens_to_map(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H * W, C) -> (B, C, H, W) as a channels-last view (no copy)."""
    b, _, c = x.shape
    return x.transpose(1, 2).view(b, c, size[0], size[1])


class RSTB(nn.Module):
    """Residual Swin Transformer Block: a BasicLayer, a conv, and a skip connection."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: Union[float, Sequence[float]] = 0.0,
                 norm_layer: type[nn.Module] = nn.LayerNorm, use_checkpoint: bool = False,
                 resi_connection: str = "1conv", plan_cache: Optional[_PlanCache] = None) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = _pair(input_resolution)
        self.residual_group = BasicLayer(dim, input_resolution, depth, num_heads, window_size, mlp_ratio=mlp_ratio,
                                         qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
                                         drop_path=drop_path, norm_layer=norm_layer,
                                         use_checkpoint=use_checkpoint, plan_cache=plan_cache)
        self.conv = _residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        y = self.conv(_tokens_to_map(self.residual_group(x, x_size), x_size))
        return y.flatten(2).transpose(1, 2) + x


class PatchEmbed(nn.Module):
    """Feature map to tokens (patch size 1), with an optional norm (key ``patch_embed.norm``)."""

    def __init__(self, embed_dim: int, norm_layer: Optional[type[nn.Module]] = None) -> None:
        super().__init__()
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


# ------------------------------------------------------------------------------------ model
class SwinIR(nn.Module):
    """SwinIR for super-resolution and restoration; RGB in [0, 1] in, RGB in [0, 1] out.

    ``upsampler``: ``"pixelshuffledirect"`` (lightweight SR, SwinIR-S), ``"pixelshuffle"``
    (classical SR), ``"nearest+conv"`` (real-world x4 SR) or ``""`` (same-size restoration).
    ``img_size`` is the training patch size: it fixes the stored ``attn_mask`` buffers; other
    sizes work too (padded to a multiple of ``window_size``, masks built and cached per size).
    """

    def __init__(self, upscale: int = 4, in_chans: int = 3, img_size: Union[int, Sequence[int]] = 64,
                 window_size: int = 8, img_range: float = 1.0, depths: Sequence[int] = (6, 6, 6, 6),
                 embed_dim: int = 60, num_heads: Sequence[int] = (6, 6, 6, 6), mlp_ratio: float = 2.0,
                 upsampler: str = "pixelshuffledirect", resi_connection: str = "1conv", patch_size: int = 1,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 norm_layer: type[nn.Module] = nn.LayerNorm, ape: bool = False, patch_norm: bool = True,
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        if _pair(patch_size) != (1, 1):
            raise ValueError("SwinIR works on pixels: patch_size must be 1")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        self.upscale = int(upscale)
        self.in_chans = in_chans
        self.img_size = _pair(img_size)
        self.window_size = int(window_size)
        self.img_range = float(img_range)
        self.upsampler = upsampler
        self.embed_dim = embed_dim
        self.num_features = embed_dim
        self.ape = ape
        self.patch_norm = patch_norm
        self.mlp_ratio = mlp_ratio
        num_feat = 64
        mean = torch.tensor((0.4488, 0.4371, 0.4040)).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self._plans = _PlanCache()

        # shallow features
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)

        # deep features
        self.patch_embed = PatchEmbed(embed_dim, norm_layer if patch_norm else None)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.img_size[0] * self.img_size[1], embed_dim))
            _trunc_normal_(self.absolute_pos_embed)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(RSTB(embed_dim, self.img_size, depth, heads, window_size, mlp_ratio=mlp_ratio,
                                    qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                                    attn_drop=attn_drop_rate, drop_path=rates[start:start + depth],
                                    norm_layer=norm_layer, use_checkpoint=use_checkpoint,
                                    resi_connection=resi_connection, plan_cache=self._plans))
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)

        # reconstruction
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                                      nn.LeakyReLU(inplace=True))
            self.upsample = _pixelshuffle_stages(self.upscale, num_feat)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, self.upscale ** 2 * in_chans, 3, 1, 1),
                                          nn.PixelShuffle(self.upscale))
        elif upsampler == "nearest+conv":
            if self.upscale != 4:
                raise ValueError("upsampler 'nearest+conv' supports upscale 4 only")
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                                      nn.LeakyReLU(inplace=True))
            self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        elif upsampler == "":
            self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)
        else:
            raise ValueError(f"unknown upsampler {upsampler!r}")
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            _trunc_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"absolute_pos_embed"}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"relative_position_bias_table"}

    def pad_to_window(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad bottom/right to a multiple of the window (replicate where too small to reflect)."""
        h, w = x.shape[-2:]
        ph, pw = -h % self.window_size, -w % self.window_size
        if ph == 0 and pw == 0:
            return x
        mode = "reflect" if ph < h and pw < w else "replicate"
        return F.pad(x, (0, pw, 0, ph), mode=mode)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) shallow features -> (B, C, H, W) deep features (before conv_after_body)."""
        size = (x.shape[2], x.shape[3])
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x, size)
        return _tokens_to_map(self.norm(x), size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.pad_to_window(x)
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range

        if self.upsampler == "":
            first = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self.forward_features(first)) + first)
        else:
            feat = self.conv_first(x)
            feat = self.conv_after_body(self.forward_features(feat)) + feat
            if self.upsampler == "pixelshuffledirect":
                x = self.upsample(feat)
            elif self.upsampler == "pixelshuffle":
                x = self.conv_last(self.upsample(self.conv_before_upsample(feat)))
            else:  # nearest+conv
                feat = self.conv_before_upsample(feat)
                feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
                feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
                x = self.conv_last(self.lrelu(self.conv_hr(feat)))

        x = x / self.img_range + mean
        scale = 1 if self.upsampler == "" else self.upscale
        return x[:, :, :h * scale, :w * scale]


def _pixelshuffle_stages(scale: int, num_feat: int) -> nn.Sequential:
    """Classical upsampler: (conv, PixelShuffle(2)) per factor 2, or one x3 stage."""
    layers: list[nn.Module] = []
    if scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"upsampler 'pixelshuffle' supports scales 2^n and 3, not {scale}")
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_filter(state_dict: dict, model: nn.Module) -> dict:
    """Make a SwinIR state dict load strictly into ``model``.

    The derivable buffers (``relative_position_index``, ``attn_mask``) are filled from the model
    where the checkpoint omits them; where present they must equal the model's own values
    (``ValueError`` otherwise). Every other key passes through untouched, so a wrong architecture
    still fails the strict load.
    """
    own = {name: buf for name, buf in model.state_dict().items() if name.rsplit(".", 1)[-1] in _DERIVABLE}
    out = dict(state_dict)
    for name, expected in own.items():
        given = out.get(name)
        if given is None:
            out[name] = expected.detach().clone()
            continue
        if not torch.is_tensor(given) or tuple(given.shape) != tuple(expected.shape):
            shape = tuple(given.shape) if torch.is_tensor(given) else type(given).__name__
            raise ValueError(f"checkpoint buffer {name} has shape {shape}, model expects {tuple(expected.shape)}")
        if not torch.equal(given.to(device=expected.device, dtype=expected.dtype), expected):
            raise ValueError(f"checkpoint buffer {name} differs from the value the model derives "
                             f"(img_size or window_size mismatch?)")
    return out
