"""DUKD (``--kd_method dukd``): data-upcycling distillation (Zhang et al., "Data Upcycling Knowledge
Distillation for Image Super-Resolution", 2023).

The teacher's knowledge reaches the student through *upcycled* samples made from each training
batch, labelled by the teacher alone (no ground truth exists for them):

* **zoom-in**: a random crop of the HR patch, bicubic-downscaled by ``--dukd_zoom_in`` (default 2;
  1: the crop at HR resolution), of the LR patch's size: a view of the scene magnified relative to
  the LR input;
* **zoom-out**: the LR patch itself bicubic-downscaled by ``--dukd_zoom_out`` (default 2). When that
  is smaller than the student's smallest input (RFDN's ESA block needs 15x15) it is mirror-padded to
  that size: the padded image is simply another input the teacher labels;
* **label consistency** (``--dukd_consistency``, default on): the student sees each upcycled input
  under one random dihedral transform ``A`` (flips, 90-degree rotations, transposes: 8 in all) and its
  output is mapped back with ``A^-1`` before it is compared with the teacher's output on the
  untransformed input. :func:`dihedral` / :func:`dihedral_inverse` are exact inverses (tested for all 8).

Total: ``Rate_l1`` L1(S(x), y) + ``Rate_kd`` L1(S(x), T(x)) + ``Rate_dukd`` (L1 on the zoom-in
samples + L1 on the zoom-out samples); log columns ``l1``, ``kd``, ``zoom_in``, ``zoom_out``. Weights
default to 1. ``T(x)`` may come from ``--teacher_cache``; the upcycled samples are new every step,
so the teacher also runs on the fly (frozen, eval mode, no gradients, never in DDP). The student's
extra passes run on the unwrapped module inside the same backward, so DDP averages their gradients
with the main pass's.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from Utils import losses
from Utils.imresize import imresize_torch
from Utils.inference import probe_forward
from Utils.objectives.output import OutputKDObjective

log = logging.getLogger(__name__)

N_DIHEDRAL = 8


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` in 0..7 of the dihedral group on the last two axes: a left-right flip when
    ``k >= 4``, then ``k % 4`` counter-clockwise quarter turns (k = 5 and 7 are the two transposes)."""
    if not 0 <= k < N_DIHEDRAL:
        raise ValueError(f"dihedral transform index must be 0..7, got {k}")
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`dihedral` ``k``: undo the turns first, then the flip (the reverse order)."""
    if not 0 <= k < N_DIHEDRAL:
        raise ValueError(f"dihedral transform index must be 0..7, got {k}")
    x = torch.rot90(x, -(k % 4), dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def random_crops(x: torch.Tensor, size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One random ``size`` x ``size`` crop per sample of an NCHW batch (positions independent)."""
    n, _, h, w = x.shape
    if size > min(h, w):
        raise ValueError(f"crop of {size}x{size} from {h}x{w} patches")
    top = torch.randint(0, h - size + 1, (n,), generator=generator).tolist()
    left = torch.randint(0, w - size + 1, (n,), generator=generator).tolist()
    return torch.stack([x[i, :, t:t + size, l:l + size] for i, (t, l) in enumerate(zip(top, left))])


def mirror_pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect-pad an NCHW batch (split over both sides) to at least ``size`` x ``size``."""
    h, w = x.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if not ph and not pw:
        return x
    if ph >= h or pw >= w:
        raise ValueError(f"cannot mirror-pad {h}x{w} to {size}x{size} (the padding exceeds the image)")
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="reflect")


def smallest_input(model: nn.Module, start: int, stop: int) -> int:
    """The smallest square input in ``start..stop`` that ``model`` accepts (one no-grad probe per size)."""
    for m in range(max(1, start), stop + 1):
        try:
            probe_forward(model, m)
            return m
        except RuntimeError:
            continue
    return stop


class DUKDObjective(OutputKDObjective):
    """Output KD (its teacher ``t1``, weights and cache) plus the upcycled terms; see the module docstring."""

    method = "dukd"
    term_names = ("l1", "kd", "zoom_in", "zoom_out")

    def __init__(self, cfg: dict, device: torch.device):
        super().__init__(cfg, device)
        self.scale = int(cfg["scale"])
        self.w_up = float(cfg.get("Rate_dukd", 1.0))
        self.zoom_in, self.zoom_out = int(cfg.get("dukd_zoom_in", 2)), int(cfg.get("dukd_zoom_out", 2))
        if self.zoom_in < 1 or self.zoom_out < 2:
            raise ValueError(f"--dukd_zoom_in must be >= 1 and --dukd_zoom_out >= 2, got {self.zoom_in} "
                             f"and {self.zoom_out}")
        if self.zoom_in > self.scale:
            raise ValueError(f"--dukd_zoom_in {self.zoom_in} exceeds the scale {self.scale}: the crop would "
                             f"be larger than the HR patch allows")
        self.consistency = bool(cfg.get("dukd_consistency", True))
        self.student: Optional[nn.Module] = None
        self.min_input = 1
        log.info("--kd_method dukd: the teacher also runs on the fly for the upcycled samples (zoom-in /%d, "
                 "zoom-out /%d, label consistency %s); weight %g each", self.zoom_in, self.zoom_out,
                 "on" if self.consistency else "off", self.w_up)

    def attach_student(self, model: nn.Module) -> None:
        self.student = model
        lr_patch = int(self.cfg.get("patch_size", 64)) // self.scale
        self.min_input = smallest_input(model, lr_patch // self.zoom_out, lr_patch)
        if self.min_input > lr_patch // self.zoom_out:
            log.info("dukd: zoom-out inputs (%d px) are mirror-padded to %d px, the student's smallest input",
                     lr_patch // self.zoom_out, self.min_input)

    def upcycle(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The zoom-in and zoom-out inputs of a batch (LR ``x``, HR ``y``), detached, in [0, 1]."""
        h = x.shape[-1]
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            zin = random_crops(y.float(), h * self.zoom_in)
            if self.zoom_in > 1:
                zin = imresize_torch(zin, 1.0 / self.zoom_in).clamp(0.0, 1.0)
            zout = imresize_torch(x.float(), 1.0 / self.zoom_out).clamp(0.0, 1.0)
            zout = mirror_pad_to(zout, self.min_input)
        return zin, zout

    def _distil(self, inp: torch.Tensor) -> torch.Tensor:
        """L1 between the student on ``inp`` (under a random invertible transform, mapped back) and the teacher."""
        target = self.t1(inp)
        if self.consistency:
            k = int(torch.randint(0, N_DIHEDRAL, ()).item())
            out = dihedral_inverse(self.student(dihedral(inp, k)), k)
        else:
            out = self.student(inp)
        return losses.l1_loss(out.float(), target)

    def forward(self, sr: torch.Tensor, batch: dict):
        if self.student is None:
            raise RuntimeError("--kd_method dukd: attach_student was never called")
        terms, stats = super().forward(sr, batch)
        zin, zout = self.upcycle(batch["lr"], batch["hr"])
        terms["zoom_in"] = self.w_up * self._distil(zin)
        terms["zoom_out"] = self.w_up * self._distil(zout)
        return terms, stats
