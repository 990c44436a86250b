"""Pictures a person would rather look at than read: training curves."""
from __future__ import annotations

import csv
import math
import os
import tempfile
from pathlib import Path
from typing import Union

PathLike = Union[str, Path]


def _float(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def plot_training_curves(log_csv: PathLike, out_png: PathLike) -> Path:
    """Loss terms (log scale) and validation PSNR against iterations, from a trainer's ``log.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{log_csv}: no rows to plot")
    it = [int(r["iter"]) for r in rows]
    skip = {"iter", "lr", "nonfinite", "val_psnr", "val_ssim", "imgs_per_s", "elapsed"}
    terms = [c for c in rows[0] if c not in skip and not c.startswith("frac_")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for c in terms:
        ys = [_float(r[c]) for r in rows]
        if any(math.isfinite(y) and y > 0 for y in ys):
            style = dict(color="k", ls="--", lw=0.9, zorder=3) if c == "total" else dict(lw=0.8)
            axes[0].plot(it, ys, label=c, **style)  # total dashed on top: visible even when it equals a term
    axes[0].set_yscale("log")
    axes[0].set_xlabel("iteration")
    axes[0].set_title("training loss terms")
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    val = [(i, _float(r.get("val_psnr"))) for i, r in zip(it, rows) if math.isfinite(_float(r.get("val_psnr")))]
    if val:
        axes[1].plot([v[0] for v in val], [v[1] for v in val], "o-", color="C3")
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("PSNR (dB, Y)")
    axes[1].set_title("validation")
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    out_png = Path(out_png)
    fd, tmp = tempfile.mkstemp(prefix=".curves.", suffix=".png", dir=out_png.parent)
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, out_png)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return out_png
