"""The GPU check, one script for the few minutes a GPU is lent: one CSV of every measure.

    bash bench/gpu_check.sh                 # on a GPU: about 5 minutes; CSV to $OUT or bench/results/
    bash bench/gpu_check.sh --device cpu    # the same script at tiny sizes and counts (seconds; CI)

Sections (the ``section`` column):

- ``inference``: x4 to 1920x1080 and 3840x2160 output (LR 480x270, 960x540) of RFDN, LBNet and IMDN in fp32,
  bf16 and fp16, each without and with channels-last and ``torch.compile``: frames/s (``super_resolve``, the
  evaluation path, via bench/bench_inference.py's variants). Variants that do not fit the time budget are
  written as skipped. On the CPU: LR 24x16 and 32x24, fp32, no compile.
- ``train_step``: seconds per DTKD iteration (RFDN student, IMDN fidelity teacher) with the teacher cache
  (``--teacher_cache``) and with the teacher on the fly, from ``main.py`` runs' log.csv.
- ``resume``: a DTKD run with ``--amp bf16`` (200 iterations on the GPU, 6 on the CPU) killed by SIGKILL past
  its middle checkpoint and resumed with ``--auto_resume``, against an uninterrupted one: ``equal`` when
  every tensor of final.pth is bitwise equal.
- ``ddp``: with two or more GPUs, the same run under ``torchrun --nproc_per_node 2`` against the one-process
  run (max absolute weight difference; ``equal`` when bitwise equal).

Data: T91 from ../shared/data on the GPU when present, else synthetic images written here; the teacher is IMDN with the
published weights when present, else random weights (the check measures speed and exactness, not quality).
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import load_preset, make_fn  # noqa: E402
from common import REPO, SHARED, WEIGHTS, median, time_once  # noqa: E402

log = logging.getLogger("gpu_check")
COLUMNS = ["section", "name", "variant", "size", "value", "unit", "status", "detail", "device", "time"]
MODELS = ("RFDN", "LBNet", "IMDN")


class Check:
    """Rows of the CSV, written as they come (a check cut short still leaves its rows)."""

    def __init__(self, path: Path, device: str) -> None:
        self.path, self.device = path, device
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            csv.writer(f).writerow(COLUMNS)

    def row(self, section: str, name: str, variant: str, size: str, value: float, unit: str, status: str = "ok",
            detail: str = "") -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([section, name, variant, size, f"{value:.6g}", unit, status, detail, self.device,
                                    time.strftime("%Y-%m-%d %H:%M:%S")])
        log.info("%-10s %-6s %-18s %-10s %10.4g %-9s %s %s", section, name, variant, size, value, unit, status, detail)


def inference(check: Check, device: torch.device, budget_s: float, repeats: int) -> None:
    """Frames/s of each model, output size and variant; variants past the budget are rows marked skipped."""
    if device.type == "cuda":
        sizes = {"1920x1080": (480, 270), "3840x2160": (960, 540)}
        variants = [f"{p}{cl}{c}" for c in ("", "+compile") for p in ("fp32", "bf16", "fp16") for cl in ("", "+cl")]
    else:
        sizes = {"96x64": (24, 16), "128x96": (32, 24)}
        variants = ["fp32", "fp32+cl"]
    t_end = time.perf_counter() + budget_s
    for model_name in MODELS:
        model, weights = load_preset(model_name, device, random_weights=False)
        from Model import MODELS as PRESETS

        preset = PRESETS[model_name]
        for size, (w, h) in sizes.items():
            x = torch.rand(1, 3, h, w, device=device)
            for variant in variants:
                if time.perf_counter() > t_end:
                    check.row("inference", model_name, variant, size, float("nan"), "frames/s", "skipped", "budget")
                    continue
                try:
                    fn = make_fn(model, variant, x, preset.pad_multiple, preset.half_ok)
                    fn()  # warm-up (compilation happens here)
                    times = [time_once(fn, device) for _ in range(repeats)]
                    check.row("inference", model_name, variant, size, 1.0 / median(times), "frames/s",
                              detail=f"weights {weights}")
                except Exception as exc:  # noqa: BLE001 - one failing variant (OOM, compile) must not stop the check
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                    check.row("inference", model_name, variant, size, float("nan"), "frames/s", "failed", first)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
        del model


# ----------------------------------------------------------------------------- training runs

def _data(folder: Path, small: bool) -> tuple[Path, Path]:
    """(HR folder, LR folder): T91 from ../shared/data on the GPU, else eight synthetic 192x192 images (x4 MATLAB
    bicubic; the teacher cache of eight images is computed in a second on the CPU)."""
    t91 = SHARED / "train" / "T91"
    if not small and (t91 / "HR").is_dir() and (t91 / "LR_bicubic" / "X4").is_dir():
        return t91 / "HR", t91 / "LR_bicubic" / "X4"
    from Utils.image_io import write_image
    from Utils.imresize import imresize

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:192, 0:192].astype(np.float64)
    for i in range(8):
        img = sum(np.sin(rng.uniform(0.02, 0.5) * xx + rng.uniform(0.02, 0.5) * yy + rng.uniform(0, 6.3))
                  for _ in range(4))
        rgb = np.stack([np.roll(img, 7 * c, axis=1) for c in range(3)], -1)
        hr = np.clip(127.5 + 30 * rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)
        write_image(folder / "HR" / f"im{i}.png", hr)
        write_image(folder / "LR" / f"im{i}x4.png", imresize(hr, 0.25))
    return folder / "HR", folder / "LR"


def _teacher(folder: Path) -> Path:
    """The fidelity teacher's weights: the published IMDN x4, else random IMDN weights saved here."""
    published = WEIGHTS / "IMDN" / "IMDN_x4.pth"
    if published.is_file():
        return published
    from Model import build_model

    path = folder / "imdn_random.pth"
    torch.manual_seed(0)
    torch.save(build_model("IMDN", 4).state_dict(), path)
    return path


def _main_py(args: list[str], env_extra: Optional[dict] = None, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    env.pop("DTKD_PARENT_PID", None)
    return subprocess.run([sys.executable, *launcher, str(REPO / "main.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True)


def _final(exp: Path) -> dict:
    return torch.load(exp / "weights" / "final.pth", map_location="cpu", weights_only=True)


def _compare(a: dict, b: dict) -> tuple[bool, float]:
    """(bitwise equal, largest absolute difference) of two state dicts."""
    equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if k in b)
    return equal, diff


def _seconds_per_iter(exp: Path) -> float:
    rows = list(csv.DictReader(open(exp / "log.csv", newline="")))
    el = [float(r["elapsed"]) for r in rows if r.get("elapsed")]
    return (el[-1] - el[0]) / max(len(el) - 1, 1)  # from the first logged iteration: no start-up cost


def training(check: Check, device: torch.device, work: Path, small: bool) -> None:
    """The DTKD step with and without the teacher cache, exact resume under bf16, and torchrun."""
    hr, lr = _data(work / "data", small)
    teacher = _teacher(work)
    patch, batch = (64, 4) if small else (192, 16)
    base = ["--model_name", "RFDN", "--train_hr", str(hr), "--train_lr", str(lr), "--patch_size", str(patch),
            "--batch_size", str(batch), "--num_workers", "0" if small else "4", "--valid_dataset", "", "--test_every",
            "0", "--train_by_TT", "True", "--t1_checkpoint", str(teacher), "--t2_checkpoint", "", "--seed", "0",
            "--cache_dir", str(work / "decoded"), "--experiments_root", str(work / "exp"), "--quiet"]
    if device.type == "cpu":
        base.append("--cpu")
    steps = "4" if small else "30"
    for variant, extra in (("teacher_cache", ["--teacher_cache", str(work / "teachers")]), ("on_the_fly", [])):
        name = f"step_{variant}"
        proc = _main_py(base + extra + ["--iters", steps, "--save_every", steps, "--name", name])
        if proc.returncode != 0:
            check.row("train_step", "DTKD", variant, f"{patch}/{batch}", float("nan"), "s/iter", "failed",
                      proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else "")
            continue
        check.row("train_step", "DTKD", variant, f"patch {patch} batch {batch}",
                  _seconds_per_iter(work / "exp" / name), "s/iter", detail="RFDN student, IMDN teacher")

    iters = 6 if small else 200
    run = base + ["--amp", "bf16", "--iters", str(iters), "--save_every", str(iters // 2)]
    ref = _main_py(run + ["--name", "uninterrupted"])
    killed = _main_py(run + ["--name", "resumed"], {"DTKD_TEST_KILL_AT_ITER": str(iters // 2 + 2)})
    resumed = _main_py(run + ["--name", "resumed", "--auto_resume"])
    if ref.returncode != 0 or killed.returncode != -9 or resumed.returncode != 0:
        detail = f"exit {ref.returncode}/{killed.returncode}/{resumed.returncode}: " + (
            (ref.stderr or resumed.stderr).strip().splitlines() or [""])[-1][:160]
        check.row("resume", "DTKD", "bf16", f"{iters} iters", float("nan"), "max_abs", "failed", detail)
    else:
        equal, diff = _compare(_final(work / "exp" / "uninterrupted"), _final(work / "exp" / "resumed"))
        check.row("resume", "DTKD", "bf16", f"{iters} iters", diff, "max_abs", "equal" if equal else "differ",
                  f"killed at iteration {iters // 2 + 2}, resumed from {iters // 2}")

    if device.type == "cuda" and torch.cuda.device_count() >= 2:
        ddp_run = base + ["--amp", "bf16", "--iters", str(iters // 4), "--save_every", str(iters // 4)]
        one = _main_py(ddp_run + ["--name", "one_process"])
        two = _main_py(ddp_run + ["--name", "torchrun"], launcher=("-m", "torch.distributed.run", "--standalone",
                                                                    "--nproc_per_node", "2"))
        if one.returncode != 0 or two.returncode != 0:
            check.row("ddp", "DTKD", "torchrun x2", f"{iters // 4} iters", float("nan"), "max_abs", "failed",
                      ((two.stderr or one.stderr).strip().splitlines() or [""])[-1][:200])
        else:
            equal, diff = _compare(_final(work / "exp" / "one_process"), _final(work / "exp" / "torchrun"))
            check.row("ddp", "DTKD", "torchrun x2", f"{iters // 4} iters", diff, "max_abs",
                      "equal" if equal else "differ", "against the one-process run")
    else:
        check.row("ddp", "DTKD", "torchrun x2", "", float("nan"), "max_abs", "skipped", "fewer than two GPUs")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``bench/gpu_check.py``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--csv", default=None, help="output CSV (default: $OUT/gpu_check.csv, else bench/results/)")
    p.add_argument("--inference-budget", type=float, default=None,
                   help="seconds for the inference section (default 150 on the GPU, 60 on the CPU)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device here (use --device cpu)", file=sys.stderr)
        return 2
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "bench" / "results"
    path = Path(args.csv) if args.csv else out_dir / "gpu_check.csv"
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    check = Check(path, f"{name} x{torch.cuda.device_count()}" if device.type == "cuda" else name)
    small = device.type == "cpu"
    t0 = time.perf_counter()
    budget = args.inference_budget if args.inference_budget is not None else (60.0 if small else 150.0)
    with torch.inference_mode():
        inference(check, device, budget, repeats=2 if small else 5)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        training(check, device, Path(work), small)
    log.info("gpu check done in %.0f s: %s", time.perf_counter() - t0, path)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
