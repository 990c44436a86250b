"""NIQE: the MATLAB-equivalent value on Set5 baby, known behaviour, parameter loading."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import BENCHMARK, WEIGHTS, need
from Utils import niqe as niqe_mod
from Utils.image_io import read_image
from Utils.imresize import imresize
from Utils.niqe import calculate_niqe, load_niqe_params, shipped_params_path

PARAMS = shipped_params_path()
SHARED_PARAMS = WEIGHTS / "perceptual" / "niqe_pris_params.npz"


@pytest.fixture
def params_path():
    return need(PARAMS)


@pytest.fixture
def baby() -> np.ndarray:
    return read_image(need(BENCHMARK / "Set5" / "HR" / "baby.png"))


def test_baby_matches_reference(baby: np.ndarray, params_path) -> None:
    before = baby.copy()
    value = calculate_niqe(baby, crop_border=4, params_path=params_path)
    assert isinstance(value, float)
    assert value == pytest.approx(3.3223, abs=1e-3)
    assert np.array_equal(baby, before)
    # Float input on the 0-255 scale gives the same score as uint8.
    assert calculate_niqe(baby.astype(np.float32), 4, params_path) == pytest.approx(value, abs=1e-9)


def test_blurred_image_scores_worse(baby: np.ndarray, params_path) -> None:
    sharp = calculate_niqe(baby, 4, params_path)
    blurred = imresize(imresize(baby, 0.25), 4.0)  # bicubic down and up: a strong blur
    assert calculate_niqe(blurred, 4, params_path) > sharp + 1.0
    noisy = np.clip(baby + np.random.default_rng(0).normal(0, 25, baby.shape), 0, 255).astype(np.uint8)
    assert calculate_niqe(noisy, 4, params_path) > sharp + 1.0


def test_gray_and_y_inputs(baby: np.ndarray, params_path) -> None:
    y = niqe_mod._luma(baby, True)
    assert calculate_niqe(np.round(y), 4, params_path) == pytest.approx(
        calculate_niqe(baby, 4, params_path), abs=1e-12)
    gray = calculate_niqe(baby, 4, params_path, test_y_channel=False)
    assert np.isfinite(gray) and gray != calculate_niqe(baby, 4, params_path)


def test_vectorised_features_match_a_per_block_loop() -> None:
    """The batched AGGD fit equals a plain fit of each block on its own."""
    from scipy.special import gamma

    rng = np.random.default_rng(1)
    blocks = rng.laplace(size=(3, 12, 12)) + np.array([0.0, 0.3, -0.2])[:, None, None]
    batched = niqe_mod._block_features(blocks)
    grid = 0.2 + 0.001 * np.arange(9801)
    r_grid = gamma(2 / grid) ** 2 / (gamma(1 / grid) * gamma(3 / grid))

    def fit(v: np.ndarray) -> tuple[float, float, float]:
        ls, rs = np.sqrt(np.mean(v[v < 0] ** 2)), np.sqrt(np.mean(v[v > 0] ** 2))
        g = ls / rs
        r = np.mean(np.abs(v)) ** 2 / np.mean(v ** 2) * (g ** 3 + 1) * (g + 1) / (g ** 2 + 1) ** 2
        a = grid[np.argmin((r_grid - r) ** 2)]
        c = np.sqrt(gamma(1 / a) / gamma(3 / a))
        return a, ls * c, rs * c

    for i, b in enumerate(blocks):
        a, bl, br = fit(b.ravel())
        expected = [a, (bl + br) / 2]
        for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
            a, bl, br = fit((b * np.roll(b, shift, axis=(0, 1))).ravel())
            expected += [a, (br - bl) * gamma(2 / a) / gamma(1 / a), bl, br]
        assert np.allclose(batched[i], expected, rtol=1e-10, atol=1e-12)


def test_fast_enough(baby: np.ndarray, params_path) -> None:
    import time

    calculate_niqe(baby, 0, params_path)  # warm the parameter cache
    start = time.perf_counter()
    calculate_niqe(baby, 0, params_path)
    assert time.perf_counter() - start < 1.0


def test_params_loaded_once(params_path) -> None:
    a = load_niqe_params(params_path)
    b = load_niqe_params(str(params_path))
    assert a is b
    assert a.mu.shape == (1, 36) and a.cov.shape == (36, 36) and a.window.shape == (7, 7)
    assert a.window.sum() == pytest.approx(1.0)


def test_missing_params_file_is_a_clear_error(baby: np.ndarray, tmp_path) -> None:
    missing = tmp_path / "nowhere" / "niqe_pris_params.npz"
    with pytest.raises(FileNotFoundError, match="niqe_pris_params.npz"):
        calculate_niqe(baby, 4, params_path=missing)


def test_wrong_params_file_is_a_clear_error(baby: np.ndarray, tmp_path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, something=np.zeros(3))
    with pytest.raises(ValueError, match="mu_pris_param"):
        calculate_niqe(baby, 4, params_path=bad)


def test_default_path_download_failure_names_the_url(baby: np.ndarray, tmp_path, monkeypatch) -> None:
    import torch.hub

    monkeypatch.setattr(niqe_mod, "shipped_params_path", lambda: tmp_path / "absent" / "niqe_pris_params.npz")
    monkeypatch.setattr(niqe_mod, "default_params_path", lambda: tmp_path / "cache" / "niqe_pris_params.npz")

    def no_network(url, dst, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(FileNotFoundError, match="raw.githubusercontent.com/XPixelGroup/BasicSR"):
        calculate_niqe(baby, 4, params_path=None)


def test_default_path_uses_downloaded_file(baby: np.ndarray, params_path, tmp_path, monkeypatch) -> None:
    import shutil

    import torch.hub

    monkeypatch.setattr(niqe_mod, "shipped_params_path", lambda: tmp_path / "absent" / "niqe_pris_params.npz")
    monkeypatch.setattr(niqe_mod, "default_params_path", lambda: tmp_path / "cache" / "niqe_pris_params.npz")
    calls = []

    def fake_download(url, dst, *args, **kwargs):
        calls.append(url)
        shutil.copyfile(params_path, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    value = calculate_niqe(baby, 4, params_path=None)
    calculate_niqe(baby, 4, params_path=None)
    assert calls == [niqe_mod.NIQE_PARAMS_URL]  # downloaded once, then read from the cache
    assert value == pytest.approx(calculate_niqe(baby, 4, params_path))


def test_too_small_image(params_path) -> None:
    with pytest.raises(ValueError, match="96x96"):
        calculate_niqe(np.zeros((150, 150, 3), dtype=np.uint8), 0, params_path)


def test_shipped_params_are_the_published_file() -> None:
    """The copy in Utils/assets/ is BasicSR's file: its SHA-256 is the one the download entry checks."""
    import hashlib

    from Utils.download import CATALOGUE

    assert PARAMS.is_file(), f"{PARAMS} is missing: it ships with the project (see Utils/assets/README.md)"
    digest = hashlib.sha256(PARAMS.read_bytes()).hexdigest()
    assert digest == niqe_mod.NIQE_PARAMS_SHA256 == CATALOGUE["NIQE"].sha256
    assert niqe_mod.NIQE_PARAMS_SHA256 in (PARAMS.parent / "README.md").read_text()


def test_shipped_params_equal_the_shared_copy() -> None:
    assert PARAMS.read_bytes() == need(SHARED_PARAMS).read_bytes()


def test_default_is_the_shipped_file_without_network(baby: np.ndarray, tmp_path, monkeypatch) -> None:
    """No path, an empty cache and no network: NIQE runs on the shipped parameters, nothing is fetched."""
    import torch.hub

    monkeypatch.setattr(niqe_mod, "default_params_path", lambda: tmp_path / "cache" / "niqe_pris_params.npz")

    def no_network(url, dst, *args, **kwargs):
        raise AssertionError(f"a download was attempted: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assert load_niqe_params(None) is load_niqe_params(PARAMS)
    assert calculate_niqe(baby, 4) == pytest.approx(calculate_niqe(baby, 4, PARAMS), abs=1e-12)
    assert not (tmp_path / "cache").exists()
