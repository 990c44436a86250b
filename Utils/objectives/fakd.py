"""FAKD (``--kd_method fakd``): feature-affinity distillation, He et al., "FAKD: Feature-Affinity Based
Knowledge Distillation for Efficient Image Super-Resolution", ICIP 2020.

At each feature point the C-dimensional feature vector of every pixel is L2-normalised; the spatial
affinity A = N^T N (HW x HW, the cosine similarity of every pair of pixels) of student and teacher are
compared with L1 (mean over the batch and the HW x HW entries), summed over the points; weight 10
(the paper's). The affinity is channel-count free, so no adapter is needed.

Memory: A has (HW)^2 entries per sample (48x48 LR: 21 MB; 256x256: 17 GB). :func:`fakd_loss` never
materialises it: it computes blocks of rows of A_S and A_T (about ``chunk_elems`` entries each, all
samples at once) and, under autograd, wraps each block in activation checkpointing, so the backward
pass recomputes one block at a time instead of keeping every block's tensors. Peak memory is a few
blocks (the default 2^24 entries: 64 MiB per block tensor), whatever the map size; the result equals
the naive :func:`fakd_loss_naive` (tested). Time stays O(B (HW)^2 C). Measured with
``bench/bench_fakd_memory.py`` (RFDN student, IMDN teacher, batch 16, 48x48 LR, four points, forward +
backward, CPU, glibc malloc): 418 MiB peak resident memory above the inputs, against 2.3 GiB for the naive
affinities (which grow as (HW)^2: 33 GiB for one 256x256 map).
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from Utils.objectives.features import FeatureKDObjective

EPS = 1e-7  # added to the norm, as in the authors' code
# Entries of one block of affinity rows (all samples): 64 MiB per float32 block tensor. Blocks of 32 MiB or
# more are mmapped by glibc and returned to the system when freed; smaller ones fragment its heap
# (measured: 16 MiB blocks left 1.06 GiB resident against 0.45 GiB for these).
CHUNK_ELEMS = 1 << 24


def normalised_vectors(f: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, HW), each pixel's C-vector scaled to unit L2 norm."""
    f = f.flatten(2)
    return f / (f.norm(dim=1, keepdim=True) + EPS)


def spatial_affinity(f: torch.Tensor) -> torch.Tensor:
    """The full (B, HW, HW) affinity (cosine similarity of every pair of pixels); for small maps and tests."""
    n = normalised_vectors(f)
    return n.transpose(1, 2) @ n


def fakd_loss_naive(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """mean |A_S - A_T| with both affinities materialised: the definition, (HW)^2 memory per sample."""
    return (spatial_affinity(fs) - spatial_affinity(ft)).abs().mean()


def _block_l1(ns: torch.Tensor, nt: torch.Tensor, start: int, rows: int) -> torch.Tensor:
    a_s = ns[:, :, start:start + rows].transpose(1, 2) @ ns
    a_t = nt[:, :, start:start + rows].transpose(1, 2) @ nt
    return (a_s - a_t).abs().sum()


def fakd_loss(fs: torch.Tensor, ft: torch.Tensor, chunk_elems: int = CHUNK_ELEMS) -> torch.Tensor:
    """mean |A_S - A_T| computed by blocks of rows (see the module docstring); equals :func:`fakd_loss_naive`."""
    if fs.shape[0] != ft.shape[0] or fs.shape[-2:] != ft.shape[-2:]:
        raise ValueError(f"FAKD needs feature maps of the same batch and size, got {tuple(fs.shape)} and "
                         f"{tuple(ft.shape)}")
    ns, nt = normalised_vectors(fs), normalised_vectors(ft)
    b, _, n = ns.shape
    rows = max(1, min(n, chunk_elems // max(1, b * n)))
    grad = torch.is_grad_enabled() and (ns.requires_grad or nt.requires_grad)
    total = ns.new_zeros(())
    for start in range(0, n, rows):
        if grad:  # the backward recomputes this block instead of keeping it
            total = total + checkpoint(_block_l1, ns, nt, start, rows, use_reentrant=False)
        else:
            total = total + _block_l1(ns, nt, start, rows)
    return total / (b * n * n)


class FAKDObjective(FeatureKDObjective):
    """``Rate_l1`` L1(S, y) + ``Rate_feat`` (default 10) * sum over the points of :func:`fakd_loss`."""

    method = "fakd"
    default_weight = 10.0

    def point_loss(self, k, fs, ft):
        return fakd_loss(fs, ft, chunk_elems=int(self.cfg.get("fakd_chunk") or CHUNK_ELEMS))
