"""What the feature-distillation methods (``fakd``, ``fitnet``, ``at``) share.

* **Feature points**, declared by name per preset in :data:`FEATURE_POINTS`: the output of each
  distillation block (RFDN: ``B1``..``B4``; IMDN: ``IMDB1``..``IMDB6``). ``--kd_student_points`` /
  ``--kd_teacher_points`` choose others by module name. Without them, the student's k-th of n points
  is paired with the teacher's point ``ceil((k + 1) m / n) - 1`` of m (evenly spaced, last with last:
  RFDN B1..B4 with IMDN IMDB2, IMDB3, IMDB5, IMDB6).
* **Forward hooks** (:class:`FeatureTap`) collect them; no model and no key name changes. The student's
  hooks keep features only in training mode (validation passes collect nothing).
* **The teacher** (``--t1_model_name`` / ``--t1_checkpoint``) is a
  :class:`~Utils.objectives.teachers.FrozenTeacher` (:func:`~Utils.objectives.teachers.single_teacher`)
  (frozen, eval mode, no gradients, never in DDP) run on every batch: its features cannot be cached.
* **Total**: ``Rate_l1`` L1(S, y) + ``Rate_feat`` * (sum over the point pairs of the method's loss),
  the loss computed in float32 outside autocast. ``--Rate_feat`` defaults to the method's paper value.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
import torch.nn as nn

from Model import get_preset
from Utils import losses
from Utils.inference import probe_forward
from Utils.objectives.base import Objective
from Utils.objectives.teachers import FrozenTeacher, single_teacher

log = logging.getLogger(__name__)

FEATURE_POINTS: dict[str, tuple[str, ...]] = {
    "RFDN": ("B1", "B2", "B3", "B4"),
    "RFDN_AIM": ("B1", "B2", "B3", "B4"),
    "IMDN": ("IMDB1", "IMDB2", "IMDB3", "IMDB4", "IMDB5", "IMDB6"),
}


def declared_points(preset: str, method: str = "feature distillation") -> tuple[str, ...]:
    """The preset's declared feature points; a one-line error for a preset without them."""
    if preset not in FEATURE_POINTS:
        raise ValueError(f"--kd_method {method}: preset {preset} declares no feature points (declared for "
                         f"{', '.join(FEATURE_POINTS)}); name them with --kd_student_points / "
                         f"--kd_teacher_points or add them to FEATURE_POINTS in Utils/objectives/features.py")
    return FEATURE_POINTS[preset]


def pair_points(student: Sequence[str], teacher: Sequence[str]) -> list[tuple[str, str]]:
    """Student point k of n with teacher point ceil((k + 1) m / n) - 1 of m (evenly spaced, last with last)."""
    n, m = len(student), len(teacher)
    return [(student[k], teacher[-(-(k + 1) * m // n) - 1]) for k in range(n)]


class FeatureTap:
    """Forward hooks that keep the outputs of named submodules of ``model`` until :meth:`take`."""

    def __init__(self, model: nn.Module, names: Sequence[str], who: str, training_only: bool = False):
        modules = dict(model.named_modules())
        for n in names:
            if not n or n not in modules:
                blocks = [k for k, _ in model.named_children()]
                raise ValueError(f"{who} has no module {n!r} to take features from (its top-level modules: "
                                 f"{', '.join(blocks)})")
        self.names = tuple(names)
        self.training_only = training_only
        self.feats: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if self.training_only and not module.training:
                return
            self.feats[name] = output
        return hook

    def take(self) -> list[torch.Tensor]:
        """The features of the last forward pass, in point order; the tap is emptied."""
        missing = [n for n in self.names if n not in self.feats]
        if missing:
            raise RuntimeError(f"no features collected at {', '.join(missing)}: was the model run in training mode?")
        out = [self.feats[n] for n in self.names]
        self.feats.clear()
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.feats.clear()


def probe_channels(model: nn.Module, names: Sequence[str], who: str, size: int = 32) -> list[int]:
    """Channels of the features at ``names``, by one small forward pass (no gradients, eval mode)."""
    tap = FeatureTap(model, names, who)
    try:
        probe_forward(model, size)
        return [f.shape[1] for f in tap.take()]
    finally:
        tap.remove()


class FeatureKDObjective(Objective):
    """Base of the feature methods: ``Rate_l1`` L1(S, y) + ``Rate_feat`` * sum of :meth:`point_loss`."""

    method = ""
    default_weight = 1.0

    def __init__(self, cfg: dict, device: torch.device, teacher: Optional[FrozenTeacher] = None):
        super().__init__()
        # ``teacher``: one the caller already holds (DTKD's perceptual teacher), not loaded a second time
        self.teacher = teacher if teacher is not None else single_teacher(cfg, self.method, device)
        self.cfg = cfg
        self.device = device
        student = get_preset(cfg["model_name"]).name
        s_pts = tuple(cfg.get("kd_student_points") or declared_points(student, self.method))
        t_given = cfg.get("kd_teacher_points")
        if t_given:
            if len(t_given) != len(s_pts):
                raise ValueError(f"--kd_teacher_points: {len(t_given)} points for {len(s_pts)} student points "
                                 f"({', '.join(s_pts)})")
            pairs = list(zip(s_pts, t_given))
        else:
            pairs = pair_points(s_pts, declared_points(self.teacher.preset.name, self.method))
        self.pairs = pairs
        self.t_tap = FeatureTap(self.teacher.net, [t for _, t in pairs], f"teacher {self.teacher.preset.name}")
        self.s_tap: Optional[FeatureTap] = None
        self.student_name = student
        w = cfg.get("Rate_feat")
        self.w_l1 = float(cfg.get("Rate_l1", 1.0))
        self.w_feat = float(self.default_weight if w is None else w)
        self.term_names = ("l1", self.method)
        log.info("--kd_method %s: teacher %s runs on the fly on every batch (feature distillation needs its "
                 "features; no teacher cache); weight %g; points %s", self.method, self.teacher.preset.name,
                 self.w_feat, ", ".join(f"{s}<-{t}" for s, t in pairs))

    def attach_student(self, model: nn.Module) -> None:
        s_pts = [s for s, _ in self.pairs]
        self.s_tap = FeatureTap(model, s_pts, f"student {self.student_name}", training_only=True)
        self.build(model)

    def build(self, model: nn.Module) -> None:
        """Subclasses: learned parts that need the student (FitNet's adapters)."""

    def point_loss(self, k: int, fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def feature_loss(self, s_feats: list[torch.Tensor], t_feats: list[torch.Tensor]) -> torch.Tensor:
        total = None
        for k, (fs, ft) in enumerate(zip(s_feats, t_feats)):
            h, w = fs.shape[-2:]
            ft = ft[..., :h, :w]  # a teacher that pads its input gives larger maps
            v = self.point_loss(k, fs.float(), ft.float())
            total = v if total is None else total + v
        return total

    def feature_term(self, x: torch.Tensor, sample_mask: Optional[torch.Tensor] = None,
                     teacher_ran: bool = False) -> torch.Tensor:
        """The unweighted feature loss of the student's last training pass on ``x``, over the samples of
        ``sample_mask`` (all when None; 0 with a graph when none). The teacher runs on those samples
        alone, unless ``teacher_ran``: the caller has just run it on the whole ``x`` and its hooks hold
        the features."""
        if self.s_tap is None:
            raise RuntimeError(f"--kd_method {self.method}: attach_student was never called")
        s_feats = self.s_tap.take()
        t_feats = self.t_tap.take() if teacher_ran else None
        if sample_mask is not None:
            sel = torch.nonzero(sample_mask.to(device=x.device).bool()).flatten()
            if sel.numel() == 0:
                return sum(f.float().sum() for f in s_feats) * 0.0
            if sel.numel() < x.shape[0]:
                s_feats, x = [f.index_select(0, sel) for f in s_feats], x.index_select(0, sel)
                t_feats = None if t_feats is None else [f.index_select(0, sel) for f in t_feats]
        if t_feats is None:
            self.teacher(x)
            t_feats = self.t_tap.take()
        with torch.autocast(x.device.type, enabled=False):
            return self.feature_loss(s_feats, t_feats)

    def forward(self, sr: torch.Tensor, batch: dict):
        feat = self.feature_term(batch["lr"])
        return {"l1": self.w_l1 * losses.l1_loss(sr, batch["hr"]), self.method: self.w_feat * feat}, {}
