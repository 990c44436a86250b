"""Training-step time of every ``--kd_method`` relative to a plain step (RFDN student, IMDN teacher).

Each step is the real code: a :class:`Trainer.Trainer` from ``main.parse_config`` flags and its
``train_step(batch)`` (forward, objective, backward, Adam step). The batch is one batch of real T91
patches (the first ``--images`` T91 images, LR by MATLAB bicubic, the training loader), reused for
every step. Methods: ``plain`` (ground truth), ``output`` (teacher on the fly), ``output_cache``
(its output delivered in the batch as ``--teacher_cache`` does), ``fakd``, ``fitnet``, ``at``
(teacher on the fly, feature hooks), ``dtkd`` (IMDN fidelity teacher only, ``--t2_checkpoint ''``,
attention KD, on the fly), ``dukd`` (output KD on the fly plus the zoom-in / zoom-out passes) and
``adv`` (ground truth plus the adversarial term, ``--Rate_adv 0.03 --adv_channels 32``: the
discriminator's passes and its own step, as the ``dtkd_adv`` study arm adds them) and ``adv_amp`` (the same with
D's own step under the run's bf16 autocast too, ``--adv_amp True``; only with ``--amp bf16``). Steps run interleaved, the order rotated every round; medians reported
(see bench/common.py)::

    python bench/bench_kd_step.py                       # CPU: batch 16, HR patch 192 (LR 48)
    python bench/bench_kd_step.py --threads 1 --repeats 3 --batch 4 --patch 96     # a quick check
    python bench/bench_kd_step.py --device cuda --repeats 20
    python bench/bench_kd_step.py --amp bf16 --methods plain adv adv_amp --patch 64   # D's own step in bf16
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (SHARED, WEIGHTS, add_common_args, describe, interleaved, machine_info,  # noqa: E402
                    markdown_table, median, record, setup, sync)

import main as train_cli  # noqa: E402
from Utils.datasets import build_train_dataset, make_train_loader  # noqa: E402

METHODS = {
    "plain": [],
    "output": ["--kd_method", "output"],
    "output_cache": ["--kd_method", "output"],
    "fakd": ["--kd_method", "fakd"],
    "fitnet": ["--kd_method", "fitnet"],
    "at": ["--kd_method", "at"],
    "dtkd": ["--kd_method", "dtkd", "--t2_checkpoint", "", "--loss_attn", "both"],
    "dukd": ["--kd_method", "dukd"],
    "adv": ["--Rate_adv", "0.03", "--adv_channels", "32"],
    "adv_amp": ["--Rate_adv", "0.03", "--adv_channels", "32", "--adv_amp", "True"],  # needs --amp bf16
}


def main(argv: list[str] | None = None) -> int:
    from Trainer import Trainer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=192, help="HR patch size (LR = patch / 4)")
    p.add_argument("--images", type=int, default=8, help="T91 images the batch is drawn from")
    p.add_argument("--t1-checkpoint", default=str(WEIGHTS / "IMDN" / "IMDN_x4.pth"))
    p.add_argument("--train-hr", default=str(SHARED / "train" / "T91" / "HR"))
    p.add_argument("--methods", nargs="+", default=None, choices=list(METHODS),
                   help="default: all (adv_amp only with --amp bf16)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.set_defaults(warmup=2, repeats=10)
    args = p.parse_args(argv)
    if args.methods is None:
        args.methods = [m for m in METHODS if m != "adv_amp" or args.amp == "bf16"]
    if "adv_amp" in args.methods and args.amp != "bf16":
        p.error("--methods adv_amp needs --amp bf16")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = setup(args)
    info = machine_info(device)
    print(f"# KD step benchmark: {describe(info)}")
    print(f"# RFDN student, IMDN teacher, batch {args.batch}, HR patch {args.patch} (LR {args.patch // 4}), "
          f"amp {args.amp}, warm-up {args.warmup}, median of {args.repeats} interleaved repeats")

    tmp = tempfile.TemporaryDirectory(prefix="bench_kd_step_")
    tdir = Path(tmp.name)
    hr = tdir / "hr"
    hr.mkdir()
    for f in sorted(Path(args.train_hr).iterdir())[: args.images]:
        (hr / f.name).symlink_to(f.resolve())
    ds = build_train_dataset([hr], None, scale=4, patch_size=args.patch, cache_dir=tdir / "cache", uint8=True,
                             seed=0, progress=False)
    batch = next(iter(make_train_loader(ds, args.batch, num_workers=0, seed=0, pin_memory=False)))
    batch = {k: batch[k] for k in ("lr", "hr")}
    common = ["--model_name", "RFDN", "--batch_size", str(args.batch), "--patch_size", str(args.patch),
              "--experiments_root", str(tdir / "experiments"), "--amp", args.amp, "--valid_dataset", "",
              "--t1_model_name", "IMDN", "--t1_checkpoint", args.t1_checkpoint, "--quiet"]
    common += ["--cpu"] if device.type == "cpu" else []
    trainers = {m: Trainer(train_cli.parse_config([*common, *METHODS[m]])) for m in ["plain", *args.methods]
                if m in METHODS}
    batches = {m: batch for m in trainers}
    if "output_cache" in trainers:  # the teacher's output of this batch, quantised to uint8 like the cache files
        with torch.no_grad():
            x = batch["lr"].to(device).float().div_(255.0)
            t = trainers["output_cache"].objective.t1(x)
        batches["output_cache"] = {**batch, "t1": t.clamp(0, 1).mul(255).round().to(torch.uint8).cpu()}
    steps = {m: (lambda tr=tr, b=batches[m]: tr.train_step(b)) for m, tr in trainers.items()}
    for fn in steps.values():
        for _ in range(args.warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {}
    names = list(steps)
    for rnd in range(args.repeats):
        sh = rnd % len(names)
        r = interleaved({k: steps[k] for k in names[sh:] + names[:sh]}, device, warmup=0, repeats=1, cpu_times=cpu)
        for k, v in r.items():
            times[k] += v
    sync(device)
    med = {k: median(v) for k, v in times.items()}
    rows = [{"method": k, "ms_per_step": med[k] * 1000, "cpu_ms_per_step": median(cpu[k]) * 1000,
             "ratio_vs_plain": med[k] / med["plain"], "repeats": len(times[k])} for k in times]
    print(markdown_table(rows, ["method", "ms_per_step", "cpu_ms_per_step", "ratio_vs_plain"],
                         ["method", "ms per step", "CPU ms per step", "time / plain step"]))
    record(args.csv, __file__, info, rows, batch=args.batch, patch=args.patch, amp=args.amp)
    for tr in trainers.values():
        tr.close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
