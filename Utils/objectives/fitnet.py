"""FitNet (``--kd_method fitnet``): Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.

At each feature point a learned 1x1 convolution (the regressor, with bias) maps the student's
features to the teacher's channel count; the loss is the mean squared error to the teacher's
features, summed over the points, weight 1 by default. The paper trains the hint in a separate first
stage; like the SR distillation literature's FitNet baseline we train it in one stage with the
ground-truth term. The adapters are trained with the student (their parameters are in the trainer's
optimizer as a second parameter group), saved in checkpoints (``objective``) and restored on resume;
they are not part of the exported weights.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from Utils.objectives.features import FeatureKDObjective, probe_channels


def fitnet_loss(adapted: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """mean over all entries of (adapter(F_S) - F_T)^2."""
    return (adapted - ft).pow(2).mean()


class FitNetObjective(FeatureKDObjective):
    """``Rate_l1`` L1(S, y) + ``Rate_feat`` (default 1) * sum over the points of :func:`fitnet_loss`."""

    method = "fitnet"
    default_weight = 1.0

    def build(self, model: nn.Module) -> None:
        s_ch = probe_channels(model, [s for s, _ in self.pairs], f"student {self.student_name}")
        t_ch = probe_channels(self.teacher.net, [t for _, t in self.pairs], f"teacher {self.teacher.preset.name}")
        self.adapters = nn.ModuleList(nn.Conv2d(cs, ct, 1) for cs, ct in zip(s_ch, t_ch)).to(self.device)

    def point_loss(self, k, fs, ft):
        return fitnet_loss(self.adapters[k](fs), ft)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    def learned_state(self) -> Optional[dict]:
        return {"adapters": self.adapters.state_dict()}

    def load_learned_state(self, state: dict) -> None:
        self.adapters.load_state_dict(state["adapters"], strict=True)
