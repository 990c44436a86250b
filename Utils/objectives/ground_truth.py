"""Training on ground truth (``--kd_method gt``, the default without ``--train_by_TT True``): students
without distillation, baselines, teachers, EdgeSRN's edge-guided stage 2."""
from __future__ import annotations

import torch

from Utils.objectives.adversarial import build_adversarial
from Utils.objectives.base import Objective


class GroundTruthObjective(Objective):
    """Training on ground truth: ``Rate_l1`` * L1(SR, HR), plus for EdgeSRN's second stage
    ``Rate_lm`` * edge loss(SR, HR), ``Rate_lpts`` * VGG19 conv5_4 distance(SR, HR) and ``Rate_tex`` *
    texture-statistics distance(SR, HR) (weight-free, see ``losses.texture_loss``), with HR sharpened
    by an unsharp mask when ``gt_usm`` > 0 (Real-ESRGAN's sharpened targets); optionally
    ``Rate_lbp`` * back-projection L1(imresize(SR, 1/scale), LR) and ``Rate_adv`` * the adversarial
    term against a discriminator learned from scratch, HR being "real" (:mod:`.adversarial`)."""

    def __init__(self, cfg: dict, device: torch.device):
        super().__init__()
        from Utils import losses

        self.losses = losses
        self.w_l1 = float(cfg.get("Rate_l1", 1.0))
        self.w_edge = float(cfg.get("Rate_lm", 0.0))
        self.w_pts = float(cfg.get("Rate_lpts", 0.0))
        self.w_bp = float(cfg.get("Rate_lbp", 0.0))
        self.edge_kind = cfg.get("edge_kind", "sobel")
        self.w_tex = float(cfg.get("Rate_tex", 0.0))
        self.tex_kind, self.tex_window = cfg.get("tex_kind", "gradw1"), int(cfg.get("tex_window", 16))
        self.usm = float(cfg.get("gt_usm", 0.0))
        self.usm_sigma = float(cfg.get("gt_usm_sigma", 1.0))
        self.scale = int(cfg["scale"])
        names = ["l1"]
        if self.w_edge > 0:
            names.append("edge")
        if self.w_pts > 0:
            names.append("lpts")
            self.vgg = losses.PerceptualLoss(weights_path=cfg.get("vgg_weights")).to(device)
        if self.w_tex > 0:
            names.append("tex")
        if self.w_bp > 0:
            names.append("lbp")
        self.adv, self.w_adv, _ = build_adversarial(cfg, device, has_teacher=False)  # HR is real
        if self.adv is not None:
            names.append("adv")
        self.term_names = tuple(names)
        self.stat_names = ("d_loss",) if self.adv is not None else ()

    def critic_step(self) -> None:
        if self.adv is not None:
            self.adv.critic_step()

    def begin_step(self, iteration: int) -> None:
        if self.adv is not None:
            self.adv.begin_step(iteration)

    def learned_state(self):
        return self.adv.learned_state() if self.adv is not None else None

    def load_learned_state(self, state: dict) -> None:
        if self.adv is None:
            super().load_learned_state(state)
        self.adv.load_learned_state(state)

    def forward(self, sr, batch):
        hr = batch["hr"]
        if self.usm > 0:  # sharpened targets for every term (the back-projection keeps the real LR)
            hr = self.losses.unsharp_mask(hr, self.usm, self.usm_sigma)
        terms = {"l1": self.w_l1 * self.losses.l1_loss(sr, hr)}
        if self.w_edge > 0:
            terms["edge"] = self.w_edge * self.losses.edge_loss(sr, hr, kind=self.edge_kind)
        if self.w_pts > 0:
            terms["lpts"] = self.w_pts * self.vgg(sr, hr)
        if self.w_tex > 0:
            terms["tex"] = self.w_tex * self.losses.texture_loss(sr, hr, self.tex_kind, self.tex_window)
        if self.w_bp > 0:
            terms["lbp"] = self.w_bp * self.losses.backprojection_loss(sr, batch["lr"], self.scale)
        stats = {}
        if self.adv is not None:  # the real ground truth, not the sharpened one
            g, stats["d_loss"] = self.adv.generator_loss(sr, batch["hr"])
            terms["adv"] = self.w_adv * g
        return terms, stats

