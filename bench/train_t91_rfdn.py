"""Does training work? RFDN from scratch on T91 for 300 iterations (CPU) must beat bicubic on Set5.

Runs the real training command (``main.py`` in a subprocess, printed before it runs), then compares
the final Set5 validation PSNR from the run's ``log.csv`` with MATLAB-bicubic upsampling of the same
LR images measured with the same convention (Y channel, border 4; 28.43 dB). Exit status 0 when the
trained model is better, 1 when not. Example::

    python bench/train_t91_rfdn.py                         # RFDN, 64x64 HR patches, batch 16, lr 2e-3
    python bench/train_t91_rfdn.py --batch_size 8          # the variant tests/test_trainer.py runs

``--threads`` sets OMP_NUM_THREADS of the training process (default 1: on a 2-core machine that
other jobs share, two OpenMP threads per process were several times *slower* than one). A row is
appended to ``bench/results/train_t91_rfdn.csv``.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("DTKD_SHARED_DATA", REPO.parent / "shared" / "data"))
T91 = SHARED / "train" / "T91"
SET5_LR = SHARED / "benchmark" / "Set5" / "LR_bicubic" / "X4"
RESULTS = REPO / "bench" / "results"


def bicubic_psnr(lr_folder: Path, scale: int = 4) -> float:
    """Mean PSNR (Y, border ``scale``) of MATLAB-bicubic upsampling of the LR images against their GT."""
    import numpy as np

    from Utils.evaluate import find_gt_folder, match_gt, pair_images
    from Utils.image_io import read_image
    from Utils.imresize import imresize
    from Utils.metrics import calculate_psnr

    vals = []
    for pair in pair_images(lr_folder, find_gt_folder(lr_folder), scale):
        up = imresize(read_image(pair.lr), float(scale))
        gt = match_gt(up.shape, read_image(pair.gt), pair.gt, scale)
        vals.append(calculate_psnr(up, gt, scale, True))
    return float(np.mean(vals))


def train_command(args: argparse.Namespace, root: Path, name: str) -> list[str]:
    return [sys.executable, str(REPO / "main.py"), "--model_name", "RFDN",
            "--train_hr", str(T91 / "HR"), "--train_lr", str(T91 / "LR_bicubic" / "X4"),
            "--valid_dataset", str(SET5_LR), "--test_every", str(args.iters), "--save_every", str(args.iters),
            "--iters", str(args.iters), "--patch_size", str(args.patch_size), "--batch_size", str(args.batch_size),
            "--lr", str(args.lr), "--scheduler", args.scheduler, "--eta_min", "1e-5", "--seed", str(args.seed),
            "--num_workers", str(args.num_workers), "--experiments_root", str(root), "--name", name, "--quiet",
            "--cpu"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--patch_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--scheduler", default="cosine", choices=["cosine", "constant", "step", "multistep"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training process")
    p.add_argument("--experiments_root", type=Path, default=None, help="default: a temporary folder")
    p.add_argument("--csv", type=Path, default=RESULTS / "train_t91_rfdn.csv")
    args = p.parse_args(argv)
    for path in (T91 / "HR", T91 / "LR_bicubic" / "X4", SET5_LR):
        if not path.is_dir():
            print(f"needs {path} (../shared/data)", file=sys.stderr)
            return 2

    tmp = None
    if args.experiments_root is None:
        tmp = tempfile.TemporaryDirectory(prefix="train_t91_rfdn.")
        args.experiments_root = Path(tmp.name)
    name = f"rfdn_t91_p{args.patch_size}_b{args.batch_size}_lr{args.lr:g}_s{args.seed}"
    cmd = train_command(args, args.experiments_root, name)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    print(f"OMP_NUM_THREADS={args.threads} " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"training failed (exit {proc.returncode})", file=sys.stderr)
        return 2
    with open(args.experiments_root / name / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    trained = float(rows[-1]["val_psnr"])
    bicubic = bicubic_psnr(SET5_LR)
    ok = trained > bicubic
    print(f"RFDN after {args.iters} iterations on T91: Set5 PSNR {trained:.4f} dB; bicubic {bicubic:.4f} dB; "
          f"{trained - bicubic:+.4f} dB -> {'PASS' if ok else 'FAIL'} ({wall:.0f} s wall, "
          f"load {load0:.1f} -> {os.getloadavg()[0]:.1f}, {args.threads} thread(s))")

    row = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
           "cpus": os.cpu_count(), "threads": args.threads, "iters": args.iters, "patch_size": args.patch_size,
           "batch_size": args.batch_size, "lr": args.lr, "scheduler": args.scheduler, "seed": args.seed,
           "set5_psnr": f"{trained:.4f}", "bicubic_psnr": f"{bicubic:.4f}", "wall_s": f"{wall:.1f}",
           "load_start": f"{load0:.2f}", "load_end": f"{os.getloadavg()[0]:.2f}"}
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    new = not args.csv.is_file()
    with open(args.csv, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
