"""Training-step speed of the RFDN student: plain, DTKD with on-the-fly teachers, DTKD with the teacher
cache, and the data loader that feeds them.

All steps are the real code: a :class:`Trainer.Trainer` built from ``main.parse_config`` flags (the
same configuration ``main.py`` would train with) and its ``train_step(batch)`` (forward, objective,
backward, Adam step, with the trainer's one host sync). The batch is one real T91 batch of uint8
patches from the training loader, reused for every step:

* ``plain``: ``GroundTruthObjective`` (L1 to the ground truth);
* ``dtkd_fly``: ``DTKDObjective`` with the IMDN fidelity teacher (``IMDN/IMDN_x4.pth``) and the EdgeSRN
  perceptual teacher (random weights unless ``--t2-checkpoint``: weights do not change the cost) run on
  every batch; entropy routing (gate = median entropy of the batch, so both teachers get samples),
  error+trust attention KD, edge loss 0.05 (the demo recipe; the VGG term is off as in the demo);
* ``dtkd_cache``: the same objective with the teachers' outputs delivered in the batch as uint8 tensors
  ``t1``/``t2`` (what ``--teacher_cache`` gives), so no teacher forward runs;
* ``loader``: ``build_train_dataset`` on T91 with ``cache_dir`` and ``uint8=True``, ``make_train_loader``
  with ``--workers`` (default 2, the trainer's default); ``loader_cache`` adds two HR-sized extra targets
  (the teacher cache's layout: .npy files cropped and flipped with the patch).

The steps are timed interleaved (one of each per round, the order rotated every round), the loader in blocks of
``--loader-batches`` between rounds (the batches its workers prefetched while the steps ran are fetched
before the clock starts), medians reported. Acceptance printed at the end: dtkd_cache / plain <= 1.2,
and loader patches/s >= 3 x the patches/s the plain step consumes. Examples::

    python bench/bench_train_step.py                                   # CPU: batch 16, HR patch 96, < 1 min idle
    python bench/bench_train_step.py --threads 1                       # load-robust: compare the CPU-ms column
    python bench/bench_train_step.py --device cuda --patch 192 --batch 16 --repeats 20
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SHARED, WEIGHTS, add_common_args, describe, interleaved, machine_info,  # noqa: E402
                    markdown_table, median, record, setup, sync)

import main as train_cli  # noqa: E402
from Model import build_model  # noqa: E402
from Utils.datasets import build_train_dataset, make_train_loader  # noqa: E402
from Utils.routing import gray_entropy  # noqa: E402

log = logging.getLogger("bench_train_step")


def trainer_for(flags: list[str], common: list[str]):
    """A Trainer from command-line flags, exactly as main.py builds it (no data, no experiment folder)."""
    from Trainer import Trainer

    cfg = train_cli.parse_config([*common, *flags])
    return Trainer(cfg)


class LoaderTimer:
    """Patches/s of a persistent training loader, measured in blocks between the step rounds."""

    def __init__(self, dataset, batch: int, workers: int):
        self.loader = make_train_loader(dataset, batch, num_workers=workers, seed=0, pin_memory=False)
        self.it = iter(self.loader)
        self.batch = batch
        # batches the workers hold ready (prefetch_factor 2 per worker) are not counted in a block
        self.prefetched = 2 * workers
        self.rates: list[float] = []
        self.per_batch = 0.05

    def warmup(self, n: int) -> dict:
        b = None
        for _ in range(n):
            b = next(self.it)
        return b

    def block(self, batches: int) -> None:
        for _ in range(self.prefetched):
            next(self.it)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(self.it)
        dt = time.perf_counter() - t0
        self.rates.append(batches * self.batch / dt)
        self.per_batch = dt / batches
        # let the workers refill their prefetch queue now, not during the next timed training step
        time.sleep(min(2.0, 1.5 * self.prefetched * self.per_batch))

    def close(self) -> None:
        del self.it
        self.it = None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=None, help="HR patch size (default 96 on CPU, 192 on CUDA)")
    p.add_argument("--workers", type=int, default=2, help="loader workers (main.py's default is 2)")
    p.add_argument("--loader-batches", type=int, default=20, help="batches per timed loader block")
    p.add_argument("--t1-checkpoint", default=str(WEIGHTS / "IMDN" / "IMDN_x4.pth"))
    p.add_argument("--t2-checkpoint", default=None, help="EdgeSRN weights (default: random weights, same cost)")
    p.add_argument("--train-hr", default=str(SHARED / "train" / "T91" / "HR"))
    p.add_argument("--train-lr", default=str(SHARED / "train" / "T91" / "LR_bicubic" / "X4"))
    p.add_argument("--cache-dir", default=str(RESULTS / "cache" / "t91"))
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--skip-fly", action="store_true", help="leave out the (slow) on-the-fly DTKD step")
    p.set_defaults(warmup=2, repeats=10)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("Utils.datasets").setLevel(logging.ERROR)  # T91's list of small images is long
    device = setup(args)
    patch = args.patch or (192 if device.type == "cuda" else 96)
    info = machine_info(device)
    print(f"# train-step benchmark: {describe(info)}")
    print(f"# RFDN student, batch {args.batch}, HR patch {patch} (LR {patch // 4}), amp {args.amp}, "
          f"warm-up {args.warmup}, median of {args.repeats} interleaved repeats; loader: {args.workers} workers")

    # -- data: one real batch of uint8 T91 patches, and the loaders --------------------------------
    ds = build_train_dataset(args.train_hr, args.train_lr, scale=4, patch_size=patch, cache_dir=args.cache_dir,
                             uint8=True, seed=0, progress=False)
    tmp = tempfile.TemporaryDirectory(prefix="bench_train_step_")
    tdir = Path(tmp.name)
    # teacher-cache layout for the loader: one HR-sized uint8 .npy per image and teacher
    fake = []
    for i, r in enumerate(ds.records):
        _, hr = ds.load_pair(i)
        f = tdir / f"t_{i}.npy"
        np.save(f, np.ascontiguousarray(hr))
        fake.append(f)
    ds_cache = build_train_dataset(args.train_hr, args.train_lr, scale=4, patch_size=patch,
                                   cache_dir=args.cache_dir, uint8=True, seed=0, progress=False,
                                   extra_targets={"t1": fake, "t2": fake})
    loaders = {"loader": LoaderTimer(ds, args.batch, args.workers),
               "loader_cache": LoaderTimer(ds_cache, args.batch, args.workers)}
    batch = {k: v for k, v in loaders["loader"].warmup(3).items() if k in ("lr", "hr")}
    loaders["loader_cache"].warmup(3)
    gate = float(gray_entropy(batch["hr"]).median())

    # -- trainers ----------------------------------------------------------------------------------
    t2 = args.t2_checkpoint
    if t2 is None:
        torch.manual_seed(0)
        t2 = str(tdir / "EdgeSRN_random.pth")
        torch.save(build_model("EdgeSRN").state_dict(), t2)
    common = ["--model_name", "RFDN", "--batch_size", str(args.batch), "--patch_size", str(patch),
              "--experiments_root", str(tdir / "experiments"), "--amp", args.amp, "--valid_dataset", ""]
    common += (["--cpu"] if device.type == "cpu" else []) + (["--channels_last"] if args.channels_last else [])
    common += ["--compile"] if args.compile else []
    dtkd = ["--train_by_TT", "True", "--t1_model_name", "IMDN", "--t1_checkpoint", args.t1_checkpoint,
            "--t2_model_name", "EdgeSRN", "--t2_checkpoint", t2, "--entropy_gate", f"{gate:.6f}",
            "--loss_attn", "both", "--Rate_l1", "1", "--Rate_kd", "1", "--Rate_lm", "0.05", "--Rate_lpts", "0"]
    trainers = {"plain": trainer_for([], common)}
    if not args.skip_fly:
        trainers["dtkd_fly"] = trainer_for(dtkd, common)
    trainers["dtkd_cache"] = trainer_for(dtkd, common)

    # the cached batch: the teachers' outputs of this batch, quantised to uint8 like the cache files
    obj = trainers["dtkd_cache"].objective
    with torch.no_grad():
        x = batch["lr"].to(trainers["dtkd_cache"].device).float().div_(255.0)
        q = lambda t: t.clamp(0, 1).mul(255).round().to(torch.uint8).cpu()  # noqa: E731
        cached = {**batch, "t1": q(obj.t1(x)), "t2": q(obj.t2(x))}
    frac = float((gray_entropy(batch["hr"]) > gate).float().mean())
    steps = {name: (lambda tr=tr, b=(cached if name == "dtkd_cache" else batch): tr.train_step(b))
             for name, tr in trainers.items()}

    # -- timing: step rounds interleaved, a loader block after each round ---------------------------
    for fn in steps.values():
        for _ in range(args.warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {}
    names = list(steps)
    for rnd in range(args.repeats):
        sh = rnd % len(names)  # rotate the order each round
        r = interleaved({k: steps[k] for k in names[sh:] + names[:sh]}, device, warmup=0, repeats=1, cpu_times=cpu)
        for k, v in r.items():
            times[k] += v
        for lt in loaders.values():
            lt.block(args.loader_batches)
    sync(device)
    for lt in loaders.values():
        lt.close()

    med = {k: median(v) for k, v in times.items()}
    plain_pps = args.batch / med["plain"]
    rows = []
    for k, v in times.items():
        rows.append({"what": k, "ms_per_step": med[k] * 1000, "patches_per_s": args.batch / med[k],
                     "cpu_ms_per_step": median(cpu[k]) * 1000, "ratio_vs_plain": med[k] / med["plain"],
                     "repeats": len(v)})
    for k, lt in loaders.items():
        pps = median(lt.rates)
        rows.append({"what": f"{k} ({args.workers} workers)", "patches_per_s": pps,
                     "ms_per_step": args.batch / pps * 1000, "ratio_vs_plain": pps / plain_pps,
                     "repeats": len(lt.rates)})
    print(markdown_table(rows, ["what", "ms_per_step", "cpu_ms_per_step", "patches_per_s", "ratio_vs_plain"],
                         ["what", "ms per step (batch)", "CPU ms per step", "patches/s",
                          "vs plain (time ratio; loaders: patches/s over plain step's)"]))
    r_cache = med["dtkd_cache"] / med["plain"]
    r_load = median(loaders["loader"].rates) / plain_pps
    r_load_c = median(loaders["loader_cache"].rates) / (args.batch / med["dtkd_cache"])
    print(f"# routing: gate {gate:.4f} bits, {frac:.0%} of the batch to the perceptual teacher")
    if "dtkd_fly" in med:
        print(f"# DTKD on-the-fly / plain: {med['dtkd_fly'] / med['plain']:.2f}x")
    print(f"# DTKD with teacher cache / plain: {r_cache:.3f}x  (acceptance <= 1.2: {'PASS' if r_cache <= 1.2 else 'FAIL'})")
    print(f"# loader / plain-step consumption: {r_load:.2f}x  (acceptance >= 3: {'PASS' if r_load >= 3 else 'FAIL'}); "
          f"loader with teacher targets / DTKD-cache consumption: {r_load_c:.2f}x")
    record(args.csv, __file__, info, rows, batch=args.batch, patch=patch, amp=args.amp, workers=args.workers,
           entropy_gate=round(gate, 4), frac_perceptual=frac)
    for tr in trainers.values():
        tr.close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
