"""Evaluation engine: test folders -> SR images, per-image metrics.csv, and rows of summary.csv.

``main_for_infer.py`` and validation in training share :func:`evaluate_pairs`, so a checkpoint gets
the same numbers everywhere. Conventions (DESIGN.md section 4): SR is quantised to uint8, PSNR and
SSIM are measured on the unrounded Y channel with a border of ``scale`` pixels cropped.
"""
from __future__ import annotations

import concurrent.futures
import csv
import fcntl
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from Utils.image_io import ImageError, IMAGE_EXTENSIONS, img2tensor, list_images, read_image, tensor2img, write_image
from Utils.inference import super_resolve

log = logging.getLogger(__name__)
PathLike = Union[str, Path]

PNG_COMPRESS_LEVEL = 1  # SR images: zlib level 1 writes about 3x faster than PIL's default 6; files ~15% larger
HELPER_NICE = 19  # scheduling priority (nice) of the decode/metrics/PNG helper threads; 0 keeps the normal one
# SR (+ GT) images waiting for their metrics, in bytes, before the loop catches up: the helpers work in the
# gaps of the forward passes; the rest is done at the end by all threads at once, which is the most efficient
MAX_BACKLOG_BYTES = 256 << 20
# helper threads: 2 on small machines; more where many cores sit idle beside a GPU forward pass
HELPER_THREADS = max(2, min(8, (os.cpu_count() or 2) // 2))
METRIC_COLUMNS = ("psnr", "ssim", "niqe", "lpips", "ag")
IMAGE_COLUMNS = ("image",) + METRIC_COLUMNS + ("seconds",)
SUMMARY_COLUMNS = ("model", "checkpoint", "dataset", "scale", "images", "failed") + METRIC_COLUMNS + (
    "params", "seconds", "sha256", "results")


# ----------------------------------------------------------------------------- folders and pairs

def dataset_name(lr_folder: PathLike) -> str:
    """A test folder's set name: ``Set5_LRbicx4`` -> ``Set5``; ``Set5/LR_bicubic/X4`` -> ``Set5``."""
    p = Path(lr_folder).resolve()
    if re.fullmatch(r"X\d+", p.name) and p.parent.name.startswith("LR_"):
        return p.parent.parent.name
    m = re.fullmatch(r"(.+?)_LR\w*?x\d+", p.name)
    return m.group(1) if m else p.name


def results_folder_name(lr_folder: PathLike) -> str:
    """Sub-folder for a test folder's results: its own name, or the set's name for the EDSR layout."""
    p = Path(lr_folder).resolve()
    return dataset_name(p) if re.fullmatch(r"X\d+", p.name) else p.name


def find_gt_folder(lr_folder: PathLike) -> Optional[Path]:
    """Ground truth beside an LR folder: ``GTmod12_LRx4/<Set>_LRbicx4`` -> ``GTmod12/<Set>_GTmod12``,
    ``<Set>/LR_bicubic/X4`` -> ``<Set>/HR``; None when there is none (e.g. RealSRSet)."""
    p = Path(lr_folder).resolve()
    candidates: list[Path] = []
    m = re.fullmatch(r"(.+?)_LR\w*?x\d+", p.name)
    if m and "_LR" in p.parent.name:
        base = p.parent.name.split("_LR")[0]  # GTmod12_LRx4 -> GTmod12
        candidates.append(p.parent.parent / base / f"{m.group(1)}_{base}")
        candidates.append(p.parent.parent / base / m.group(1))
    if re.fullmatch(r"X\d+", p.name) and p.parent.name.startswith("LR_"):
        candidates.append(p.parent.parent / "HR")
    return next((c for c in candidates if c.is_dir()), None)


def _gt_key(name: str, scale: int) -> str:
    stem = Path(name).stem
    return re.sub(rf"(?i)[_-]?x{scale}$", "", stem)


@dataclass
class ImagePair:
    """One test image: its LR file and, when there is ground truth, the HR file. ``problem`` says why
    the pair cannot be evaluated although its folder can (e.g. its ground truth is missing)."""

    name: str
    lr: Path
    gt: Optional[Path] = None
    problem: Optional[str] = None


def pair_images(lr_folder: PathLike, gt_folder: Optional[PathLike], scale: int = 4,
                missing_gt_fails: bool = True) -> list[ImagePair]:
    """Match LR files to GT files by name (``babyx4.png`` or ``baby.png`` <-> ``baby.png``, any extension).

    Errors (one line, naming the file) for a missing or empty folder. An LR file without GT is an
    error too when ``missing_gt_fails``; otherwise its pair carries the ``problem``, so that evaluation reports
    it as a failed image and goes on with the others. Files with non-image extensions are ignored
    with a warning.
    """
    lr_files = list_images(lr_folder)
    others = sorted(p.name for p in Path(lr_folder).iterdir() if p.is_file() and p not in lr_files
                    and not p.name.startswith("."))
    if others:
        log.warning("%s: ignoring %d non-image file(s): %s", lr_folder, len(others), ", ".join(others[:5]))
    pairs = [ImagePair(_gt_key(f.name, scale), f) for f in lr_files]
    if gt_folder is None:
        return pairs
    gt_index: dict[str, Path] = {}
    for g in list_images(gt_folder):
        gt_index.setdefault(g.stem, g)
    for pair in pairs:
        pair.gt = gt_index.get(pair.name) or gt_index.get(pair.lr.stem)
        if pair.gt is None:
            pair.problem = f"no ground truth named {pair.name}.* in {gt_folder}"
            if missing_gt_fails:
                raise ImageError(pair.lr, pair.problem)
    return pairs


def match_gt(sr_shape: tuple[int, ...], gt: np.ndarray, gt_path: PathLike, scale: int) -> np.ndarray:
    """Crop GT to the SR size when it is at most ``scale - 1`` pixels larger (mod crop); else an error."""
    h, w = sr_shape[:2]
    gh, gw = gt.shape[:2]
    if gh == h and gw == w:
        return gt
    if 0 <= gh - h < scale and 0 <= gw - w < scale:
        return gt[:h, :w]
    raise ImageError(gt_path, f"size {gw}x{gh} does not match the x{scale} LR (expected {w}x{h})")


def link_benchmark_as_datasets2023(benchmark: PathLike, out_root: PathLike, sets: Sequence[str],
                                   scale: int = 4) -> Path:
    """Lay official EDSR-layout files (``<Set>/HR``, ``<Set>/LR_bicubic/X4``) out as Datasets2023 by symlinks.

    The LR files are the official ones, so the figures equal the published ones even where an HR
    image is not a multiple of 12 (which ``Utils.prepare_data`` would crop).
    """
    benchmark, out_root = Path(benchmark), Path(out_root)
    for s in sets:
        lr_dir = out_root / f"GTmod12_LRx{scale}" / f"{s}_LRbicx{scale}"
        gt_dir = out_root / "GTmod12" / f"{s}_GTmod12"
        lr_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for pair in pair_images(benchmark / s / "LR_bicubic" / f"X{scale}", benchmark / s / "HR", scale):
            for src, dst in ((pair.gt, gt_dir / f"{pair.name}.png"), (pair.lr, lr_dir / f"{pair.name}.png")):
                if not dst.exists():
                    dst.symlink_to(Path(src).resolve())
    return out_root


# ----------------------------------------------------------------------------- metrics

@dataclass
class MetricOptions:
    """Which measures to compute and how."""

    scale: int = 4
    crop_border: Optional[int] = None  # default: scale
    test_y_channel: bool = True
    round_y: bool = False
    niqe: bool = True
    niqe_params: Optional[PathLike] = None
    lpips: bool = False
    lpips_model: Optional[nn.Module] = None
    ag: bool = True

    @property
    def border(self) -> int:
        return self.scale if self.crop_border is None else self.crop_border


def image_metrics(sr: np.ndarray, gt: Optional[np.ndarray], opts: MetricOptions) -> dict[str, float]:
    """All requested measures of one uint8 SR image (full-reference ones only when ``gt`` is given)."""
    from Utils import metrics

    out: dict[str, float] = {}
    b = opts.border
    if gt is not None:
        out["psnr"] = metrics.calculate_psnr(sr, gt, b, opts.test_y_channel, round_y=opts.round_y)
        out["ssim"] = metrics.calculate_ssim(sr, gt, b, opts.test_y_channel, round_y=opts.round_y)
        if opts.lpips:
            out["lpips"] = metrics.calculate_lpips(sr, gt, crop_border=b, model=opts.lpips_model)
    if opts.niqe:
        try:
            out["niqe"] = metrics.calculate_niqe(sr, b, params_path=opts.niqe_params)
        except ValueError as exc:  # e.g. smaller than two 96x96 blocks: NIQE is undefined, the rest stands
            log.warning("NIQE undefined for this image: %s", exc)
    if opts.ag:
        out["ag"] = metrics.calculate_average_gradient(sr, b, opts.test_y_channel)
    return out


def resolve_niqe_params(opts: MetricOptions) -> None:
    """Make sure NIQE can run; when its parameters cannot be had, switch NIQE off with one warning."""
    if not opts.niqe:
        return
    from Utils.niqe import load_niqe_params

    if opts.niqe_params is None and os.environ.get("DTKD_NIQE_PARAMS"):
        opts.niqe_params = os.environ["DTKD_NIQE_PARAMS"]
    try:
        load_niqe_params(opts.niqe_params)
    except Exception as exc:  # no file and no internet: evaluation goes on without NIQE
        log.warning("NIQE disabled: its parameters are unavailable (%s); pass --niqe_params FILE", exc)
        opts.niqe = False


# ----------------------------------------------------------------------------- the loop

@dataclass
class FolderResult:
    """Per-image rows, the failures (file, message) and the timing of one evaluated folder."""

    rows: list[dict] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    forward_seconds: float = 0.0

    def means(self) -> dict[str, float]:
        """Mean of every measure over the images that have it."""
        out = {}
        for col in METRIC_COLUMNS:
            vals = [r[col] for r in self.rows if isinstance(r.get(col), float) and math.isfinite(r[col])]
            if vals:
                out[col] = float(np.mean(vals))
        return out


def _lower_thread_priority() -> None:
    """Lower the calling helper thread's scheduling priority (Linux: per-thread nice ``HELPER_NICE``)."""
    if HELPER_NICE and hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HELPER_NICE)
        except OSError:  # not permitted or not supported: normal priority
            pass


class _HelperPool:
    """Low-priority helper threads whose queued jobs the calling thread runs itself instead of waiting.

    The model's intra-op threads use every core; a helper of equal priority preempts one of them and the
    others spin at the next barrier, so a second of metrics used to cost up to two of forward time. At
    low priority (``HELPER_NICE``) the helpers only take otherwise idle time, and whenever the calling
    thread has to wait (for the next image, the backlog bound, the end) it takes the oldest queued jobs
    itself at normal priority, so the helpers can never be starved by other load on the machine.
    """

    def __init__(self, workers: int):
        self._jobs: deque = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"eval-helper-{k}")
                         for k in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable, *args, urgent: bool = False) -> Future:
        """Queue ``fn(*args)``; ``urgent`` jobs go first (the next image, which the loop needs soonest)."""
        fut: Future = Future()
        with self._cv:
            if urgent:
                self._jobs.appendleft((fut, fn, args))
            else:
                self._jobs.append((fut, fn, args))
            self._cv.notify()
        return fut

    @staticmethod
    def _run(job: tuple) -> None:
        fut, fn, args = job
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # delivered by fut.result(); interrupts still stop the caller
            fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def _take(self) -> Optional[tuple]:
        with self._cv:
            return self._jobs.popleft() if self._jobs else None

    def _work(self) -> None:
        _lower_thread_priority()
        while True:
            with self._cv:
                while not self._jobs and not self._closed:
                    self._cv.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            self._run(job)

    def wait(self, fut: Future) -> None:
        """Until ``fut`` is done, run queued jobs (oldest first) in this thread, then wait for the helpers."""
        while not fut.done():
            job = self._take()
            if job is None:  # fut is running in a helper
                concurrent.futures.wait([fut])
                return
            self._run(job)

    def result(self, fut: Future):
        """``fut.result()``, after :meth:`wait`."""
        self.wait(fut)
        return fut.result()

    def shutdown(self) -> None:
        """Cancel the jobs not started yet and join the helpers."""
        with self._cv:
            self._closed = True
            while self._jobs:
                self._jobs.popleft()[0].cancel()
            self._cv.notify_all()
        for t in self._threads:
            t.join()


def evaluate_pairs(model: nn.Module, pairs: Sequence[ImagePair], opts: MetricOptions,
                   sr_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                   save_dir: Optional[Path] = None, progress: bool = True, desc: str = "eval",
                   on_row: Optional[Callable[[dict], None]] = None) -> FolderResult:
    """Super-resolve every pair, measure it, optionally save the SR PNG; failures are recorded, not fatal.

    The model runs in the calling thread; decoding the next image, metrics and PNG writing run in a
    small pool of low-priority helper threads that fill the gaps of the forward passes without slowing
    them, and that the calling thread joins whenever it would otherwise wait (see :class:`_HelperPool`);
    at most ``MAX_BACKLOG_BYTES`` of SR and GT images wait for their metrics.
    """
    from tqdm import tqdm

    if sr_fn is None:
        sr_fn = lambda x: super_resolve(model, x, scale=opts.scale)  # noqa: E731
    result = FolderResult()
    t_start = time.perf_counter()
    workers = _HelperPool(HELPER_THREADS)

    def load(pair: ImagePair):
        if pair.problem is not None:  # reported by the loop; nothing to read
            return None, None
        lr = read_image(pair.lr)
        gt = read_image(pair.gt) if pair.gt is not None else None
        return lr, gt

    def finish(pair: ImagePair, sr_img: np.ndarray, gt: Optional[np.ndarray], seconds: float) -> dict:
        row = {"image": pair.lr.name, **image_metrics(sr_img, gt, opts), "seconds": seconds}
        if save_dir is not None:
            write_image(save_dir / f"{pair.name}.png", sr_img, compress_level=PNG_COMPRESS_LEVEL)
        return row

    pending: list[tuple[ImagePair, Future, int]] = []
    loads = [workers.submit(load, p, urgent=True) for p in pairs[:1]]
    bar = tqdm(total=len(pairs), desc=desc, unit="img", disable=not progress, leave=False)
    try:
        for i, pair in enumerate(pairs):
            if i + 1 < len(pairs):
                loads.append(workers.submit(load, pairs[i + 1], urgent=True))
            try:
                if pair.problem is not None:
                    raise ImageError(pair.lr, pair.problem)
                lr, gt = workers.result(loads[i])
                if gt is not None:  # checked before the forward pass, so a bad pair costs nothing
                    gt = match_gt((lr.shape[0] * opts.scale, lr.shape[1] * opts.scale), gt, pair.gt, opts.scale)
                t0 = time.perf_counter()
                sr = sr_fn(img2tensor(lr))
                sr_img = tensor2img(sr)  # syncs the device
                dt = time.perf_counter() - t0
                result.forward_seconds += dt
                nbytes = sr_img.nbytes + (gt.nbytes if gt is not None else 0)
                pending.append((pair, workers.submit(finish, pair, sr_img, gt, dt), nbytes))
                waiting = [(f, n) for _, f, n in pending if not f.done()]
                held = sum(n for _, n in waiting)
                for f, n in waiting:  # bounded memory: catch up on the oldest
                    if held <= MAX_BACKLOG_BYTES:
                        break
                    workers.wait(f)  # its failure, if any, is reported with its own pair below
                    held -= n
            except (ImageError, ValueError) as exc:
                log.error("%s", exc)
                result.failures.append((str(pair.lr), str(exc)))
            bar.update(1)
        for pair, fut, _ in pending:
            try:
                row = workers.result(fut)
            except (ImageError, ValueError, OSError) as exc:
                log.error("%s: %s", pair.lr, exc)
                result.failures.append((str(pair.lr), str(exc)))
                continue
            result.rows.append(row)
            if on_row is not None:
                on_row(row)
    finally:
        bar.close()
        workers.shutdown()
    result.seconds = time.perf_counter() - t_start
    return result


# ----------------------------------------------------------------------------- CSV files

def _fmt(v: object) -> object:
    if isinstance(v, float):
        return f"{v:.6f}" if math.isfinite(v) else str(v)
    return "" if v is None else v


def write_rows_csv(path: PathLike, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """Write a CSV atomically (temporary file, then rename); missing values are empty cells."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _fmt(row.get(k)) for k in columns})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_rows_csv(path: PathLike) -> list[dict]:
    """Rows of a CSV as dicts of strings (empty list when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def upsert_summary(path: PathLike, row: dict) -> None:
    """Add ``row`` to ``summary.csv``, replacing the row of the same (model, sha256, dataset) only.

    Rows of other checkpoints and datasets are kept; the file is locked during the update, so
    several evaluations may share one output folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = read_rows_csv(path)
        key = (row["model"], row["sha256"], row["dataset"])
        rows = [r for r in rows if (r.get("model"), r.get("sha256"), r.get("dataset")) != key]
        rows.append(row)
        write_rows_csv(path, rows, SUMMARY_COLUMNS)
