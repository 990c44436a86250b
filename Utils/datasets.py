"""Training data: aligned random LR/HR patches, a decoded-image cache and reproducible loaders.

:class:`SRTrainDataset` reads one or more sources, each an HR folder with an optional LR folder.
Paired folders use the DIV2K names (``DIV2K_train_HR/0001.png`` <-> ``DIV2K_train_LR_bicubic/X4/0001x4.png``)
or the HR file's own name (``baby.png`` in both); the extension may differ. For an HR-only folder the
LR image is made once with the MATLAB bicubic :func:`Utils.imresize.imresize` of the HR image cropped
to a multiple of the scale. HR images are always cropped (bottom/right) to a multiple of the scale.

Decoded cache: with ``cache_dir`` every image is decoded once and stored as ``.npy`` (uint8 HWC), keyed
by the source path, byte size and modification time (a changed file is decoded again); training then
reads patches from ``np.load(mmap_mode='r')`` maps, so DataLoader workers share the page cache and
PNG decoding never limits training. Without ``cache_dir`` images are decoded on every access.

Reproducible randomness: the crop and augmentation of a sample depend only on a 64-bit *sample seed*.
:class:`InfiniteSampler` yields ``(index, sample_seed)`` pairs that are a pure function of
``(seed, position in the sample stream)``, so the batches do not depend on the number of workers,
and a run resumed at iteration ``it`` sees exactly the batches it would have seen::

    loader = make_train_loader(ds, batch_size=16, num_workers=2, seed=cfg.seed, start_iter=it)
    batches = iter(loader)              # infinite; one next() per training iteration
    # save ``it`` (the number of batches consumed) in the checkpoint; nothing else is needed.

Plain integer indices (any other sampler) are also accepted: the sample seed is then derived from
``(dataset seed, epoch set by set_epoch, index)``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import tempfile
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from Utils.image_io import ImageError, list_images, read_image

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
ExtraSource = Union[Callable[[int], np.ndarray], Sequence[Union[np.ndarray, PathLike]]]
CACHE_VERSION = 1
_MAX_OPEN_MAPS = 512  # each np.memmap keeps a file descriptor; bound them per process

__all__ = [
    "SRTrainDataset", "InfiniteSampler", "make_train_loader", "seed_worker", "build_train_dataset",
    "ImageRecord", "cache_key", "save_npy_atomic",
]


# ----------------------------------------------------------------------------------------------
# Records and file helpers
# ----------------------------------------------------------------------------------------------
@dataclass
class ImageRecord:
    """One training image: its HR file, its LR file (None: made by imresize) and its sizes."""

    name: str
    hr_path: Path
    lr_path: Optional[Path]
    hr_size: tuple[int, int]  # (H, W) after cropping to a multiple of the scale
    hr_cache: Optional[Path] = None
    lr_cache: Optional[Path] = None
    extra: dict[str, Any] = field(default_factory=dict)


def _header_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header, without decoding; ImageError when unreadable."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None
    return h, w


def _lr_index(lr_dir: Path, scale: int) -> dict[str, list[Path]]:
    """Map HR stems to LR files: ``0001x4.png`` and ``0001.png`` both answer to ``0001``."""
    index: dict[str, list[Path]] = {}
    suffix = f"x{scale}"
    for p in list_images(lr_dir):
        index.setdefault(p.stem, []).append(p)
        if p.stem.endswith(suffix) and len(p.stem) > len(suffix):
            index.setdefault(p.stem[: -len(suffix)], []).append(p)
    return index


def cache_key(path: Path, kind: str) -> str:
    """Hash of the absolute path, byte size, mtime and what was stored (changed file -> new key)."""
    st = path.stat()
    text = f"v{CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{kind}"
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    """np.save to a temporary file in the same folder, then rename (readers never see half a file)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _make_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-bicubic LR of the HR image cropped to a multiple of the scale."""
    from Utils.imresize import imresize, modcrop  # lazy: heavy module, only needed for HR-only data

    return imresize(modcrop(hr, scale), 1.0 / scale)


def _to_tensor(img: np.ndarray, keep_uint8: bool = False) -> torch.Tensor:
    """HWC array to a contiguous CHW tensor: float32 (uint8 / 255, float kept) or, on request, uint8."""
    chw = img.transpose(2, 0, 1)
    if keep_uint8 and chw.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(chw))
    if chw.dtype == np.uint8:  # NumPy, not torch: no intra-op thread start-up on small patches
        # x / 255 in float32: the same bits as Utils.image_io.img2tensor
        return torch.from_numpy(np.divide(chw, np.float32(255.0), dtype=np.float32, order="C"))
    return torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))


def _seed64(*parts: int) -> int:
    """A 64-bit seed that is a pure function of the integer parts."""
    ss = np.random.SeedSequence([int(p) % (1 << 64) for p in parts])
    return int(ss.generate_state(1, np.uint64)[0])


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------
class SRTrainDataset(Dataset):
    """Aligned random LR/HR training patches with flips, transpose and optional RGB permutation.

    ``sources``: a list of ``(hr_dir, lr_dir or None)``. ``patch_size`` is the HR patch (a multiple
    of ``scale``); images whose HR side (after cropping to a multiple of the scale) is shorter are
    left out with one warning. ``repeat`` multiplies the length (``len = n_images * repeat``; index
    ``i`` is image ``i % n_images``). ``extra_targets`` maps a name to full-resolution arrays per
    image (HR-sized HxWxC, e.g. teacher outputs): a callable ``image_index -> array`` or a sequence
    (in :attr:`records` order) of arrays, ``.npy`` paths (memory-mapped) or image paths; they are
    cropped with the HR box and transformed like the HR patch. An item is a dict with ``lr``
    (3xPxP float32 in [0, 1], P = patch_size / scale), ``hr`` (3 x patch x patch), ``index`` (the
    image index) and one entry per extra target. ``uint8=True`` returns uint8 tensors instead (4x less
    to copy between worker processes); ``x.float().div_(255)`` on the device gives the same values.
    """

    def __init__(self, sources: Sequence[tuple[PathLike, Optional[PathLike]]], scale: int = 4,
                 patch_size: int = 192, *, hflip: bool = True, vflip: bool = True,
                 transpose: bool = True, rgb_permute: bool = False, repeat: int = 1,
                 cache_dir: Optional[PathLike] = None, seed: int = 0,
                 extra_targets: Optional[Mapping[str, ExtraSource]] = None,
                 uint8: bool = False, cache_workers: Optional[int] = None, progress: bool = True):
        if scale < 1 or patch_size < scale or patch_size % scale:
            raise ValueError(f"patch_size {patch_size} must be a positive multiple of scale {scale}")
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        if not sources:
            raise ValueError("SRTrainDataset needs at least one (hr_dir, lr_dir) source")
        self.scale, self.patch_size, self.lr_patch = int(scale), int(patch_size), int(patch_size) // int(scale)
        self.hflip, self.vflip, self.transpose, self.rgb_permute = hflip, vflip, transpose, rgb_permute
        self.repeat, self.seed, self.epoch = int(repeat), int(seed), 0
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.uint8 = bool(uint8)
        self.progress = progress
        self._maps: OrderedDict[str, np.ndarray] = OrderedDict()
        self._mem_lr: dict[int, np.ndarray] = {}

        self.records = self._scan(sources)
        self.extra_targets: dict[str, ExtraSource] = {}
        workers = cache_workers if cache_workers is not None else min(4, os.cpu_count() or 1)
        if self.cache_dir is not None:
            self._build_cache(workers)
        elif any(r.lr_path is None for r in self.records):
            self._build_memory_lr(workers)
        for name, src in (extra_targets or {}).items():
            self.add_extra_target(name, src)

    # -- scanning ------------------------------------------------------------------------------
    def _scan(self, sources: Sequence[tuple[PathLike, Optional[PathLike]]]) -> list[ImageRecord]:
        """List and pair the files, check sizes, leave out images smaller than the patch."""
        records: list[ImageRecord] = []
        small: list[str] = []
        s = self.scale
        for hr_dir, lr_dir in sources:
            hr_dir = Path(hr_dir)
            hr_files = list_images(hr_dir)
            lr_of: dict[Path, Optional[Path]] = {p: None for p in hr_files}
            if lr_dir is not None:
                lr_dir = Path(lr_dir)
                index = _lr_index(lr_dir, s)
                used: set[Path] = set()
                for hp in hr_files:
                    cands = sorted(set(index.get(hp.stem, [])))
                    if not cands:
                        raise ImageError(hp, f"no LR partner in {lr_dir} (expected {hp.stem}x{s}.* or {hp.stem}.*)")
                    if len(cands) > 1:
                        raise ImageError(hp, f"ambiguous LR partners: {', '.join(c.name for c in cands)}")
                    lr_of[hp] = cands[0]
                    used.add(cands[0])
                orphans = sorted({p for v in index.values() for p in v} - used)
                if orphans:
                    more = f" ({len(orphans) - 1} more LR files without partner)" if len(orphans) > 1 else ""
                    raise ImageError(orphans[0], f"LR file has no HR partner in {hr_dir}{more}")
            for hp, lp in lr_of.items():
                h, w = _header_size(hp)
                hm, wm = h - h % s, w - w % s
                if lp is not None:
                    lh, lw = _header_size(lp)
                    if (lh * s, lw * s) != (hm, wm):
                        raise ImageError(lp, f"LR size {lw}x{lh} x{s} = {lw * s}x{lh * s} does not match HR "
                                             f"{hp} ({w}x{h}, {wm}x{hm} after cropping to a multiple of {s})")
                if min(hm, wm) < self.patch_size:
                    small.append(f"{hp} ({w}x{h})")
                    continue
                name = hp.stem if len(sources) == 1 else f"{hr_dir.name}/{hp.stem}"
                records.append(ImageRecord(name, hp, lp, (hm, wm)))
        if small:
            log.warning("left out %d of %d training images smaller than the %dx%d HR patch: %s",
                        len(small), len(small) + len(records), self.patch_size, self.patch_size,
                        "; ".join(small))
        if not records:
            dirs = ", ".join(str(h) for h, _ in sources)
            raise ValueError(f"no training image is at least {self.patch_size}x{self.patch_size} "
                             f"(after cropping to a multiple of {s}) in {dirs}")
        return records

    # -- caching -------------------------------------------------------------------------------
    def _build_cache(self, workers: int) -> None:
        """Decode every image once into cache_dir (in parallel threads); reuse valid entries."""
        assert self.cache_dir is not None
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        todo: list[Callable[[], None]] = []
        for r in self.records:
            r.hr_cache = self.cache_dir / f"{r.hr_path.stem}_{cache_key(r.hr_path, 'decoded')}.npy"
            if r.lr_path is not None:
                r.lr_cache = self.cache_dir / f"{r.lr_path.stem}_{cache_key(r.lr_path, 'decoded')}.npy"
            else:
                kind = f"lr-matlab-bicubic-x{self.scale}"
                r.lr_cache = self.cache_dir / f"{r.hr_path.stem}_lrx{self.scale}_{cache_key(r.hr_path, kind)}.npy"
            if not (r.hr_cache.is_file() and r.lr_cache.is_file()):
                todo.append(lambda r=r: self._cache_one(r))
        hits = len(self.records) - len(todo)
        if not todo:
            log.info("decoded cache %s: all %d images present", self.cache_dir, hits)
            return
        log.info("decoded cache %s: decoding %d images (%d already cached)", self.cache_dir, len(todo), hits)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(job) for job in todo]
            for fut in tqdm(futures, desc="decoding images into cache", unit="img",
                            disable=not self.progress, leave=False):
                fut.result()  # re-raises ImageError naming the file

    def _cache_one(self, r: ImageRecord) -> None:
        """Decode (and for HR-only sources, resize) one record into its cache files."""
        assert r.hr_cache is not None and r.lr_cache is not None
        hr = None
        if not r.hr_cache.is_file():
            hr = read_image(r.hr_path)
            save_npy_atomic(r.hr_cache, hr)
        if not r.lr_cache.is_file():
            if r.lr_path is not None:
                save_npy_atomic(r.lr_cache, read_image(r.lr_path))
            else:
                hr = read_image(r.hr_path) if hr is None else hr
                save_npy_atomic(r.lr_cache, _make_lr(hr, self.scale))

    def _build_memory_lr(self, workers: int) -> None:
        """Without a cache dir, make the LR of HR-only images once and keep it in memory."""
        todo = [i for i, r in enumerate(self.records) if r.lr_path is None]
        log.info("making %d LR images with MATLAB bicubic (no cache_dir: kept in memory)", len(todo))

        def job(i: int) -> np.ndarray:
            return _make_lr(read_image(self.records[i].hr_path), self.scale)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for i, lr in tqdm(zip(todo, pool.map(job, todo)), total=len(todo), desc="making LR images",
                              unit="img", disable=not self.progress, leave=False):
                self._mem_lr[i] = lr

    def _map(self, path: Path) -> np.ndarray:
        """Per-process LRU of read-only memory maps of cache files."""
        key = str(path)
        arr = self._maps.get(key)
        if arr is not None:
            self._maps.move_to_end(key)
            return arr
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ImageError(path, f"unreadable cache file ({exc}); delete it to rebuild") from None
        self._maps[key] = arr
        if len(self._maps) > _MAX_OPEN_MAPS:
            self._maps.popitem(last=False)
        return arr

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()  # memory maps are reopened in each worker, never pickled
        return state

    # -- extra targets -------------------------------------------------------------------------
    def add_extra_target(self, name: str, source: ExtraSource) -> None:
        """Register full-resolution per-image arrays returned (cropped, augmented) under ``name``."""
        if name in ("lr", "hr", "index"):
            raise ValueError(f"extra target name {name!r} is reserved")
        if not callable(source):
            source = list(source)
            if len(source) != len(self.records):
                raise ValueError(f"extra target {name!r} has {len(source)} entries for {len(self.records)} "
                                 "images (one per record, in dataset.records order)")
        self.extra_targets[name] = source

    def _extra(self, name: str, i: int) -> np.ndarray:
        """Full-resolution extra target ``name`` of image ``i``, checked against the HR size."""
        src = self.extra_targets[name]
        item = src(i) if callable(src) else src[i]
        if isinstance(item, (str, Path)):
            p = Path(item)
            item = self._map(p) if p.suffix == ".npy" else read_image(p)
        arr = np.asarray(item) if not isinstance(item, np.ndarray) else item
        hm, wm = self.records[i].hr_size
        if arr.ndim != 3 or arr.shape[0] < hm or arr.shape[1] < wm or arr.shape[0] - hm >= self.scale \
                or arr.shape[1] - wm >= self.scale:
            raise ValueError(f"extra target {name!r} of {self.records[i].hr_path}: shape {arr.shape} "
                             f"does not match the HR image ({hm}x{wm}x3)")
        return arr

    # -- access --------------------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return len(self.records)

    def __len__(self) -> int:
        return len(self.records) * self.repeat

    def set_epoch(self, epoch: int) -> None:
        """Epoch counter for plain integer indices (unused with :class:`InfiniteSampler`).

        Persistent workers hold their own copy of the dataset: set it before they start.
        """
        self.epoch = int(epoch)

    def load_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Full (LR, HR) uint8 HWC arrays of image ``i``; HR cropped to a multiple of the scale."""
        r = self.records[i]
        if r.hr_cache is not None and r.lr_cache is not None:
            hr, lr = self._map(r.hr_cache), self._map(r.lr_cache)
        else:
            hr = read_image(r.hr_path)
            lr = read_image(r.lr_path) if r.lr_path is not None else self._mem_lr[i]
        hm, wm = r.hr_size
        if hr.shape[:2] != (r.hr_size[0] + hr.shape[0] % self.scale, r.hr_size[1] + hr.shape[1] % self.scale) \
                or lr.shape[:2] != (hm // self.scale, wm // self.scale):
            raise ImageError(r.hr_path, f"image changed since the dataset was built (HR {hr.shape}, LR {lr.shape})")
        return lr, hr[:hm, :wm]

    def __getitem__(self, key: Union[int, tuple[int, int]]) -> dict[str, Any]:
        if isinstance(key, (tuple, list)):
            idx, sample_seed = int(key[0]), int(key[1])
        else:
            idx = int(key)
            sample_seed = _seed64(self.seed, self.epoch, idx)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} samples")
        i = idx % len(self.records)
        rng = np.random.default_rng(sample_seed)
        lr, hr = self.load_pair(i)
        s, lp = self.scale, self.lr_patch
        y = int(rng.integers(0, lr.shape[0] - lp + 1))
        x = int(rng.integers(0, lr.shape[1] - lp + 1))
        flips = rng.random(3) < 0.5
        perm = rng.permutation(3) if self.rgb_permute else None
        do_h = bool(flips[0] and self.hflip)
        do_v = bool(flips[1] and self.vflip)
        do_t = bool(flips[2] and self.transpose)

        def aug(img: np.ndarray, f: int) -> torch.Tensor:
            """Crop the box (scaled by f), apply the drawn flips/transpose/permutation, to tensor."""
            p = img[y * f:(y + lp) * f, x * f:(x + lp) * f]
            if do_h:
                p = p[:, ::-1]
            if do_v:
                p = p[::-1]
            if do_t:
                p = p.transpose(1, 0, 2)
            if perm is not None:
                p = p[:, :, perm]
            return _to_tensor(p, self.uint8)

        out: dict[str, Any] = {"lr": aug(lr, 1), "hr": aug(hr, s), "index": i}
        for name in self.extra_targets:
            out[name] = aug(self._extra(name, i), s)
        return out


# ----------------------------------------------------------------------------------------------
# Sampler and loader
# ----------------------------------------------------------------------------------------------
class InfiniteSampler(Sampler):
    """Endless stream of ``(index, sample_seed)``, a pure function of ``(seed, position)``.

    Position ``g`` of the global stream belongs to epoch ``g // n``; each epoch visits a fresh
    permutation of ``range(n)`` (or ``0..n-1`` in order without ``shuffle``) and every position gets
    its own sample seed for crops and augmentation. Rank ``r`` of ``world_size`` takes the global
    positions ``local * world_size + r``. ``start`` is the local position to begin at: to resume at
    iteration ``it`` with batch size ``b`` use ``start = it * b`` (``make_train_loader(start_iter=it)``).
    """

    def __init__(self, n: int, seed: int = 0, start: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        if n < 1:
            raise ValueError("InfiniteSampler needs a non-empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.n, self.seed, self.start, self.shuffle = int(n), int(seed), int(start), shuffle
        self.rank, self.world_size = int(rank), int(world_size)

    def _perm(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng(_seed64(self.seed, epoch, 0x5EED)).permutation(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        local = self.start
        epoch, perm = -1, np.arange(0)
        while True:
            g = local * self.world_size + self.rank
            e, k = divmod(g, self.n)
            if e != epoch:
                epoch, perm = e, self._perm(e)
            yield int(perm[k]), _seed64(self.seed, g)
            local += 1

    def state_dict(self) -> dict[str, int]:
        """Arguments that recreate the stream (the position to resume at comes from the trainer)."""
        return {"n": self.n, "seed": self.seed, "start": self.start, "rank": self.rank,
                "world_size": self.world_size, "shuffle": int(self.shuffle)}


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed NumPy's and Python's global RNGs from the worker's torch seed."""
    s = torch.initial_seed() % (1 << 32)
    np.random.seed(s)
    random.seed(s)


def make_train_loader(dataset: Dataset, batch_size: int, num_workers: int = 2, seed: int = 0,
                      shuffle: bool = True, sampler: Optional[Sampler] = None, drop_last: bool = True,
                      pin_memory: Optional[bool] = None, *, start_iter: int = 0, rank: int = 0,
                      world_size: int = 1, prefetch_factor: Optional[int] = None) -> DataLoader:
    """An endless, reproducible training DataLoader.

    Without ``sampler`` it uses :class:`InfiniteSampler` starting at ``start_iter * batch_size``, so a
    run resumed at iteration ``start_iter`` gets exactly the batches the uninterrupted run got there,
    for any ``num_workers``. Workers are persistent and seeded by a ``torch.Generator`` seeded with
    ``seed`` (through :func:`seed_worker`). ``pin_memory`` defaults to CUDA being available.
    """
    if sampler is None:
        sampler = InfiniteSampler(len(dataset), seed, start=start_iter * batch_size, shuffle=shuffle,
                                  rank=rank, world_size=world_size)
    elif start_iter:
        log.warning("make_train_loader: start_iter=%d ignored because a sampler was given", start_iter)
    g = torch.Generator()
    g.manual_seed(seed)
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw["persistent_workers"] = True
        if prefetch_factor is not None:
            kw["prefetch_factor"] = prefetch_factor
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, worker_init_fn=seed_worker, generator=g,
                      pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory, **kw)


def build_train_dataset(hr_dirs: Union[PathLike, Sequence[PathLike]],
                        lr_dirs: Optional[Union[PathLike, Sequence[Optional[PathLike]]]] = None,
                        **kw: Any) -> SRTrainDataset:
    """SRTrainDataset from HR folders and matching LR folders (None, or None entries: HR-only)."""
    hr_list = [hr_dirs] if isinstance(hr_dirs, (str, Path)) else list(hr_dirs)
    if lr_dirs is None:
        lr_list: list[Optional[PathLike]] = [None] * len(hr_list)
    else:
        lr_list = [lr_dirs] if isinstance(lr_dirs, (str, Path)) else list(lr_dirs)
    if len(lr_list) != len(hr_list):
        raise ValueError(f"{len(hr_list)} HR folders but {len(lr_list)} LR folders (use None for HR-only)")
    return SRTrainDataset(list(zip(hr_list, lr_list)), **kw)
