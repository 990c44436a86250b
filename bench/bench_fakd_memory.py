"""Peak CPU memory of the FAKD term (``--kd_method fakd``): RFDN student, IMDN teacher, batch 16, 48x48 LR.

The term's inputs are the real feature maps (their shapes found by running both networks: the four
student points B1..B4 paired with IMDN's IMDB2, IMDB3, IMDB5, IMDB6, 64 channels at 48x48), held as leaf
tensors; each variant then runs forward + backward of the summed term in a fresh process, and the peak
resident memory above the inputs (``ru_maxrss`` after minus before) is reported:

* ``blockwise``: :func:`Utils.objectives.fakd.fakd_loss` (row blocks under activation checkpointing),
  what training uses;
* ``naive``: :func:`fakd_loss_naive`, the (HW)^2 affinities materialised (``--naive``; several GB).

    python bench/bench_fakd_memory.py                  # blockwise only
    python bench/bench_fakd_memory.py --naive          # also the naive affinity, for comparison
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_csv, machine_info, markdown_table, now, write_csv  # noqa: E402

from Model import build_model  # noqa: E402
from Utils.objectives.features import FEATURE_POINTS, pair_points, probe_channels  # noqa: E402


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(variant: str, batch: int, lr: int, chunk: int) -> dict:
    """Forward + backward of the FAKD term over the four point pairs; peak RSS above the inputs."""
    from Utils.objectives.fakd import fakd_loss, fakd_loss_naive

    pairs = pair_points(FEATURE_POINTS["RFDN"], FEATURE_POINTS["IMDN"])
    s_ch = probe_channels(build_model("RFDN", 4), [s for s, _ in pairs], "RFDN", size=lr)
    t_ch = probe_channels(build_model("IMDN", 4), [t for _, t in pairs], "IMDN", size=lr)
    torch.manual_seed(0)
    fs = [torch.randn(batch, c, lr, lr, requires_grad=True) for c in s_ch]
    ft = [torch.randn(batch, c, lr, lr) for c in t_ch]
    before = _maxrss_mib()
    t0 = time.perf_counter()
    if variant == "naive":
        loss = sum(fakd_loss_naive(s, t) for s, t in zip(fs, ft))
    else:
        loss = sum(fakd_loss(s, t, chunk_elems=chunk) for s, t in zip(fs, ft))
    loss.backward()
    dt = time.perf_counter() - t0
    inputs = sum(f.numel() * 4 for f in fs + ft) / 2 ** 20
    return {"variant": variant, "peak_mib_above_inputs": _maxrss_mib() - before, "inputs_mib": inputs,
            "seconds": dt, "loss": float(loss), "batch": batch, "lr_patch": lr, "chunk_elems": chunk,
            "points": " ".join(f"{s}<-{t}" for s, t in pairs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr-patch", type=int, default=48)
    p.add_argument("--chunk", type=int, default=None, help="entries per block of affinity rows (default: training's)")
    p.add_argument("--naive", action="store_true", help="also measure the materialised affinity")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--csv", type=Path, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.chunk is None:
        from Utils.objectives.fakd import CHUNK_ELEMS

        args.chunk = CHUNK_ELEMS
    torch.set_num_threads(args.threads)
    if args.child:  # one variant in this fresh process
        print(json.dumps(measure(args.child, args.batch, args.lr_patch, args.chunk)))
        return 0
    info = machine_info(torch.device("cpu"))
    rows = []
    for variant in ["blockwise"] + (["naive"] if args.naive else []):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--batch", str(args.batch), "--lr-patch",
                              str(args.lr_patch), "--chunk", str(args.chunk), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"# FAKD term, RFDN student / IMDN teacher, batch {args.batch}, {args.lr_patch}x{args.lr_patch} LR, "
          f"forward + backward, {args.threads} thread(s)")
    print(markdown_table(rows, ["variant", "peak_mib_above_inputs", "inputs_mib", "seconds", "loss"],
                         ["variant", "peak MiB above inputs", "inputs MiB", "s", "loss"]))
    write_csv(args.csv or default_csv(__file__), [{"time": now(), **info, **r} for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
