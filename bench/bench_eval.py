"""End-to-end evaluation cost against the model's own forward time.

``full``: the real ``main_for_infer.main([...])`` call on a test set (default: RFDN, ``MTKDSR/RFDN_x4.pth``,
all of Set14) with the default measures (PSNR, SSIM, NIQE with the shared pristine parameters, AG)
and the SR PNGs saved; it includes building the model, loading the checkpoint, its SHA-256, reading
the images, metrics, CSV files. ``loop``: the evaluation loop alone of that call (the ``seconds`` of the
summary row: pairing, the loop, metrics.csv). ``forward``: the sum over the same images of one
:func:`Utils.inference.super_resolve` each (the model already loaded, images already decoded).

The three are timed interleaved (full, forward, full, forward, ...), medians reported. Acceptance:
full / forward < 1.5. Examples::

    python bench/bench_eval.py                         # CPU, RFDN on Set14, ~1-2 min
    python bench/bench_eval.py --device cuda --sets Set5 Set14 --repeats 5
    python bench/bench_eval.py --profile               # also cProfile one full evaluation
"""
from __future__ import annotations

import argparse
import cProfile
import csv
import io
import logging
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (SHARED, WEIGHTS, add_common_args, describe, machine_info, markdown_table,  # noqa: E402
                    median, record, setup, sync)

import main_for_infer  # noqa: E402
from Model import get_model, get_preset  # noqa: E402
from Utils.evaluate import find_gt_folder, pair_images  # noqa: E402
from Utils.image_io import img2tensor, read_image, tensor2img  # noqa: E402
from Utils.inference import super_resolve  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--model", default="RFDN")
    p.add_argument("--checkpoint", default=str(WEIGHTS / "MTKDSR" / "RFDN_x4.pth"))
    p.add_argument("--sets", nargs="+", default=["Set14"], help="sets under ../shared/data/benchmark")
    p.add_argument("--niqe-params", default=str(WEIGHTS / "perceptual" / "niqe_pris_params.npz"))
    p.add_argument("--profile", action="store_true", help="cProfile one more full evaluation and print the top")
    p.set_defaults(warmup=1, repeats=5)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = setup(args)
    info = machine_info(device)
    folders = [SHARED / "benchmark" / s / "LR_bicubic" / "X4" for s in args.sets]
    print(f"# evaluation benchmark: {describe(info)}")
    print(f"# {args.model} {Path(args.checkpoint).name} on {', '.join(args.sets)}: main_for_infer (PSNR, SSIM, "
          f"NIQE, AG, PNGs saved) vs the forward passes alone; warm-up {args.warmup}, median of {args.repeats} "
          "interleaved repeats")

    out_root = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    cli = ["--model_name", args.model, "--checkpoint", args.checkpoint, "--test_folder", *map(str, folders),
           "--niqe_params", args.niqe_params, "--quiet"]
    if device.type == "cpu":
        cli.append("--cpu")
    summaries: list[float] = []

    def full() -> None:
        out = out_root / "run"
        shutil.rmtree(out, ignore_errors=True)  # every call starts from nothing, like a first evaluation
        rc = main_for_infer.main([*cli, "--output_folder", str(out)])
        if rc != 0:
            raise SystemExit(f"main_for_infer failed with status {rc}")
        with open(out / "summary.csv", newline="") as f:
            summaries.append(sum(float(r["seconds"]) for r in csv.DictReader(f)))

    # forward alone: the same model and images, decoded once beforehand
    preset = get_preset(args.model)
    model = get_model(preset.name, checkpoint=args.checkpoint).to(device)
    images = []
    for folder in folders:
        for pair in pair_images(folder, find_gt_folder(folder), 4):
            images.append(img2tensor(read_image(pair.lr)))

    def forward() -> None:
        for x in images:
            tensor2img(super_resolve(model, x, scale=4, pad_multiple=preset.pad_multiple, half_ok=preset.half_ok))

    for _ in range(args.warmup):
        full()
        forward()
    summaries.clear()
    times: dict[str, list[float]] = {"full": [], "forward": []}
    for _ in range(args.repeats):
        for name, fn in (("full", full), ("forward", forward)):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    times["loop"] = list(summaries)

    med = {k: median(v) for k, v in times.items()}
    rows = [{"what": k, "seconds": med[k], "ms_per_image": med[k] * 1000 / len(images),
             "ratio_vs_forward": med[k] / med["forward"], "repeats": len(times[k])}
            for k in ("full", "loop", "forward")]
    print(markdown_table(rows, ["what", "seconds", "ms_per_image", "ratio_vs_forward"],
                         ["what", "seconds", "ms per image", "x forward"]))
    r = med["full"] / med["forward"]
    print(f"# {len(images)} images; full evaluation / forward: {r:.3f}x (acceptance < 1.5: "
          f"{'PASS' if r < 1.5 else 'FAIL'}); loop only / forward: {med['loop'] / med['forward']:.3f}x")
    record(args.csv, __file__, info, rows, model=args.model, checkpoint=Path(args.checkpoint).name,
           sets="+".join(args.sets), images=len(images))

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        full()
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(30)
        print(s.getvalue())
    shutil.rmtree(out_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
