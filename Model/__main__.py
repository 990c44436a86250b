"""``python -m Model``: the preset table (params, Multi-Adds at 1280x720), or which preset and scale
each checkpoint of a folder is for.

    python -m Model                       # table of presets (x4; --scale 2 or 3 for the others)
    python -m Model --scan ../shared/data/weights   # checkpoints in a folder (recursively) -> preset, scale
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from Model import MODELS, checkpoint_fits, get_preset
from Model.profile import profile_table


def _table(args: argparse.Namespace) -> int:
    names = [get_preset(n).name for n in args.models] or [n for n, p in MODELS.items() if args.scale in p.scales]
    rows = profile_table(names, scale=args.scale, out_hw=(args.height, args.width))
    print(f"| preset | role | params | Multi-Adds (x{args.scale}, {args.width}x{args.height} output) |")
    print("|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['role']} | {r['params']:,} | {r['multi_adds'] / 1e9:.1f} G |")
    return 0


def _scan(folder: Path) -> int:
    from Utils.checkpoint import CheckpointError, read_state_dict

    if not folder.is_dir():
        print(f"error: {folder}: folder not found", file=sys.stderr)
        return 2
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".pth", ".pt", ".ckpt", ".bin") and p.is_file())
    if not files:
        print(f"error: {folder}: no .pth/.pt/.ckpt files", file=sys.stderr)
        return 2
    print("| checkpoint | loads into | scale |")
    print("|---|---|---|")
    for f in files:
        try:
            fits = checkpoint_fits(read_state_dict(f))
            presets = " / ".join(dict.fromkeys(
                fit.preset + (f" ({fit.layout} layout)" if fit.layout else "") for fit in fits)) or "no preset"
            scales = " / ".join(dict.fromkeys(f"x{fit.scale}" for fit in fits)) or "-"
        except CheckpointError as exc:
            presets, scales = f"unreadable: {str(exc).split(': ', 1)[-1]}", "-"
        print(f"| {f.relative_to(folder)} | {presets} | {scales} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m Model``."""
    parser = argparse.ArgumentParser(prog="python -m Model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="presets to show (default: all)")
    parser.add_argument("--scan", type=Path, help="folder of checkpoints: report which preset and scale each one is for")
    parser.add_argument("--scale", type=int, default=4, choices=(2, 3, 4), help="scale of the preset table")
    parser.add_argument("--width", type=int, default=1280, help="output width for Multi-Adds")
    parser.add_argument("--height", type=int, default=720, help="output height for Multi-Adds")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _scan(args.scan) if args.scan else _table(args)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
