"""Training-loader throughput: 192x192 HR patches per second from the decoded cache vs decoding files.

Same dataset, batch (16) and workers; the only difference is ``cache_dir``. Each setting is measured
for float32 patches (the default) and for ``uint8=True`` patches (converted on the device instead).
Two figures: wall-clock patches/s (best of interleaved rounds; other load on the machine lowers it)
and patches per CPU-second of the main process plus workers (what one dedicated core delivers; much
less sensitive to load). Data: T91 from ``../shared/data``, the demo data (built on the fly into
``bench/results/demo_data``) and Set14 HR/LR when present. Prints a table and appends one CSV row per
(data, workers) to ``bench/results/loader.csv``. Example::

    python bench/bench_loader.py                      # T91, demo, Set14; workers 2 and 0
    python bench/bench_loader.py --data demo --workers 2 --batches 60

What to expect: decoding a 0.1-0.3 Mpix image costs 0.6-18 ms (T91's HR files are uncompressed BMP,
nearly free), a cached patch about 0.15 ms; with workers, moving each float32 batch (7.5 MB) through
shared memory adds a fixed cost per batch that shrinks the ratio when decoding is cheap.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from Utils.datasets import SRTrainDataset, build_train_dataset, make_train_loader  # noqa: E402

log = logging.getLogger("bench_loader")
SHARED = Path(os.environ.get("DTKD_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results"


def _sources(names: list[str]) -> dict[str, tuple[Path, Path]]:
    """(HR dir, LR dir) of each requested data set that is available here."""
    out: dict[str, tuple[Path, Path]] = {}
    for name in names:
        if name == "t91":
            root = SHARED / "train" / "T91"
        elif name == "set14":
            root = SHARED / "benchmark" / "Set14"
        elif name == "demo":
            from Utils.demo_data import build_demo_data

            paths = build_demo_data(RESULTS / "demo_data")
            out[name] = (paths["train_hr"], paths["train_lr"])
            continue
        else:
            raise SystemExit(f"unknown data set {name!r} (t91, demo, set14)")
        if (root / "HR").is_dir():
            out[name] = (root / "HR", root / "LR_bicubic" / "X4")
        else:
            log.warning("skipping %s: %s not found", name, root)
    return out


def _cpu_seconds(it: object) -> float:
    """CPU time (user + system) of this process and of the loader's worker processes so far."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for w in getattr(it, "_workers", []):  # DataLoader's worker processes (private, Linux /proc only)
        try:
            fields = Path(f"/proc/{w.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            return float("nan")
    return total


def measure(datasets: dict[str, SRTrainDataset], workers: int, batch: int, batches: int, warmup: int,
            rounds: int, seed: int = 0) -> dict[str, tuple[float, float]]:
    """(best patches/s, patches per CPU-second) of each dataset's make_train_loader.

    The loaders take turns within each round, so background load on a shared machine hits them
    alike; the best wall-clock round is kept. CPU time (main process plus workers) over all rounds
    does not depend on other load: patches per CPU-second is what one dedicated core delivers.
    """
    its = {}
    for label, ds in datasets.items():
        its[label] = iter(make_train_loader(ds, batch_size=batch, num_workers=workers, seed=seed,
                                            pin_memory=False))
        for _ in range(warmup):
            next(its[label])
    best = {label: 0.0 for label in datasets}
    cpu = {label: 0.0 for label in datasets}
    for _ in range(rounds):
        for label, it in its.items():
            c0, t0 = _cpu_seconds(it), time.perf_counter()
            for _ in range(batches):
                b = next(it)
            dt = time.perf_counter() - t0
            cpu[label] += _cpu_seconds(it) - c0
            best[label] = max(best[label], batches * batch / dt)
            assert b["hr"].shape[-1] == datasets[label].patch_size
    del its, it
    return {label: (best[label], rounds * batches * batch / cpu[label]) for label in datasets}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["t91", "demo", "set14"])
    p.add_argument("--workers", nargs="+", type=int, default=[2, 0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=192)
    p.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per setting; the best is kept")
    p.add_argument("--csv", type=Path, default=RESULTS / "loader.csv")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("Utils.datasets").setLevel(logging.ERROR)  # the small-image list is long for T91
    torch.set_num_threads(1)  # collate in the main process (workers=0) like in a worker: no OpenMP spin

    rows = []
    for name, (hr, lr) in _sources(args.data).items():
        kw = dict(patch_size=args.patch, rgb_permute=False, progress=False)
        cache = RESULTS / "cache" / name
        sets = {"decode": build_train_dataset(hr, lr, **kw),
                "cache": build_train_dataset(hr, lr, cache_dir=cache, **kw),
                "decode_u8": build_train_dataset(hr, lr, uint8=True, **kw),
                "cache_u8": build_train_dataset(hr, lr, cache_dir=cache, uint8=True, **kw)}
        n = sets["decode"].n_images
        mean_mp = sum(h * w for h, w in (r.hr_size for r in sets["decode"].records)) / n / 1e6
        for workers in args.workers:
            m = measure(sets, workers, args.batch, args.batches, args.warmup, args.repeats)
            row = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "data": name,
                   "images": n, "mean_hr_mpix": round(mean_mp, 3), "workers": workers,
                   "batch": args.batch, "patch": args.patch}
            for suffix in ("", "_u8"):
                d, c = m["decode" + suffix], m["cache" + suffix]
                row.update({f"decode{suffix}_pps": round(d[0], 1), f"cache{suffix}_pps": round(c[0], 1),
                            f"ratio{suffix}": round(c[0] / d[0], 2),
                            f"decode{suffix}_per_cpu_s": round(d[1], 1), f"cache{suffix}_per_cpu_s": round(c[1], 1),
                            f"cpu_ratio{suffix}": round(c[1] / d[1], 2)})
                print(f"{name:6s} {n:3d} imgs ({mean_mp:.2f} Mpix) workers={workers} "
                      f"{'uint8  ' if suffix else 'float32'}: patches/s decode {d[0]:7.1f}, cache {c[0]:7.1f} "
                      f"({c[0] / d[0]:5.2f}x) | per CPU-second decode {d[1]:7.1f}, cache {c[1]:7.1f} "
                      f"({c[1] / d[1]:5.2f}x)", flush=True)
            row.update({"load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else "",
                        "cpus": os.cpu_count(), "torch": torch.__version__, "host": platform.node()})
            rows.append(row)
    if not rows:
        raise SystemExit("no data set found to benchmark")
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    if args.csv.is_file():
        with open(args.csv, newline="") as f:
            header = next(csv.reader(f), [])
        if header != list(rows[0]):  # columns changed since that file was started: keep it aside
            args.csv.rename(args.csv.with_suffix(f".{int(time.time())}.csv"))
    new = not args.csv.is_file()
    with open(args.csv, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.csv}")


if __name__ == "__main__":
    main()
