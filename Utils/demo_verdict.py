"""The demo's verdict: did the perceptual teacher and the DTKD student do what the method claims?

    python -m Utils.demo_verdict demo_output/Result/summary.csv --dataset Demo \\
        --fidelity demo_teacher_imdn.pth --perceptual demo_edgesrn_edge.pth \\
        --baseline demo_rfdn_gt.pth --student demo_rfdn_dtkd.pth

Two checks, on one test set, from the ``summary.csv`` rows of ``main_for_infer.py``:

* the perceptual teacher is perceptual: NIQE at least ``--teacher_niqe_margin`` (0.5) below the
  fidelity teacher's, at most ``--teacher_psnr_margin`` (1.5) dB below it in PSNR;
* the DTKD student is better looking than the ground-truth-only student: lower NIQE, at most
  ``--student_psnr_margin`` (0.1) dB lower PSNR (only when ``--baseline`` and ``--student`` are given).

It prints one line per check, PASS or FAIL with the figures, or, when a figure the check needs is
missing (no such column in the summary, or an empty / NaN value: NIQE was off when the model was
evaluated), ``cannot judge: NIQE unavailable for X (why)`` and never PASS. It exits 0 either way: the
demo reports what it measured; ``--strict`` makes a failed or unjudged check exit 1.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd

# A check's outcome: True (PASS), False (FAIL) or None (cannot judge: a figure is missing), and its line.
Check = tuple[Optional[bool], str]

_LABELS = {"psnr": "PSNR", "ssim": "SSIM", "niqe": "NIQE", "lpips": "LPIPS"}


def _row(table: pd.DataFrame, checkpoint: str, dataset: str) -> pd.Series:
    rows = table[(table["checkpoint"] == checkpoint) & (table["dataset"] == dataset)]
    if rows.empty:
        raise SystemExit(f"error: no row for checkpoint {checkpoint} on {dataset} in the summary")
    return rows.iloc[-1]


def _missing_reason(row: Mapping[str, object], metric: str) -> Optional[str]:
    """Why ``row`` has no usable ``metric`` (None when it has a finite number)."""
    if metric not in row:
        return f"the summary has no {metric} column"
    value = row[metric]
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"{metric} is {value!r} in the summary, not a number"
    if math.isnan(number):
        return f"{metric} is empty in the summary: it was off or failed when evaluated"
    if not math.isfinite(number):
        return f"{metric} is {number} in the summary"
    return None


def unavailable(rows: Mapping[str, Mapping[str, object]], metrics: Sequence[str]) -> Optional[str]:
    """One ``cannot judge: ...`` line naming each metric some of ``rows`` (name -> row) lack, or None.

    A metric is missing from a row when the row has no such key or its value is not a finite number.
    """
    parts = []
    for metric in metrics:
        by_reason: dict[str, list[str]] = {}
        for name, row in rows.items():
            reason = _missing_reason(row, metric)
            if reason is not None:
                by_reason.setdefault(reason, []).append(name)
        for reason, names in by_reason.items():
            parts.append(f"{_LABELS.get(metric, metric)} unavailable for {', '.join(names)} ({reason})")
    return "cannot judge: " + "; ".join(parts) if parts else None


def teacher_slacks(f: Mapping[str, float], p: Mapping[str, float], niqe_margin: float = 0.5,
                   psnr_margin: float = 1.5) -> tuple[float, float]:
    """``(PSNR slack in dB, NIQE slack)`` of the perceptual teacher ``p`` to the criterion against the
    fidelity teacher ``f`` (rows with ``psnr`` and ``niqe``): it is met when both are >= 0. A missing
    figure gives NaN there; :func:`criterion_met` then says the criterion cannot be judged."""
    return p["psnr"] - (f["psnr"] - psnr_margin), (f["niqe"] - niqe_margin) - p["niqe"]


def criterion_met(slacks: Sequence[float]) -> Optional[bool]:
    """True when every slack is >= 0, False when one is below, None when one is NaN (never a pass on NaN)."""
    values = [float(s) for s in slacks]
    if any(math.isnan(v) for v in values):
        return None
    return all(v >= 0 for v in values)


def teacher_check(table: pd.DataFrame, dataset: str, fidelity: str, perceptual: str,
                  niqe_margin: float = 0.5, psnr_margin: float = 1.5) -> Check:
    """``(passed, line)`` of the perceptual-teacher criterion on ``dataset``; ``passed`` None when a figure is missing."""
    f, p = _row(table, fidelity, dataset), _row(table, perceptual, dataset)
    missing = unavailable({perceptual: p, fidelity: f}, ("niqe", "psnr"))
    if missing is not None:
        return None, f"{missing} [perceptual teacher check on {dataset}]"
    ok = criterion_met(teacher_slacks(f, p, niqe_margin, psnr_margin))
    return ok, (f"perceptual teacher {perceptual}: NIQE {p['niqe']:.3f} vs fidelity teacher {f['niqe']:.3f} "
                f"({p['niqe'] - f['niqe']:+.3f}, needs <= -{niqe_margin:g}); PSNR {p['psnr']:.3f} vs "
                f"{f['psnr']:.3f} ({p['psnr'] - f['psnr']:+.3f} dB, needs >= -{psnr_margin:g})")


def student_check(table: pd.DataFrame, dataset: str, baseline: str, student: str,
                  psnr_margin: float = 0.1) -> Check:
    """``(passed, line)`` of the student criterion: lower NIQE than the baseline, PSNR at most ``psnr_margin``
    lower; ``passed`` None when a figure is missing."""
    b, s = _row(table, baseline, dataset), _row(table, student, dataset)
    missing = unavailable({student: s, baseline: b}, ("niqe", "psnr"))
    if missing is not None:
        return None, f"{missing} [DTKD student check on {dataset}]"
    ok = bool(s["niqe"] < b["niqe"] and s["psnr"] >= b["psnr"] - psnr_margin)
    return ok, (f"DTKD student {student}: NIQE {s['niqe']:.3f} vs ground-truth-only {b['niqe']:.3f} "
                f"({s['niqe'] - b['niqe']:+.3f}, needs < 0); PSNR {s['psnr']:.3f} vs {b['psnr']:.3f} "
                f"({s['psnr'] - b['psnr']:+.3f} dB, needs >= -{psnr_margin:g})")


def verdict(table: pd.DataFrame, dataset: str, fidelity: str, perceptual: str, baseline: Optional[str] = None,
            student: Optional[str] = None, teacher_niqe_margin: float = 0.5, teacher_psnr_margin: float = 1.5,
            student_psnr_margin: float = 0.1) -> list[Check]:
    """``(passed, line)`` for the teacher check and, when ``baseline`` and ``student`` are given, the student check."""
    checks = [teacher_check(table, dataset, fidelity, perceptual, teacher_niqe_margin, teacher_psnr_margin)]
    if baseline is not None and student is not None:
        checks.append(student_check(table, dataset, baseline, student, student_psnr_margin))
    return checks


def format_check(check: Check) -> str:
    """The printed line: ``PASS  ...``, ``FAIL  ...`` or the ``cannot judge: ...`` line as it is."""
    ok, line = check
    return line if ok is None else f"{'PASS' if ok else 'FAIL'}  {line}"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m Utils.demo_verdict``."""
    p = argparse.ArgumentParser(prog="python -m Utils.demo_verdict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("summary", help="summary.csv of main_for_infer.py")
    p.add_argument("--dataset", required=True)
    for role in ("fidelity", "perceptual"):
        p.add_argument(f"--{role}", required=True, help=f"checkpoint file name of the {role} model")
    for role in ("baseline", "student"):
        p.add_argument(f"--{role}", help=f"checkpoint file name of the {role} model (both or neither: the "
                                         "student check runs when both are given)")
    p.add_argument("--teacher_niqe_margin", type=float, default=0.5)
    p.add_argument("--teacher_psnr_margin", type=float, default=1.5)
    p.add_argument("--student_psnr_margin", type=float, default=0.1)
    p.add_argument("--strict", action="store_true", help="exit 1 when a check fails or cannot be judged")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = build_parser()
    args = p.parse_args(argv)
    if (args.baseline is None) != (args.student is None):
        p.error("--baseline and --student go together")
    if not Path(args.summary).is_file():
        print(f"error: {args.summary}: summary file not found", file=sys.stderr)
        return 2
    checks = verdict(pd.read_csv(args.summary), args.dataset, args.fidelity, args.perceptual, args.baseline,
                     args.student, args.teacher_niqe_margin, args.teacher_psnr_margin, args.student_psnr_margin)
    for check in checks:
        print(format_check(check))
    return 1 if args.strict and not all(ok is True for ok, _ in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
