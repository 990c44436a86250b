"""Build the Datasets2023 test-set layout and DIV2K-style LR images with MATLAB bicubic.

For each HR folder of a test set ``<Set>``, under the output root (default ``Datasets2023``):

* ``GT/<Set>/name.png``: the original HR image (a PNG is copied byte for byte, other formats are
  decoded and written as PNG);
* ``GTmod12/<Set>_GTmod12/name.png``: HR cropped (bottom and right) to a multiple of ``--mod``;
* ``GTmod12_LRx4/<Set>_LRbicx4/name.png``: ``imresize(GTmod12, 1 / scale)`` with the MATLAB-equivalent
  resize of :mod:`Utils.imresize` (``GTmod12_LRx2/<Set>_LRbicx2`` and ``..._LRx3`` for ``--scale 2 3``).

``--mod scale`` crops each scale's HR to a multiple of that scale (``GTmod2``, ``GTmod3``, ``GTmod4``): the
benchmarks' own convention, which reproduces the published figures (the seed's mod 12 crops some
images further; IMDN x2 on Set5 then scores 37.96 dB instead of the published 38.00).

``--div2k_hr DIR`` writes ``<DIR>/../DIV2K_train_LR_bicubic/X4/0001x4.png`` style LR images (HR
cropped to a multiple of the scale; ``X2/0001x2.png`` at x2), or into ``--div2k_lr_out``.

Existing outputs are verified (decoded and compared with what would be written), never rewritten
unless ``--overwrite``; a mismatch is reported as an error naming the file and the command exits
non-zero. Example::

    python -m Utils.prepare_data --hr ../shared/data/benchmark/Set5/HR --name Set5 \\
        --hr ../shared/data/benchmark/Set14/HR
    python -m Utils.prepare_data --hr ../shared/data/benchmark/Set5/HR --scale 2 3 --mod scale
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from Utils.image_io import ImageError, list_images, read_image, write_image
from Utils.imresize import imresize, modcrop

log = logging.getLogger(__spec__.name if __spec__ else __name__)  # same name under -m

__all__ = ["prepare_testset", "prepare_div2k", "dataset_dirs", "default_set_name", "default_lr_dir", "main"]

PathLike = Union[str, Path]
_AUTO_POOL_MIN_FILES = 32  # below this many images a pool costs more than it saves


@dataclass(frozen=True)
class _Target:
    """One output file: ``kind`` is 'copy' (original HR), 'mod' (cropped HR) or 'lr'."""

    kind: str
    path: str


@dataclass(frozen=True)
class _Task:
    """Everything a worker needs to produce (or verify) the outputs of one source image."""

    src: str
    targets: tuple[_Target, ...]
    scale: int
    mod: int
    overwrite: bool


@dataclass
class _Outcome:
    path: str
    status: str  # 'written', 'verified', 'mismatched' or 'failed'
    detail: str = ""


@dataclass
class _Tally:
    written: int = 0
    verified: int = 0
    mismatched: int = 0
    failed: int = 0
    mismatched_files: list[str] = field(default_factory=list)
    failed_files: list[str] = field(default_factory=list)

    def add(self, outcome: _Outcome) -> None:
        setattr(self, outcome.status, getattr(self, outcome.status) + 1)
        if outcome.status == "mismatched":
            self.mismatched_files.append(outcome.path)
            log.error("mismatch: %s %s (use --overwrite to replace it)", outcome.path, outcome.detail)
        elif outcome.status == "failed":
            self.failed_files.append(outcome.path)
            log.error("failed: %s: %s", outcome.path, outcome.detail)


def default_set_name(hr_dir: PathLike) -> str:
    """Set name for an HR folder: its parent's name if the folder is called ``HR``, else its own."""
    p = Path(hr_dir).resolve()
    return p.parent.name if p.name.lower() == "hr" else p.name


def dataset_dirs(out_root: PathLike, name: str, scale: int = 4, mod: int = 12) -> dict[str, Path]:
    """The three Datasets2023 folders of a set: keys ``gt``, ``gtmod`` and ``lr``."""
    root = Path(out_root)
    return {
        "gt": root / "GT" / name,
        "gtmod": root / f"GTmod{mod}" / f"{name}_GTmod{mod}",
        "lr": root / f"GTmod{mod}_LRx{scale}" / f"{name}_LRbicx{scale}",
    }


def _expected(kind: str, hr: np.ndarray, scale: int, mod: int) -> np.ndarray:
    if kind == "copy":
        return hr
    cropped = modcrop(hr, mod)
    return cropped if kind == "mod" else imresize(cropped, 1.0 / scale)


def _copy_atomic(src: Path, dst: Path) -> None:
    """Byte copy through a temporary file in the destination folder, then rename."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=dst.suffix, dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _process(task: _Task) -> list[_Outcome]:
    """Produce or verify all outputs of one source image (runs in a worker process)."""
    src = Path(task.src)
    try:
        hr = read_image(src)
    except ImageError as exc:
        return [_Outcome(t.path, "failed", f"source {exc}") for t in task.targets]
    outcomes = []
    for target in task.targets:
        out = Path(target.path)
        try:
            expected = _expected(target.kind, hr, task.scale, task.mod)
        except ValueError as exc:
            outcomes.append(_Outcome(str(out), "failed", f"from {src}: {exc}"))
            continue
        if out.exists() and not task.overwrite:
            try:
                found = read_image(out)
            except ImageError as exc:
                outcomes.append(_Outcome(str(out), "mismatched", f"(unreadable: {exc.problem})"))
                continue
            if found.shape != expected.shape:
                outcomes.append(_Outcome(str(out), "mismatched",
                                         f"(size {found.shape[1]}x{found.shape[0]}, "
                                         f"expected {expected.shape[1]}x{expected.shape[0]})"))
            elif not np.array_equal(found, expected):
                n = int(np.any(found != expected, axis=-1).sum())
                outcomes.append(_Outcome(str(out), "mismatched", f"({n} pixels differ from {src})"))
            else:
                outcomes.append(_Outcome(str(out), "verified"))
            continue
        try:
            if target.kind == "copy" and src.suffix.lower() == ".png":
                _copy_atomic(src, out)
            else:
                write_image(out, expected)
        except OSError as exc:
            outcomes.append(_Outcome(str(out), "failed", f"cannot write: {exc}"))
            continue
        outcomes.append(_Outcome(str(out), "written"))
    return outcomes


def _check_names(files: Sequence[Path]) -> None:
    """Outputs are ``<stem>.png``: refuse two sources that would share a name."""
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise ValueError(f"{f} and {seen[f.stem]} would both be written as {f.stem}.png")
        seen[f.stem] = f


def _pool_context() -> multiprocessing.context.BaseContext:
    """A fork server with the image modules preloaded where available (workers start quickly and
    inherit no threads), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["Utils.image_io", "Utils.imresize"])
        return ctx
    return multiprocessing.get_context("spawn")


def _run(tasks: list[_Task], workers: Optional[int], desc: str) -> _Tally:
    """Run tasks serially or in a process pool, with a progress bar, and tally the outcomes."""
    if workers is None:
        workers = 1 if len(tasks) < _AUTO_POOL_MIN_FILES else (os.cpu_count() or 1)
    workers = max(1, min(int(workers), len(tasks) or 1))
    tally = _Tally()
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=None)
    try:
        if workers == 1:
            results: Iterable[list[_Outcome]] = map(_process, tasks)
            for outcomes in results:
                for o in outcomes:
                    tally.add(o)
                bar.update()
        else:
            # Refer to the worker function through the package module, not ``__main__``, so that
            # ``python -m Utils.prepare_data`` workers need not re-run the CLI module.
            from Utils.prepare_data import _process as process

            with _pool_context().Pool(workers) as pool:
                for outcomes in pool.imap_unordered(process, tasks, chunksize=1):
                    for o in outcomes:
                        tally.add(o)
                    bar.update()
    finally:
        bar.close()
    return tally


def _summary(tally: _Tally, what: str, extra: dict) -> dict:
    log.info("%s: %d written, %d verified, %d mismatched%s", what, tally.written, tally.verified,
             tally.mismatched, f", {tally.failed} failed" if tally.failed else "")
    return {"written": tally.written, "verified": tally.verified, "mismatched": tally.mismatched,
            "failed": tally.failed, "mismatched_files": tally.mismatched_files,
            "failed_files": tally.failed_files, **extra}


def _check_scale_mod(scale: int, mod: int) -> None:
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if mod < 1 or mod % scale:
        raise ValueError(f"mod must be a positive multiple of the scale {scale}, got {mod}")


def prepare_testset(hr_dir: PathLike, name: str, out_root: PathLike, scale: int = 4, mod: int = 12, *,
                    overwrite: bool = False, workers: Optional[int] = None) -> dict:
    """Write (or verify) the Datasets2023 folders of one test set from its HR folder.

    Returns a dict with the counts ``written``, ``verified``, ``mismatched`` and ``failed``, the
    lists ``mismatched_files`` and ``failed_files``, and the output folders under ``dirs``.
    ``workers`` None picks a process pool only for large sets.
    """
    _check_scale_mod(scale, mod)
    files = list_images(hr_dir)
    _check_names(files)
    dirs = dataset_dirs(out_root, name, scale, mod)
    tasks = [
        _Task(str(f), (_Target("copy", str(dirs["gt"] / f"{f.stem}.png")),
                       _Target("mod", str(dirs["gtmod"] / f"{f.stem}.png")),
                       _Target("lr", str(dirs["lr"] / f"{f.stem}.png"))), scale, mod, overwrite)
        for f in files
    ]
    tally = _run(tasks, workers, name)
    return _summary(tally, f"{name} ({len(files)} images)", {"dirs": dirs})


def default_lr_dir(hr_dir: PathLike, scale: int = 4) -> Path:
    """DIV2K/EDSR naming of the LR folder beside an HR folder.

    ``DIV2K_train_HR`` gives ``DIV2K_train_LR_bicubic/X4``, ``Set5/HR`` gives ``Set5/LR_bicubic/X4``
    and any other ``name`` gives ``name_LR_bicubic/X4``, all beside the HR folder.
    """
    hr_dir = Path(hr_dir).resolve()
    base = hr_dir.name
    if base.upper() == "HR":
        lr_name = "LR_bicubic"
    elif base.upper().endswith("_HR"):
        lr_name = base[: -len("_HR")] + "_LR_bicubic"
    else:
        lr_name = base + "_LR_bicubic"
    return hr_dir.parent / lr_name / f"X{scale}"


def prepare_div2k(hr_dir: PathLike, lr_dir: Optional[PathLike] = None, scale: int = 4, *,
                  overwrite: bool = False, workers: Optional[int] = None) -> dict:
    """Write (or verify) DIV2K-style LR images ``<stem>x<scale>.png`` of every HR image.

    HR is cropped to a multiple of ``scale`` first. ``lr_dir`` defaults to :func:`default_lr_dir`
    (``<hr_dir>/../DIV2K_train_LR_bicubic/X4`` for ``DIV2K_train_HR``). Returns the same counts as
    :func:`prepare_testset`, with ``lr_dir``.
    """
    _check_scale_mod(scale, scale)
    hr_dir = Path(hr_dir)
    files = list_images(hr_dir)
    _check_names(files)
    out = Path(lr_dir) if lr_dir is not None else default_lr_dir(hr_dir, scale)
    tasks = [_Task(str(f), (_Target("lr", str(out / f"{f.stem}x{scale}.png")),), scale, scale, overwrite)
             for f in files]
    tally = _run(tasks, workers, hr_dir.name)
    return _summary(tally, f"{hr_dir} ({len(files)} images)", {"lr_dir": out})


def _mod_arg(text: str) -> Union[int, str]:
    """``--mod``: a positive integer, or ``scale`` (a multiple of each scale)."""
    if text == "scale":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'scale', got {text!r}") from None


class _HrAction(argparse.Action):
    """``--hr DIR`` starts a new (dir, name) pair."""

    def __call__(self, parser, namespace, values, option_string=None):
        pairs = list(getattr(namespace, "sets", None) or [])
        pairs.append([values, None])
        namespace.sets = pairs


class _NameAction(argparse.Action):
    """``--name NAME`` names the most recent ``--hr`` folder."""

    def __call__(self, parser, namespace, values, option_string=None):
        pairs = getattr(namespace, "sets", None) or []
        if not pairs or pairs[-1][1] is not None:
            parser.error("--name must follow the --hr folder it names")
        pairs[-1][1] = values


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m Utils.prepare_data``."""
    p = argparse.ArgumentParser(
        prog="python -m Utils.prepare_data",
        description="Build Datasets2023 test sets (GT, GTmod12, GTmod12_LRx4) and DIV2K LR images "
                    "with MATLAB-equivalent bicubic; existing files are verified, not rewritten.")
    p.add_argument("--hr", action=_HrAction, metavar="DIR", dest="sets_hr",
                   help="HR folder of a test set (repeatable)")
    p.add_argument("--name", action=_NameAction, metavar="NAME", dest="sets_name",
                   help="set name for the preceding --hr (default: the parent's name if the folder is "
                        "called HR, else the folder's name)")
    p.add_argument("--out", default="Datasets2023", help="output root (default: %(default)s)")
    p.add_argument("--div2k_hr", metavar="DIR", help="DIV2K-style HR folder to make LR images for")
    p.add_argument("--div2k_lr_out", metavar="DIR",
                   help="folder for the DIV2K LR images (default: <DIR>/../DIV2K_train_LR_bicubic/X4)")
    p.add_argument("--scale", type=int, nargs="+", default=[4],
                   help="downscaling factor(s), e.g. 2 3 4 (default: 4)")
    p.add_argument("--mod", type=_mod_arg, default=12,
                   help="crop HR to a multiple of this, or 'scale': of each scale (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one for small sets, all CPUs for large ones)")
    p.add_argument("--overwrite", action="store_true", help="rewrite existing outputs instead of verifying")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    p.set_defaults(sets=[])
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status (1 on any mismatch or failure, 2 on bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.sets and not args.div2k_hr:
        parser.error("nothing to do: give --hr DIR (test sets) and/or --div2k_hr DIR")
    if args.div2k_lr_out and not args.div2k_hr:
        parser.error("--div2k_lr_out needs --div2k_hr")
    sets = [(Path(d), n or default_set_name(d)) for d, n in args.sets]
    names = [n for _, n in sets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        parser.error(f"two --hr folders share the set name {', '.join(dupes)}; give distinct --name")
    scales = list(dict.fromkeys(args.scale))
    if args.div2k_lr_out and len(scales) > 1:
        parser.error("--div2k_lr_out takes one --scale (each scale needs its own folder)")
    bad = 0
    try:
        for scale in scales:
            mod = scale if args.mod == "scale" else args.mod
            for hr_dir, name in sets:
                res = prepare_testset(hr_dir, name, args.out, scale, mod,
                                      overwrite=args.overwrite, workers=args.workers)
                bad += res["mismatched"] + res["failed"]
            if args.div2k_hr:
                res = prepare_div2k(args.div2k_hr, args.div2k_lr_out, scale,
                                    overwrite=args.overwrite, workers=args.workers)
                bad += res["mismatched"] + res["failed"]
    except (ImageError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    if bad:
        log.error("%d output file(s) mismatched or failed; see the errors above", bad)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
