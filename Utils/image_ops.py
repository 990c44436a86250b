"""Checks and border crops of uint8 HxWx3 RGB arrays, shared by the metrics (:mod:`Utils.metrics`,
:mod:`Utils.lpips`). NumPy only, so that importing it costs nothing and it imports no other module
of the project."""
from __future__ import annotations

import numpy as np

__all__ = ["check_image", "check_pair", "shave"]


def check_image(img: np.ndarray, name: str = "img") -> None:
    """Raise ValueError unless ``img`` is a uint8 HxWx3 array."""
    if not isinstance(img, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (0-255), got dtype {img.dtype}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name} must be an HxWx3 RGB array, got shape {img.shape}")


def check_pair(img: np.ndarray, img2: np.ndarray) -> None:
    """Raise ValueError unless both are uint8 HxWx3 arrays of the same shape."""
    check_image(img, "img")
    check_image(img2, "img2")
    if img.shape != img2.shape:
        raise ValueError(f"image shapes differ: img {img.shape} vs img2 {img2.shape}")


def shave(img: np.ndarray, border: int, min_size: int = 1) -> np.ndarray:
    """View of ``img`` without ``border`` pixels on each side; at least ``min_size`` x ``min_size`` must be left."""
    if isinstance(border, bool) or int(border) != border or border < 0:
        raise ValueError(f"crop_border must be a non-negative integer, got {border!r}")
    border = int(border)
    h, w = img.shape[:2]
    left_h, left_w = h - 2 * border, w - 2 * border
    if left_h < min_size or left_w < min_size:
        raise ValueError(
            f"crop_border={border} leaves a {max(left_h, 0)}x{max(left_w, 0)} region of the "
            f"{h}x{w} image; at least {min_size}x{min_size} is needed")
    if border == 0:
        return img
    return img[border:h - border, border:w - border]
