"""Utils.lpips with a seeded stand-in AlexNet backbone (the ImageNet file is not available offline)
and the published v0.1 linear heads; the torch.hub download path is exercised on a local server."""
from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import WEIGHTS, need
from Utils import lpips as lp
from Utils import metrics

HEADS = WEIGHTS / "perceptual" / "lpips" / "v0.1" / "alex.pth"

# torchvision's AlexNet ``features`` convolutions: index -> (out, in, kernel)
_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}


def _fake_alexnet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A full AlexNet-like state dict (features + a classifier stub) with He-scaled random weights."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for idx, (cout, cin, k) in _CONVS.items():
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.randn(cout, generator=g) * 0.01
    sd["classifier.1.weight"] = torch.zeros(8, 4)  # must be ignored
    return sd


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("alexnet") / "alexnet_fake.pth"
    torch.save(_fake_alexnet_state(), path)
    return path


@pytest.fixture(scope="module")
def model(backbone_file) -> lp.LPIPS:
    return lp.LPIPS(backbone_path=backbone_file, heads_path=need(HEADS))


def _imgs(seed: int, shape=(64, 72, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _noisy(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, img.shape)
    return np.clip(np.round(img + noise), 0, 255).astype(np.uint8)


def _reference_lpips(x: torch.Tensor, y: torch.Tensor, backbone: dict, heads: dict) -> torch.Tensor:
    """Independent functional LPIPS: scaling layer, AlexNet ReLU taps, unit-normalise, heads."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(t):
        t = ((2 * t - 1) - shift) / scale
        out = []
        for idx, stride, pad, pool in ((0, 4, 2, False), (3, 1, 2, True), (6, 1, 1, True), (8, 1, 1, False),
                                       (10, 1, 1, False)):
            if pool:
                t = F.max_pool2d(t, 3, 2)
            t = F.relu(F.conv2d(t, backbone[f"features.{idx}.weight"], backbone[f"features.{idx}.bias"],
                                stride=stride, padding=pad))
            out.append(t)
        return out

    total = 0.0
    for k, (fa, fb) in enumerate(zip(taps(x), taps(y))):
        na = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
        nb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
        total = total + F.conv2d((na - nb) ** 2, heads[f"lin{k}.model.1.weight"]).mean(dim=(1, 2, 3))
    return total


def test_identity_symmetry_positivity(model):
    a, b = _imgs(1), _imgs(2)
    assert lp.calculate_lpips(a, a.copy(), model=model) < 1e-7
    d_ab = lp.calculate_lpips(a, b, model=model)
    d_ba = lp.calculate_lpips(b, a, model=model)
    assert d_ab > 0.0
    assert abs(d_ab - d_ba) < 1e-6


def test_matches_functional_reference(model, backbone_file):
    x = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(3))
    y = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(4))
    ref = _reference_lpips(x, y, torch.load(backbone_file), torch.load(HEADS, map_location="cpu"))
    with torch.no_grad():
        got = model(x, y)
    assert got.shape == (2,)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


def test_more_distortion_is_farther(model):
    a = _imgs(5, (80, 80, 3))
    near = lp.calculate_lpips(a, _noisy(a, 4, 0), model=model)
    far = lp.calculate_lpips(a, _noisy(a, 40, 0), model=model)
    assert 0.0 < near < far


def test_calculate_lpips_end_to_end_from_local_files(model):
    a, b = _imgs(6, (50, 60, 3)), _imgs(7, (50, 60, 3))
    a0 = a.copy()
    cropped = lp.calculate_lpips(a, b, crop_border=4, model=model)
    with torch.no_grad():
        manual = model(torch.from_numpy(a[4:-4, 4:-4].transpose(2, 0, 1).copy()).float()[None] / 255,
                       torch.from_numpy(b[4:-4, 4:-4].transpose(2, 0, 1).copy()).float()[None] / 255)
    assert cropped == pytest.approx(float(manual[0]), abs=1e-7)
    np.testing.assert_array_equal(a, a0)
    # the wrapper in Utils.metrics gives the same value
    assert metrics.calculate_lpips(a, b, crop_border=4, model=model) == cropped


def test_default_model_is_cached_per_device(model, monkeypatch):
    monkeypatch.setattr(lp, "_MODEL_CACHE", {"cpu": model})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert lp.get_lpips_model() is model
    a, b = _imgs(8), _imgs(9)
    assert lp.calculate_lpips(a, b) == lp.calculate_lpips(a, b, model=model)


def test_frozen_and_stays_in_eval(model):
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training and not any(m.training for m in model.modules())


def test_input_errors(model):
    with pytest.raises(ValueError, match="31x31"):
        lp.calculate_lpips(_imgs(1, (30, 64, 3)), _imgs(2, (30, 64, 3)), model=model)
    with pytest.raises(ValueError, match=r"\(40, 40, 3\).*\(40, 41, 3\)"):
        lp.calculate_lpips(_imgs(1, (40, 40, 3)), _imgs(2, (40, 41, 3)), model=model)
    with pytest.raises(ValueError, match="uint8"):
        lp.calculate_lpips(_imgs(1).astype(np.float32), _imgs(2), model=model)


def test_missing_files_are_named(backbone_file, tmp_path):
    missing = tmp_path / "nowhere" / "alex.pth"
    with pytest.raises(FileNotFoundError, match="heads.*nowhere/alex.pth"):
        lp.LPIPS(backbone_path=backbone_file, heads_path=missing)
    with pytest.raises(FileNotFoundError, match="backbone.*nowhere/alex.pth"):
        lp.LPIPS(backbone_path=missing, heads_path=need(HEADS))


def test_loading_is_strict(tmp_path, backbone_file):
    heads = torch.load(need(HEADS), map_location="cpu")
    bad_heads = tmp_path / "heads_extra.pth"
    torch.save({**heads, "lin5.model.1.weight": torch.zeros(1, 8, 1, 1)}, bad_heads)
    with pytest.raises(RuntimeError, match="lin5"):
        lp.LPIPS(backbone_path=backbone_file, heads_path=bad_heads)
    partial = {k: v for k, v in _fake_alexnet_state().items() if not k.startswith("features.10")}
    bad_backbone = tmp_path / "partial.pth"
    torch.save(partial, bad_backbone)
    with pytest.raises(RuntimeError, match="features.10"):
        lp.LPIPS(backbone_path=bad_backbone, heads_path=HEADS)
    no_features = tmp_path / "classifier_only.pth"
    torch.save({"classifier.1.weight": torch.zeros(2, 2)}, no_features)
    with pytest.raises(ValueError, match="features"):
        lp.LPIPS(backbone_path=no_features, heads_path=HEADS)


# ---------------------------------------------------------------------------------------------
# download path: torch.hub against a local HTTP server
# ---------------------------------------------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    timeout = 10

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@contextmanager
def _serve(folder: Path):
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def _hub_dir(path: Path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(path))
    try:
        yield
    finally:
        torch.hub.set_dir(old)


def test_download_through_torch_hub(tmp_path, backbone_file, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    served = tmp_path / "served"
    served.mkdir()
    # torchvision-style name: "-<first hex digits of sha256>." lets torch.hub verify the file
    digest = hashlib.sha256(backbone_file.read_bytes()).hexdigest()[:8]
    shutil.copy(backbone_file, served / f"alexnet-owt-{digest}.pth")
    shutil.copy(need(HEADS), served / "alex.pth")
    (served / "alexnet-owt-deadbeef.pth").write_bytes(backbone_file.read_bytes())  # wrong hash
    hub = tmp_path / "hub"
    a, b = _imgs(1), _imgs(2)
    reference = lp.LPIPS(backbone_path=backbone_file, heads_path=HEADS)

    with _hub_dir(hub):
        with _serve(served) as base:
            net = lp.LPIPS(backbone_url=f"{base}/alexnet-owt-{digest}.pth", heads_url=f"{base}/alex.pth")
            with pytest.raises(RuntimeError, match="deadbeef"):
                lp.LPIPS(backbone_url=f"{base}/alexnet-owt-deadbeef.pth", heads_path=HEADS)
        assert (hub / "checkpoints" / f"alexnet-owt-{digest}.pth").is_file()
        assert (hub / "checkpoints" / "alex.pth").is_file()
        # server gone: the cached copies are used
        again = lp.LPIPS(backbone_url=f"http://127.0.0.1:9/alexnet-owt-{digest}.pth",
                         heads_url="http://127.0.0.1:9/alex.pth")
        # nothing cached under this name and nothing listening: a clear error naming the URL
        with pytest.raises(RuntimeError, match=r"127\.0\.0\.1:9/alexnet-owt-0badf00d\.pth"):
            lp.LPIPS(backbone_url="http://127.0.0.1:9/alexnet-owt-0badf00d.pth", heads_path=HEADS)
    assert torch.hub.get_dir() != str(hub)

    expected = lp.calculate_lpips(a, b, model=reference)
    assert lp.calculate_lpips(a, b, model=net) == pytest.approx(expected, abs=1e-7)
    assert lp.calculate_lpips(a, b, model=again) == pytest.approx(expected, abs=1e-7)


def test_default_urls_use_files_already_in_the_hub_cache(tmp_path, backbone_file, monkeypatch):
    # Offline use: copies placed under the hub cache names of the published URLs are loaded as is.
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(backbone_file, checkpoints / lp.ALEXNET_URL.rsplit("/", 1)[1])
    shutil.copy(need(HEADS), checkpoints / "lpips_v0.1_alex.pth")
    monkeypatch.setattr(lp, "_MODEL_CACHE", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with _hub_dir(tmp_path / "hub"):
        default = lp.get_lpips_model()
        assert lp.get_lpips_model("cpu") is default
    reference = lp.LPIPS(backbone_path=backbone_file, heads_path=HEADS)
    a, b = _imgs(3), _imgs(4)
    assert lp.calculate_lpips(a, b) == pytest.approx(lp.calculate_lpips(a, b, model=reference), abs=1e-7)
