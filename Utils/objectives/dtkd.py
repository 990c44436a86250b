"""DTKD (``--kd_method dtkd``, or ``--train_by_TT True``): dual-teacher distillation objective, frozen teachers and the teacher-output cache.

Our definition of the method (DESIGN.md section 6), each part switchable for ablations:

* fidelity teacher F (``--t1_model_name``, IMDN by default) and perceptual teacher P
  (``--t2_model_name``, EdgeSRN; ``--t2_checkpoint ''`` for F alone), frozen, in eval mode, run
  without gradients on the student's input (same [0, 1] range), never wrapped in DDP;
* entropy routing (``--entropy_gate auto|none|<bits>``): a sample whose HR patch has a gray-level
  entropy above the gate is texture-rich and learns from P, the others from F; ``none`` lets both
  teachers supervise every sample (their KD terms averaged);
* the KD term (``--Rate_kd``) is plain L1 to the routed teacher, or error attention, trust
  attention or both (``--loss_attn``);
* on texture-rich samples only: ``--Rate_lm`` edge loss and ``--Rate_lpts`` VGG loss to P;
* ``--Rate_l1`` L1 to the ground truth and ``--Rate_lbp`` back-projection to the LR input;
* ours, not the paper's: ``--Rate_tex`` texture statistics to P on texture-rich samples
  (``losses.texture_loss``), ``--t2_pixel_kd False`` (P's pixels are never a KD target), and
  ``--t2_band SIGMA`` (band-split target on texture-rich samples: F's low frequencies plus P's high
  frequencies, ``G*F + (P - G*P)``, so P teaches detail but not structure), and ``--t2_blend A``
  (the target on texture-rich samples is the pixel blend ``(1 - A) F + A P``), and ``--Rate_pfeat W``
  (*P's feature hints*: FitNet hints, a learned 1x1 adapter and MSE, from the student's declared
  feature points to P's, on texture-rich samples; with the cache P runs on those samples for its
  features, without it its one pass on the batch serves both its output and its features), and
  ``--Rate_adv W`` (an adversarial term, :mod:`.adversarial`: a discriminator learned from scratch
  tells the student's outputs from P's (``--adv_real teacher``, the default with P) or from the
  ground truth (``gt``), or both as real (``both``), on the texture-rich samples; P's texture
  *distribution*, not its pixels), and ``--adv_trust True`` (the student's adversarial term weighted,
  per discriminator patch, by the fraction of pixels where P is closer to the ground truth than the
  student (``losses.trust_map``): realism is pushed only where P shows that it can be had, DTKD's
  trust attention applied to the GAN in the spirit of LDL's artifact map, Liang et al., CVPR 2022).

With ``--teacher_cache DIR`` each teacher's SR of every training image is computed once and cropped
with the LR/HR patch (:mod:`Utils.objectives.teachers`), so a step costs about a plain step.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from Utils import losses
from Utils.objectives.adversarial import AdversarialTerm, build_adversarial
from Utils.objectives.base import Objective
from Utils.objectives.fitnet import FitNetObjective
from Utils.objectives.teachers import FrozenTeacher, attach_cached_outputs
from Utils.routing import EntropyRouter, auto_gate, parse_gate

log = logging.getLogger(__name__)

TEACHER_KEYS = ("t1", "t2")  # batch keys of cached fidelity / perceptual teacher outputs


class DTKDObjective(Objective):
    """The DTKD loss (see the module docstring); logs every term and the routed fraction."""

    stat_names = ("frac_perceptual",)
    reads_teacher_cache = True

    def __init__(self, cfg: dict, device: torch.device):
        super().__init__()
        if not cfg.get("t1_checkpoint"):
            raise ValueError("--train_by_TT True needs --t1_checkpoint (the fidelity teacher's weights)")
        if cfg.get("t2_checkpoint") is None:  # '' is an explicit choice; a forgotten flag is not
            raise ValueError("--train_by_TT True needs --t2_checkpoint (the perceptual teacher's weights), "
                             "or --t2_checkpoint '' to distil from the fidelity teacher alone")
        self.cfg = cfg
        scale = int(cfg["scale"])  # teachers run at the student's scale
        self.t1 = FrozenTeacher(cfg["t1_model_name"], cfg["t1_checkpoint"], device, scale)
        self.t2 = FrozenTeacher(cfg["t2_model_name"], cfg["t2_checkpoint"], device, scale) if cfg["t2_checkpoint"] else None
        gate = parse_gate(str(cfg.get("entropy_gate", "auto")))
        self._gate_auto = gate == "auto"
        self.router = EntropyRouter(None if (gate == "auto" or self.t2 is None) else gate)
        self.attn = cfg.get("loss_attn", "none")
        self.w_l1, self.w_kd = float(cfg.get("Rate_l1", 1.0)), float(cfg.get("Rate_kd", 1.0))
        self.w_edge, self.w_pts = float(cfg.get("Rate_lm", 0.0)), float(cfg.get("Rate_lpts", 0.0))
        self.w_bp = float(cfg.get("Rate_lbp", 0.0))
        self.edge_kind = cfg.get("edge_kind", "sobel")
        self.scale = int(cfg["scale"])
        if self.t2 is None and (self.w_edge > 0 or self.w_pts > 0):
            log.warning("no perceptual teacher: --Rate_lm and --Rate_lpts are ignored")
            self.w_edge = self.w_pts = 0.0
        if self.w_pts > 0:
            try:
                self.vgg = losses.PerceptualLoss(weights_path=cfg.get("vgg_weights")).to(device)
            except losses.PerceptualWeightsError as exc:  # a ValueError: main.py reports it in one line, exit 1
                raise ValueError(f"--Rate_lpts {self.w_pts:g} needs the VGG19 weights: {exc}") from None
        self.w_tex = float(cfg.get("Rate_tex", 0.0))
        self.tex_kind, self.tex_window = cfg.get("tex_kind", "gradw1"), int(cfg.get("tex_window", 16))
        self.t2_pixel_kd = bool(cfg.get("t2_pixel_kd", True))
        self.t2_band = float(cfg.get("t2_band", 0.0) or 0.0)
        if self.t2_band < 0:
            raise ValueError(f"--t2_band must be >= 0 (a Gaussian sigma in HR pixels), got {self.t2_band:g}")
        if self.t2_band > 0 and not self.t2_pixel_kd:
            raise ValueError("--t2_band needs --t2_pixel_kd True (it changes P's pixel target)")
        self.t2_blend = float(cfg.get("t2_blend", 0.0) or 0.0)
        if not 0.0 <= self.t2_blend <= 1.0:
            raise ValueError(f"--t2_blend must be in [0, 1] (the perceptual teacher's share), got {self.t2_blend:g}")
        if self.t2_blend > 0 and (not self.t2_pixel_kd or self.t2_band > 0):
            raise ValueError("--t2_blend needs --t2_pixel_kd True and no --t2_band (all three set P's pixel target)")
        if self.t2 is None and self.w_tex > 0:
            log.warning("no perceptual teacher: --Rate_tex is ignored")
            self.w_tex = 0.0
        self.w_pfeat = float(cfg.get("Rate_pfeat", 0.0) or 0.0)
        self.p_hints: Optional[FitNetObjective] = None
        if self.w_pfeat > 0:
            if self.t2 is None:
                raise ValueError("--Rate_pfeat needs a perceptual teacher (--t2_checkpoint)")
            self.p_hints = FitNetObjective({**cfg, "t1_model_name": cfg["t2_model_name"], "t1_checkpoint":
                                            cfg["t2_checkpoint"], "Rate_l1": 0.0, "Rate_feat": 1.0}, device,
                                           teacher=self.t2)  # the same P: loaded once, run once per step
        self.adv: Optional[AdversarialTerm]
        self.adv, self.w_adv, self.adv_real = build_adversarial(cfg, device, has_teacher=self.t2 is not None)
        self.adv_trust = self.adv is not None and bool(cfg.get("adv_trust", False))
        names = ["l1", "kd"] + (["edge"] if self.w_edge > 0 else []) + (["lpts"] if self.w_pts > 0 else [])
        names += ["tex"] if self.w_tex > 0 else []
        names += ["pfeat"] if self.p_hints is not None else []
        names += ["adv"] if self.adv is not None else []
        self.term_names = tuple(names + (["lbp"] if self.w_bp > 0 else []))
        # --loss_attn both: the KD term is error + trust attention; each part gets its own log column
        self.stat_names = (("frac_perceptual",) + (("kd_err", "kd_trust") if self.attn == "both" else ())
                           + (("d_loss",) if self.adv is not None else ()) + (("adv_trust",) if self.adv_trust else ()))
        self.use_cache = bool(cfg.get("teacher_cache"))

    def attach_student(self, model) -> None:
        if self.p_hints is not None:
            self.p_hints.attach_student(model)

    def trainable_parameters(self) -> list:
        return self.p_hints.trainable_parameters() if self.p_hints is not None else []

    def learned_state(self) -> Optional[dict]:
        parts = {}
        if self.p_hints is not None:
            parts["p_hints"] = self.p_hints.learned_state()
        if self.adv is not None:
            parts["adv"] = self.adv.learned_state()
        return parts or None

    def load_learned_state(self, state: dict) -> None:
        if self.p_hints is None and self.adv is None:
            super().load_learned_state(state)
        if self.p_hints is not None and "p_hints" not in state and self.adv is None:
            state = {"p_hints": state}  # checkpoints from before the adversarial term: the hints' state alone
        for key, part in (("p_hints", self.p_hints), ("adv", self.adv)):
            if part is not None:
                if key not in state:
                    raise ValueError(f"the checkpoint's objective state has no {key!r} part (made with other flags?)")
                part.load_learned_state(state[key])

    def critic_step(self) -> None:
        if self.adv is not None:
            self.adv.critic_step()

    def begin_step(self, iteration: int) -> None:
        if self.adv is not None:
            self.adv.begin_step(iteration)

    def teachers(self) -> list[FrozenTeacher]:
        return [t for t in (self.t1, self.t2) if t is not None]

    def attach_dataset(self, dataset) -> None:
        """Called by the trainer with the training set: the auto gate and the teacher cache."""
        if self._gate_auto and self.t2 is not None:
            n = min(512, len(dataset))
            rng = np.random.default_rng(int(self.cfg.get("seed", 0)) + 12345)
            idx = rng.choice(len(dataset), size=n, replace=n > len(dataset))
            gate = auto_gate((dataset[(int(i), int(rng.integers(1 << 62)))] for i in idx), n=n)
            self.router = EntropyRouter(gate)
            log.info("entropy gate (auto: median over %d training patches): %.4f bits", n, gate)
        if self.use_cache:
            for key, t in zip(TEACHER_KEYS, (self.t1, self.t2)):
                if t is not None:
                    attach_cached_outputs(dataset, t, key, self.cfg)

    def _kd(self, sr: torch.Tensor, target: torch.Tensor, y: torch.Tensor, parts: list) -> torch.Tensor:
        """The (unweighted) KD term to ``target``; with ``both`` its error and trust parts go to ``parts``."""
        if self.attn != "both":
            return losses.kd_loss(sr, target, y, attn=self.attn)
        err, trust = losses.error_attention_l1(sr, target), losses.trust_attention_l1(sr, target, y)
        parts.append(torch.stack([err, trust]).detach())
        return err + trust

    def forward(self, sr: torch.Tensor, batch: dict):
        x, y = batch["lr"], batch["hr"]
        f = batch["t1"] if "t1" in batch else self.t1(x)
        p = None
        if self.t2 is not None:
            p = batch["t2"] if "t2" in batch else self.t2(x)
            if self.t2_band > 0:  # ours: P's detail on F's structure
                p = losses.band_split(f, p, self.t2_band)
            elif self.t2_blend > 0:  # ours: a pixel blend of the two teachers
                p = torch.lerp(f.float(), p.float(), self.t2_blend)
        terms = {"l1": self.w_l1 * losses.l1_loss(sr, y)}
        stats: dict[str, torch.Tensor] = {}
        parts: list[torch.Tensor] = []  # (error, trust) attention of each KD target, for the log
        texture = None  # samples taught by P (None: all of them)
        if p is None:
            kd = self._kd(sr, f, y, parts)
            stats["frac_perceptual"] = torch.zeros((), device=sr.device)
        elif self.router.enabled:
            texture = self.router.route(y)
            # --t2_pixel_kd False: P's pixels are never a KD target; P teaches through its statistics terms
            target = torch.where(texture[:, None, None, None], p, f) if self.t2_pixel_kd else f
            kd = self._kd(sr, target, y, parts)
            stats["frac_perceptual"] = texture.float().mean()
        else:  # no routing: both teachers supervise every sample
            kd = (0.5 * (self._kd(sr, f, y, parts) + self._kd(sr, p, y, parts)) if self.t2_pixel_kd
                  else self._kd(sr, f, y, parts))
            stats["frac_perceptual"] = torch.ones((), device=sr.device)
        terms["kd"] = self.w_kd * kd
        if parts:
            err, trust = (self.w_kd * torch.stack(parts).mean(dim=0)).unbind()
            stats["kd_err"], stats["kd_trust"] = err, trust
        if self.w_edge > 0:
            terms["edge"] = self.w_edge * losses.edge_loss(sr, p, kind=self.edge_kind, sample_mask=texture)
        if self.w_pts > 0:
            terms["lpts"] = self.w_pts * self.vgg(sr, p, sample_mask=texture)
        if self.w_tex > 0:
            terms["tex"] = self.w_tex * losses.texture_loss(sr, p, self.tex_kind, self.tex_window, sample_mask=texture)
        if self.p_hints is not None:
            # without the cache P ran on the whole batch above and its hooks hold the features
            terms["pfeat"] = self.w_pfeat * self.p_hints.feature_term(x, texture, teacher_ran="t2" not in batch)
        if self.adv is not None:  # ours: D tells S from P's outputs (or from y, or both) on the texture-rich samples
            real = {"teacher": p, "gt": y}.get(self.adv_real)
            if real is None:  # both: ground truth and P's outputs are real
                real = torch.cat([y.float(), p.float()])
            weight = None
            if self.adv_trust:  # ours: realism only where P is closer to the truth than the student
                weight = losses.trust_map(sr, p, y)
                stats["adv_trust"] = weight.mean()
            g, stats["d_loss"] = self.adv.generator_loss(sr, real, sample_mask=texture, pixel_weight=weight)
            terms["adv"] = self.w_adv * g
        if self.w_bp > 0:
            terms["lbp"] = self.w_bp * losses.backprojection_loss(sr, x, self.scale)
        return terms, stats
