"""The perception–distortion front: where a perceptual result stands, in numbers.

NIQE alone rewards noise and checkerboards, and PSNR alone rewards blur; a perceptual method is judged
by the PSNR it keeps at the NIQE it reaches. Two figures say that (used by :mod:`Utils.study`):

* **Margin above a reference line.** The line through two reference points A = (PSNR_A, NIQE_A) and
  B = (PSNR_B, NIQE_B) of the same test set (for the fine-tuning study: the starting checkpoint and
  the published perceptual student) gives, at a NIQE n, the PSNR
  ``PSNR_A + (n - NIQE_A) * (PSNR_B - PSNR_A) / (NIQE_B - NIQE_A)``. A result's margin is its PSNR
  minus that: positive above the line (a better trade than the published students'), negative below.
* **Difference at matched NIQE.** A run's trajectory is the piecewise-linear path through its
  evaluated checkpoints (``eval_marks``) in the order of training, optionally starting at a common
  origin (the checkpoint every arm fine-tunes). The PSNR of a path at NIQE n is the highest PSNR
  where the path crosses n (the most favourable reading for the path: conservative when the path is
  a control an arm must beat), NaN when it never reaches n: no extrapolation. An arm's difference to
  a control at matched NIQE is, per seed, its final PSNR minus the control's path PSNR at the arm's
  final NIQE (same seed), then a Student-t interval over seeds.

Everything here is a pure function of tables with columns ``arm, seed, dataset, psnr, niqe`` (and
``mark`` for trajectories; ``name, dataset, psnr, niqe`` for references). The margins of any study's
runs against any study's references, from their CSV files::

    python -m Utils.front studies/finetune_rfdn/runs.csv --references studies/front_rfdn/references.csv \
        --line start P [--out margins.csv]
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, int]:
    """(mean, half-width of the Student-t interval, n); the half-width is NaN for fewer than two values."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if n < 2:
        return float(x.mean()), math.nan, 1
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return float(x.mean()), float(half), n


def line_psnr(niqe: float, a: tuple[float, float], b: tuple[float, float]) -> float:
    """PSNR of the line through ``a`` and ``b`` (each ``(psnr, niqe)``) at ``niqe``; NaN if undefined."""
    (pa, na), (pb, nb) = a, b
    if any(math.isnan(v) for v in (pa, na, pb, nb, niqe)) or na == nb:
        return math.nan
    return pa + (niqe - na) * (pb - pa) / (nb - na)


def path_psnr_at(niqe_path: Sequence[float], psnr_path: Sequence[float], niqe: float) -> float:
    """PSNR of a piecewise-linear path (points in order) at ``niqe``: the highest where it crosses it."""
    pts = [(float(n), float(p)) for n, p in zip(niqe_path, psnr_path) if not (math.isnan(n) or math.isnan(p))]
    if math.isnan(niqe) or not pts:
        return math.nan
    best = math.nan
    if len(pts) == 1:
        return pts[0][1] if pts[0][0] == niqe else math.nan
    for (n0, p0), (n1, p1) in zip(pts, pts[1:]):
        lo, hi = min(n0, n1), max(n0, n1)
        if not lo <= niqe <= hi:
            continue
        p = max(p0, p1) if n0 == n1 else p0 + (niqe - n0) * (p1 - p0) / (n1 - n0)
        best = p if math.isnan(best) else max(best, p)
    return best


def reference_point(refs: pd.DataFrame, name: str, dataset: str) -> tuple[float, float]:
    """``(psnr, niqe)`` of reference ``name`` on ``dataset`` (NaN, NaN when absent)."""
    r = refs[(refs["name"] == name) & (refs["dataset"] == dataset)]
    if r.empty or "niqe" not in r:
        return math.nan, math.nan
    return float(r["psnr"].iloc[0]), float(r["niqe"].iloc[0])


def add_margins(table: pd.DataFrame, refs: pd.DataFrame, line: tuple[str, str]) -> pd.DataFrame:
    """``table`` with a ``margin`` column: PSNR above the line through references ``line`` (per dataset)."""
    out = table.copy()
    out["margin"] = [line_psnr(r["niqe"], reference_point(refs, line[0], r["dataset"]),
                               reference_point(refs, line[1], r["dataset"])) for _, r in out.iterrows()]
    out["margin"] = out["psnr"] - out["margin"]
    return out


def trajectory(marks: pd.DataFrame, arm: str, seed: int, dataset: str,
               origin: Optional[tuple[float, float]] = None) -> tuple[list[float], list[float]]:
    """(NIQE, PSNR) along one run's marks in training order, from ``origin`` ``(psnr, niqe)`` when given."""
    r = marks[(marks["arm"] == arm) & (marks["seed"] == seed) & (marks["dataset"] == dataset)].sort_values("mark")
    niqe, psnr = r["niqe"].astype(float).tolist(), r["psnr"].astype(float).tolist()
    if origin is not None and not any(math.isnan(v) for v in origin):
        psnr, niqe = [origin[0], *psnr], [origin[1], *niqe]
    return niqe, psnr


def matched_differences(finals: pd.DataFrame, marks: pd.DataFrame, arm: str, control: str, dataset: str,
                        origin: Optional[tuple[float, float]] = None) -> dict[int, float]:
    """Per seed both have: the arm's final PSNR minus the control's path PSNR at the arm's final NIQE."""
    cur = finals[(finals["arm"] == arm) & (finals["dataset"] == dataset)]
    seeds = set(marks.loc[(marks["arm"] == control) & (marks["dataset"] == dataset), "seed"])
    out = {}
    for _, r in cur.iterrows():
        if r["seed"] not in seeds:
            continue
        niqe_path, psnr_path = trajectory(marks, control, r["seed"], dataset, origin)
        out[int(r["seed"])] = float(r["psnr"]) - path_psnr_at(niqe_path, psnr_path, float(r["niqe"]))
    return out


def front_summary(finals: pd.DataFrame, marks: pd.DataFrame, refs: pd.DataFrame,
                  line: Optional[tuple[str, str]], control: Optional[str], origin: Optional[str],
                  confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per (arm, dataset): the margin above ``line`` (mean, half-width, n, interval excludes 0) and the
    difference to ``control`` at matched NIQE (same). ``origin``: a reference every trajectory starts at."""
    rows = []
    with_margin = add_margins(finals, refs, line) if line else finals.assign(margin=math.nan)
    for dataset in dict.fromkeys(finals["dataset"]):
        o = reference_point(refs, origin, dataset) if origin else None
        for arm in dict.fromkeys(finals["arm"]):
            cur = with_margin[(with_margin["arm"] == arm) & (with_margin["dataset"] == dataset)]
            if cur.empty:
                continue
            row = {"arm": arm, "dataset": dataset}
            m, h, n = t_interval(cur["margin"].tolist(), confidence)
            row.update(margin_mean=m, margin_ci=h, margin_n=n, margin_sig=bool(n >= 2 and abs(m) > h))
            if control and arm != control and not marks.empty:
                d, h, n = t_interval(list(matched_differences(finals, marks, arm, control, dataset, o).values()),
                                     confidence)
            else:
                d, h, n = math.nan, math.nan, 0
            row.update(matched_diff=d, matched_ci=h, matched_n=n, matched_sig=bool(n >= 2 and abs(d) > h))
            rows.append(row)
    return pd.DataFrame(rows, columns=["arm", "dataset", "margin_mean", "margin_ci", "margin_n", "margin_sig",
                                       "matched_diff", "matched_ci", "matched_n", "matched_sig"])


def mean_curves(marks: pd.DataFrame, refs: Optional[pd.DataFrame] = None, origin: Optional[str] = None) -> pd.DataFrame:
    """Each arm's mean (over seeds) metrics at each mark, per dataset; mark 0 is the reference ``origin``."""
    if marks.empty:
        return pd.DataFrame(columns=["arm", "dataset", "mark", *[c for c in ("psnr", "ssim", "niqe", "lpips")
                                                                 if c in marks]])
    cols = [c for c in ("psnr", "ssim", "niqe", "lpips") if c in marks]
    cur = marks.groupby(["arm", "dataset", "mark"], sort=False)[cols].mean().reset_index()
    if origin and refs is not None:
        extra = []
        for (arm, dataset) in cur[["arm", "dataset"]].drop_duplicates().itertuples(index=False):
            r = refs[(refs["name"] == origin) & (refs["dataset"] == dataset)]
            extra.append({"arm": arm, "dataset": dataset, "mark": 0,
                          **{c: float(r[c].iloc[0]) if c in r and not r.empty else math.nan for c in cols}})
        cur = pd.concat([pd.DataFrame(extra), cur], ignore_index=True)
    return cur.sort_values(["arm", "dataset", "mark"], kind="stable").reset_index(drop=True)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m Utils.front``."""
    p = argparse.ArgumentParser(prog="python -m Utils.front", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", help="a study's runs.csv (arm, seed, dataset, psnr, niqe)")
    p.add_argument("--references", required=True, help="a study's references.csv (name, dataset, psnr, niqe)")
    p.add_argument("--line", nargs=2, required=True, metavar=("A", "B"), help="two references' names")
    p.add_argument("--out", default=None, help="also write the table as CSV")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs, refs = pd.read_csv(args.runs), pd.read_csv(args.references)
    except (OSError, pd.errors.ParserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, table, cols in ((args.runs, runs, ("arm", "seed", "dataset", "psnr", "niqe")),
                              (args.references, refs, ("name", "dataset", "psnr", "niqe"))):
        missing = [c for c in cols if c not in table]
        if missing:
            print(f"error: {name}: no column {missing[0]!r}", file=sys.stderr)
            return 2
    unknown = [n for n in args.line if n not in set(refs["name"])]
    if unknown:
        print(f"error: {args.references}: no reference {unknown[0]!r} ({', '.join(dict.fromkeys(refs['name']))})",
              file=sys.stderr)
        return 2
    table = front_summary(runs, runs.iloc[0:0].assign(mark=0), refs, tuple(args.line), None, None)
    table = table[["arm", "dataset", "margin_mean", "margin_ci", "margin_n", "margin_sig"]]
    if args.out:
        table.to_csv(args.out, index=False, float_format="%.6f")
    print(table.to_string(index=False, formatters={"margin_mean": "{:+.3f}".format, "margin_ci": "{:.3f}".format}))
    unjudged = table[table["margin_n"] == 0]
    for _, r in unjudged.iterrows():
        print(f"cannot judge: margin of {r['arm']} on {r['dataset']} (NIQE unavailable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
