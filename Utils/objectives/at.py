"""Attention transfer (``--kd_method at``): Zagoruyko & Komodakis, "Paying More Attention to Attention:
Improving the Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017.

At each feature point the spatial attention map is the channel mean of the squared activations
(channel energy, p = 2), flattened and L2-normalised per sample; the loss is the mean squared
difference of student and teacher maps, summed over the points, weighted by beta / 2 with the
paper's beta = 1000 (default ``--Rate_feat`` 500), as in the authors' code. Channel-count free.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from Utils.objectives.features import FeatureKDObjective


def attention_map(f: torch.Tensor, p: int = 2) -> torch.Tensor:
    """(B, C, H, W) -> (B, HW): mean over channels of |f|^p, L2-normalised per sample."""
    return F.normalize(f.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(fs: torch.Tensor, ft: torch.Tensor, p: int = 2) -> torch.Tensor:
    """mean over the batch and pixels of (Q_S - Q_T)^2."""
    return (attention_map(fs, p) - attention_map(ft, p)).pow(2).mean()


class ATObjective(FeatureKDObjective):
    """``Rate_l1`` L1(S, y) + ``Rate_feat`` (default 500 = beta / 2) * sum over the points of :func:`at_loss`."""

    method = "at"
    default_weight = 500.0

    def point_loss(self, k, fs, ft):
        return at_loss(fs, ft)
