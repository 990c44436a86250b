"""Evaluate a checkpoint on test folders: SR images, per-image metrics.csv and a row in summary.csv.

The seed's command line works as written:

    python main_for_infer.py --Train False --model_name RFDN --checkpoint DTKD-RFDN.pth \\
        --test_folder Datasets2023/GTmod12_LRx4/Set5_LRbicx4

``--model_name auto`` detects the preset and the scale from the checkpoint's keys and shapes; without
``--scale`` a named preset also runs at the checkpoint's scale (x4 when it cannot tell):

    python main_for_infer.py --model_name auto --checkpoint IMDN_x2.pth \\
        --test_folder Datasets2023/GTmod2_LRx2/Set5_LRbicx2

Results go to ``<output_folder>/<checkpoint stem>/<test folder name>/`` (SR PNGs and metrics.csv)
and one row per (model, checkpoint, dataset) in ``<output_folder>/summary.csv``. Exit status: 0 when
everything was evaluated, 1 when some image or folder could not be (the others are kept), 2 for a
usage error (unknown model, unusable checkpoint).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

log = logging.getLogger("main_for_infer")


def str2bool(value: str) -> bool:
    """Parse the seed's string flags (``--Train False``) without ever comparing with ``== True``."""
    v = str(value).strip().lower()
    if v in ("1", "true", "t", "yes", "y", "on"):
        return True
    if v in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--Train", type=str2bool, default=False, help="kept for the seed's command lines; must be False")
    p.add_argument("--model_name", required=True,
                   help="preset name (python -m Model lists them), or auto: detected from the checkpoint")
    p.add_argument("--checkpoint", required=True,
                   help="weights file: a bare name resolves to Checkpoints/<model_name>/<name> (auto: Checkpoints/*/<name>)")
    p.add_argument("--checkpoint_root", default=None, help="folder of per-model checkpoints (default Checkpoints)")
    p.add_argument("--test_folder", nargs="+", default=[], help="LR test folder(s)")
    p.add_argument("--test_datasets", nargs="+", default=[],
                   help="set names resolved as <datasets_root>/GTmod<mod>_LRx<scale>/<Set>_LRbicx<scale> "
                        "(e.g. Set5 Set14 B100)")
    p.add_argument("--datasets_root", default="Datasets2023", help="root of the Datasets2023 layout")
    p.add_argument("--mod", type=int, default=12,
                   help="HR crop of the --test_datasets folders (GTmod<mod>; default 12 as in the seed's layout)")
    p.add_argument("--gt_folder", nargs="+", default=None,
                   help="ground-truth folder(s), one per test folder (default: found beside the LR folder)")
    p.add_argument("--output_folder", default="Result", help="where SR images and CSVs go")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=None,
                   help="upscaling factor (default: the checkpoint's, read from its upsampler's shapes)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is available")
    p.add_argument("--tile", type=int, default=None, help="tile size in LR pixels for large images")
    p.add_argument("--tile_overlap", type=int, default=32, help="overlap of neighbouring tiles (LR pixels)")
    p.add_argument("--half", action="store_true", help="half precision on CUDA (bf16 for presets unsafe in fp16)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None, help="autocast precision on CUDA")
    p.add_argument("--lpips", action="store_true", help="also measure LPIPS (AlexNet; weights via torch.hub)")
    p.add_argument("--no_niqe", action="store_true", help="skip NIQE")
    p.add_argument("--niqe_params", default=None, help="niqe_pris_params.npz (default: $DTKD_NIQE_PARAMS, else the copy shipped in Utils/assets/)")
    p.add_argument("--round_y", action="store_true",
                   help="round Y to integers as the original SRDTKD code (about 0.02 dB lower)")
    p.add_argument("--no_save", action="store_true", help="do not write SR images")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _test_folders(args: argparse.Namespace, scale: int) -> list[Path]:
    folders = [Path(f) for f in args.test_folder]
    for name in args.test_datasets:
        folders.append(Path(args.datasets_root) / f"GTmod{args.mod}_LRx{scale}" / f"{name}_LRbicx{scale}")
    return folders


def _run_dir(output: Path, ckpt: Path, model_name: str, sha: str) -> Path:
    """``<output>/<checkpoint stem>``, unless another checkpoint already owns that name."""
    base = output / ckpt.stem
    for cand in (base, output / f"{ckpt.stem}_{model_name}_{sha[:8]}"):
        meta = cand / "source.json"
        if not meta.is_file():
            return cand
        info = json.loads(meta.read_text())
        if info.get("sha256") == sha and info.get("model") == model_name:
            return cand
    raise RuntimeError(f"{base}: results of other checkpoints already use this name")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.Train:
        log.error("--Train True: this script evaluates; train with main.py")
        return 2

    from Model import load_model
    from Model.profile import count_params
    from Utils.checkpoint import CheckpointError, sha256_file
    from Utils.evaluate import (MetricOptions, find_gt_folder, dataset_name, evaluate_pairs, pair_images,
                                resolve_niqe_params, results_folder_name, upsert_summary, write_rows_csv,
                                IMAGE_COLUMNS)
    from Utils.image_io import ImageError
    from Utils.inference import super_resolve

    n_folders = len(args.test_folder) + len(args.test_datasets)
    if not n_folders:
        log.error("no test folder: give --test_folder DIR or --test_datasets NAME")
        return 2
    if args.gt_folder is not None and len(args.gt_folder) != n_folders:
        log.error("--gt_folder: %d given for %d test folders", len(args.gt_folder), n_folders)
        return 2
    try:
        loaded = load_model(args.model_name, args.scale, args.checkpoint, args.checkpoint_root)
    except (KeyError, CheckpointError, ValueError) as exc:
        log.error("%s", exc.args[0] if isinstance(exc, KeyError) else exc)
        return 2
    model, preset, scale, ckpt = loaded.model, loaded.preset, loaded.scale, loaded.checkpoint
    folders = _test_folders(args, scale)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model.to(device)
    amp = args.amp or ("fp16" if args.half else "none")
    opts = MetricOptions(scale=scale, round_y=args.round_y, niqe=not args.no_niqe,
                         niqe_params=args.niqe_params, lpips=args.lpips)
    resolve_niqe_params(opts)
    if opts.lpips:
        from Utils.lpips import get_lpips_model

        opts.lpips_model = get_lpips_model(device)
    sha = sha256_file(ckpt)
    output = Path(args.output_folder)
    run_dir = _run_dir(output, ckpt, preset.name, sha)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "source.json").write_text(json.dumps(
        {"model": preset.name, "checkpoint": str(ckpt.resolve()), "sha256": sha}, indent=1))
    params = count_params(model)

    def sr_fn(x: torch.Tensor) -> torch.Tensor:
        return super_resolve(model, x, scale=scale, pad_multiple=preset.pad_multiple, tile=args.tile,
                             tile_overlap=args.tile_overlap, amp=amp, half_ok=preset.half_ok)

    status = 0
    for i, folder in enumerate(folders):
        t0 = time.perf_counter()
        try:
            gt_dir = Path(args.gt_folder[i]) if args.gt_folder else find_gt_folder(folder)
            pairs = pair_images(folder, gt_dir, scale, missing_gt_fails=False)
        except ImageError as exc:
            log.error("%s", exc)
            status = 1
            continue
        if gt_dir is None:
            log.info("%s: no ground truth found; no-reference measures only", folder)
        name = dataset_name(folder)
        out_dir = run_dir / results_folder_name(folder)
        result = evaluate_pairs(model, pairs, opts, sr_fn=sr_fn, save_dir=None if args.no_save else out_dir,
                                progress=not args.quiet, desc=f"{preset.name} {name}")
        write_rows_csv(out_dir / "metrics.csv", result.rows, IMAGE_COLUMNS)
        means = result.means()
        upsert_summary(output / "summary.csv", {
            "model": preset.name, "checkpoint": ckpt.name, "dataset": name, "scale": scale, "images": len(result.rows),
            "failed": len(result.failures), **means, "params": params,
            "seconds": time.perf_counter() - t0, "sha256": sha, "results": str(out_dir)})
        shown = "  ".join(f"{k.upper()} {v:.4f}" for k, v in means.items())
        log.info("%s x%d %s on %s: %d images  %s", preset.name, scale, ckpt.name, name, len(result.rows), shown)
        if result.failures:
            status = 1
            log.error("%s: %d image(s) could not be evaluated (the others are kept in %s)",
                      folder, len(result.failures), out_dir / "metrics.csv")
    log.info("summary: %s", output / "summary.csv")
    return status


if __name__ == "__main__":
    sys.exit(main())
