"""``python -m Model``: the preset table (params, Multi-Adds at 1280x720), or which checkpoints fit which preset.

    python -m Model                       # table of presets
    python -m Model --scan ../shared/data/weights   # checkpoints in a folder (recursively) -> presets
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from Model import MODELS
from Model.profile import profile_table


def _table(args: argparse.Namespace) -> int:
    rows = profile_table(args.models or list(MODELS), out_hw=(args.height, args.width))
    print(f"| preset | role | params | Multi-Adds ({args.width}x{args.height} output) |")
    print("|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['role']} | {r['params']:,} | {r['multi_adds'] / 1e9:.1f} G |")
    return 0


def _scan(folder: Path) -> int:
    from Utils.checkpoint import CheckpointError, canonicalize_state_dict, matching_presets, read_checkpoint

    if not folder.is_dir():
        print(f"error: {folder}: folder not found", file=sys.stderr)
        return 2
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".pth", ".pt", ".ckpt", ".bin") and p.is_file())
    if not files:
        print(f"error: {folder}: no .pth/.pt/.ckpt files", file=sys.stderr)
        return 2
    print("| checkpoint | loads into |")
    print("|---|---|")
    for f in files:
        try:
            fits = matching_presets(canonicalize_state_dict(read_checkpoint(f), f))
            what = ", ".join(fits) if fits else "no preset"
        except CheckpointError as exc:
            what = f"unreadable: {str(exc).split(': ', 1)[-1]}"
        print(f"| {f.relative_to(folder)} | {what} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m Model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="presets to show (default: all)")
    parser.add_argument("--scan", type=Path, help="folder of checkpoints: report which preset each one loads into")
    parser.add_argument("--width", type=int, default=1280, help="output width for Multi-Adds")
    parser.add_argument("--height", type=int, default=720, help="output height for Multi-Adds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _scan(args.scan) if args.scan else _table(args)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
