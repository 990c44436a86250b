"""Tests of Utils.datasets (training patches, cache, loaders) and Utils.demo_data."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from Utils.datasets import InfiniteSampler, build_train_dataset, make_train_loader
from Utils.image_io import ImageError, read_image, write_image

S = 4


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _paired_blocks(tmp: Path, sizes: list[tuple[int, int]]) -> tuple[Path, Path]:
    """HR = LR upsampled by 4x4 pixel blocks, so every HR patch block-averages exactly to its LR patch."""
    hr_dir, lr_dir = tmp / "HR", tmp / "LR_bicubic" / "X4"
    for k, (h, w) in enumerate(sizes):
        lr = _noise(h, w, k)
        write_image(lr_dir / f"{k:04d}x4.png", lr)
        write_image(hr_dir / f"{k:04d}.png", np.kron(lr, np.ones((S, S, 1), np.uint8)))
    return hr_dir, lr_dir


def _find(big: np.ndarray, patch: np.ndarray, step: int) -> tuple[int, int]:
    """Top-left of ``patch`` in ``big`` (searched on a ``step`` grid); the image is noise, so unique."""
    p = patch.shape[0]
    hits = [(y, x) for y in range(0, big.shape[0] - p + 1, step) for x in range(0, big.shape[1] - p + 1, step)
            if np.array_equal(big[y:y + p, x:x + p], patch)]
    assert len(hits) == 1, hits
    return hits[0]


def _u8(t: torch.Tensor) -> np.ndarray:
    return (t.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)


NO_AUG = dict(hflip=False, vflip=False, transpose=False)


def test_paired_crop_is_aligned(tmp_path):
    hr_dir, lr_dir = tmp_path / "HR", tmp_path / "LR"
    hr = _noise(70, 83, 1)  # not a multiple of 4: cropped to 68x80
    lr = _noise(17, 20, 2)
    write_image(hr_dir / "a.png", hr)
    write_image(lr_dir / "a.png", lr)  # same name as the HR file is accepted too
    ds = build_train_dataset(hr_dir, lr_dir, patch_size=32, progress=False, **NO_AUG)
    for seed in range(5):
        item = ds[(0, seed)]
        assert item["lr"].shape == (3, 8, 8) and item["hr"].shape == (3, 32, 32)
        assert item["lr"].dtype == torch.float32 and item["index"] == 0
        y, x = _find(hr[:68, :80], _u8(item["hr"]), S)
        np.testing.assert_array_equal(_u8(item["lr"]), lr[y // S:y // S + 8, x // S:x // S + 8])


@pytest.mark.parametrize("cached", [False, True])
def test_hr_only_lr_is_matlab_bicubic(tmp_path, cached):
    from Utils.imresize import imresize, modcrop

    hr = _noise(66, 75, 3)
    write_image(tmp_path / "HR" / "b.png", hr)
    ds = build_train_dataset(tmp_path / "HR", patch_size=32, progress=False,
                             cache_dir=tmp_path / "cache" if cached else None, **NO_AUG)
    full_lr = imresize(modcrop(hr, S), 1 / S)
    lr, hr_full = ds.load_pair(0)
    np.testing.assert_array_equal(lr, full_lr)
    assert hr_full.shape == (64, 72, 3)
    for seed in range(4):
        item = ds[(0, seed)]
        y, x = _find(hr[:64, :72], _u8(item["hr"]), S)
        np.testing.assert_array_equal(_u8(item["lr"]), full_lr[y // S:y // S + 8, x // S:x // S + 8])
    if cached:
        assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_augmentation_applies_identically_to_lr_hr_and_extra_targets(tmp_path):
    hr_dir, lr_dir = _paired_blocks(tmp_path, [(12, 14), (10, 10)])
    hrs = [read_image(p) for p in sorted(hr_dir.iterdir())]
    ds = build_train_dataset(hr_dir, lr_dir, patch_size=24, rgb_permute=True, progress=False,
                             extra_targets={"neg": [255 - h for h in hrs]})
    def marker(i: int) -> np.ndarray:
        """Channels: row number, 100 + column number, 250 (tells orientation and permutation apart)."""
        h, w = hrs[i].shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        return np.stack([yy, 100 + xx, np.full_like(yy, 250)], axis=2).astype(np.uint8)

    ds.add_extra_target("marker", marker)
    states = set()
    for seed in range(80):
        item = ds[(seed % 2, seed)]
        hr, lr = item["hr"], item["lr"]
        assert torch.allclose(item["neg"], 1 - hr, atol=1e-6, rtol=0)
        # HR is LR in 4x4 blocks: the HR patch's block means give the LR patch under any augmentation
        assert torch.allclose(torch.nn.functional.avg_pool2d(hr[None], S)[0], lr, atol=1e-6, rtol=0)
        m = _u8(item["marker"]).astype(int)
        perm = tuple(int(np.argmax([m[0, 0, c] == 250, m[0, 0, c] >= 100, True])) for c in range(3))
        assert sorted(perm) == [0, 1, 2]  # channels permuted, never mixed
        y_c, x_c = perm.index(2), perm.index(1)
        steps = tuple(int(np.sign(m[a, b, ch] - m[0, 0, ch])) for a, b in ((1, 0), (0, 1)) for ch in (y_c, x_c))
        states.add((perm, steps))
    assert len({p for p, _ in states}) == 6 and len({st for _, st in states}) == 8  # all 8 flips/transposes


def test_repeat_length_and_index(tmp_path):
    hr_dir, lr_dir = _paired_blocks(tmp_path, [(8, 8), (9, 9), (10, 8)])
    ds = build_train_dataset(hr_dir, lr_dir, patch_size=32, repeat=5, progress=False)
    assert len(ds) == 15 and ds[7]["index"] == 1
    with pytest.raises(IndexError):
        ds[15]


def test_loader_reproducible_across_runs_workers_and_resume(tmp_path):
    hr_dir, lr_dir = _paired_blocks(tmp_path, [(16, 16), (12, 20), (20, 12), (14, 14), (16, 18)])
    ds = build_train_dataset(hr_dir, lr_dir, patch_size=32, rgb_permute=True, cache_dir=tmp_path / "c",
                             progress=False)

    def batches(seed: int, workers: int, n: int = 4, start_iter: int = 0) -> list[torch.Tensor]:
        loader = make_train_loader(ds, batch_size=3, num_workers=workers, seed=seed, start_iter=start_iter)
        it = iter(loader)
        out = [torch.cat([b["hr"].flatten(), b["lr"].flatten(), b["index"].float()]) for b in
               (next(it) for _ in range(n))]
        del it, loader
        return out

    a, b = batches(7, 2), batches(7, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = batches(8, 2)
    assert not any(torch.equal(x, y) for x, y in zip(a, c))
    assert all(torch.equal(x, y) for x, y in zip(a, batches(7, 0)))  # independent of the worker count
    assert all(torch.equal(x, y) for x, y in zip(a[2:], batches(7, 0, n=2, start_iter=2)))  # exact resume


def test_infinite_sampler_epochs_and_ranks():
    s = InfiniteSampler(5, seed=3)
    it = iter(s)
    first = [next(it) for _ in range(10)]
    assert sorted(i for i, _ in first[:5]) == list(range(5)) == sorted(i for i, _ in first[5:])
    assert len({k for _, k in first}) == 10
    r0, r1 = iter(InfiniteSampler(5, 3, rank=0, world_size=2)), iter(InfiniteSampler(5, 3, rank=1, world_size=2))
    merged = [x for _ in range(5) for x in (next(r0), next(r1))]
    assert merged == first


def test_small_images_left_out_with_one_warning(tmp_path, caplog):
    hr_dir, lr_dir = _paired_blocks(tmp_path, [(8, 8), (7, 20), (20, 5), (9, 9)])
    with caplog.at_level(logging.WARNING, logger="Utils.datasets"):
        ds = build_train_dataset(hr_dir, lr_dir, patch_size=32, progress=False)
    assert ds.n_images == 2 and [r.name for r in ds.records] == ["0000", "0003"]
    warns = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 1
    msg = warns[0].getMessage()
    assert "left out 2 of 4" in msg and "0001.png" in msg and "0002.png" in msg and "0000.png" not in msg


def test_error_when_no_image_is_large_enough(tmp_path):
    hr_dir, lr_dir = _paired_blocks(tmp_path, [(5, 5)])
    with pytest.raises(ValueError, match="no training image is at least 32x32"):
        build_train_dataset(hr_dir, lr_dir, patch_size=32, progress=False)


def test_missing_partner_errors_name_the_file(tmp_path):
    hr_dir, lr_dir = _paired_blocks(tmp_path, [(8, 8), (8, 8)])
    (lr_dir / "0001x4.png").unlink()
    with pytest.raises(ImageError, match=r"0001\.png.*no LR partner"):
        build_train_dataset(hr_dir, lr_dir, patch_size=16, progress=False)
    write_image(lr_dir / "0001x4.png", _noise(8, 8, 0))
    write_image(lr_dir / "0009x4.png", _noise(8, 8, 0))
    with pytest.raises(ImageError, match=r"0009x4\.png.*no HR partner"):
        build_train_dataset(hr_dir, lr_dir, patch_size=16, progress=False)


def test_size_mismatch_names_the_file(tmp_path):
    hr_dir, lr_dir = _paired_blocks(tmp_path, [(8, 8), (8, 8)])
    write_image(lr_dir / "0001x4.png", _noise(8, 9, 0))
    with pytest.raises(ImageError, match=r"0001x4\.png.*does not match HR"):
        build_train_dataset(hr_dir, lr_dir, patch_size=16, progress=False)


def test_empty_folder_and_corrupt_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match=r"empty: no image files"):
        build_train_dataset(tmp_path / "empty", patch_size=16, progress=False)
    hr_dir, lr_dir = _paired_blocks(tmp_path, [(8, 8), (8, 8)])
    (hr_dir / "0001.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match=r"0001\.png"):
        build_train_dataset(hr_dir, lr_dir, patch_size=16, progress=False)
    # a truncated PNG passes the header check and fails when it is decoded into the cache
    good = (hr_dir / "0000.png").read_bytes()
    (hr_dir / "0001.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageError, match=r"0001\.png"):
        build_train_dataset(hr_dir, lr_dir, patch_size=16, cache_dir=tmp_path / "c", progress=False)


def test_cache_is_rebuilt_when_a_file_changes(tmp_path):
    hr_dir, lr_dir = _paired_blocks(tmp_path, [(8, 8), (8, 8)])
    cache = tmp_path / "cache"
    ds = build_train_dataset(hr_dir, lr_dir, patch_size=32, cache_dir=cache, progress=False, **NO_AUG)
    first = ds[(1, 0)]
    files = set(cache.glob("*.npy"))
    assert len(files) == 4
    ds2 = build_train_dataset(hr_dir, lr_dir, patch_size=32, cache_dir=cache, progress=False, **NO_AUG)
    assert set(cache.glob("*.npy")) == files and torch.equal(ds2[(1, 0)]["hr"], first["hr"])
    # replace image 1 by new content; bump the mtime so the change is seen even on coarse clocks
    new_lr = _noise(8, 8, 99)
    new_hr = np.kron(new_lr, np.ones((S, S, 1), np.uint8))
    for path, img in ((lr_dir / "0001x4.png", new_lr), (hr_dir / "0001.png", new_hr)):
        write_image(path, img)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds3 = build_train_dataset(hr_dir, lr_dir, patch_size=32, cache_dir=cache, progress=False, **NO_AUG)
    assert len(set(cache.glob("*.npy")) - files) == 2
    lr, _ = ds3.load_pair(1)
    np.testing.assert_array_equal(lr, new_lr)
    assert not torch.equal(ds3[(1, 0)]["hr"], first["hr"])


def test_extra_target_shape_is_checked(tmp_path):
    hr_dir, lr_dir = _paired_blocks(tmp_path, [(8, 8)])
    ds = build_train_dataset(hr_dir, lr_dir, patch_size=16, progress=False,
                             extra_targets={"teacher": [np.zeros((16, 32, 3), np.uint8)]})
    with pytest.raises(ValueError, match=r"teacher.*0000\.png.*does not match"):
        ds[(0, 0)]


def test_demo_data_builds_and_is_idempotent(tmp_path, monkeypatch):
    pytest.importorskip("Utils.prepare_data")
    import Utils.demo_data as demo

    rng = np.random.default_rng(0)
    small = {"a": lambda: rng.integers(0, 256, (50, 61, 3), dtype=np.uint8).copy(),
             "g": lambda: np.full((40, 52), 128, np.uint8)}
    frozen = {k: f() for k, f in small.items()}
    monkeypatch.setattr(demo, "_samples", lambda: ({k: (lambda v=v: v) for k, v in frozen.items()},
                                                   {"t": lambda: frozen["a"][:37, :49]}))
    paths = demo.build_demo_data(tmp_path / "demo")
    assert sorted(p.name for p in paths["train_hr"].iterdir()) == ["a.png", "g.png"]
    assert sorted(p.name for p in paths["train_lr"].iterdir()) == ["ax4.png", "gx4.png"]
    assert read_image(paths["train_lr"] / "ax4.png").shape == (12, 15, 3)
    root = tmp_path / "demo" / "Datasets2023"
    assert (root / "GT" / "Demo" / "t.png").is_file()
    assert read_image(root / "GTmod12" / "Demo_GTmod12" / "t.png").shape == (36, 48, 3)
    assert read_image(root / "GTmod12_LRx4" / "Demo_LRbicx4" / "t.png").shape == (9, 12, 3)
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("*") if p.is_file()}
    demo.build_demo_data(tmp_path / "demo")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("*") if p.is_file()} == stamp
    ds = build_train_dataset(paths["train_hr"], paths["train_lr"], patch_size=32, progress=False)
    assert ds.n_images == 2


def test_demo_samples_ship_with_scikit_image():
    import warnings

    import Utils.demo_data as demo

    train, test = demo._samples()
    assert not set(train) & set(test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for load in list(train.values()) + list(test.values()):
            img = demo._rgb(load())
            assert img.dtype == np.uint8 and img.ndim == 3 and min(img.shape[:2]) >= 192


def test_uint8_items_match_float_items(tmp_path):
    hr_dir, lr_dir = _paired_blocks(tmp_path, [(10, 12)])
    f32 = build_train_dataset(hr_dir, lr_dir, patch_size=32, rgb_permute=True, progress=False)
    u8 = build_train_dataset(hr_dir, lr_dir, patch_size=32, rgb_permute=True, uint8=True, progress=False)
    for seed in range(3):
        a, b = f32[(0, seed)], u8[(0, seed)]
        assert b["hr"].dtype == torch.uint8 and a["hr"].dtype == torch.float32
        assert torch.equal(b["hr"].float().div_(255), a["hr"]) and torch.equal(b["lr"].float().div_(255), a["lr"])
