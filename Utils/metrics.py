"""Full-reference and sharpness metrics on uint8 HWC RGB arrays.

Every function is pure (inputs are never modified) and computes in float64. The conventions are
the field standard that reproduces the published SR tables (DESIGN.md section 4):

* luminance ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` on 0-255 values, not rounded
  (``round_y=True`` rounds it to integers, as the original SRDTKD code does);
* ``crop_border`` pixels are removed from every side before measuring;
* PSNR with peak 255; SSIM of Wang et al. (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
  L 255), evaluated on the "valid" region only (windows that lie fully inside the image) and
  averaged over the map; on RGB the per-channel SSIMs are averaged.

NIQE and LPIPS live in their own modules; :func:`calculate_niqe` and :func:`calculate_lpips` here
are thin wrappers that import them on first use, so this module needs neither torch nor NIQE.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from scipy import ndimage

from Utils.image_ops import check_image, check_pair, shave

log = logging.getLogger(__name__)

# ITU-R BT.601 luma for 0-255 inputs (MATLAB rgb2ycbcr), applied to R, G, B in that order.
_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_Y_OFFSET = 16.0

# SSIM constants of Wang et al. (2004).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * 255.0) ** 2
_SSIM_C2 = (0.03 * 255.0) ** 2


def _gaussian_kernel_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian taps; their outer product is MATLAB's fspecial('gaussian')."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    taps = np.exp(-(offsets ** 2) / (2.0 * sigma * sigma))
    return taps / taps.sum()


_SSIM_TAPS = _gaussian_kernel_1d()


# --------------------------------------------------------------------------------------------
# luma and the planes to measure
# --------------------------------------------------------------------------------------------
def rgb2y(img: np.ndarray, round_y: bool = False) -> np.ndarray:
    """Luma of an HxWx3 RGB array with 0-255 values, as float64 HxW.

    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` (MATLAB ``rgb2ycbcr`` on 0-255 values).
    Not rounded by default; ``round_y=True`` rounds to the nearest integer (half to even), the
    convention of the original SRDTKD evaluation, which lowers PSNR by about 0.01-0.02 dB.
    """
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"rgb2y expects an HxWx3 RGB array, got shape {arr.shape}")
    y = arr.astype(np.float64) @ _Y_COEFFS / 255.0 + _Y_OFFSET
    return np.round(y) if round_y else y


def _channels(img: np.ndarray, test_y_channel: bool, round_y: bool) -> np.ndarray:
    """float64 CxHxW planes to measure: the Y plane (C=1) or the three RGB planes."""
    if test_y_channel:
        return rgb2y(img, round_y=round_y)[None]
    return np.moveaxis(img.astype(np.float64), 2, 0)


# --------------------------------------------------------------------------------------------
# PSNR and SSIM
# --------------------------------------------------------------------------------------------
def calculate_psnr(img: np.ndarray, img2: np.ndarray, crop_border: int,
                   test_y_channel: bool = True, round_y: bool = False) -> float:
    """PSNR in dB with peak 255 between two uint8 HxWx3 RGB images (inf when identical).

    ``crop_border`` pixels are removed from each side first; with ``test_y_channel`` the
    measure is on the luma plane (see :func:`rgb2y`), otherwise on all three RGB planes.
    """
    check_pair(img, img2)
    a = _channels(shave(img, crop_border), test_y_channel, round_y)
    b = _channels(shave(img2, crop_border), test_y_channel, round_y)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(255.0 ** 2 / mse)


def _filter_valid(stack: np.ndarray) -> np.ndarray:
    """Gaussian-weighted local means over the last two axes, 'valid' windows only.

    The 2-D Gaussian is separable, so two 1-D passes over the whole stack are exact; the border
    mode does not matter because every output that touches the border is cropped away.
    """
    half = SSIM_WINDOW // 2
    out = ndimage.correlate1d(stack, _SSIM_TAPS, axis=-1, mode="nearest")
    out = ndimage.correlate1d(out, _SSIM_TAPS, axis=-2, mode="nearest")
    return out[..., half:out.shape[-2] - half, half:out.shape[-1] - half]


def _ssim_planes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean SSIM of each CxHxW plane pair (float64), over the valid region."""
    stack = np.stack([a, b, a * a, b * b, a * b])  # 5 x C x H x W
    mu_a, mu_b, e_aa, e_bb, e_ab = _filter_valid(stack)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a, var_b, cov = e_aa - mu_aa, e_bb - mu_bb, e_ab - mu_ab
    num = (2.0 * mu_ab + _SSIM_C1) * (2.0 * cov + _SSIM_C2)
    den = (mu_aa + mu_bb + _SSIM_C1) * (var_a + var_b + _SSIM_C2)
    return (num / den).mean(axis=(-2, -1))


def calculate_ssim(img: np.ndarray, img2: np.ndarray, crop_border: int,
                   test_y_channel: bool = True, round_y: bool = False) -> float:
    """SSIM (Wang et al. 2004) between two uint8 HxWx3 RGB images.

    11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, L 255, evaluated where the window lies
    fully inside the cropped image and averaged over that map, as BasicSR and the MATLAB
    reference do. On RGB (``test_y_channel=False``) the three per-channel SSIMs are averaged.
    The cropped region must be at least 11x11.
    """
    check_pair(img, img2)
    a = _channels(shave(img, crop_border, SSIM_WINDOW), test_y_channel, round_y)
    b = _channels(shave(img2, crop_border, SSIM_WINDOW), test_y_channel, round_y)
    return float(_ssim_planes(a, b).mean())


# --------------------------------------------------------------------------------------------
# sharpness
# --------------------------------------------------------------------------------------------
def calculate_average_gradient(img: np.ndarray, crop_border: int = 0,
                               test_y_channel: bool = True) -> float:
    """Average gradient (a no-reference sharpness measure), on the 0-255 scale.

    With forward differences on the cropped plane ``P`` (the unrounded luma, or each RGB plane),
    ``dx = P[i, j+1] - P[i, j]`` and ``dy = P[i+1, j] - P[i, j]`` for ``i < H-1, j < W-1``, the
    value is ``mean(sqrt((dx^2 + dy^2) / 2))`` over those (H-1)x(W-1) positions; on RGB it is
    averaged over the channels. A higher value means more high-frequency detail (sharper, or
    noisier). The cropped region must be at least 2x2.
    """
    check_image(img, "img")
    planes = _channels(shave(img, crop_border, 2), test_y_channel, round_y=False)
    base = planes[:, :-1, :-1]
    dx = planes[:, :-1, 1:] - base
    dy = planes[:, 1:, :-1] - base
    return float(np.sqrt((dx * dx + dy * dy) / 2.0).mean())


# --------------------------------------------------------------------------------------------
# measures implemented elsewhere, imported on first use
# --------------------------------------------------------------------------------------------
def calculate_niqe(img: np.ndarray, *args: Any, **kwargs: Any) -> float:
    """NIQE of one uint8 HxWx3 RGB image; see :func:`Utils.niqe.calculate_niqe` for options.

    Imported lazily so that this module works before and without the NIQE module.
    """
    from .niqe import calculate_niqe as _niqe

    return _niqe(img, *args, **kwargs)


def calculate_lpips(img: np.ndarray, img2: np.ndarray, crop_border: int = 0,
                    **kwargs: Any) -> float:
    """LPIPS (AlexNet, v0.1) between two uint8 HxWx3 RGB images; see :mod:`Utils.lpips`.

    Imported lazily so that PSNR/SSIM users need neither torch nor the LPIPS weights.
    """
    from .lpips import calculate_lpips as _lpips

    return _lpips(img, img2, crop_border=crop_border, **kwargs)


__all__ = [
    "rgb2y", "calculate_psnr", "calculate_ssim", "calculate_average_gradient",
    "calculate_niqe", "calculate_lpips", "SSIM_WINDOW", "SSIM_SIGMA",
]
