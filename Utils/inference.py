"""The one inference helper: padding to what a model needs, overlapping tiles, and precision.

Evaluation (``main_for_infer.py``), validation during training and the benchmarks all call
:func:`super_resolve`, so the three always compute the same numbers.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Optional

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(amp: Optional[str], device: torch.device, half_ok: bool = True) -> Optional[torch.dtype]:
    """Autocast dtype for ``amp`` in {none, bf16, fp16} on ``device``.

    Autocast is used on CUDA only (on CPU, fp32 is both exact and usually faster for these convs).
    A preset that is unsafe in float16 (SwinIR overflows into black images) gets bfloat16 instead.
    """
    key = (amp or "none").lower()
    if key not in AMP_DTYPES:
        raise ValueError(f"unknown precision {amp!r}; choose one of {', '.join(AMP_DTYPES)}")
    dtype = AMP_DTYPES[key]
    if dtype is None or device.type != "cuda":
        return None
    if dtype is torch.float16 and not half_ok:
        log.warning("this model is unsafe in float16 (overflow); using bfloat16 autocast instead")
        dtype = torch.bfloat16
    if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        log.warning("bfloat16 is not supported on this GPU; running in float32")
        return None
    return dtype


def autocast_context(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``dtype`` or a null context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad H and W at the bottom/right to a multiple by mirroring (the SwinIR test procedure: flip-concat)."""
    if multiple <= 1:
        return x
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph:
        x = torch.cat([x, torch.flip(x, [2])], 2)[:, :, : h + ph, :]
    if pw:
        x = torch.cat([x, torch.flip(x, [3])], 3)[:, :, :, : w + pw]
    return x


def _forward_padded(model: nn.Module, x: torch.Tensor, scale: int, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    out = model(pad_to_multiple(x, multiple))
    return out[..., : h * scale, : w * scale]


def _tile_spans(length: int, tile: int, stride: int) -> list[tuple[int, int, int]]:
    """Tiles along one axis as (start, keep_from, keep_to): each tile keeps the part of the image up
    to the middle of its overlaps with its neighbours, so no output pixel comes from a tile border."""
    if length <= tile:
        return [(0, 0, length)]
    starts = list(range(0, length - tile, stride)) + [length - tile]
    bounds = [0] + [(starts[i] + starts[i - 1] + tile) // 2 for i in range(1, len(starts))] + [length]
    return [(s, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def _forward_tiled(model: nn.Module, x: torch.Tensor, scale: int, multiple: int, tile: int,
                   overlap: int) -> torch.Tensor:
    """Overlapping tiles stitched at the middle of each overlap.

    Exact (equal to the whole-image output) for any model whose receptive field radius is at most
    ``overlap / 2`` LR pixels; for global models (attention, ESA) the seams are small.
    """
    if tile % multiple:
        tile += multiple - tile % multiple
    if overlap >= tile:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile size {tile}")
    b, _, h, w = x.shape
    stride = tile - overlap
    out: Optional[torch.Tensor] = None
    for y0, ya, yb in _tile_spans(h, tile, stride):
        for x0, xa, xb in _tile_spans(w, tile, stride):
            sr = _forward_padded(model, x[..., y0: y0 + tile, x0: x0 + tile], scale, multiple)
            if out is None:
                out = torch.empty(b, sr.shape[1], h * scale, w * scale, device=x.device, dtype=torch.float32)
            out[..., ya * scale: yb * scale, xa * scale: xb * scale] = \
                sr[..., (ya - y0) * scale: (yb - y0) * scale, (xa - x0) * scale: (xb - x0) * scale]
    assert out is not None
    return out


@torch.inference_mode()
def super_resolve(model: nn.Module, lr: torch.Tensor, scale: int = 4, pad_multiple: int = 1,
                  tile: Optional[int] = None, tile_overlap: int = 32, amp: Optional[str] = None,
                  half_ok: bool = True, channels_last: bool = False) -> torch.Tensor:
    """Super-resolve an NCHW batch in [0, 1] with ``model`` (on the model's device).

    Pads to ``pad_multiple`` and crops back; with ``tile`` (LR pixels) runs overlapping tiles so that
    large images fit in memory; ``amp`` in {none, bf16, fp16} autocasts on CUDA. Returns float32,
    not clamped (callers quantise with :func:`Utils.image_io.tensor2img`).
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else lr.device
    x = lr.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = resolve_amp(amp, device, half_ok)
    with autocast_context(device, dtype):
        if tile is not None and tile > 0 and (x.shape[-2] > tile or x.shape[-1] > tile):
            out = _forward_tiled(model, x, scale, pad_multiple, tile, tile_overlap)
        else:
            out = _forward_padded(model, x, scale, pad_multiple)
    return out.float()


def probe_forward(model: nn.Module, size: int) -> torch.Tensor:
    """One forward pass of a zero ``size`` x ``size`` RGB image on the model's device, in eval mode and
    without gradients, the model's mode restored after; the output, or the model's own error."""
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(torch.zeros(1, 3, size, size, device=dev))
    finally:
        model.train(was_training)
