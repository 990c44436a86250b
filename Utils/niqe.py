"""NIQE (Mittal et al., "Making a completely blind image quality analyzer"), MATLAB-equivalent.

Follows the reference MATLAB release as BasicSR's port does: the image is turned into MATLAB's
BT.601 luma (``16 + (65.481 R + 128.553 G + 24.966 B) / 255``), cropped, rounded to integers (as
MATLAB's uint8 ``rgb2ycbcr`` would), cut to whole 96x96 blocks, and described at two scales (the
second made by MATLAB bicubic ``imresize(img, 0.5)``, see :mod:`Utils.imresize`). At each scale the
image is normalised by a local mean and deviation (7x7 Gaussian, sigma 7/6, replicated borders),
and each block gives 18 features from generalised and asymmetric generalised Gaussian fits. The
score is the Mahalanobis-like distance between the multivariate Gaussian of the block features and
the pristine model (``mu_pris_param`` 1x36, ``cov_pris_param`` 36x36). Lower is better.

All blocks are processed together as arrays, so a 512x512 image takes a few tens of milliseconds.
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import NamedTuple, Optional, Union

import numpy as np
from scipy.ndimage import correlate
from scipy.special import gamma

from Utils.imresize import imresize

log = logging.getLogger(__name__)

__all__ = ["calculate_niqe", "niqe_from_gray", "load_niqe_params", "default_params_path",
           "shipped_params_path", "NIQE_PARAMS_URL", "NIQE_PARAMS_SHA256", "NiqeParams"]

PathLike = Union[str, Path]

NIQE_PARAMS_URL = ("https://raw.githubusercontent.com/XPixelGroup/BasicSR/master/"
                   "basicsr/metrics/niqe_pris_params.npz")
# SHA-256 of the shipped (and the published) parameter file; Utils/assets/README.md says where it comes from.
NIQE_PARAMS_SHA256 = "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"
BLOCK_SIZE = 96

# Grid of shape parameters searched by the moment-matching fit, as in the MATLAB code (0.2:0.001:10).
_GAM = 0.2 + 0.001 * np.arange(9801, dtype=np.float64)
_R_GAM = gamma(2.0 / _GAM) ** 2 / (gamma(1.0 / _GAM) * gamma(3.0 / _GAM))


class NiqeParams(NamedTuple):
    """Pristine NIQE model: feature mean (1x36), covariance (36x36) and the 7x7 Gaussian window."""

    mu: np.ndarray
    cov: np.ndarray
    window: np.ndarray


def shipped_params_path() -> Path:
    """The copy of the pristine parameters that ships with the project (``Utils/assets/``)."""
    return Path(__file__).resolve().parent / "assets" / "niqe_pris_params.npz"


def default_params_path() -> Path:
    """Where the pristine parameters are cached (and downloaded to) when the shipped copy is absent."""
    return Path(os.path.expanduser("~")) / ".cache" / "dtkd" / "niqe_pris_params.npz"


def _gaussian_window(size: int = 7, sigma: float = 7.0 / 6.0) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', size, sigma)``."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    k = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * sigma * sigma))
    return k / k.sum()


def _download_default(dest: Path) -> None:
    """Fetch the published BasicSR parameter file into ``dest``."""
    import torch.hub  # imported lazily: only needed for the download

    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading NIQE pristine parameters from %s to %s", NIQE_PARAMS_URL, dest)
    try:
        torch.hub.download_url_to_file(NIQE_PARAMS_URL, str(dest), progress=False)
    except Exception as exc:  # network errors come in many types
        raise FileNotFoundError(
            f"NIQE parameters not found at {dest} and the download from {NIQE_PARAMS_URL} failed "
            f"({type(exc).__name__}: {exc}); download the file by hand or pass params_path"
        ) from exc


@functools.lru_cache(maxsize=8)
def _load_params_cached(path: str) -> NiqeParams:
    try:
        with np.load(path) as data:
            missing = [k for k in ("mu_pris_param", "cov_pris_param") if k not in data.files]
            if missing:
                raise ValueError(f"{path}: not a NIQE parameter file (missing {', '.join(missing)}; "
                                 f"has {', '.join(data.files) or 'nothing'})")
            mu = np.array(data["mu_pris_param"], dtype=np.float64).reshape(1, -1)
            cov = np.array(data["cov_pris_param"], dtype=np.float64)
            window = (np.array(data["gaussian_window"], dtype=np.float64)
                      if "gaussian_window" in data.files else _gaussian_window())
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read NIQE parameters ({type(exc).__name__}: {exc})") from None
    if mu.shape != (1, 36) or cov.shape != (36, 36):
        raise ValueError(f"{path}: expected mu_pris_param 1x36 and cov_pris_param 36x36, "
                         f"got {mu.shape} and {cov.shape}")
    for arr in (mu, cov, window):
        arr.setflags(write=False)
    return NiqeParams(mu, cov, window)


def load_niqe_params(params_path: Optional[PathLike] = None) -> NiqeParams:
    """Load (once per path) the pristine model.

    ``None`` takes the shipped copy (:func:`shipped_params_path`); without it, the cache
    (:func:`default_params_path`), downloaded on first use.
    """
    if params_path is None:
        path = shipped_params_path()
        if not path.is_file():
            path = default_params_path()
            if not path.is_file():
                _download_default(path)
    else:
        path = Path(params_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"NIQE parameter file not found: {path} (it is niqe_pris_params.npz as distributed with "
                f"BasicSR, {NIQE_PARAMS_URL}; pass params_path=None for the copy shipped in Utils/assets/)")
    return _load_params_cached(str(path.resolve()))


def _nearest_grid_index(r: np.ndarray) -> np.ndarray:
    """``argmin((_R_GAM - r) ** 2)`` for each value of ``r`` (0 for NaN), without the N x 9801 table.

    ``_R_GAM`` increases strictly along the grid, so the minimiser is one of the two grid points around
    ``r`` (found by bisection); ties go to the lower index, as ``argmin`` does. Same result, same floats.
    Non-finite values give 0, as ``argmin`` over a row of NaN or infinite errors does.
    """
    r = np.asarray(r, dtype=np.float64)
    nan = ~np.isfinite(r)
    rr = np.where(nan, _R_GAM[0], r)
    hi = np.clip(np.searchsorted(_R_GAM, rr), 1, _R_GAM.size - 1)
    lo = hi - 1
    take_hi = (_R_GAM[hi] - rr) ** 2 < (_R_GAM[lo] - rr) ** 2
    return np.where(nan, 0, np.where(take_hi, hi, lo))


def _aggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric generalised Gaussian fit of each row of ``x`` (N x M): alpha, beta_left, beta_right."""
    sq = x * x
    neg = x < 0
    pos = x > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt((sq * neg).sum(axis=1) / neg.sum(axis=1))
        right_std = np.sqrt((sq * pos).sum(axis=1) / pos.sum(axis=1))
        gammahat = left_std / right_std
        rhat = np.abs(x).mean(axis=1) ** 2 / sq.mean(axis=1)
        rhatnorm = rhat * (gammahat ** 3 + 1) * (gammahat + 1) / (gammahat ** 2 + 1) ** 2
    # A NaN fit (a block without negative or positive values) takes the first grid point, as argmin
    # over an all-NaN row does in the reference port; its features stay NaN and are dropped later.
    idx = _nearest_grid_index(rhatnorm)
    alpha = _GAM[idx]
    const = np.sqrt(gamma(1.0 / alpha) / gamma(3.0 / alpha))
    return alpha, left_std * const, right_std * const


def _block_features(blocks: np.ndarray) -> np.ndarray:
    """18 NIQE features for each normalised block in ``blocks`` (N x h x w)."""
    n = blocks.shape[0]
    flat = blocks.reshape(n, -1)
    alpha, bl, br = _aggd_fit(flat)
    feats = [alpha, (bl + br) / 2.0]
    # Products of each coefficient with a (circularly shifted) neighbour: horizontal, vertical and
    # the two diagonals.
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        prod = (blocks * np.roll(blocks, shift, axis=(1, 2))).reshape(n, -1)
        alpha, bl, br = _aggd_fit(prod)
        mean = (br - bl) * (gamma(2.0 / alpha) / gamma(1.0 / alpha))
        feats.extend([alpha, mean, bl, br])
    return np.stack(feats, axis=1)


def _to_blocks(img: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """Split an image whose size is a multiple of the block size into an N x bh x bw array."""
    h, w = img.shape
    return img.reshape(h // bh, bh, w // bw, bw).transpose(0, 2, 1, 3).reshape(-1, bh, bw)


def niqe_from_gray(img: np.ndarray, params: NiqeParams, block_size: int = BLOCK_SIZE) -> float:
    """NIQE of a 2-D float image on the 0-255 scale (already converted, cropped and rounded)."""
    if img.ndim != 2:
        raise ValueError(f"niqe_from_gray expects a 2-D image, got shape {img.shape}")
    h, w = img.shape
    nbh, nbw = h // block_size, w // block_size
    if nbh * nbw < 2:
        raise ValueError(f"NIQE needs at least two {block_size}x{block_size} blocks; the image "
                         f"(after cropping) is {h}x{w}")
    cur = np.asarray(img, dtype=np.float64)[: nbh * block_size, : nbw * block_size]
    feats = []
    for scale in (1, 2):
        mu = correlate(cur, params.window, mode="nearest")
        sigma = np.sqrt(np.abs(correlate(cur * cur, params.window, mode="nearest") - mu * mu))
        normalised = (cur - mu) / (sigma + 1.0)
        size = block_size // scale
        feats.append(_block_features(_to_blocks(normalised, size, size)))
        if scale == 1:
            cur = imresize(cur / 255.0, 0.5, antialiasing=True) * 255.0
    dist = np.concatenate(feats, axis=1)
    mu_dist = np.nanmean(dist, axis=0, keepdims=True)
    finite_rows = dist[~np.isnan(dist).any(axis=1)]
    if finite_rows.shape[0] < 2:
        raise ValueError("NIQE undefined: fewer than two blocks have finite features (flat image?)")
    cov_dist = np.cov(finite_rows, rowvar=False)
    diff = params.mu - mu_dist
    inv = np.linalg.pinv((params.cov + cov_dist) / 2.0)
    quality = float((diff @ inv @ diff.T).item())
    return float(np.sqrt(quality))


def _luma(img: np.ndarray, test_y_channel: bool) -> np.ndarray:
    """2-D float64 image on the 0-255 scale: MATLAB Y (BT.601) or, if not ``test_y_channel``, gray."""
    if img.ndim == 2:
        return img.astype(np.float64)
    if img.ndim == 3 and img.shape[2] == 1:
        return img[:, :, 0].astype(np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"calculate_niqe expects an HWC RGB or HW gray image, got shape {img.shape}")
    rgb = img.astype(np.float64)
    if test_y_channel:
        return rgb @ np.array([65.481, 128.553, 24.966]) / 255.0 + 16.0
    return rgb @ np.array([0.299, 0.587, 0.114])


def calculate_niqe(img: np.ndarray, crop_border: int, params_path: Optional[PathLike] = None,
                   test_y_channel: bool = True) -> float:
    """NIQE of an HWC RGB or HW gray image (uint8, or float on the 0-255 scale); lower is better.

    RGB images are scored on MATLAB's Y channel (``test_y_channel``) or on the 0.299/0.587/0.114
    gray; a 2-D image is scored as it is. ``crop_border`` pixels are removed from each edge, then
    the values are rounded to integers as in the reference. ``params_path`` names
    ``niqe_pris_params.npz``; ``None`` uses the copy shipped in ``Utils/assets/`` (without it,
    ``~/.cache/dtkd/niqe_pris_params.npz``, downloaded from BasicSR on first use). The input is not modified.
    """
    if not isinstance(img, np.ndarray):
        raise TypeError(f"calculate_niqe expects a numpy array, got {type(img).__name__}")
    if img.dtype != np.uint8 and not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"calculate_niqe expects uint8 or float (0-255) pixels, got {img.dtype}")
    crop_border = int(crop_border)
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    params = load_niqe_params(params_path)
    gray = _luma(img, test_y_channel)
    if crop_border:
        gray = gray[crop_border:-crop_border, crop_border:-crop_border]
    gray = np.round(gray)  # the reference works on integer (uint8-like) luma
    return niqe_from_gray(gray, params)
