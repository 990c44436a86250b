"""Compare evaluations: summary.csv files -> a methods x datasets table and the perception-distortion plane.

    python -m Utils.compare A/summary.csv B/summary.csv [--out DIR] [--metrics psnr ssim niqe lpips ag]
                            [--label-by {checkpoint,model,both}] [--perceptual {auto,lpips,niqe}] [--no-plot]

The markdown table goes to stdout; with ``--out DIR`` it is also written to ``DIR/compare.md`` with a
wide ``DIR/compare.csv`` (method, params, then ``<dataset>_<metric>`` columns). The plot goes to
``DIR/perception_distortion.png`` (DIR defaults to the folder of the first summary). Exit status: 0 on
success, 2 for a bad input file (missing, not a summary, unparsable number) or nothing to compare.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from Utils.evaluate import METRIC_COLUMNS, SUMMARY_COLUMNS, write_rows_csv

log = logging.getLogger(__name__)
PathLike = Union[str, Path]

LOWER_IS_BETTER = frozenset({"niqe", "lpips"})
NO_DIRECTION = frozenset({"ag"})
DEFAULT_METRICS = ("psnr", "ssim", "niqe", "lpips")
LABEL_MODES = ("checkpoint", "model", "both")
INT_COLUMNS = ("scale", "images", "failed", "params")
OPTIONAL_COLUMNS = ("scale",)  # summaries written before x2/x3 were supported lack it: x4
FLOAT_COLUMNS = METRIC_COLUMNS + ("seconds",)
DECIMALS = 4
MISSING = "-"


class CompareError(ValueError):
    """A summary file that cannot be used; the message is one line naming the file (and row)."""


# ----------------------------------------------------------------------------- reading

def _parse_number(text: str, column: str, where: str) -> Optional[Union[int, float]]:
    """A summary cell as a number: empty -> None, NaN -> None, integral columns -> int."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise CompareError(f"{where}: column '{column}': cannot parse {text!r} as a number") from None
    if math.isnan(value):
        return None
    if column in INT_COLUMNS:
        if not value.is_integer():
            raise CompareError(f"{where}: column '{column}': expected a whole number, got {text!r}")
        return int(value)
    return value


def _read_summary(path: Path) -> list[dict]:
    """Rows of one summary.csv, numbers parsed; each row remembers its file and line (``_source``)."""
    if not path.is_file():
        raise CompareError(f"{path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise CompareError(f"{path}: empty file, not a summary.csv")
            header = [h.strip() for h in header]
            missing = [c for c in SUMMARY_COLUMNS if c not in header and c not in OPTIONAL_COLUMNS]
            if missing:
                raise CompareError(f"{path}: not a summary.csv (missing column(s): {', '.join(missing)})")
            rows = []
            for cells in reader:
                where = f"{path} row {reader.line_num}"
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    raise CompareError(f"{where}: {len(cells)} fields, the header has {len(header)}")
                raw = dict(zip(header, cells))
                row: dict = {"_source": where}
                for col in SUMMARY_COLUMNS:
                    if col in INT_COLUMNS or col in FLOAT_COLUMNS:
                        row[col] = _parse_number(raw.get(col, ""), col, where)
                    else:
                        row[col] = raw[col].strip()
                for col in ("model", "checkpoint", "dataset"):
                    if not row[col]:
                        raise CompareError(f"{where}: empty '{col}' cell")
                rows.append(row)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CompareError(f"{path}: unreadable CSV ({exc})") from None
    return rows


def load_summaries(paths: Sequence[PathLike]) -> list[dict]:
    """Read and merge summary.csv files; a repeated (model, checkpoint, sha256, dataset) keeps the last row
    (in the place of the first, so datasets and methods keep their order of first appearance). When the
    rows span several scales, each dataset is named with its scale (``Set5 x2``, ``Set5 x4``).

    Numbers are parsed (empty cells -> None). Raises :class:`CompareError` for a missing file, a file
    that is not a summary, or an unparsable number, naming the file and row.
    """
    merged: dict[tuple, dict] = {}
    for p in paths:
        for row in _read_summary(Path(p)):
            key = (row["model"], row["checkpoint"], row["sha256"], row["dataset"])
            if key in merged:
                log.info("duplicate %s %s on %s: %s replaces %s", row["model"], row["checkpoint"],
                         row["dataset"], row["_source"], merged[key]["_source"])
            merged[key] = row
    rows = list(merged.values())
    for row in rows:
        row["scale"] = row["scale"] or 4
    if len({row["scale"] for row in rows}) > 1:  # a set at x2 and at x4 are two columns, not one
        for row in rows:
            row["dataset"] = f"{row['dataset']} x{row['scale']}"
    return rows


# ----------------------------------------------------------------------------- methods and labels

def _stem(checkpoint: str) -> str:
    return Path(checkpoint).stem or checkpoint


def _label(model: str, checkpoint: str, mode: str) -> str:
    stem = _stem(checkpoint)
    if mode == "model":
        return model
    if mode == "checkpoint":
        return stem
    # both: "model (stem)", or just the stem when it already names the model (DTKD-RFDN.pth for RFDN)
    return stem if model.lower() in stem.lower() else f"{model} ({stem})"


def method_labels(rows: Iterable[dict], label_by: str = "both") -> dict[tuple[str, str, str], str]:
    """A readable, unique label per method (model, checkpoint, sha256), in order of first appearance.

    ``label_by`` picks the base label; labels shared by different methods fall back to
    ``model (stem)``, then get the first 8 digits of the checkpoint's sha256.
    """
    if label_by not in LABEL_MODES:
        raise ValueError(f"label_by must be one of {LABEL_MODES}, got {label_by!r}")
    methods = list(dict.fromkeys((r["model"], r["checkpoint"], r["sha256"]) for r in rows))
    labels = {m: _label(m[0], m[1], label_by) for m in methods}
    for fallback in (lambda m: f"{m[0]} ({_stem(m[1])})", lambda m: f"{m[0]} ({_stem(m[1])}) #{m[2][:8]}"):
        counts: dict[str, int] = {}
        for lab in labels.values():
            counts[lab] = counts.get(lab, 0) + 1
        labels = {m: (fallback(m) if counts[lab] > 1 else lab) for m, lab in labels.items()}
    return labels


# ----------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Column:
    """One table column: a title and, for value columns, its dataset and the metric(s) in each cell."""

    title: str
    dataset: Optional[str] = None
    metrics: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.title


def _metric_title(metric: str) -> str:
    return metric.upper()


def comparison_table(rows: Sequence[dict], metrics: Sequence[str] = DEFAULT_METRICS,
                     label_by: str = "both") -> tuple[list[Column], list[list]]:
    """Methods (rows) against datasets (columns).

    Returns ``(header, table_rows)``: ``header`` is ``[Method, Params, <value columns>...]``; a value
    column holds PSNR and SSIM together (when chosen) or one other metric, per dataset, and is left out
    when no method has a value for it. Each table row is ``[label, params, cell, ...]`` where a cell is a
    tuple of ``Optional[float]``, one per metric of its column.
    """
    unknown = [m for m in metrics if m not in METRIC_COLUMNS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRIC_COLUMNS)}")
    chosen = [m for m in METRIC_COLUMNS if m in metrics]  # canonical order
    groups: list[tuple[str, ...]] = []
    distortion = tuple(m for m in ("psnr", "ssim") if m in chosen)
    if distortion:
        groups.append(distortion)
    groups += [(m,) for m in chosen if m not in distortion]

    labels = method_labels(rows, label_by)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    by_key = {((r["model"], r["checkpoint"], r["sha256"]), r["dataset"]): r for r in rows}

    header = [Column("Method"), Column("Params")]
    for ds in datasets:
        for group in groups:
            if any(by_key.get((m, ds), {}).get(k) is not None for m in labels for k in group):
                title = f"{ds} " + " / ".join(_metric_title(k) for k in group)
                header.append(Column(title, ds, group))

    table_rows = []
    for method, label in labels.items():
        params = next((r["params"] for r in rows if (r["model"], r["checkpoint"], r["sha256"]) == method
                       and r["params"] is not None), None)
        line: list = [label, params]
        for col in header[2:]:
            row = by_key.get((method, col.dataset), {})
            line.append(tuple(row.get(k) for k in col.metrics))
        table_rows.append(line)
    return header, table_rows


def _best(values: list[Optional[float]], metric: str) -> Optional[float]:
    """The best of the shown (rounded) values, or None when there is nothing to rank."""
    shown = [round(v, DECIMALS) for v in values if v is not None and math.isfinite(v)]
    if metric in NO_DIRECTION or len(shown) < 2:
        return None
    return min(shown) if metric in LOWER_IS_BETTER else max(shown)


def _format_params(params: Optional[int]) -> str:
    if params is None:
        return MISSING
    if params >= 1_000_000:
        return f"{params / 1e6:.2f}M"
    if params >= 1_000:
        return f"{params / 1e3:.1f}K"
    return str(params)


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def to_markdown(header: Sequence[Column], table_rows: Sequence[Sequence], bold_best: bool = True) -> str:
    """A padded markdown table of :func:`comparison_table`; the best value of each metric in each column
    is bold (lower is better for NIQE and LPIPS; AG is never bold; ties are all bold)."""
    best: dict[tuple[int, int], Optional[float]] = {}
    for ci, col in enumerate(header):
        for mi, metric in enumerate(col.metrics):
            best[ci, mi] = _best([r[ci][mi] for r in table_rows], metric) if bold_best else None

    def cell(ci: int, value: object) -> str:
        if ci == 0:
            return _md_escape(str(value))
        if ci == 1:
            return _format_params(value)  # type: ignore[arg-type]
        parts = []
        for mi, v in enumerate(value):  # type: ignore[arg-type]
            if v is None:
                parts.append(MISSING)
                continue
            text = f"{v:.{DECIMALS}f}"
            b = best.get((ci, mi))
            parts.append(f"**{text}**" if b is not None and math.isfinite(v) and round(v, DECIMALS) == b else text)
        return " / ".join(parts)

    titles = [_md_escape(str(c)) + (" ↓" if set(c.metrics) <= LOWER_IS_BETTER and c.metrics else "")
              for c in header]
    body = [[cell(ci, v) for ci, v in enumerate(r)] for r in table_rows]
    widths = [max([len(titles[ci])] + [len(b[ci]) for b in body]) for ci in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(titles), rule] + [line(b) for b in body]) + "\n"


def wide_rows(header: Sequence[Column], table_rows: Sequence[Sequence]) -> tuple[list[str], list[dict]]:
    """The table as CSV columns ``method, params, <dataset>_<metric>...`` and one dict per method."""
    columns = ["method", "params"]
    for col in header[2:]:
        columns += [f"{col.dataset}_{m}" for m in col.metrics]
    out = []
    for r in table_rows:
        d: dict = {"method": r[0], "params": r[1]}
        for col, values in zip(header[2:], r[2:]):
            d.update({f"{col.dataset}_{m}": v for m, v in zip(col.metrics, values)})
        out.append(d)
    return columns, out


# ----------------------------------------------------------------------------- the plot

def _perceptual_measure(rows: Sequence[dict], perceptual: str) -> Optional[str]:
    """The y measure: LPIPS when some row has it with PSNR (auto), else NIQE; None when neither."""
    if perceptual not in ("auto", "lpips", "niqe"):
        raise ValueError(f"perceptual must be auto, lpips or niqe, got {perceptual!r}")
    candidates = ("lpips", "niqe") if perceptual == "auto" else (perceptual,)
    for m in candidates:
        if any(r.get("psnr") is not None and r.get(m) is not None for r in rows):
            return m
    return None


def _place_labels(fig, ax, annotations: list, points_px: list[tuple[float, float]]) -> None:
    """Greedy label placement: move each label to the first nearby slot that overlaps no earlier label."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    scale = fig.dpi / 72.0  # pixels per point
    placed: list = []
    markers = [Bbox.from_bounds(x - 5, y - 5, 10, 10) for x, y in points_px]
    axes_box = ax.get_window_extent(renderer)
    order = sorted(range(len(annotations)), key=lambda i: -points_px[i][1])
    for i in order:
        ann = annotations[i]
        box = ann.get_window_extent(renderer)
        w, h = box.width / scale, box.height / scale
        x0, y0 = ann.xyann
        candidates = [(x0, y0), (x0, -y0 - h), (-x0 - w, y0), (-x0 - w, -y0 - h)]
        for step in range(1, 6):
            dy = step * (h + 2)
            candidates += [(x0, y0 + dy), (x0, -y0 - h - dy), (-x0 - w, y0 + dy), (-x0 - w, -y0 - h - dy)]
        chosen = candidates[0]
        for cx, cy in candidates:
            cand = Bbox.from_bounds(box.x0 + (cx - x0) * scale, box.y0 + (cy - y0) * scale, box.width, box.height)
            others = placed + [m for j, m in enumerate(markers) if j != i]
            inside = axes_box.contains(cand.x0, cand.y0) and axes_box.contains(cand.x1, cand.y1)
            if inside and not any(cand.overlaps(o) for o in others):
                chosen = (cx, cy)
                break
        ann.xyann = chosen
        if ann.arrow_patch is not None:  # a leader line only for labels moved away from their point
            ann.arrow_patch.set_visible(chosen[1] not in (y0, -y0 - h))
        dx, dy = (chosen[0] - x0) * scale, (chosen[1] - y0) * scale
        placed.append(Bbox.from_bounds(box.x0 + dx, box.y0 + dy, box.width, box.height))


MIN_SPAN = {"psnr": 0.1, "lpips": 0.005, "niqe": 0.05}


def _set_limits(ax, xs: Sequence[float], ys: Sequence[float], min_y_span: float) -> None:
    """Axis limits with room for labels, never narrower than a readable span (no 1e-5 dB axes)."""
    for values, min_span, pad, setter in ((xs, MIN_SPAN["psnr"], 0.25, ax.set_xlim),
                                          (ys, min_y_span, 0.2, ax.set_ylim)):
        lo, hi = min(values), max(values)
        span = max(hi - lo, min_span)
        mid = (lo + hi) / 2
        setter(mid - span * (0.5 + pad), mid + span * (0.5 + pad))


def save_atomic(write, path: Path) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        log.info("replacing %s", path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_perception_distortion(rows: Sequence[dict], path: PathLike, perceptual: str = "auto",
                               label_by: str = "both") -> Optional[Path]:
    """Draw PSNR (x) against LPIPS or NIQE (y), one subplot per dataset, one labelled point per method.

    Returns the PNG's path, or None (with a warning) when no row has PSNR and the perceptual measure.
    """
    measure = _perceptual_measure(rows, perceptual)
    if measure is None:
        wanted = "LPIPS or NIQE" if perceptual == "auto" else perceptual.upper()
        log.warning("no perception-distortion plot: no row has both PSNR and %s", wanted)
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    labels = method_labels(rows, label_by)
    usable = [r for r in rows if r.get("psnr") is not None and r.get(measure) is not None
              and math.isfinite(r["psnr"]) and math.isfinite(r[measure])]
    if not usable:
        log.warning("no perception-distortion plot: no row has finite PSNR and %s", measure.upper())
        return None
    skipped = sorted({r["dataset"] for r in rows} - {r["dataset"] for r in usable})
    if skipped:
        log.info("not plotted (no PSNR or %s): %s", measure.upper(), ", ".join(skipped))
    datasets = list(dict.fromkeys(r["dataset"] for r in usable))
    methods = list(dict.fromkeys((r["model"], r["checkpoint"], r["sha256"]) for r in usable))
    colors = [f"C{i % 10}" for i in range(len(methods))]
    marker_cycle = "osD^vP*Xhp"
    style = {m: (colors[i], marker_cycle[i % len(marker_cycle)]) for i, m in enumerate(methods)}

    ncols = 2 if len(datasets) == 4 else min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    spare = nrows * ncols - len(datasets)  # an empty grid cell holds the legend
    legend_rows = math.ceil(len(methods) / 3)
    legend_in = 0.0 if spare else 0.15 + 0.18 * legend_rows
    fig = Figure(figsize=(5.2 * ncols, 4.2 * nrows + 0.3 + legend_in), dpi=150)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(datasets):]:
        ax.set_axis_off()
    per_axis = []
    for ax, ds in zip(axes, datasets):
        pts = [r for r in usable if r["dataset"] == ds]
        anns = []
        for r in pts:
            m = (r["model"], r["checkpoint"], r["sha256"])
            color, marker = style[m]
            ax.scatter([r["psnr"]], [r[measure]], color=color, marker=marker, s=46, zorder=3,
                       edgecolors="black", linewidths=0.5)
            ann = ax.annotate(labels[m], (r["psnr"], r[measure]), xytext=(6, 4), textcoords="offset points",
                              fontsize=8, zorder=4, arrowprops=dict(arrowstyle="-", color="0.5", lw=0.6,
                                                                    shrinkA=0, shrinkB=4))
            ann.set_in_layout(False)
            anns.append(ann)
        _set_limits(ax, [r["psnr"] for r in pts], [r[measure] for r in pts], MIN_SPAN[measure])
        ax.ticklabel_format(useOffset=False)
        ax.set_title(ds, fontsize=11, fontweight="bold")
        ax.set_xlabel("PSNR (dB)  higher is better", fontsize=9)
        ax.set_ylabel(f"{measure.upper()}  lower is better", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3, lw=0.5)
        per_axis.append((ax, anns, pts))
    handles = [axes[0].scatter([], [], color=style[m][0], marker=style[m][1], edgecolors="black", linewidths=0.5)
               for m in methods]
    names = [labels[m] for m in methods]
    if spare:
        axes[len(datasets)].legend(handles, names, loc="center", fontsize=9, frameon=False, title="Methods")
    else:
        fig.legend(handles, names, loc="lower center", ncol=min(3, len(methods)), fontsize=8, frameon=False)
    fig.suptitle("Perception-distortion plane", fontsize=12, x=0.02, ha="left")
    fig.text(0.94, 0.985, "better: right and down", ha="right", va="top", fontsize=9, color="0.25")
    axes[0].annotate("", xy=(0.98, 0.96), xytext=(0.95, 0.985), xycoords="figure fraction",
                     textcoords="figure fraction", annotation_clip=False,
                     arrowprops=dict(arrowstyle="->", color="0.25", lw=1.2)).set_in_layout(False)
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))  # leaves room for the suptitle
    fig.canvas.draw()
    for ax, anns, pts in per_axis:
        px = [tuple(ax.transData.transform((r["psnr"], r[measure]))) for r in pts]
        _place_labels(fig, ax, anns, px)
    save_atomic(lambda f: fig.savefig(f, format="png", dpi=150, bbox_inches="tight"), path)
    log.info("perception-distortion plot: %s", path)
    return path


# ----------------------------------------------------------------------------- command line

def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`save_atomic`)."""
    save_atomic(lambda f: f.write(text.encode("utf-8")), path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m Utils.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("summaries", nargs="+", type=Path, help="summary.csv files written by main_for_infer.py")
    p.add_argument("--out", type=Path, default=None,
                   help="write compare.md, compare.csv and the plot here (default: plot only, beside the first summary)")
    p.add_argument("--metrics", nargs="+", choices=METRIC_COLUMNS, default=list(DEFAULT_METRICS),
                   help="measures to tabulate (default: psnr ssim niqe lpips; columns without values are left out)")
    p.add_argument("--label-by", choices=LABEL_MODES, default="both", help="how methods are named (default: both)")
    p.add_argument("--perceptual", choices=("auto", "lpips", "niqe"), default="auto",
                   help="y axis of the plot: auto = LPIPS when present, else NIQE")
    p.add_argument("--no-plot", action="store_true", help="do not draw the perception-distortion plane")
    return p


def _warn_inconsistent(rows: Sequence[dict]) -> None:
    """Warnings for means that do not compare like with like: failed images, differing image counts."""
    for r in rows:
        if r.get("failed"):
            log.warning("%s %s on %s: %d image(s) failed; its means cover %s image(s)", r["model"],
                        r["checkpoint"], r["dataset"], r["failed"], r.get("images"))
    counts: dict[str, set] = {}
    for r in rows:
        if r.get("images") is not None:
            counts.setdefault(r["dataset"], set()).add(r["images"])
    for ds, n in counts.items():
        if len(n) > 1:
            log.warning("%s: methods were evaluated on different numbers of images (%s)", ds,
                        ", ".join(map(str, sorted(n))))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        rows = load_summaries(args.summaries)
    except CompareError as exc:
        log.error("%s", exc)
        return 2
    if not rows:
        log.error("%s: no rows to compare", ", ".join(map(str, args.summaries)))
        return 2
    _warn_inconsistent(rows)
    header, table_rows = comparison_table(rows, args.metrics, args.label_by)
    if len(header) <= 2:
        log.warning("none of %s has a value in these summaries", ", ".join(args.metrics))
    note = "Best per column in **bold** (↓: lower is better)." if any(
        set(c.metrics) & LOWER_IS_BETTER for c in header) else "Best per column in **bold**."
    markdown = to_markdown(header, table_rows) + "\n" + note + "\n"
    sys.stdout.write(markdown)
    if args.out is not None:
        sources = "\n".join(f"- `{p}`" for p in args.summaries)
        write_text_atomic(args.out / "compare.md", f"# Comparison\n\n{markdown}\nSources:\n\n{sources}\n")
        columns, wide = wide_rows(header, table_rows)
        if (args.out / "compare.csv").exists():
            log.info("replacing %s", args.out / "compare.csv")
        write_rows_csv(args.out / "compare.csv", wide, columns)
        log.info("wrote %s and %s", args.out / "compare.md", args.out / "compare.csv")
    if not args.no_plot:
        plot_dir = args.out if args.out is not None else args.summaries[0].parent
        plot = plot_dir / "perception_distortion.png"
        if plot_perception_distortion(rows, plot, args.perceptual, args.label_by) is None and plot.exists():
            plot.unlink()  # an older plot would pass for this comparison's
            log.warning("removed the earlier %s: it does not show these summaries", plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
