"""Network interpolation: blend two weight files of one architecture, and choose the blend on validation.

    python -m Utils.interpolate blend STAGE1.pth STAGE2.pth --alpha 1 0.9 0.8 --out_dir DIR [--model_name M]
    python -m Utils.interpolate choose SUMMARY.csv --fidelity IMDN_x4.pth --candidates DIR/*.pth \\
        --datasets Demo train [--niqe_margin 0.5] [--psnr_margin 1.5]

``blend`` writes ``alpha * B + (1 - alpha) * A`` for every floating-point tensor (ESRGAN's network
interpolation, Wang et al. 2018; "deep network interpolation", Wang et al. 2019). It is meaningful when B
was fine-tuned from A (a perceptual stage 2 from its L1 stage 1): the blends then trace the line between
the PSNR-oriented and the perceptual model without training. Integer tensors (BatchNorm counters) must be
equal in both files. Files are named ``<B's stem>_a<alpha>.pth``; an existing file is never overwritten.
With ``--model_name`` every blend is loaded strictly into that preset before it is written.

``choose`` reads a ``main_for_infer.py`` summary.csv in which the fidelity reference and every candidate
were evaluated on the validation folders, takes image-weighted means over those folders, and picks the
candidate with the largest worst slack to the perceptual-teacher criterion::

    slack_psnr = PSNR - (PSNR_F - psnr_margin)      slack_niqe = (NIQE_F - niqe_margin) - NIQE

(larger alpha on a tie). It prints a CSV table of the candidates and the chosen file's name. A candidate
without a PSNR or NIQE figure (or a reference without one) is never chosen: it gets one line
``cannot judge: NIQE unavailable for X (why)``, and when no candidate can be judged nothing is chosen
and the exit status is 1. Exit status 2 for a bad input (missing file, keys or shapes that differ, a
candidate not in the summary).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

import pandas as pd
import torch

from Utils.checkpoint import CheckpointError, atomic_save, load_state_dict_strict, read_state_dict
from Utils.demo_verdict import teacher_slacks

log = logging.getLogger(__name__)
PathLike = Union[str, Path]


class InterpolationError(ValueError):
    """Inputs that cannot be blended or chosen from; the message is one line naming the file."""


def blend_state_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float,
                      source_a: PathLike = "A", source_b: PathLike = "B") -> dict[str, torch.Tensor]:
    """``alpha * b + (1 - alpha) * a`` per floating tensor (computed in float64, stored in b's dtype)."""
    if not 0.0 <= alpha <= 1.0:
        raise InterpolationError(f"alpha {alpha} is outside [0, 1]")
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise InterpolationError(f"{source_b}: keys differ from {source_a} "
                                 f"(only in A: {only_a[:3]}, only in B: {only_b[:3]})")
    out: dict[str, torch.Tensor] = {}
    for key, tb in b.items():
        ta = a[key]
        if ta.shape != tb.shape:
            raise InterpolationError(f"{source_b}: {key} has shape {tuple(tb.shape)}, "
                                     f"{source_a} has {tuple(ta.shape)}")
        if tb.is_floating_point():
            mixed = alpha * tb.double() + (1.0 - alpha) * ta.double()
            out[key] = mixed.to(tb.dtype)
        elif torch.equal(ta, tb):
            out[key] = tb.clone()
        else:
            raise InterpolationError(f"{source_b}: integer tensor {key} differs from {source_a}; "
                                     "it cannot be interpolated")
    return out


def blend_name(stem: str, alpha: float) -> str:
    """The file name of a blend: ``<stem>_a0.80.pth``."""
    return f"{stem}_a{alpha:.2f}.pth"


def alpha_of(name: str) -> Optional[float]:
    """The alpha in a :func:`blend_name` (None for other names)."""
    m = re.search(r"_a(\d+(?:\.\d+)?)\.pth$", name)
    return float(m.group(1)) if m else None


def write_blends(stage1: PathLike, stage2: PathLike, alphas: Sequence[float], out_dir: PathLike,
                 model_name: Optional[str] = None) -> list[Path]:
    """Write one blend per alpha into ``out_dir``; refuses to overwrite. Returns the paths written."""
    out_dir = Path(out_dir)
    targets = [out_dir / blend_name(Path(stage2).stem, a) for a in alphas]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise InterpolationError(f"{existing[0]}: exists; not overwritten (choose another --out_dir)")
    a, b = read_state_dict(stage1), read_state_dict(stage2)
    model = preset = None
    if model_name is not None:
        from Model import build_model, get_preset  # only for the optional strict check
        preset, model = get_preset(model_name), build_model(model_name)
    for alpha, target in zip(alphas, targets):
        sd = blend_state_dicts(a, b, alpha, stage1, stage2)
        if model is not None:
            load_state_dict_strict(model, sd, target, preset)
        atomic_save(sd, target)
        log.info("alpha %.2f -> %s", alpha, target)
    return targets


def _pooled(table: pd.DataFrame, checkpoint: str, datasets: Sequence[str], source: PathLike) -> pd.Series:
    """Image-weighted PSNR and NIQE of ``checkpoint`` over ``datasets``; NaN (never a partial mean) where a
    figure is missing, with the reason under ``why_<metric>``."""
    rows = table[(table["checkpoint"] == checkpoint) & (table["dataset"].isin(datasets))]
    rows = rows.drop_duplicates(["dataset"], keep="last")
    missing = sorted(set(datasets) - set(rows["dataset"]))
    if missing:
        raise InterpolationError(f"{source}: no row for {checkpoint} on {', '.join(missing)}")
    w = rows["images"].astype(float)
    out: dict[str, object] = {}
    for m in ("psnr", "niqe"):
        if m not in rows.columns:
            out[m], out[f"why_{m}"] = float("nan"), f"the summary has no {m} column"
            continue
        values = pd.to_numeric(rows[m], errors="coerce")
        empty = sorted(rows["dataset"][values.isna()])
        if empty:
            out[m], out[f"why_{m}"] = float("nan"), (f"{m} is empty for {', '.join(empty)} in the summary: "
                                                     "it was off or failed when evaluated")
        else:
            out[m], out[f"why_{m}"] = float((values * w).sum() / w.sum()), None
    return pd.Series(out)


def choose(table: pd.DataFrame, fidelity: str, candidates: Sequence[str], datasets: Sequence[str],
           niqe_margin: float = 0.5, psnr_margin: float = 1.5, source: PathLike = "summary") -> pd.DataFrame:
    """The candidates' pooled PSNR / NIQE and slacks, best first (worst slack, then alpha, descending).

    A candidate whose slacks cannot be computed (its or the fidelity reference's PSNR or NIQE missing) has
    a NaN worst slack, is ranked last and is never chosen; ``why`` says what is missing (None otherwise).
    """
    ref = _pooled(table, fidelity, datasets, source)
    rows = []
    for name in candidates:
        m = _pooled(table, name, datasets, source)
        slack_psnr, slack_niqe = teacher_slacks(ref, m, niqe_margin, psnr_margin)
        gaps = [f"{label} unavailable for {who} ({reason})"
                for metric, label in (("niqe", "NIQE"), ("psnr", "PSNR"))
                for who, reason in ((name, m[f"why_{metric}"]), (fidelity, ref[f"why_{metric}"])) if reason]
        rows.append({"checkpoint": name, "alpha": alpha_of(name), "psnr": m["psnr"], "niqe": m["niqe"],
                     "slack_psnr": slack_psnr, "slack_niqe": slack_niqe, "why": "; ".join(gaps) or None})
    out = pd.DataFrame(rows)
    judged = criterion_judgeable(out)
    out["worst_slack"] = out[["slack_psnr", "slack_niqe"]].min(axis=1).where(judged)
    return out.sort_values(["worst_slack", "alpha"], ascending=False, na_position="last").reset_index(drop=True)


def criterion_judgeable(ranked: pd.DataFrame) -> pd.Series:
    """True for the rows whose two slacks are both numbers (a NaN slack must never pass for a small one)."""
    return ranked["slack_psnr"].notna() & ranked["slack_niqe"].notna()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m Utils.interpolate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("blend", help="write alpha * STAGE2 + (1 - alpha) * STAGE1 for each alpha")
    b.add_argument("stage1")
    b.add_argument("stage2")
    b.add_argument("--alpha", type=float, nargs="+", required=True)
    b.add_argument("--out_dir", required=True)
    b.add_argument("--model_name", default=None, help="load every blend strictly into this preset first")
    c = sub.add_parser("choose", help="pick the blend with the largest worst slack on validation folders")
    c.add_argument("summary")
    c.add_argument("--fidelity", required=True, help="checkpoint column value of the fidelity reference")
    c.add_argument("--candidates", nargs="+", required=True, help="checkpoint names or paths (base names are used)")
    c.add_argument("--datasets", nargs="+", required=True)
    c.add_argument("--niqe_margin", type=float, default=0.5)
    c.add_argument("--psnr_margin", type=float, default=1.5)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        if args.command == "blend":
            for path in write_blends(args.stage1, args.stage2, args.alpha, args.out_dir, args.model_name):
                print(path)
        else:
            if not Path(args.summary).is_file():
                raise InterpolationError(f"{args.summary}: summary file not found")
            table = pd.read_csv(args.summary)
            names = [Path(c).name for c in args.candidates]
            ranked = choose(table, Path(args.fidelity).name, names, args.datasets,
                            args.niqe_margin, args.psnr_margin, args.summary)
            print(ranked.drop(columns=["why"]).to_csv(index=False, float_format="%.4f"), end="")
            for _, row in ranked[ranked["worst_slack"].isna()].iterrows():
                print(f"cannot judge: {row['why'] or 'slack is NaN for ' + row['checkpoint']}")
            if pd.isna(ranked.iloc[0]["worst_slack"]):
                print("error: no candidate can be judged: nothing chosen", file=sys.stderr)
                return 1
            print(f"chosen: {ranked.iloc[0]['checkpoint']}")
    except (InterpolationError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
