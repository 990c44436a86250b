"""Output KD (``--kd_method output``): the classic distillation baseline of SR (Hinton et al.'s
distillation with the teacher's output as a regression target): ``Rate_kd`` L1(S, T) + ``Rate_l1``
L1(S, y), with T the output of one frozen teacher (``--t1_model_name`` / ``--t1_checkpoint``),
computed on the fly or read from ``--teacher_cache`` like DTKD's fidelity teacher."""
from __future__ import annotations

import logging

import torch

from Utils import losses
from Utils.objectives.base import Objective
from Utils.objectives.teachers import attach_cached_outputs, single_teacher

log = logging.getLogger(__name__)


class OutputKDObjective(Objective):
    """``Rate_l1`` L1(S, y) + ``Rate_kd`` L1(S, T1); log columns ``l1``, ``kd``. DUKD builds on it."""

    method = "output"
    term_names = ("l1", "kd")
    reads_teacher_cache = True

    def __init__(self, cfg: dict, device: torch.device):
        super().__init__()
        self.t1 = single_teacher(cfg, self.method, device)
        self.cfg = cfg
        self.w_l1, self.w_kd = float(cfg.get("Rate_l1", 1.0)), float(cfg.get("Rate_kd", 1.0))
        self.use_cache = bool(cfg.get("teacher_cache"))
        log.info("--kd_method %s: teacher %s %s", self.method, self.t1.preset.name,
                 "outputs from the teacher cache" if self.use_cache else "run on the fly on every batch")

    def attach_dataset(self, dataset) -> None:
        if self.use_cache:
            attach_cached_outputs(dataset, self.t1, "t1", self.cfg)

    def forward(self, sr: torch.Tensor, batch: dict):
        t = batch["t1"] if "t1" in batch else self.t1(batch["lr"])
        return {"l1": self.w_l1 * losses.l1_loss(sr, batch["hr"]), "kd": self.w_kd * losses.l1_loss(sr, t)}, {}
