"""Entropy routing of DTKD (DESIGN section 6): texture-rich samples go to the perceptual teacher.

For each sample, H = Shannon entropy in bits of the 256-bin histogram of the 8-bit gray version of
its HR patch. Gray levels use the ITU-R BT.601 luma weights of PIL's ``convert("L")``:
``gray = floor(255 * (0.299 R + 0.587 G + 0.114 B) + 0.5)`` for float RGB in [0, 1] (clamped to
0..255), and the exact integer form ``(299 R + 587 G + 114 B + 500) // 1000`` for uint8 RGB; both
round halves up. A flat patch has H = 0, a patch with all 256 levels equally frequent H = 8.

Samples with ``H > gate`` are texture-rich and take the perceptual teacher P, the others the
fidelity teacher F. ``gate=None`` disables routing: both teachers supervise every sample, which the
router reports through :attr:`EntropyRouter.enabled` and through :meth:`EntropyRouter.masks`
(both masks all True). The masks plug into the ``sample_mask`` argument of :mod:`Utils.losses`.
"""
from __future__ import annotations

import argparse
import logging
import math
from typing import Any, Iterable, Literal, NamedTuple, Optional, Union

import torch

log = logging.getLogger(__name__)

__all__ = ["gray_levels", "gray_entropy", "EntropyRouter", "TeacherMasks", "parse_gate", "auto_gate",
           "routing_stats", "RoutingStats", "GateValueError", "MAX_ENTROPY_BITS"]

MAX_ENTROPY_BITS = 8.0  # log2(256): the entropy of 256 equally frequent gray levels
GateSpec = Union[float, Literal["auto"], None]


class GateValueError(argparse.ArgumentTypeError, ValueError):
    """A bad ``--entropy_gate`` value (a ValueError; argparse prints its message as is)."""


# ----------------------------------------------------------------------------------------------
# Entropy
# ----------------------------------------------------------------------------------------------
def gray_levels(hr: torch.Tensor) -> torch.Tensor:
    """8-bit gray levels ``(B, H*W)`` int64 of a Bx3xHxW (or 3xHxW) RGB tensor, float in [0, 1] or uint8."""
    if hr.dim() == 3:
        hr = hr.unsqueeze(0)
    if hr.dim() != 4 or hr.shape[1] != 3:
        raise ValueError(f"expected a Bx3xHxW RGB tensor, got {tuple(hr.shape)}")
    if hr.dtype == torch.uint8:
        x = hr.to(torch.int64)
        gray = (299 * x[:, 0] + 587 * x[:, 1] + 114 * x[:, 2] + 500) // 1000
    elif hr.is_floating_point():
        x = hr.to(torch.float32)
        lum = 255.0 * (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
        gray = torch.floor(lum + 0.5).clamp_(0, 255).to(torch.int64)
    else:
        raise TypeError(f"expected a float (values in [0, 1]) or uint8 tensor, got {hr.dtype}")
    return gray.flatten(1)


@torch.no_grad()
def gray_entropy(hr: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits ``(B,)`` float32 of each sample's 256-bin gray histogram."""
    gray = gray_levels(hr)
    batch, n = gray.shape
    if n == 0:
        raise ValueError("gray_entropy needs non-empty images")
    offsets = torch.arange(batch, device=gray.device, dtype=torch.int64).unsqueeze(1) * 256
    counts = torch.bincount((gray + offsets).flatten(), minlength=256 * batch).view(batch, 256)
    p = counts.to(torch.float64) / n
    plogp = torch.where(p > 0, p * torch.log2(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
    return (-plogp.sum(dim=1)).clamp_min(0.0).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# Router
# ----------------------------------------------------------------------------------------------
class TeacherMasks(NamedTuple):
    """Per-sample bool masks ``(B,)``: which samples each teacher supervises, and their entropies.

    ``entropy`` is None when routing is disabled (it is not computed then).
    """

    perceptual: torch.Tensor
    fidelity: torch.Tensor
    entropy: Optional[torch.Tensor]


class EntropyRouter:
    """Routes samples by HR entropy: ``H > gate`` -> perceptual teacher, else fidelity teacher.

    ``gate=None`` disables routing (:attr:`enabled` False): every sample goes to both teachers.
    """

    def __init__(self, gate: Optional[float]) -> None:
        if gate is not None:
            gate = float(gate)
            if not math.isfinite(gate):
                raise ValueError(f"entropy gate must be finite, got {gate}")
        self.gate: Optional[float] = gate

    @property
    def enabled(self) -> bool:
        """True when samples are split between the teachers; False when both supervise all samples."""
        return self.gate is not None

    def __repr__(self) -> str:
        return f"EntropyRouter(gate={self.gate})"

    def route(self, hr: torch.Tensor) -> torch.Tensor:
        """Bool ``(B,)``: True = texture-rich, taught by the perceptual teacher (all True when disabled)."""
        return self.masks(hr).perceptual

    def masks(self, hr: torch.Tensor) -> TeacherMasks:
        """Both teachers' sample masks (complementary when enabled, both all True when disabled)."""
        batch = hr.shape[0] if hr.dim() == 4 else 1
        if self.gate is None:
            every = torch.ones(batch, dtype=torch.bool, device=hr.device)
            return TeacherMasks(every, every.clone(), None)
        entropy = gray_entropy(hr)
        rich = entropy > self.gate
        return TeacherMasks(rich, ~rich, entropy)


# ----------------------------------------------------------------------------------------------
# Gate parsing and automatic gate
# ----------------------------------------------------------------------------------------------
def parse_gate(value: Union[str, float, int, None]) -> GateSpec:
    """``--entropy_gate`` value: ``auto`` -> "auto", ``none`` -> None, a number of bits in [0, 8] -> float."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text == "none":
            return None
        try:
            bits = float(text)
        except ValueError:
            raise GateValueError(f"entropy gate must be 'auto', 'none' or a number of bits in [0, 8], "
                                 f"got {value!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        bits = float(value)
    else:
        raise GateValueError(f"entropy gate must be 'auto', 'none' or a number, got {type(value).__name__}")
    if not math.isfinite(bits) or not 0.0 <= bits <= MAX_ENTROPY_BITS:
        raise GateValueError(f"entropy gate must lie in [0, {MAX_ENTROPY_BITS:g}] bits (the entropy of a "
                             f"256-level histogram), got {value!r}")
    return bits


def _hr_of(item: Any, hr_key: str) -> torch.Tensor:
    """The HR tensor of a dataset item: a tensor, a dict (``hr_key``) or an (lr, hr, ...) sequence."""
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, dict):
        if hr_key not in item:
            raise KeyError(f"dataset item has no {hr_key!r} entry (keys: {', '.join(map(str, item))})")
        return item[hr_key]
    if isinstance(item, (tuple, list)) and len(item) >= 2 and isinstance(item[1], torch.Tensor):
        return item[1]
    raise TypeError(f"cannot find an HR tensor in a {type(item).__name__}")


@torch.no_grad()
def auto_gate(patches: Iterable[Any], n: int = 1000, hr_key: str = "hr") -> float:
    """Median entropy (bits) over the first ``n`` HR patches of ``patches``.

    Items may be 3xHxW or Bx3xHxW tensors (each sample counts as one patch), dicts holding
    ``hr_key`` (dataset items or loader batches) or ``(lr, hr, ...)`` sequences. With an even count
    the median is the mean of the two middle values.
    """
    if n < 1:
        raise ValueError(f"auto_gate needs n >= 1, got {n}")
    found: list[torch.Tensor] = []
    total = 0
    for item in patches:
        ent = gray_entropy(_hr_of(item, hr_key)).cpu()
        found.append(ent[: n - total])
        total += found[-1].numel()
        if total >= n:
            break
    if total == 0:
        raise ValueError("auto_gate got no patches")
    gate = float(torch.quantile(torch.cat(found).to(torch.float64), 0.5))
    log.info("entropy gate (auto): median over %d HR patches = %.4f bits", total, gate)
    return gate


# ----------------------------------------------------------------------------------------------
# Statistics for logging
# ----------------------------------------------------------------------------------------------
def routing_stats(masks: TeacherMasks) -> dict[str, float]:
    """Fractions of samples taught by each teacher (they sum to 2 when routing is disabled)."""
    batch = masks.perceptual.numel()
    if batch == 0:
        return {"frac_perceptual": 0.0, "frac_fidelity": 0.0}
    out = {"frac_perceptual": float(masks.perceptual.float().mean()),
           "frac_fidelity": float(masks.fidelity.float().mean())}
    if masks.entropy is not None:
        out["entropy_mean"] = float(masks.entropy.float().mean())
    return out


class RoutingStats:
    """Running routing statistics between two log lines, without a device sync per step."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._n = 0
        self._perceptual: Optional[torch.Tensor] = None
        self._fidelity: Optional[torch.Tensor] = None
        self._entropy: Optional[torch.Tensor] = None
        self._n_entropy = 0

    def update(self, masks: TeacherMasks) -> None:
        """Add one batch's masks."""
        p = masks.perceptual.sum()
        f = masks.fidelity.sum()
        self._perceptual = p if self._perceptual is None else self._perceptual + p
        self._fidelity = f if self._fidelity is None else self._fidelity + f
        self._n += masks.perceptual.numel()
        if masks.entropy is not None:
            e = masks.entropy.float().sum()
            self._entropy = e if self._entropy is None else self._entropy + e
            self._n_entropy += masks.entropy.numel()

    def summary(self) -> dict[str, float]:
        """Fractions routed to each teacher (and the mean entropy) since the last reset."""
        if self._n == 0 or self._perceptual is None or self._fidelity is None:
            return {"frac_perceptual": 0.0, "frac_fidelity": 0.0}
        out = {"frac_perceptual": float(self._perceptual) / self._n,
               "frac_fidelity": float(self._fidelity) / self._n}
        if self._entropy is not None and self._n_entropy:
            out["entropy_mean"] = float(self._entropy) / self._n_entropy
        return out
