"""Training losses of DTKD (DESIGN section 6): L1, edge, back-projection, attention KD, VGG perceptual.

Every loss takes NCHW float tensors with RGB values in [0, 1] and returns a scalar tensor.

Conventions shared by all losses:

* **Per element.** "Pixel" in DESIGN section 6 is read as *element* (one channel value of one pixel):
  ``A = |S - T|`` is not averaged over channels before thresholding or masking. This is the simplest
  reading and treats a colour error in one channel as the error it is.
* **Sample masks.** Every loss accepts ``sample_mask``: ``None`` (all samples), a bool tensor ``(B,)``
  or non-negative float weights ``(B,)``. The loss is computed per sample and averaged over the
  selected samples with the weights: ``sum_i w_i l_i / sum_i w_i``. A sample with weight 0 contributes
  nothing, not even a non-finite value. When no sample is selected the result is a zero that still
  carries a ``grad_fn`` (if the inputs require grad), so the trainer can add it unconditionally.
  No Python branch depends on tensor values (no device synchronisation), except in
  :class:`PerceptualLoss` with a bool mask, which runs VGG on the selected samples only.
* **Precision.** Losses compute in float32 with autocast disabled for their own arithmetic (Sobel
  convolutions, bicubic matrices, reductions), so they behave the same under bf16 autocast on CUDA;
  only the VGG trunk itself runs under the caller's autocast, its features are compared in float32.

:class:`PerceptualLoss` uses our own definition of torchvision's VGG19 ``features`` (same key names,
``features.0.weight`` ...), truncated after the requested layer. ``conv5_4`` (index 34) is taken
*before* its ReLU, as ESRGAN (``feature_layer=34``, i.e. ``features[:35]``) and BasicSR's
``'conv5_4'`` layer name do. Weights come from a local file or torchvision's published file through
``torch.hub``; without them it raises :class:`PerceptualWeightsError`, never runs with random weights.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .imresize import imresize_torch

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

__all__ = [
    "l1_loss", "edge_map", "edge_loss", "backprojection_loss", "error_attention_l1",
    "trust_attention_l1", "trust_map", "kd_loss", "rgb_to_y", "KD_ATTN_CHOICES", "EDGE_KINDS", "TEXTURE_KINDS",
    "image_gradients", "image_laplacian", "mscn_features", "texture_loss", "unsharp_mask",
    "VGG19_URL", "VGG19_LAYERS", "VGGFeatureExtractor", "PerceptualLoss", "PerceptualWeightsError",
]

VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbbb0fc.pth"
KD_ATTN_CHOICES = ("none", "error", "trust", "both")
EDGE_KINDS = ("sobel", "laplacian")
TEXTURE_KINDS = ("gradw1", "lapw1", "spectrum", "radial", "mscn", "gram")

# BT.601 luma on [0, 1] values: Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255.
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET = 16.0 / 255.0
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
_LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


# ----------------------------------------------------------------------------------------------
# Helpers: precision, sample masks
# ----------------------------------------------------------------------------------------------
def _no_autocast(x: torch.Tensor) -> torch.autocast:
    """A context that disables autocast on ``x``'s device type (losses compute in float32)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _f32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 (no copy when it already is)."""
    return x if x.dtype == torch.float32 else x.float()


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Both NCHW with the same shape."""
    if a.dim() != 4 or a.shape != b.shape:
        raise ValueError(f"{what}: expected two NCHW tensors of the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")


def _weights(sample_mask: Optional[torch.Tensor], batch: int, ref: torch.Tensor) -> Optional[torch.Tensor]:
    """The sample mask as float32 weights ``(B,)`` on ``ref``'s device, or None for all samples."""
    if sample_mask is None:
        return None
    if not isinstance(sample_mask, torch.Tensor):
        sample_mask = torch.as_tensor(sample_mask)
    if sample_mask.dim() != 1 or sample_mask.shape[0] != batch:
        raise ValueError(f"sample_mask must have shape ({batch},), got {tuple(sample_mask.shape)}")
    return sample_mask.to(device=ref.device, dtype=torch.float32)


def _weighted_ratio(num: torch.Tensor, den: torch.Tensor, w: Optional[torch.Tensor]) -> torch.Tensor:
    """``sum_i w_i num_i / sum_i w_i den_i`` over samples; 0 (with grad_fn) when the denominator is 0.

    Unselected samples (w_i = 0) are removed with ``where``, so their values, even non-finite ones,
    never reach the result or the gradient of the selected samples.
    """
    if w is not None:
        keep = w > 0
        num = torch.where(keep, num * w, torch.zeros_like(num))
        den = torch.where(keep, den * w, torch.zeros_like(den))
    total_num = num.sum()
    total_den = den.sum()
    safe_den = torch.where(total_den > 0, total_den, torch.ones_like(total_den))
    return torch.where(total_den > 0, total_num / safe_den, torch.zeros_like(total_num))


def _masked_mean(per_sample: torch.Tensor, w: Optional[torch.Tensor]) -> torch.Tensor:
    """Weighted mean of per-sample losses ``(B,)``; 0 with grad_fn when nothing is selected."""
    return _weighted_ratio(per_sample, torch.ones_like(per_sample), w)


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension, in float32."""
    return _f32(x).flatten(1).mean(dim=1)


# ----------------------------------------------------------------------------------------------
# Pixel losses
# ----------------------------------------------------------------------------------------------
def l1_loss(a: torch.Tensor, b: torch.Tensor, sample_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean absolute difference (per sample, then averaged over the selected samples)."""
    _check_pair(a, b, "l1_loss")
    with _no_autocast(a):
        per_sample = (_f32(a) - _f32(b)).abs().flatten(1).mean(dim=1)
        return _masked_mean(per_sample, _weights(sample_mask, a.shape[0], a))


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of an RGB tensor in [0, 1], in [0, 1] units: ``Nx1xHxW`` float32."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an Nx3xHxW RGB tensor, got {tuple(x.shape)}")
    x = _f32(x)
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b + _Y_OFFSET


def edge_map(x: torch.Tensor, kind: str = "sobel", eps: float = 1e-6) -> torch.Tensor:
    """Differentiable edge magnitude ``Nx1xHxW`` (same size, replicate padding) of the Y channel.

    ``sobel``: ``sqrt(gx^2 + gy^2 + eps) - sqrt(eps)`` with the unnormalised 3x3 Sobel kernels
    (a vertical step of height h gives 4h on both sides of the step); the ``eps`` keeps the gradient
    finite at flat regions and subtracting ``sqrt(eps)`` makes a flat image exactly 0.
    ``laplacian``: ``|4-neighbour Laplacian|``.
    """
    if kind not in EDGE_KINDS:
        raise ValueError(f"edge kind must be one of {EDGE_KINDS}, got {kind!r}")
    if kind == "laplacian":
        return image_laplacian(x).abs()
    with _no_autocast(x):
        sq = image_gradients(x).pow(2).sum(dim=1, keepdim=True) + eps
        return torch.sqrt(sq) - torch.sqrt(torch.full_like(sq, eps))


def edge_loss(s: torch.Tensor, t: torch.Tensor, kind: str = "sobel",
              sample_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L1 between the edge maps of ``s`` and ``t`` (see :func:`edge_map`)."""
    _check_pair(s, t, "edge_loss")
    return l1_loss(edge_map(s, kind), edge_map(t, kind), sample_mask)


def backprojection_loss(sr: torch.Tensor, lr: torch.Tensor, scale: int = 4,
                        sample_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L1 between the MATLAB-bicubic downscale of ``sr`` by ``scale`` and ``lr``."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    with _no_autocast(sr):
        down = imresize_torch(_f32(sr), 1.0 / scale)
    if down.shape != lr.shape:
        raise ValueError(f"backprojection_loss: {tuple(sr.shape)} downscaled by {scale} is "
                         f"{tuple(down.shape)}, which does not match lr {tuple(lr.shape)}")
    return l1_loss(down, lr, sample_mask)


# ----------------------------------------------------------------------------------------------
# Texture statistics (weight-free, not pixel-aligned)
# ----------------------------------------------------------------------------------------------
def image_gradients(x: torch.Tensor) -> torch.Tensor:
    """Signed Sobel derivatives ``Nx2xHxW`` (d/dx, d/dy; replicate padding) of the Y channel, float32."""
    with _no_autocast(x):
        y = F.pad(rgb_to_y(x), (1, 1, 1, 1), mode="replicate")
        kx = torch.tensor(_SOBEL_X, dtype=torch.float32, device=x.device)
        return F.conv2d(y, torch.stack([kx, kx.t()]).unsqueeze(1))


def image_laplacian(x: torch.Tensor) -> torch.Tensor:
    """Signed 4-neighbour Laplacian ``Nx1xHxW`` (replicate padding) of the Y channel, float32: the finest
    scale of detail (grain), where Sobel derivatives also respond to coarser edges."""
    with _no_autocast(x):
        y = F.pad(rgb_to_y(x), (1, 1, 1, 1), mode="replicate")
        return F.conv2d(y, torch.tensor(_LAPLACIAN, dtype=torch.float32, device=x.device).view(1, 1, 3, 3))


def _gaussian_blur(x: torch.Tensor, size: int = 7, sigma: float = 7.0 / 6.0) -> torch.Tensor:
    """Separable Gaussian blur of an NxCxHxW tensor with replicate padding (float32)."""
    r = torch.arange(size, dtype=torch.float32, device=x.device) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.pad(x, (size // 2,) * 4, mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, size).expand(c, 1, 1, size).contiguous(), groups=c)
    return F.conv2d(x, g.view(1, 1, size, 1).expand(c, 1, size, 1).contiguous(), groups=c)


def unsharp_mask(x: torch.Tensor, amount: float, sigma: float = 1.0) -> torch.Tensor:
    """``x + amount * (x - G_sigma * x)`` clamped to [0, 1]: the ground truth with its fine detail
    amplified, as Real-ESRGAN sharpens its training targets (there with a larger radius). No gradient
    is needed through it (it is applied to targets)."""
    size = 2 * int(math.ceil(3 * sigma)) + 1
    with _no_autocast(x):
        x = _f32(x)
        return (x + amount * (x - _gaussian_blur(x, size, sigma))).clamp(0.0, 1.0)


def band_split(low: torch.Tensor, high: torch.Tensor, sigma: float) -> torch.Tensor:
    """``G*low + (high - G*high)``: the frequencies below a Gaussian of ``sigma`` pixels from ``low``,
    those above it from ``high`` (targets only: no gradient is needed). Equal inputs give the input."""
    size = 2 * int(math.ceil(3 * sigma)) + 1
    with _no_autocast(low):
        low, high = _f32(low), _f32(high)
        return _gaussian_blur(low - high, size, sigma) + high


def mscn_features(x: torch.Tensor) -> torch.Tensor:
    """Natural-scene statistics of Y (Mittal et al.): the mean-subtracted contrast-normalised (MSCN)
    coefficients ``(Y - mu) / (sigma + 1)`` on 0-255 values with a 7x7 Gaussian window (sigma 7/6), and
    their products with the right and lower neighbours: ``Nx3xHxW`` float32 (the last row/column of the
    products repeat their neighbour). These are the quantities NIQE and BRISQUE model."""
    with _no_autocast(x):
        y = 255.0 * rgb_to_y(x)
        mu = _gaussian_blur(y)
        sigma = (_gaussian_blur(y * y) - mu * mu).clamp_min(0).add(1e-6).sqrt()
        m = (y - mu) / (sigma + 1.0)
        horiz = F.pad(m[..., :, :-1] * m[..., :, 1:], (0, 1, 0, 0), mode="replicate")
        vert = F.pad(m[..., :-1, :] * m[..., 1:, :], (0, 0, 0, 1), mode="replicate")
        return torch.cat([m, horiz, vert], dim=1)


def _radial_bins(k: int, device: torch.device) -> torch.Tensor:
    """``(k * (k//2 + 1)) x R`` averaging matrix from a k x k tile's rfft2 grid to rings of integer
    radial frequency 1..k//2 (the DC term and the corners beyond k//2 are left out); each ring's mean
    is over the full frequency plane, so turning the tile by 90 degrees leaves it unchanged."""
    fy = torch.fft.fftfreq(k, device=device).mul(k).abs()
    fx = torch.fft.rfftfreq(k, device=device).mul(k)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).round().long().flatten()
    rings = torch.arange(1, k // 2 + 1, device=device)
    # rfft2 keeps half of the plane: a column other than 0 and k/2 stands for itself and its mirror
    twice = ((fx > 0) & (fx < k / 2)).float() + 1.0
    member = (radius[:, None] == rings[None, :]).float() * twice.repeat(k)[:, None]
    return member / member.sum(dim=0, keepdim=True)


def _windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """Non-overlapping ``window`` x ``window`` tiles of ``x`` (NxCxHxW) as ``N x C x window^2 x L``.

    The bottom and right remainders that do not fill a whole window are left out; an image smaller
    than one window is one window of its own size.
    """
    n, c, h, w = x.shape
    k = min(window, h, w)
    x = x[..., : h // k * k, : w // k * k]
    tiles = F.unfold(x, kernel_size=k, stride=k)  # N x (C*k*k) x L
    return tiles.view(n, c, k * k, -1)


RANDOM_FILTER_SIZES = (3, 5, 7, 11)  # the random feature space of ``gram`` (see random_texture_features)
RANDOM_FILTERS_PER_SIZE = 32
RANDOM_FILTER_SEED = 2016
_random_filter_bank: dict[str, list[torch.Tensor]] = {}


def random_texture_features(x: torch.Tensor) -> torch.Tensor:
    """ReLU responses of a fixed bank of random, zero-mean, unit-norm RGB filters at four sizes (3, 5,
    7, 11; 32 each, seeded): a feature space without pretrained weights whose Gram matrices describe
    texture (Ustyuzhaninov et al., *What does it take to generate natural textures?*, ICLR 2017,
    synthesise textures from random shallow filters). Zero-mean filters give 0 on flat regions, so
    only texture contributes. ``x`` is NxCxHxW RGB in [0, 1]; mirror padding keeps the size."""
    key = str(x.device)
    if key not in _random_filter_bank:
        g = torch.Generator().manual_seed(RANDOM_FILTER_SEED)
        bank = []
        for k in RANDOM_FILTER_SIZES:
            w = torch.randn(RANDOM_FILTERS_PER_SIZE, 3, k, k, generator=g, dtype=torch.float64)
            w = w - w.mean(dim=(1, 2, 3), keepdim=True)
            w = w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            bank.append(w.to(device=x.device, dtype=torch.float32))
        _random_filter_bank[key] = bank
    x = _f32(x)
    feats = [F.relu(F.conv2d(F.pad(x, (w.shape[-1] // 2,) * 4, mode="reflect"), w))
             for w in _random_filter_bank[key]]
    return torch.cat(feats, dim=1)


def texture_loss(s: torch.Tensor, t: torch.Tensor, kind: str = "gradw1", window: int = 16,
                 sample_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Distance between the *local texture statistics* of ``s`` and ``t``, blind to where inside a
    window a texture sits (so a student is not asked to put a teacher's texture at the same pixels).

    ``gradw1``: in each ``window`` x ``window`` tile, the 1-D Wasserstein-1 distance between the
    distributions of the signed horizontal and vertical Sobel derivatives of Y of ``s`` and ``t``
    (sort both sets of values, mean absolute difference of the sorted lists). It is zero when the two
    tiles hold the same derivative values in any arrangement; it rises when ``s`` has fewer or weaker
    edges than ``t`` (blur) as well as more (noise).
    ``lapw1``: the same with the signed 4-neighbour Laplacian of Y, the finest scale of detail (grain).
    ``mscn``: the same with the MSCN coefficients of Y and their neighbour products
    (:func:`mscn_features`), the natural-scene statistics that NIQE measures: it asks for the
    teacher's (or the ground truth's) local contrast structure, not for its pixels.
    ``spectrum``: in each tile, the mean absolute difference of the amplitude spectra (2-D FFT of Y,
    tile mean removed, orthonormal), which ignores phase and hence position within the tile.
    ``radial``: the tile's power spectrum averaged over rings of equal radial frequency (log scale):
    how much detail there is at each scale, blind to orientation as well as to position.
    ``gram``: in each tile, the Gram matrix (channel co-activations averaged over the tile's pixels) of
    :func:`random_texture_features`, mean absolute difference: second-order statistics of nonlinear
    multi-scale features (EnhanceNet's texture loss, Sajjadi et al. 2017, in a random instead of a
    pretrained feature space), blind to position within the tile and to flat-region brightness.

    Per sample the tiles are averaged, then samples are averaged with ``sample_mask`` (see the
    module's conventions). Computed in float32 outside autocast.
    """
    _check_pair(s, t, "texture_loss")
    if kind not in TEXTURE_KINDS:
        raise ValueError(f"texture kind must be one of {TEXTURE_KINDS}, got {kind!r}")
    if window < 2:
        raise ValueError(f"texture window must be at least 2, got {window}")
    with _no_autocast(s):
        if kind in ("gradw1", "lapw1", "mscn"):
            detail = {"gradw1": image_gradients, "lapw1": image_laplacian, "mscn": mscn_features}[kind]
            ws = _windows(detail(s), window).sort(dim=2).values
            wt = _windows(detail(t), window).sort(dim=2).values
            per_sample = (ws - wt).abs().flatten(1).mean(dim=1)
        elif kind == "gram":
            def gram(x: torch.Tensor) -> torch.Tensor:
                tiles = _windows(random_texture_features(x), window).permute(0, 3, 1, 2)  # N x L x C x k*k
                return tiles @ tiles.transpose(-1, -2) / tiles.shape[-1]

            # the features are the costly part: only the selected samples, and no graph for a fixed target
            w = _weights(sample_mask, s.shape[0], s)
            sel = None if w is None else torch.nonzero(w > 0).flatten()
            if sel is not None and 0 < sel.numel() < s.shape[0]:
                s_sel, t_sel = s.index_select(0, sel), t.index_select(0, sel)
            else:
                sel, s_sel, t_sel = None, s, t
            with torch.set_grad_enabled(torch.is_grad_enabled() and t.requires_grad):
                gt_ = gram(t_sel)
            part = (gram(s_sel) - gt_).abs().flatten(1).mean(dim=1)
            per_sample = part if sel is None else part.new_zeros(s.shape[0]).index_copy(0, sel, part)
        else:
            k = min(window, s.shape[-2], s.shape[-1])

            def amplitude(x: torch.Tensor) -> torch.Tensor:
                tiles = _windows(rgb_to_y(x), window)  # N x 1 x k*k x L
                tiles = tiles - tiles.mean(dim=2, keepdim=True)
                tiles = tiles.permute(0, 1, 3, 2).reshape(*tiles.shape[:2], tiles.shape[3], k, k)
                amp = torch.fft.rfft2(tiles, norm="ortho").abs()
                if kind == "spectrum":
                    return amp
                bins = _radial_bins(k, x.device)  # (k * (k//2+1)) x R, each ring's column sums to 1
                return torch.log1p(amp.pow(2).flatten(-2) @ bins / 1e-4)

            per_sample = (amplitude(s) - amplitude(t)).abs().flatten(1).mean(dim=1)
        return _masked_mean(per_sample, _weights(sample_mask, s.shape[0], s))


# ----------------------------------------------------------------------------------------------
# Distillation losses
# ----------------------------------------------------------------------------------------------
def error_attention_l1(s: torch.Tensor, t: torch.Tensor,
                       sample_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Error attention: mean of ``A = |S - T|`` over the elements above their sample's mean of A.

    An element is kept when ``A > mean(A of its sample)`` (strictly; also ``A > min`` so that a
    constant sample keeps nothing whatever the rounding of its mean). The loss is the sum of kept A
    over the (selected) batch divided by the number of kept elements, so samples weigh by how many
    elements they keep; 0 when nothing is kept. The threshold carries no gradient.
    """
    _check_pair(s, t, "error_attention_l1")
    with _no_autocast(s):
        a = (_f32(s) - _f32(t)).abs().flatten(1)
        with torch.no_grad():
            kept = (a > a.mean(dim=1, keepdim=True)) & (a > a.amin(dim=1, keepdim=True))
        num = torch.where(kept, a, torch.zeros_like(a)).sum(dim=1)
        cnt = kept.sum(dim=1).to(torch.float32)
        return _weighted_ratio(num, cnt, _weights(sample_mask, s.shape[0], s))


def trust_attention_l1(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                       sample_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Trust attention: ``mean(M * |S - T|)`` with ``M = [|T - y| < |S - y|]`` per element.

    The teacher teaches only the elements where it is strictly closer to the ground truth than the
    student; M carries no gradient. The mean runs over all elements of the selected samples.
    """
    _check_pair(s, t, "trust_attention_l1")
    _check_pair(s, y, "trust_attention_l1")
    with _no_autocast(s):
        s32, t32, y32 = _f32(s), _f32(t), _f32(y)
        with torch.no_grad():
            trust = (t32 - y32).abs() < (s32 - y32).abs()
        diff = (s32 - t32).abs()
        per_sample = torch.where(trust, diff, torch.zeros_like(diff)).flatten(1).mean(dim=1)
        return _masked_mean(per_sample, _weights(sample_mask, s.shape[0], s))


def trust_map(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Where the teacher is trusted: ``[mean_c |T - y| < mean_c |S - y|]`` per pixel, an N x 1 x H x W
    float map in {0, 1} without gradient (trust attention's criterion on whole pixels)."""
    _check_pair(s, t, "trust_map")
    _check_pair(s, y, "trust_map")
    with torch.no_grad(), _no_autocast(s):
        s32, t32, y32 = _f32(s), _f32(t), _f32(y)
        return ((t32 - y32).abs().mean(dim=1, keepdim=True) < (s32 - y32).abs().mean(dim=1, keepdim=True)).float()


def kd_loss(s: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, attn: str = "none",
            sample_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Student-teacher loss: plain L1 (``none``), error attention, trust attention, or their sum (``both``).

    ``y`` (the HR patch) is needed by ``trust`` and ``both``.
    """
    if attn not in KD_ATTN_CHOICES:
        raise ValueError(f"attn must be one of {KD_ATTN_CHOICES}, got {attn!r}")
    if attn in ("trust", "both") and y is None:
        raise ValueError(f"kd_loss with attn={attn!r} needs the ground truth y")
    if attn == "none":
        return l1_loss(s, t, sample_mask)
    if attn == "error":
        return error_attention_l1(s, t, sample_mask)
    assert y is not None
    if attn == "trust":
        return trust_attention_l1(s, t, y, sample_mask)
    return error_attention_l1(s, t, sample_mask) + trust_attention_l1(s, t, y, sample_mask)


# ----------------------------------------------------------------------------------------------
# VGG19 perceptual loss
# ----------------------------------------------------------------------------------------------
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M")


def _vgg19_layer_names() -> tuple[str, ...]:
    """Names of torchvision's vgg19 ``features`` entries by index: conv1_1, relu1_1, ..., pool5."""
    names: list[str] = []
    block, conv = 1, 1
    for v in _VGG19_CFG:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return tuple(names)


VGG19_LAYERS = _vgg19_layer_names()  # index in torchvision's vgg19.features -> name; conv5_4 is 34


class PerceptualWeightsError(RuntimeError):
    """The VGG19 weights cannot be obtained; the message is one line naming the source and the fix."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def _load_vgg_state(weights_path: Optional[PathLike], url: str) -> tuple[dict[str, torch.Tensor], str]:
    """The VGG19 state dict from a local file or (cached) URL; failures are PerceptualWeightsError."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise PerceptualWeightsError(f"VGG19 weights file not found: {path}")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt or foreign files raise many types
            raise PerceptualWeightsError(f"cannot read VGG19 weights {path} ({_one_line(exc)})") from exc
        source = str(path)
    else:
        try:
            sd = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False,
                                                    check_hash=True, weights_only=True)
        except Exception as exc:  # no network (URLError), hash mismatch (RuntimeError), ...
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
            raise PerceptualWeightsError(
                f"could not obtain the VGG19 weights from {url} ({_one_line(exc)}); place the file at "
                f"{cache} or pass a local weights path, or disable the perceptual loss "
                f"(--Rate_lpts 0)") from exc
        source = url
    if not isinstance(sd, dict):
        raise PerceptualWeightsError(f"VGG19 weights {source} hold a {type(sd).__name__}, not a state dict")
    return sd, source


class VGGFeatureExtractor(nn.Module):
    """Frozen VGG19 ``features`` up to and including ``layer``, on ImageNet-normalised [0, 1] RGB.

    Layers carry torchvision's indices and key names (``features.0.weight`` ... ``features.34.bias``
    for ``conv5_4``). A ``convX_Y`` layer is taken before its ReLU (ESRGAN/BasicSR convention); ask
    for ``reluX_Y`` for the activated features. Weights: ``weights_path`` if given, else ``url``
    through ``torch.hub`` (hash-checked, cached); loaded strictly, only the ``features.*`` keys up
    to ``layer`` are used.
    """

    def __init__(self, layer: str = "conv5_4", weights_path: Optional[PathLike] = None,
                 url: str = VGG19_URL, use_input_norm: bool = True) -> None:
        super().__init__()
        if layer not in VGG19_LAYERS:
            raise ValueError(f"unknown VGG19 layer {layer!r}; choose one of {', '.join(VGG19_LAYERS)}")
        self.layer = layer
        self.last_index = VGG19_LAYERS.index(layer)
        self.use_input_norm = use_input_norm
        with torch.device("meta"):  # no random init: every parameter comes from the weights file
            self.features = self._build(self.last_index)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

        sd, source = _load_vgg_state(weights_path, url)
        wanted = set(self.features.state_dict().keys())
        features = {k[len("features."):]: v for k, v in sd.items()
                    if k.startswith("features.") and k[len("features."):] in wanted}
        try:
            self.features.load_state_dict(features, strict=True, assign=True)
        except RuntimeError as exc:
            missing = sorted(wanted - set(features), key=lambda k: int(k.split(".")[0]))
            detail = f"missing keys {', '.join('features.' + k for k in missing[:6])}" if missing else \
                _one_line(exc)
            raise PerceptualWeightsError(f"VGG19 weights {source} do not fit VGG19 features up to "
                                         f"{layer} ({detail})") from exc
        log.info("VGG19 features up to %s (index %d) loaded from %s", layer, self.last_index, source)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    @staticmethod
    def _build(last_index: int) -> nn.Sequential:
        """torchvision's vgg19 ``features`` layout, truncated after ``last_index``."""
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_ch = int(v)
        return nn.Sequential(*layers[:last_index + 1])

    def train(self, mode: bool = True) -> "VGGFeatureExtractor":
        """Stays in eval mode: the extractor is a fixed measure."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of an Nx3xHxW RGB tensor in [0, 1] (in the autocast dtype, if any)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"VGG features expect Nx3xHxW RGB, got {tuple(x.shape)}")
        if self.use_input_norm:
            with _no_autocast(x):
                x = (_f32(x) - self.mean) / self.std
        return self.features(x)


class PerceptualLoss(nn.Module):
    """ESRGAN-style perceptual loss: L1 between VGG19 features (default ``conv5_4``, before ReLU).

    ``forward(s, t, sample_mask=None)``; the target's features are computed without gradient when
    ``t`` does not require grad. With a bool ``sample_mask`` only the selected samples go through VGG.
    """

    def __init__(self, layer: str = "conv5_4", weights_path: Optional[PathLike] = None,
                 url: str = VGG19_URL) -> None:
        super().__init__()
        self.vgg = VGGFeatureExtractor(layer, weights_path, url)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        """Stays in eval mode."""
        return super().train(False)

    def forward(self, s: torch.Tensor, t: torch.Tensor,
                sample_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Weighted mean over samples of the mean absolute feature difference."""
        _check_pair(s, t, "PerceptualLoss")
        w = _weights(sample_mask, s.shape[0], s)
        if sample_mask is not None and sample_mask.dtype == torch.bool:
            idx = torch.nonzero(w > 0).flatten()  # one synchronisation; saves VGG on the others
            if idx.numel() == 0:
                return _f32(s)[:0].sum()  # zero that keeps the graph
            s, t, w = s[idx], t[idx], None
        fs = self.vgg(s)
        if t.requires_grad:
            ft = self.vgg(t)
        else:
            with torch.no_grad():
                ft = self.vgg(t)
        with _no_autocast(s):
            per_sample = (_f32(fs) - _f32(ft)).abs().flatten(1).mean(dim=1)
            return _masked_mean(per_sample, w)

