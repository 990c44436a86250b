"""MATLAB bicubic resize: bit-exact official LR files, float and torch paths, gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import BENCHMARK, need
from Utils.image_io import read_image
from Utils.imresize import imresize, imresize_torch, modcrop, resize_matrix, resize_weights

SET5 = ["baby", "bird", "butterfly", "head", "woman"]
SET14 = ["baboon", "barbara", "bridge", "coastguard", "comic", "face", "flowers", "foreman", "lenna",
         "man", "monarch", "pepper", "ppt3", "zebra"]
IMAGES = [("Set5", n) for n in SET5] + [("Set14", n) for n in SET14]

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device"))]


def _pair(set_name: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    hr = read_image(need(BENCHMARK / set_name / "HR" / f"{name}.png"))
    lr = read_image(need(BENCHMARK / set_name / "LR_bicubic" / "X4" / f"{name}x4.png"))
    return hr, lr


@pytest.mark.parametrize("set_name,name", IMAGES, ids=[f"{s}-{n}" for s, n in IMAGES])
def test_uint8_reproduces_official_lr(set_name: str, name: str) -> None:
    hr, lr = _pair(set_name, name)
    hr_before = hr.copy()
    out = imresize(modcrop(hr, 4), 1 / 4)
    assert out.dtype == np.uint8
    assert out.shape == lr.shape
    assert np.array_equal(out, lr), f"{int((out != lr).sum())} values differ"
    assert np.array_equal(hr, hr_before)  # input untouched


@pytest.mark.parametrize("set_name,name", [("Set5", "woman"), ("Set14", "ppt3")])
def test_float_path_matches_uint8_path(set_name: str, name: str) -> None:
    hr, lr = _pair(set_name, name)
    hr = modcrop(hr, 4)
    h, w = hr.shape[:2]
    # The uint8 path is the float path with a uint8 rounding (and clipping) after each pass:
    # emulate it with two single-axis float resizes on the 0-255 scale (the axis with scale 1 is an
    # exact identity). Floats on the 0-1 scale would move a few exact .5 cases across the rounding.
    first = imresize(hr.astype(np.float64), output_shape=(h // 4, w))
    first = np.clip(np.floor(first + 0.5), 0, 255)
    second = imresize(first, output_shape=(h // 4, w // 4))
    emulated = np.clip(np.floor(second + 0.5), 0, 255).astype(np.uint8)
    assert np.array_equal(emulated, lr)
    # Without clipping in play (mid-range image), one resize of floats differs from the twice
    # rounded uint8 result by at most one grey level.
    mid = (hr // 2 + 64).astype(np.uint8)
    f = imresize(mid.astype(np.float32) / 255.0, 0.25)
    assert f.dtype == np.float32
    assert np.abs(f.astype(np.float64) * 255.0 - imresize(mid, 0.25)).max() <= 1.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,scale", [((2, 3, 48, 64), 0.25), ((1, 3, 37, 53), 0.25),
                                         ((3, 23, 17), 4.0), ((1, 1, 31, 29), 0.5),
                                         ((1, 3, 30, 41), 1 / 3), ((1, 2, 19, 26), 0.7),
                                         ((1, 1, 13, 11), 2.5)])
def test_torch_matches_numpy_float(device: str, shape: tuple, scale: float) -> None:
    rng = np.random.default_rng(0)
    arr = rng.random(shape)
    x = torch.from_numpy(arr).float().to(device)
    y = imresize_torch(x, scale).cpu().double().numpy()
    chw = arr.reshape((-1,) + shape[-2:])
    ref = np.stack([imresize(c, scale) for c in chw]).reshape(y.shape)
    assert y.shape[-2:] == tuple(int(np.ceil(s * scale - 1e-9)) for s in shape[-2:])
    assert np.abs(y - ref).max() < 1e-5
    y64 = imresize_torch(torch.from_numpy(arr).to(device), scale).cpu().numpy()
    assert np.abs(y64 - ref).max() < 1e-12


def test_torch_output_shape_and_hwc_numpy_agree() -> None:
    rng = np.random.default_rng(1)
    img = rng.random((27, 35, 3))
    ref = imresize(img, output_shape=(10, 50))
    assert ref.shape == (10, 50, 3)
    out = imresize_torch(torch.from_numpy(img).permute(2, 0, 1), output_shape=(10, 50))
    assert np.abs(out.permute(1, 2, 0).numpy() - ref).max() < 1e-12
    # HWC equals each channel resized as HW.
    for c in range(3):
        assert np.allclose(imresize(img[:, :, c], output_shape=(10, 50)), ref[:, :, c], atol=1e-12)


def test_torch_is_differentiable() -> None:
    x = torch.rand(2, 3, 24, 20, dtype=torch.float32, requires_grad=True)
    y = imresize_torch(x, 0.25)
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    # The gradient of the sum of outputs is the column sums of the resize operator.
    x2 = torch.rand(1, 1, 24, 20, dtype=torch.float64, requires_grad=True)
    imresize_torch(x2, 0.5).sum().backward()
    expected = np.outer(resize_matrix(24, 12, 0.5).sum(0), resize_matrix(20, 10, 0.5).sum(0))
    assert np.allclose(x2.grad[0, 0].numpy(), expected, atol=1e-12)


def test_weights_properties() -> None:
    weights, indices = resize_weights(10, 3, 0.25, True)
    assert np.allclose(weights.sum(1), 1.0)
    assert indices.min() >= 0 and indices.max() < 10
    with pytest.raises(ValueError):
        weights[0, 0] = 1.0  # cached arrays are read-only
    # Scale 1 is an exact identity; a constant image stays constant; upscaling size is exact.
    img = np.random.default_rng(2).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    assert np.array_equal(imresize(img, 1.0), img)
    const = np.full((20, 30), 0.3)
    assert np.allclose(imresize(const, 0.37), 0.3, atol=1e-12)
    assert imresize(img, 4).shape == (36, 28, 3)
    assert imresize(img, 1 / 3).shape == (3, 3, 3)


def test_without_antialiasing_differs_when_shrinking() -> None:
    img = np.random.default_rng(3).random((32, 32))
    assert not np.allclose(imresize(img, 0.25, antialiasing=False), imresize(img, 0.25))
    assert np.allclose(imresize(img, 2.0, antialiasing=False), imresize(img, 2.0))


def test_modcrop_and_errors() -> None:
    img = np.zeros((50, 37, 3), dtype=np.uint8)
    out = modcrop(img, 12)
    assert out.shape == (48, 36, 3)
    out[:] = 1
    assert img.max() == 0  # a copy, not a view
    assert modcrop(np.zeros((8, 9)), 4).shape == (8, 8)
    with pytest.raises(ValueError):
        modcrop(img, 64)
    with pytest.raises(TypeError):
        imresize(np.zeros((8, 8), dtype=np.int32), 0.5)
    with pytest.raises(ValueError):
        imresize(np.zeros((8, 8)), 0.5, output_shape=(4, 4))
    with pytest.raises(ValueError):
        imresize(np.zeros((8, 8)), -1.0)
    with pytest.raises(TypeError):
        imresize_torch(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), 0.5)
