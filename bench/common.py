"""Shared helpers of the speed benchmarks: device and threads, timing, machine description, CSV.

Timing rules used by every script (the machine may be shared with other work):

* every measurement syncs the device before starting and stopping the clock;
* warm-up calls are run and discarded first (allocator, oneDNN/cuDNN algorithm choice, compile);
* variants that are compared run *interleaved* (A, B, A, B, ...), so background load hits them alike,
  and the **median** of the repeats is reported; ratios are taken within the same run;
* the number of intra-op threads is fixed with ``--threads`` (``torch.set_num_threads``) for the
  whole run, and the 1-minute load average is recorded at the start and at the end.

CSV files are ``bench/results/<name>.csv``: one row per measurement, appended (the header is the
union of the columns of the old and new rows), each row carrying the machine description.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("DTKD_SHARED_DATA", REPO.parent / "shared" / "data"))
WEIGHTS = SHARED / "weights"
RESULTS = REPO / "bench" / "results"

# Published weights per preset in ../shared/data/weights (weights do not change the cost of a forward
# pass, but trained weights avoid denormal-heavy random activations; presets without one use random weights).
PRESET_WEIGHTS = {
    "RFDN": "MTKDSR/RFDN_x4.pth",
    "RFDN_AIM": "RFDN/RFDN_AIM.pth",
    "LBNet": "SRDTKD/DTKD-LBNet.pth",
    "LBNet_tiny": "LBNet/LBNet-T_X4.pt",
    "IMDN": "IMDN/IMDN_x4.pth",
    "PAN": "PAN/PANx4_DF2K.pth",
}


# ----------------------------------------------------------------------------- set-up

def add_common_args(p: argparse.ArgumentParser, default_threads: Optional[int] = None) -> None:
    """``--device``, ``--threads``, ``--warmup``, ``--repeats``, ``--csv`` (every script has them)."""
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--threads", type=int, default=default_threads,
                   help="torch intra-op threads (default: the number of CPU cores)")
    p.add_argument("--warmup", type=int, default=2, help="discarded calls per variant before timing")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per variant (interleaved); median reported")
    p.add_argument("--csv", type=Path, default=None, help="CSV to append to (default bench/results/<script>.csv)")


def setup(args: argparse.Namespace) -> torch.device:
    """Pick the device, fix the thread count for the whole run, return the device."""
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    threads = args.threads or (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    args.threads = threads
    if name == "cuda":
        torch.backends.cudnn.benchmark = True
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_avg() -> float:
    """1-minute load average (NaN where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return float("nan")


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """What the figures were measured on: CPU, cores, threads, torch, GPU, load average."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        "cuda": (torch.version.cuda or "") if device.type == "cuda" else "",
        "tf32_conv": bool(torch.backends.cudnn.allow_tf32) if device.type == "cuda" else "",
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if device.type == "cuda" else "",
        "load_avg_1m": load_avg(),
    }
    return info


def describe(info: Mapping) -> str:
    gpu = (f", GPU {info['gpu']} (CUDA {info['cuda']}; TF32 convs {info['tf32_conv']}, matmuls {info['tf32_matmul']})"
           if info.get("gpu") else "")
    return (f"{info['cpu']} ({info['cores']} cores), torch {info['torch']}, {info['threads']} threads"
            f"{gpu}; load average (1 min) {info['load_avg_1m']}")


# ----------------------------------------------------------------------------- timing

def median(values: Iterable[float]) -> float:
    vals = [v for v in values]
    return statistics.median(vals) if vals else float("nan")


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, with the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(fns: Mapping[str, Callable[[], object]], device: torch.device, warmup: int = 2,
                repeats: int = 5, budget_s: Optional[float] = None,
                cpu_times: Optional[dict[str, list[float]]] = None) -> dict[str, list[float]]:
    """Time several variants A, B, ... as A, B, B, A, ... (interleaved, order rotated each round):
    ``{name: [seconds of each repeat]}``.

    Each variant is first called ``warmup`` times (discarded). With ``budget_s``, rounds stop early
    once that many seconds were spent timing (at least one round always runs). ``cpu_times``, when
    given, receives the CPU seconds (user + system, all threads of this process) of each call: with
    one thread that is nearly independent of other load on the machine.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    t_start = time.perf_counter()
    order = list(fns)
    for r in range(repeats):
        shift = r % len(order)  # rotate the order each round: no variant always follows the same one
        for k in order[shift:] + order[:shift]:
            fn = fns[k]
            c0 = time.process_time()
            times[k].append(time_once(fn, device))
            if cpu_times is not None:
                cpu_times.setdefault(k, []).append(time.process_time() - c0)
        if budget_s is not None and time.perf_counter() - t_start > budget_s:
            break
    return times


# ----------------------------------------------------------------------------- output

def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_csv(script_file: str) -> Path:
    """``bench/results/<script name without bench_>.csv``."""
    stem = Path(script_file).stem
    return RESULTS / f"{stem.removeprefix('bench_')}.csv"


def record(csv_path: Optional[str], script_file: str, info: Mapping, rows: Sequence[Mapping], **fields) -> Path:
    """End of a benchmark: print the load average, stamp every row (time, ``fields``, the machine, the
    final load) and append the rows to ``csv_path`` (default: :func:`default_csv` of the script)."""
    print(f"# load average (1 min): start {info['load_avg_1m']}, end {load_avg()}")
    stamp = {"time": now(), **fields, **info, "load_avg_end": load_avg()}
    out = write_csv(Path(csv_path) if csv_path else default_csv(script_file), [{**stamp, **row} for row in rows])
    print(f"# appended {len(rows)} rows to {out}")
    return out


def write_csv(path: Path, rows: Sequence[Mapping]) -> Path:
    """Append ``rows`` to ``path``; the header becomes the union of the old and new columns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old: list[dict] = []
    columns: list[str] = []
    if path.is_file():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            old = list(reader)
    for row in rows:
        for k in row:
            if k not in columns:
                columns.append(k)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for row in [*old, *rows]:
            w.writerow({k: _fmt(row.get(k)) for k in columns})
    os.replace(tmp, path)
    return path


def _fmt(v: object) -> object:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str], headers: Optional[Sequence[str]] = None) -> str:
    """A markdown table of ``columns`` of ``rows`` (floats with 4 significant digits)."""
    headers = list(headers or columns)

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
