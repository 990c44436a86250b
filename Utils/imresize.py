"""MATLAB-equivalent bicubic resize (``imresize(img, scale, 'bicubic')``) in NumPy and PyTorch.

The algorithm is MATLAB's: a cubic kernel with a = -0.5, widened by ``1/scale`` when shrinking
(antialiasing), output size ``ceil(in * scale)``, input coordinates ``u = x / scale + 0.5 (1 - 1 / scale)``,
symmetric (mirror, edge pixel repeated) border handling, and one separable pass per axis, the axis
with the smaller scale first (height first when the scales are equal). For uint8 images MATLAB keeps
the intermediate image in uint8, so the result is rounded (half away from zero) and clipped after
each pass; that is what reproduces the official LR files of the SR benchmarks bit for bit.

:func:`imresize` works on NumPy arrays (HW or HWC; uint8 in, uint8 out; float in, float out, not
rounded). :func:`imresize_torch` applies the same weights as matrix products to float tensors
(..., H, W) on any device, so it is differentiable. :func:`modcrop` crops H and W to a multiple.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Optional, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = ["imresize", "imresize_torch", "modcrop", "resize_weights", "resize_matrix"]

_KERNEL_WIDTH = 4.0  # support of the bicubic kernel, in input pixels, before antialiasing


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def _output_length(in_length: int, scale: float) -> int:
    """MATLAB's ``ceil(in * scale)``, tolerant of a product that misses an integer by rounding."""
    exact = in_length * scale
    nearest = round(exact)
    if abs(exact - nearest) < 1e-9 * max(1.0, abs(exact)):
        return int(nearest)
    return int(math.ceil(exact))


@functools.lru_cache(maxsize=128)
def resize_weights(in_length: int, out_length: int, scale: float,
                   antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-output weights and (0-based, mirrored) input indices along one axis.

    Returns ``(weights, indices)``, both ``out_length x P``: output pixel ``i`` is
    ``sum_k weights[i, k] * input[indices[i, k]]``. Rows of ``weights`` sum to one. The arrays are
    cached and read-only.
    """
    if in_length < 1 or out_length < 1:
        raise ValueError(f"resize lengths must be positive, got {in_length} -> {out_length}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    shrink = scale < 1 and antialiasing
    width = _KERNEL_WIDTH / scale if shrink else _KERNEL_WIDTH
    x = np.arange(1, out_length + 1, dtype=np.float64)  # 1-based output coordinates, as in MATLAB
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)  # matching position in the input (1-based)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    dist = u[:, None] - idx
    weights = scale * _cubic(dist * scale) if shrink else _cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Symmetric padding: index sequence 1..n, n..1 repeated; map to 0-based positions.
    idx0 = idx.astype(np.int64) - 1
    period = 2 * in_length
    folded = np.mod(idx0, period)
    folded = np.where(folded >= in_length, period - 1 - folded, folded)
    # Drop tap columns whose weights are zero for every output (MATLAB does the same).
    keep = np.any(weights != 0, axis=0)
    weights = np.ascontiguousarray(weights[:, keep])
    folded = np.ascontiguousarray(folded[:, keep])
    weights.setflags(write=False)
    folded.setflags(write=False)
    return weights, folded


@functools.lru_cache(maxsize=128)
def resize_matrix(in_length: int, out_length: int, scale: float, antialiasing: bool = True) -> np.ndarray:
    """Dense ``out_length x in_length`` float64 matrix of the 1-D resize (read-only, cached)."""
    weights, indices = resize_weights(in_length, out_length, scale, antialiasing)
    mat = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_length)[:, None], indices.shape)
    np.add.at(mat, (rows, indices), weights)  # mirrored taps can hit one input pixel twice
    mat.setflags(write=False)
    return mat


def _plan(in_hw: Sequence[int], scale: Optional[float],
          output_shape: Optional[Sequence[int]]) -> list[tuple[int, int, int, float]]:
    """Resize passes as ``(axis, in_length, out_length, scale)``, in MATLAB's order."""
    h, w = int(in_hw[0]), int(in_hw[1])
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale and output_shape")
    if output_shape is not None:
        if len(output_shape) != 2:
            raise ValueError(f"output_shape must be (h, w), got {output_shape!r}")
        oh, ow = int(output_shape[0]), int(output_shape[1])
        if oh < 1 or ow < 1:
            raise ValueError(f"output_shape must be positive, got {output_shape!r}")
        scales = (oh / h, ow / w)
        outs = (oh, ow)
    else:
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale}")
        scales = (scale, scale)
        outs = (_output_length(h, scale), _output_length(w, scale))
    passes = [(0, h, outs[0], scales[0]), (1, w, outs[1], scales[1])]
    # MATLAB resizes the dimension with the smallest scale first; stable, so height wins ties.
    passes.sort(key=lambda p: p[3])
    return passes


_CHUNK_ELEMENTS = 1 << 20  # output values per block: keeps the temporaries in cache


def _resize_axis_np(arr: np.ndarray, axis: int, weights: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """One separable pass along ``axis`` (0 = height, 1 = width) of an HW or HWC array, in float64.

    The taps are summed in order, as MATLAB's resize kernel does, over blocks of the other axis.
    """
    n_out = weights.shape[0]
    other = 1 - axis
    out_shape = list(arr.shape)
    out_shape[axis] = n_out
    out = np.empty(out_shape, dtype=np.float64)
    per_line = n_out * (arr.shape[2] if arr.ndim == 3 else 1)
    step = max(1, _CHUNK_ELEMENTS // per_line)
    wshape = [1] * arr.ndim
    wshape[axis] = n_out
    cols = [weights[:, k].reshape(wshape) for k in range(weights.shape[1])]
    for start in range(0, arr.shape[other], step):
        sl = [slice(None)] * arr.ndim
        sl[other] = slice(start, start + step)
        part = arr[tuple(sl)].astype(np.float64, copy=False)
        acc = out[tuple(sl)]
        tmp = np.empty_like(acc)
        np.multiply(np.take(part, indices[:, 0], axis=axis), cols[0], out=acc)
        for k in range(1, len(cols)):
            np.multiply(np.take(part, indices[:, k], axis=axis), cols[k], out=tmp)
            acc += tmp
    return out


def _round_uint8(arr: np.ndarray) -> np.ndarray:
    """MATLAB's conversion of a double to uint8: round half away from zero, saturate."""
    return np.clip(np.floor(arr + 0.5), 0, 255).astype(np.uint8)


def imresize(img: np.ndarray, scale: Optional[float] = None, antialiasing: bool = True, *,
             output_shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """Resize an HW or HWC array exactly like MATLAB ``imresize(img, scale, 'bicubic')``.

    Give ``scale`` (one factor for both axes) or ``output_shape=(h, w)``. uint8 input gives uint8
    output, rounded and clipped after each pass as MATLAB does; float input gives output of the same
    float dtype, computed in float64 and not rounded or clipped. The input is never modified.
    """
    if not isinstance(img, np.ndarray):
        raise TypeError(f"imresize expects a numpy array, got {type(img).__name__}")
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize expects an HW or HWC array, got shape {img.shape}")
    is_uint8 = img.dtype == np.uint8
    if not is_uint8 and not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"imresize supports uint8 and float arrays, got {img.dtype}")
    passes = _plan(img.shape[:2], scale, output_shape)
    cur = img
    for axis, n_in, n_out, s in passes:
        weights, indices = resize_weights(n_in, n_out, s, bool(antialiasing))
        res = _resize_axis_np(cur, axis, weights, indices)
        cur = _round_uint8(res) if is_uint8 else res
    if is_uint8:
        return cur
    return cur.astype(img.dtype, copy=False)


def imresize_torch(x: torch.Tensor, scale: Optional[float] = None, antialiasing: bool = True, *,
                   output_shape: Optional[Sequence[int]] = None) -> torch.Tensor:
    """MATLAB bicubic resize of a float tensor ``(..., H, W)`` (NCHW, CHW or HW), differentiable.

    The same weights as :func:`imresize`, applied as matrix products in the tensor's dtype on its
    device; no rounding or clipping (it matches the NumPy float path, not the uint8 path).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"imresize_torch expects a tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"imresize_torch expects (..., H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"imresize_torch expects a floating-point tensor, got {x.dtype}")
    passes = _plan(x.shape[-2:], scale, output_shape)
    out = x
    for axis, n_in, n_out, s in passes:
        mat = torch.from_numpy(np.array(resize_matrix(n_in, n_out, s, bool(antialiasing))))
        mat = mat.to(device=x.device, dtype=x.dtype)
        out = torch.matmul(mat, out) if axis == 0 else torch.matmul(out, mat.t())
    return out


def modcrop(img: np.ndarray, multiple: int) -> np.ndarray:
    """Copy of an HW or HWC array with H and W cropped (bottom and right) to a multiple."""
    multiple = int(multiple)
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if img.ndim not in (2, 3):
        raise ValueError(f"modcrop expects an HW or HWC array, got shape {img.shape}")
    h, w = img.shape[:2]
    h2, w2 = h - h % multiple, w - w % multiple
    if h2 == 0 or w2 == 0:
        raise ValueError(f"image of size {h}x{w} is smaller than the multiple {multiple}")
    return img[:h2, :w2].copy()
