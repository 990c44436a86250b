"""Training objectives: what the trainer minimises, as named and weighted loss terms.

Every training mode lives here, one module per method behind the one interface of
:class:`~Utils.objectives.base.Objective` (see there for the call convention):

========================  ===========  ====================================================
module                    ``--kd_method``  method
========================  ===========  ====================================================
``ground_truth.py``       ``gt``       L1 (and edge / VGG / texture terms) to the ground truth
``dtkd.py``               ``dtkd``     DTKD: dual teachers, entropy routing, attention KD
``output.py``             ``output``   output KD: L1 to one teacher's output + L1 to ground truth
``fakd.py``               ``fakd``     FAKD: spatial feature affinity (He et al., ICIP 2020)
``fitnet.py``             ``fitnet``   FitNet: learned 1x1 adapter, L2 hints (Romero et al., 2015)
``at.py``                 ``at``       attention transfer (Zagoruyko & Komodakis, ICLR 2017)
``dukd.py``               ``dukd``     DUKD: teacher-labelled zoom-in/out samples (Zhang et al., 2023)
========================  ===========  ====================================================

``adversarial.py`` holds the adversarial term (``--Rate_adv``: a discriminator learned from scratch)
that the ground-truth and DTKD objectives add. ``features.py`` holds what the feature methods share: the declared feature points per preset, the
forward hooks that collect them, the frozen teacher run on the fly. Adding a method is one new module
and one line in :data:`OBJECTIVES`.
"""
from __future__ import annotations

import torch

from Utils.objectives.at import ATObjective
from Utils.objectives.base import Objective
from Utils.objectives.dtkd import DTKDObjective
from Utils.objectives.dukd import DUKDObjective
from Utils.objectives.fakd import FAKDObjective
from Utils.objectives.fitnet import FitNetObjective
from Utils.objectives.ground_truth import GroundTruthObjective
from Utils.objectives.output import OutputKDObjective

__all__ = ["OBJECTIVES", "Objective", "build_objective", "kd_method"]

OBJECTIVES: dict[str, type[Objective]] = {
    "gt": GroundTruthObjective,
    "dtkd": DTKDObjective,
    "output": OutputKDObjective,
    "fakd": FAKDObjective,
    "fitnet": FitNetObjective,
    "at": ATObjective,
    "dukd": DUKDObjective,
}


def kd_method(cfg: dict) -> str:
    """The method of ``cfg``: ``--kd_method`` when given, else ``dtkd`` with ``--train_by_TT True``, else ``gt``."""
    method = cfg.get("kd_method")
    if method:
        return method
    return "dtkd" if cfg.get("train_by_TT") else "gt"


def build_objective(cfg: dict, device: torch.device) -> Objective:
    """The objective for ``cfg`` (see :func:`kd_method`)."""
    method = kd_method(cfg)
    if method not in OBJECTIVES:
        raise ValueError(f"unknown --kd_method {method!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[method](cfg, device)
