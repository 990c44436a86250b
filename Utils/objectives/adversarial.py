"""The adversarial term (``--Rate_adv``; ours, not the paper's): a discriminator trained from scratch.

EdgeSRN's definition replaces ESRGAN's discriminator by edge and VGG losses; without VGG's ImageNet
weights, and with edges alone not enough to make a perceptual teacher (``studies/pilots.md``), this
term gives the project a perceptual loss that needs no pretrained network: a small spectrally
normalised patch discriminator D, learned alongside the network it judges.

* **What is "real"** (``--adv_real``): the ground truth HR patch (``gt``; always so on ground-truth
  training, e.g. EdgeSRN's stage 2), or in DTKD the perceptual teacher's output on the samples routed
  to it (``teacher``): D learns what P's textures look like and the student is pushed towards that
  *distribution*, not towards P's pixels, which a pixel loss cannot reach in a short budget.
* **Loss**: the relativistic average GAN of ESRGAN (Wang et al., 2018), per patch logit:
  the generator term is ``[BCE(D(r) - mean D(f), 0) + BCE(D(f) - mean D(r), 1)] / 2`` and D's loss the
  same with the labels swapped; the generator term is weighted by ``--Rate_adv``.
* **D's update** (:meth:`AdversarialTerm.critic_step`) runs after the network's optimizer step, on
  the detached outputs of the same step, with its own Adam (``--adv_lr``, betas 0.9/0.99 as ESRGAN);
  under DDP its gradients are averaged by hand (D is not wrapped). D, its power-iteration vectors and
  its optimizer are the objective's learned state, saved in every checkpoint for exact resume.
* **Precision** (``--adv_amp``): D's own update runs in float32 by default, whatever ``--amp`` says (the
  committed studies' figures); with ``--adv_amp True`` (and ``--amp bf16``) it runs under bf16 autocast
  as the network's step does, about a fifth of a stage-2 step faster on a CPU with native bfloat16.
* **Warm-up** (``--adv_start N``): the first N iterations of the run have neither the generator term
  (it is 0 in the log) nor D's update, so the network first learns from its pixel losses and D starts
  on sensible images (ESRGAN starts its GAN from a PSNR-oriented model; this does it in one run, as
  a from-scratch study needs). The trainer tells the term the iteration (:meth:`AdversarialTerm.begin_step`),
  so resuming inside or after the warm-up is exact.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm


class PatchDiscriminator(nn.Module):
    """Fully convolutional discriminator: one real/fake logit per (about 8x8-pixel strided) patch.

    ``channels`` features at full resolution, doubled at each of three stride-2 stages (capped at
    8x); spectral norm on every convolution after the first (as Real-ESRGAN's); works on any input
    of at least 8x8 pixels.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64):
        super().__init__()
        c1, c2, c3 = channels, 2 * channels, 4 * channels
        act = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, 1, 1), act(),
            spectral_norm(nn.Conv2d(c1, c1, 4, 2, 1)), act(),
            spectral_norm(nn.Conv2d(c1, c2, 4, 2, 1)), act(),
            spectral_norm(nn.Conv2d(c2, c3, 4, 2, 1)), act(),
            spectral_norm(nn.Conv2d(c3, c3, 3, 1, 1)), act(),
            nn.Conv2d(c3, 1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def relativistic_losses(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                        patch_weight: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(generator loss, discriminator loss) of the relativistic average GAN on patch logits.

    Each side is judged relative to the mean logit of the other side; the two losses are the same
    binary cross-entropies with the real/fake labels swapped. ``patch_weight`` (the logits' shape for
    the fake side, repeated for as many real samples as there are) weights the generator's
    per-patch terms (a mean over all patches of ``weight * bce``); D's loss is never weighted.
    """
    r = real_logits - fake_logits.mean()
    f = fake_logits - real_logits.mean()
    bce = F.binary_cross_entropy_with_logits
    if patch_weight is None:
        g = 0.5 * (bce(r, torch.zeros_like(r)) + bce(f, torch.ones_like(f)))
    else:
        w_real = patch_weight.repeat(r.shape[0] // f.shape[0], 1, 1, 1)
        g = 0.5 * ((w_real * bce(r, torch.zeros_like(r), reduction="none")).mean()
                   + (patch_weight * bce(f, torch.ones_like(f), reduction="none")).mean())
    d = 0.5 * (bce(r, torch.ones_like(r)) + bce(f, torch.zeros_like(f)))
    return g, d


def build_adversarial(cfg: dict, device: torch.device, has_teacher: bool) -> tuple[Optional["AdversarialTerm"], float, str]:
    """``(term or None, --Rate_adv, what is real)`` for an objective; ``has_teacher``: a perceptual
    teacher exists (DTKD with P), so ``--adv_real auto`` means its outputs, else the ground truth."""
    weight = float(cfg.get("Rate_adv", 0.0) or 0.0)
    real = cfg.get("adv_real", "auto")
    if real == "auto":
        real = "teacher" if has_teacher else "gt"
    if weight <= 0:
        return None, weight, real
    if real in ("teacher", "both") and not has_teacher:
        raise ValueError(f"--adv_real {real} needs a perceptual teacher (DTKD's --t2_checkpoint); "
                         "without one the ground truth is real")
    if cfg.get("adv_trust") and not has_teacher:
        raise ValueError("--adv_trust True needs a perceptual teacher (DTKD's --t2_checkpoint): its trust map "
                         "weights the adversarial term")
    return AdversarialTerm(cfg, device), weight, real


class AdversarialTerm(nn.Module):
    """D, its optimizer and both sides of the relativistic GAN (see the module docstring)."""

    def __init__(self, cfg: dict, device: torch.device):
        super().__init__()
        channels = int(cfg.get("adv_channels", 64))
        if channels < 1:
            raise ValueError(f"--adv_channels must be >= 1, got {channels}")
        self.disc = PatchDiscriminator(3, channels).to(device)
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=float(cfg.get("adv_lr", 1e-4)), betas=(0.9, 0.99))
        self._pending: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.start = int(cfg.get("adv_start", 0) or 0)
        if self.start < 0:
            raise ValueError(f"--adv_start must be >= 0, got {self.start}")
        self.active = self.start == 0
        self.critic_amp = bool(cfg.get("adv_amp", False))
        if self.critic_amp and cfg.get("amp", "none") != "bf16":
            raise ValueError(f"--adv_amp True needs --amp bf16, got --amp {cfg.get('amp', 'none')}")

    def begin_step(self, iteration: int) -> None:
        """Called before each training step with its 1-based number: the term is on after ``--adv_start``."""
        self.active = iteration > self.start

    def _set_trainable(self, flag: bool) -> None:
        for p in self.disc.parameters():
            p.requires_grad_(flag)

    def generator_loss(self, fake: torch.Tensor, real: torch.Tensor,
                       sample_mask: Optional[torch.Tensor] = None,
                       pixel_weight: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(unweighted generator loss, D's loss on the same logits, detached) over the masked samples.

        ``real`` may hold a whole multiple of ``fake``'s samples (``--adv_real both``: ground truth and
        P's outputs, each aligned with ``fake``); ``sample_mask`` selects within each. ``pixel_weight``
        (N x 1 x H x W in [0, 1], no gradient) is averaged onto D's patch grid and weights the
        generator's per-patch terms (``--adv_trust``). Keeps the detached pair for :meth:`critic_step`.
        No masked sample, or still in the warm-up: both are 0 (the generator term stays in the graph)
        and D learns nothing this step.
        """
        if sample_mask is not None:
            k = real.shape[0] // fake.shape[0]
            fake, real = fake[sample_mask], real[sample_mask.repeat(k)]
            pixel_weight = pixel_weight[sample_mask] if pixel_weight is not None else None
        if fake.shape[0] == 0 or not self.active:
            self._pending = None
            zero = fake.sum() * 0.0
            return zero, zero.detach()
        real = real.detach().float()
        self._set_trainable(False)  # the generator's backward needs no gradient of D's weights
        self.disc.eval()  # and spectral norm's power iteration advances only in critic_step (ranks stay equal)
        with torch.no_grad():  # no gradient reaches the real side: its pass keeps no graph and has no backward
            real_logits = self.disc(real)
        fake_logits = self.disc(fake.float())
        patch_weight = None
        if pixel_weight is not None:
            patch_weight = F.adaptive_avg_pool2d(pixel_weight.detach().float(), fake_logits.shape[-2:])
        g, d = relativistic_losses(real_logits, fake_logits, patch_weight)
        self._pending = (fake.detach().float(), real)
        return g, d.detach()

    def _judge(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D's logits on both, in one pass (one power iteration in training mode; D's own step)."""
        logits = self.disc(torch.cat([real, fake]))
        return logits[: real.shape[0]], logits[real.shape[0]:]

    def critic_step(self) -> None:
        """One Adam step of D on the pair kept by the last :meth:`generator_loss` (all ranks together)."""
        pending, self._pending = self._pending, None
        self._set_trainable(True)
        if not self.active:  # the warm-up: every rank is in it together, so no rank waits for another
            return
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if pending is None and not distributed:
            return
        self.disc.train()
        self.opt.zero_grad(set_to_none=False)
        device = next(self.disc.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.critic_amp):
            if pending is not None:
                _, d = relativistic_losses(*self._judge(pending[1], pending[0]))
            else:  # no sample here but on other ranks: the same one pass (power iteration), no gradient
                d = self.disc(torch.zeros(1, 3, 16, 16, device=device)).sum() * 0.0
        d.backward()
        if distributed:  # D is not in DDP: average its gradients by hand (a rank without samples adds 0)
            world = dist.get_world_size()
            for p in self.disc.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= world
        self.opt.step()

    def learned_state(self) -> dict:
        return {"disc": self.disc.state_dict(), "opt": self.opt.state_dict()}

    def load_learned_state(self, state: dict) -> None:
        self.disc.load_state_dict(state["disc"], strict=True)
        self.opt.load_state_dict(state["opt"])
