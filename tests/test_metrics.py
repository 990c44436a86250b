"""Utils.metrics against known values and independent slow reference implementations."""
from __future__ import annotations

import math
import sys
import time
import types

import numpy as np
import pytest
from scipy.signal import convolve2d
from skimage.metrics import structural_similarity

from tests.conftest import BENCHMARK, need
from Utils import metrics
from Utils.image_io import read_image
from Utils.metrics import (calculate_average_gradient, calculate_psnr, calculate_ssim, rgb2y)

C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2
Y_GAIN = (65.481 + 128.553 + 24.966) / 255.0  # change of Y per unit change of R = G = B


def _rand(shape, seed, low=0, high=256):
    return np.random.default_rng(seed).integers(low, high, shape, dtype=np.uint8)


def _noisy(img, sigma, seed):
    noise = np.random.default_rng(seed).normal(0.0, sigma, img.shape)
    return np.clip(np.round(img + noise), 0, 255).astype(np.uint8)


def _gauss2d(size=11, sigma=1.5):
    r = np.arange(size) - size // 2
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    return w / w.sum()


def _ssim_loop(a, b):
    """Slow reference: explicit weighted statistics of every fully-inside 11x11 window."""
    w = _gauss2d()
    h, wd = a.shape
    vals = []
    for i in range(h - 10):
        for j in range(wd - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            vals.append((2 * ma * mb + C1) * (2 * cov + C2) / ((ma ** 2 + mb ** 2 + C1) * (va + vb + C2)))
    return float(np.mean(vals))


def _ssim_conv(a, b):
    """Reference with 2-D 'valid' convolutions (the MATLAB ssim_index formulation)."""
    w = _gauss2d()
    f = lambda x: convolve2d(x, w, mode="valid")  # noqa: E731
    ma, mb = f(a), f(b)
    va, vb, cov = f(a * a) - ma ** 2, f(b * b) - mb ** 2, f(a * b) - ma * mb
    m = (2 * ma * mb + C1) * (2 * cov + C2) / ((ma ** 2 + mb ** 2 + C1) * (va + vb + C2))
    return float(m.mean())


def _crop(x, c):
    return x[c:x.shape[0] - c, c:x.shape[1] - c]


# ---------------------------------------------------------------------------------------------
# rgb2y
# ---------------------------------------------------------------------------------------------
def test_rgb2y_known_values():
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0]],
                    [[0, 255, 0], [0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    y = rgb2y(img)
    assert y.dtype == np.float64 and y.shape == (2, 3)
    expected = [[16.0, 235.0, 16 + 65.481], [16 + 128.553, 16 + 24.966,
                                               16 + (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255]]
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(rgb2y(img, round_y=True), np.round(expected))
    assert not np.all(y == np.round(y))  # default is not rounded


# ---------------------------------------------------------------------------------------------
# PSNR
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 17])
def test_psnr_constant_offset(k):
    a = _rand((40, 50, 3), seed=k, high=200)
    b = a + np.uint8(k)  # R, G and B all shift by k, so Y shifts by exactly k * 219 / 255
    d_y = k * Y_GAIN
    np.testing.assert_allclose(rgb2y(b) - rgb2y(a), d_y, rtol=0, atol=1e-9)
    assert calculate_psnr(a, b, crop_border=4) == pytest.approx(20 * math.log10(255 / d_y), abs=1e-9)
    assert calculate_psnr(a, b, 0, test_y_channel=False) == pytest.approx(20 * math.log10(255 / k), abs=1e-12)


def test_psnr_identical_is_inf_and_border_is_cropped():
    a = _rand((30, 30, 3), seed=1)
    assert calculate_psnr(a, a.copy(), 4) == math.inf
    b = a.copy()
    b[:2] = 255 - b[:2]  # differs only in the two top rows
    assert calculate_psnr(a, b, crop_border=2) == math.inf
    assert calculate_psnr(a, b, crop_border=1) < 30


def test_psnr_matches_direct_formula():
    a, b = _rand((33, 47, 3), 2), _rand((33, 47, 3), 3)
    ya, yb = _crop(rgb2y(a), 3), _crop(rgb2y(b), 3)
    expected = 10 * math.log10(255 ** 2 / np.mean((ya - yb) ** 2))
    assert calculate_psnr(a, b, 3) == pytest.approx(expected, abs=1e-12)


def test_round_y_lowers_psnr_on_real_image():
    hr = read_image(need(BENCHMARK / "Set5" / "HR" / "baby.png"))
    noisy = _noisy(hr, 8.0, seed=0)
    plain = calculate_psnr(hr, noisy, 4)
    rounded = calculate_psnr(hr, noisy, 4, round_y=True)
    assert 28 < plain < 36
    assert 0.0 < plain - rounded < 0.05  # ~0.01-0.02 dB at SR-like PSNR (DESIGN.md)
    assert calculate_ssim(hr, noisy, 4, round_y=True) < calculate_ssim(hr, noisy, 4)


# ---------------------------------------------------------------------------------------------
# SSIM
# ---------------------------------------------------------------------------------------------
def test_ssim_identical_is_one():
    a = _rand((40, 37, 3), seed=4)
    assert calculate_ssim(a, a.copy(), 4) == pytest.approx(1.0, abs=1e-12)
    assert calculate_ssim(a, a.copy(), 0, test_y_channel=False) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("u,v", [(0, 255), (40, 60), (128, 129)])
def test_ssim_constant_images_closed_form(u, v):
    # No variance: SSIM reduces to its luminance term (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    a = np.full((20, 24, 3), u, np.uint8)
    b = np.full((20, 24, 3), v, np.uint8)
    assert calculate_ssim(a, b, 0, test_y_channel=False) == pytest.approx(
        (2 * u * v + C1) / (u * u + v * v + C1), abs=1e-9)
    ya, yb = 16 + u * Y_GAIN, 16 + v * Y_GAIN
    assert calculate_ssim(a, b, 2) == pytest.approx((2 * ya * yb + C1) / (ya ** 2 + yb ** 2 + C1), abs=1e-9)


@pytest.mark.parametrize("crop", [0, 3])
def test_ssim_matches_window_loop(crop):
    a = _rand((24, 29, 3), seed=5)
    b = _noisy(a, 25.0, seed=6)
    ya, yb = _crop(rgb2y(a), crop), _crop(rgb2y(b), crop)
    assert calculate_ssim(a, b, crop) == pytest.approx(_ssim_loop(ya, yb), abs=1e-10)
    rgb_ref = np.mean([_ssim_loop(_crop(a[..., c], crop).astype(float), _crop(b[..., c], crop).astype(float))
                       for c in range(3)])
    assert calculate_ssim(a, b, crop, test_y_channel=False) == pytest.approx(rgb_ref, abs=1e-10)


def test_ssim_matches_valid_convolution_and_skimage():
    a = _rand((96, 120, 3), seed=7)
    b = _noisy(a, 12.0, seed=8)
    crop = 4
    ya, yb = _crop(rgb2y(a), crop), _crop(rgb2y(b), crop)
    ours = calculate_ssim(a, b, crop)
    assert ours == pytest.approx(_ssim_conv(ya, yb), abs=1e-10)
    # skimage filters the whole plane and drops (11-1)/2 pixels per side: the same valid region.
    ref = structural_similarity(ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=255)
    assert ours == pytest.approx(ref, abs=1e-9)
    assert 0.0 < ours < 1.0


def test_ssim_real_image_matches_skimage():
    hr = read_image(need(BENCHMARK / "Set5" / "HR" / "baby.png"))
    noisy = _noisy(hr, 8.0, seed=1)
    for round_y in (False, True):
        ya, yb = _crop(rgb2y(hr, round_y), 4), _crop(rgb2y(noisy, round_y), 4)
        ref = structural_similarity(ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=255)
        assert calculate_ssim(hr, noisy, 4, round_y=round_y) == pytest.approx(ref, abs=1e-9)


def test_ssim_is_fast():
    a = _rand((512, 512, 3), seed=9)
    b = _noisy(a, 10.0, seed=10)
    calculate_ssim(a, b, 4)
    start = time.perf_counter()
    calculate_ssim(a, b, 4)
    assert time.perf_counter() - start < 0.5


# ---------------------------------------------------------------------------------------------
# average gradient
# ---------------------------------------------------------------------------------------------
def test_average_gradient_known_values():
    i, j = np.mgrid[0:20, 0:30]
    ramp = np.repeat((5 * j)[..., None], 3, axis=2).astype(np.uint8)  # dx = 5, dy = 0
    assert calculate_average_gradient(ramp, test_y_channel=False) == pytest.approx(5 / math.sqrt(2), abs=1e-12)
    assert calculate_average_gradient(ramp) == pytest.approx(5 * Y_GAIN / math.sqrt(2), abs=1e-9)
    plane = np.repeat((3 * i + 4 * j)[..., None], 3, axis=2).astype(np.uint8)  # dx = 4, dy = 3
    assert calculate_average_gradient(plane, 2, test_y_channel=False) == pytest.approx(
        math.sqrt(12.5), abs=1e-12)
    assert calculate_average_gradient(np.full((9, 9, 3), 77, np.uint8)) == 0.0


def test_average_gradient_matches_loop():
    a = _rand((12, 15, 3), seed=11)
    y = _crop(rgb2y(a), 1)
    vals = [math.sqrt(((y[r, c + 1] - y[r, c]) ** 2 + (y[r + 1, c] - y[r, c]) ** 2) / 2)
            for r in range(y.shape[0] - 1) for c in range(y.shape[1] - 1)]
    assert calculate_average_gradient(a, 1) == pytest.approx(np.mean(vals), abs=1e-12)
    assert calculate_average_gradient(_noisy(a, 30, 1)) != calculate_average_gradient(a)


# ---------------------------------------------------------------------------------------------
# validation and purity
# ---------------------------------------------------------------------------------------------
def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(20, 20, 3\).*\(20, 21, 3\)"):
        calculate_psnr(_rand((20, 20, 3), 0), _rand((20, 21, 3), 0), 0)
    with pytest.raises(ValueError, match=r"\(20, 20, 3\).*\(21, 20, 3\)"):
        calculate_ssim(_rand((20, 20, 3), 0), _rand((21, 20, 3), 0), 0)


def test_bad_dtype_layout_and_crop():
    a = _rand((20, 20, 3), 0)
    with pytest.raises(ValueError, match="uint8"):
        calculate_psnr(a.astype(np.float32), a, 0)
    with pytest.raises(ValueError, match="uint8"):
        calculate_ssim(a, a.astype(np.int64), 0)
    with pytest.raises(ValueError, match="HxWx3"):
        calculate_psnr(a[..., 0], a[..., 0], 0)
    with pytest.raises(ValueError, match="crop_border=10"):
        calculate_psnr(a, a, 10)
    with pytest.raises(ValueError, match="11x11"):
        calculate_ssim(a, a, 5)  # leaves 10x10
    with pytest.raises(ValueError, match="non-negative"):
        calculate_psnr(a, a, -1)
    with pytest.raises(ValueError, match="2x2"):
        calculate_average_gradient(a, 10)


def test_inputs_are_not_modified():
    a, b = _rand((30, 30, 3), 1), _rand((30, 30, 3), 2)
    a0, b0 = a.copy(), b.copy()
    for fn in (calculate_psnr, calculate_ssim):
        fn(a, b, 2)
        fn(a, b, 0, test_y_channel=False, round_y=True)
    calculate_average_gradient(a, 1)
    rgb2y(a, round_y=True)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


def test_niqe_wrapper_is_lazy(monkeypatch):
    seen = {}

    def fake_niqe(img, crop_border=0, **kw):
        seen["args"] = (img.shape, crop_border, kw)
        return 4.5

    fake = types.ModuleType("Utils.niqe")
    fake.calculate_niqe = fake_niqe
    monkeypatch.setitem(sys.modules, "Utils.niqe", fake)
    a = _rand((16, 16, 3), 0)
    assert metrics.calculate_niqe(a, crop_border=4, input_order="HWC") == 4.5
    assert seen["args"] == ((16, 16, 3), 4, {"input_order": "HWC"})
