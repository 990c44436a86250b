"""Frozen teachers and the teacher-output cache, shared by every objective that learns from a teacher.

:class:`FrozenTeacher`: a preset with loaded weights, frozen, in eval mode, run without gradients,
never wrapped in DDP. :func:`build_teacher_cache`: the teacher's SR of every training image computed
once (tiled when large) and stored as 8-bit ``.npy`` keyed by teacher name and checkpoint hash; the
dataset crops and augments it with the LR/HR box and transform (``--teacher_cache``).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from Model import get_model, get_preset
from Utils.checkpoint import resolve_checkpoint, sha256_file
from Utils.inference import pad_to_multiple, super_resolve

log = logging.getLogger(__name__)


class FrozenTeacher(nn.Module):
    """A preset with loaded weights, frozen and in eval mode; forward runs without gradients."""

    def __init__(self, name: str, checkpoint: str, device: torch.device, scale: int = 4):
        super().__init__()
        self.preset = get_preset(name)
        self.scale = scale
        self.path = resolve_checkpoint(checkpoint, self.preset.name)
        # built at the student's scale: a checkpoint for another scale fails here, at start, naming its scale
        self.net = get_model(self.preset.name, scale, checkpoint=self.path).to(device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self._sha: Optional[str] = None

    @property
    def sha256(self) -> str:
        if self._sha is None:
            self._sha = sha256_file(self.path)
        return self._sha

    def train(self, mode: bool = True) -> "FrozenTeacher":  # a teacher never leaves eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        scale = self.scale
        dev = x.device.type
        # The trainer runs the objective under its autocast: a preset unsafe in float16 (SwinIR
        # overflows) runs in float32 instead of giving a black or non-finite target.
        unsafe = (not self.preset.half_ok and torch.is_autocast_enabled(dev)
                  and torch.get_autocast_dtype(dev) == torch.float16)
        with torch.autocast(dev, enabled=False) if unsafe else contextlib.nullcontext():
            out = self.net(pad_to_multiple(x.float() if unsafe else x, self.preset.pad_multiple))
        return out[..., : h * scale, : w * scale].float()


def build_teacher_cache(teacher: FrozenTeacher, dataset, root: Path, key: str, tile: int = 256,
                        progress: bool = True) -> list[Path]:
    """SR of every training image by ``teacher``, stored once as uint8 ``.npy``; returns paths in record order."""
    from tqdm import tqdm

    from Utils.datasets import cache_key, save_npy_atomic
    from Utils.image_io import img2tensor, tensor2img

    folder = Path(root) / f"{key}-{teacher.preset.name}-{teacher.sha256[:12]}"
    folder.mkdir(parents=True, exist_ok=True)

    def entry(r) -> Path:  # keyed by the LR the teacher sees too: a changed LR file is a new entry
        lr = cache_key(r.lr_path, "lr") if r.lr_path is not None else f"matlab-bicubic-x{dataset.scale}"
        return folder / f"{cache_key(r.hr_path, f'teacher|{lr}')}.npy"

    paths = [entry(r) for r in dataset.records]
    if all(p.is_file() for p in paths):
        return paths
    # Several runs (a study's parallel arms) may build the same cache: one computes, the others wait for
    # it and then find every entry present, instead of all computing the same images.
    with open(folder / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        todo = [i for i, p in enumerate(paths) if not p.is_file()]
        if todo:
            log.info("teacher cache %s: computing %d of %d images", folder, len(todo), len(paths))
        device = next(teacher.net.parameters()).device
        for i in tqdm(todo, desc=f"cache {teacher.preset.name}", disable=not progress, leave=False):
            lr, hr = dataset.load_pair(i)
            sr = super_resolve(teacher.net, img2tensor(lr).to(device), teacher.scale, teacher.preset.pad_multiple,
                               tile=tile, tile_overlap=32, half_ok=teacher.preset.half_ok)
            img = tensor2img(sr)
            if img.shape[:2] != hr.shape[:2]:
                raise RuntimeError(f"teacher output {img.shape} does not match HR {hr.shape} for "
                                   f"{dataset.records[i].hr_path}")
            save_npy_atomic(paths[i], img)
    return paths


def attach_cached_outputs(dataset, teacher: FrozenTeacher, key: str, cfg: dict) -> None:
    """Give ``dataset`` the extra target ``key``: ``teacher``'s cached SR of every training image under
    ``--teacher_cache`` (built once), cropped and augmented with each patch."""
    dataset.add_extra_target(key, build_teacher_cache(teacher, dataset, Path(cfg["teacher_cache"]), key,
                                                      progress=not cfg.get("quiet")))


def single_teacher(cfg: dict, method: str, device: torch.device) -> FrozenTeacher:
    """The one teacher of a single-teacher method (``--t1_model_name`` / ``--t1_checkpoint``), at the
    student's scale; a one-line error naming the method when no checkpoint is given."""
    if not cfg.get("t1_checkpoint"):
        raise ValueError(f"--kd_method {method} needs --t1_checkpoint (the teacher's weights; "
                         f"--t1_model_name names its preset)")
    return FrozenTeacher(cfg["t1_model_name"], cfg["t1_checkpoint"], device, int(cfg["scale"]))
