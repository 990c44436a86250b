"""Utils.losses on hand-built tensors with known values."""
from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch

from Utils.imresize import imresize_torch
from Utils.losses import (VGG19_LAYERS, VGG19_URL, PerceptualLoss, PerceptualWeightsError, VGGFeatureExtractor,
                          backprojection_loss, edge_loss, edge_map, error_attention_l1, kd_loss, l1_loss,
                          rgb_to_y, trust_attention_l1)

# torchvision's vgg19 ``features``: conv layers at these indices, with these output channels.
VGG19_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
               14: (256, 256), 16: (256, 256), 19: (256, 512), 21: (512, 512), 23: (512, 512),
               25: (512, 512), 28: (512, 512), 30: (512, 512), 32: (512, 512), 34: (512, 512)}


def row(*values: float) -> torch.Tensor:
    """A 1x1x1xN tensor."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def assert_zero_with_grad(loss: torch.Tensor, leaf: torch.Tensor) -> None:
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert leaf.grad is not None and torch.count_nonzero(leaf.grad) == 0


# ----------------------------------------------------------------------------------------------
# L1 and sample masks
# ----------------------------------------------------------------------------------------------
def test_l1_and_sample_mask() -> None:
    t = torch.zeros(2, 3, 4, 4)
    s = torch.stack([torch.full((3, 4, 4), 1.0), torch.full((3, 4, 4), 3.0)])
    assert l1_loss(s, t).item() == pytest.approx(2.0)
    assert l1_loss(s, t, torch.tensor([True, False])).item() == pytest.approx(1.0)
    assert l1_loss(s, t, torch.tensor([False, True])).item() == pytest.approx(3.0)
    assert l1_loss(s, t, torch.tensor([1.0, 3.0])).item() == pytest.approx((1 + 9) / 4)
    leaf = s.clone().requires_grad_(True)
    assert_zero_with_grad(l1_loss(leaf, t, torch.tensor([False, False])), leaf)
    with pytest.raises(ValueError, match="sample_mask"):
        l1_loss(s, t, torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="same shape"):
        l1_loss(s, t[:, :1])


def test_unselected_nonfinite_sample_does_not_leak() -> None:
    t = torch.zeros(2, 1, 2, 2)
    s = torch.stack([torch.full((1, 2, 2), 2.0), torch.full((1, 2, 2), float("nan"))]).requires_grad_(True)
    mask = torch.tensor([True, False])
    for loss in (l1_loss(s, t, mask), error_attention_l1(s, t, mask), trust_attention_l1(s, t, t + 1, mask)):
        assert torch.isfinite(loss)


# ----------------------------------------------------------------------------------------------
# Edge maps
# ----------------------------------------------------------------------------------------------
def test_y_channel_formula() -> None:
    white = torch.ones(1, 3, 2, 2)
    black = torch.zeros(1, 3, 2, 2)
    assert torch.allclose(rgb_to_y(white), torch.full((1, 1, 2, 2), 235 / 255))
    assert torch.allclose(rgb_to_y(black), torch.full((1, 1, 2, 2), 16 / 255))


@pytest.mark.parametrize("kind", ["sobel", "laplacian"])
def test_edge_map_of_constant_is_zero(kind: str) -> None:
    x = torch.full((2, 3, 9, 7), 0.37)
    e = edge_map(x, kind)
    assert e.shape == (2, 1, 9, 7)
    assert torch.count_nonzero(e) == 0


def test_edge_map_vertical_step() -> None:
    x = torch.zeros(1, 3, 6, 8)
    x[..., 4:] = 1.0
    h = 219.0 / 255.0  # Y step between black and white, in [0, 1] units
    eps = 1e-6
    sobel = edge_map(x, "sobel", eps=eps)
    expected = (torch.sqrt(torch.tensor(16 * h * h + eps)) - torch.sqrt(torch.tensor(eps))).item()
    assert expected == pytest.approx(4 * h, abs=2e-3)
    for col in range(8):
        want = expected if col in (3, 4) else 0.0
        assert torch.allclose(sobel[..., col], torch.full((1, 1, 6), want), atol=1e-6), col
    lap = edge_map(x, "laplacian")
    for col in range(8):
        want = h if col in (3, 4) else 0.0
        assert torch.allclose(lap[..., col], torch.full((1, 1, 6), want), atol=1e-6), col
    with pytest.raises(ValueError, match="edge kind"):
        edge_map(x, "canny")


def test_edge_loss_and_gradient() -> None:
    t = torch.zeros(1, 3, 6, 8)
    t[..., 4:] = 1.0
    flat = torch.full_like(t, 0.5).requires_grad_(True)
    loss = edge_loss(flat, t)
    assert loss.item() > 0
    loss.backward()
    assert torch.isfinite(flat.grad).all()  # finite (zero: |g| is flat at g = 0) at a flat student
    torch.manual_seed(5)
    s = (0.5 + 0.1 * torch.rand_like(t)).requires_grad_(True)
    edge_loss(s, t).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert edge_loss(t, t.clone()).item() == 0.0


# ----------------------------------------------------------------------------------------------
# Back-projection
# ----------------------------------------------------------------------------------------------
def test_backprojection_loss() -> None:
    torch.manual_seed(0)
    sr = torch.rand(2, 3, 32, 24)
    lr = imresize_torch(sr, 1 / 4)
    assert lr.shape == (2, 3, 8, 6)
    assert backprojection_loss(sr, lr, 4).item() == pytest.approx(0.0, abs=1e-7)
    # the resize weights sum to one: a constant offset of sr shifts its downscale by the same amount
    assert backprojection_loss(sr + 0.1, lr, 4).item() == pytest.approx(0.1, abs=1e-5)
    leaf = (sr + 0.05).requires_grad_(True)
    loss = backprojection_loss(leaf, lr, 4, sample_mask=torch.tensor([True, False]))
    loss.backward()
    assert loss.item() > 0
    assert leaf.grad[0].abs().sum() > 0 and torch.count_nonzero(leaf.grad[1]) == 0
    with pytest.raises(ValueError, match="does not match"):
        backprojection_loss(sr, lr[..., :5], 4)


# ----------------------------------------------------------------------------------------------
# Attention losses
# ----------------------------------------------------------------------------------------------
def test_error_attention_known_values() -> None:
    t = torch.zeros(1, 1, 1, 4)
    assert error_attention_l1(row(0, 0, 0, 4), t).item() == pytest.approx(4.0)
    assert error_attention_l1(row(1, 3), torch.zeros(1, 1, 1, 2)).item() == pytest.approx(3.0)
    assert error_attention_l1(row(-1, 3), torch.zeros(1, 1, 1, 2)).item() == pytest.approx(3.0)  # |S - T|
    # batch: kept {4} in sample 0 and {5} in sample 1 -> (4 + 5) / 2
    s = torch.cat([row(0, 0, 0, 4), row(1, 1, 1, 5)])
    t2 = torch.zeros(2, 1, 1, 4)
    assert error_attention_l1(s, t2).item() == pytest.approx(4.5)
    assert error_attention_l1(s, t2, torch.tensor([True, False])).item() == pytest.approx(4.0)
    assert error_attention_l1(s, t2, torch.tensor([False, True])).item() == pytest.approx(5.0)
    # sum of kept / count of kept over the batch: kept {3, 3} and {6} -> 12 / 3
    s3 = torch.cat([row(0, 0, 3, 3), row(0, 0, 0, 6)])
    assert error_attention_l1(s3, t2).item() == pytest.approx(4.0)


def test_error_attention_constant_error_keeps_nothing() -> None:
    t = torch.rand(2, 3, 5, 7)
    s = (t + 0.1).requires_grad_(True)  # A is 0.1 up to rounding
    s_const = (torch.zeros(2, 3, 5, 7) + 0.1).requires_grad_(True)
    assert_zero_with_grad(error_attention_l1(s_const, torch.zeros(2, 3, 5, 7)), s_const)
    leaf = torch.zeros(1, 1, 1, 4, requires_grad=True)
    assert_zero_with_grad(error_attention_l1(leaf, torch.zeros(1, 1, 1, 4)), leaf)
    assert torch.isfinite(error_attention_l1(s, t))


def test_error_attention_gradient() -> None:
    s = row(0, 0, 0, 4).requires_grad_(True)
    t = torch.zeros(1, 1, 1, 4)
    error_attention_l1(s, t).backward()
    assert s.grad.flatten().tolist() == [0.0, 0.0, 0.0, 1.0]
    # a teacher that requires grad gets the opposite gradient; a detached one gets none
    s2 = row(0, 0, 0, 4).requires_grad_(True)
    t2 = torch.zeros(1, 1, 1, 4, requires_grad=True)
    error_attention_l1(s2, t2).backward()
    assert t2.grad.flatten().tolist() == [0.0, 0.0, 0.0, -1.0]
    s3 = row(0, 0, 0, 4).requires_grad_(True)
    t3 = torch.zeros(1, 1, 1, 4, requires_grad=True)
    error_attention_l1(s3, t3.detach()).backward()
    assert t3.grad is None and s3.grad is not None


def test_error_attention_empty_selection() -> None:
    s = torch.rand(2, 3, 4, 4, requires_grad=True)
    assert_zero_with_grad(error_attention_l1(s, torch.zeros(2, 3, 4, 4), torch.tensor([False, False])), s)


def test_trust_attention_known_values() -> None:
    y = torch.zeros(1, 1, 1, 4)
    s = row(0.5, 0.5, 0.5, 0.5)
    t = row(0.2, 0.9, 0.4, 0.6)  # closer to y at elements 0 and 2
    assert trust_attention_l1(s, t, y).item() == pytest.approx((0.3 + 0.1) / 4)
    # teacher worse everywhere: nothing is taught
    worse = row(0.9, 0.8, -0.7, 0.6)
    assert trust_attention_l1(s, worse, y).item() == 0.0
    # equally good is not better
    assert trust_attention_l1(s, row(-0.5, 0.5, 0.5, -0.5), y).item() == 0.0
    # teacher better everywhere: plain mean |S - T|
    better = row(0.1, 0.2, 0.3, -0.4)
    assert trust_attention_l1(s, better, y).item() == pytest.approx((s - better).abs().mean().item())


def test_trust_attention_gradient_and_masks() -> None:
    y = torch.zeros(2, 1, 1, 4)
    s = torch.cat([row(0.5, 0.5, 0.5, 0.5), row(0.5, 0.5, 0.5, 0.5)]).requires_grad_(True)
    t = torch.cat([row(0.2, 0.9, 0.4, 0.6), row(0.1, 0.2, 0.3, 0.4)]).requires_grad_(True)
    loss = trust_attention_l1(s, t.detach(), y, torch.tensor([True, False]))
    assert loss.item() == pytest.approx(0.1)
    loss.backward()
    assert t.grad is None
    assert s.grad[0].flatten().tolist() == pytest.approx([0.25, 0.0, 0.25, 0.0])
    assert torch.count_nonzero(s.grad[1]) == 0
    s.grad = None
    assert_zero_with_grad(trust_attention_l1(s, t.detach(), y, torch.tensor([0.0, 0.0])), s)


def test_kd_loss_modes() -> None:
    torch.manual_seed(1)
    s, t, y = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 6, 6), torch.rand(2, 3, 6, 6)
    mask = torch.tensor([True, False])
    assert kd_loss(s, t).item() == pytest.approx(l1_loss(s, t).item())
    assert kd_loss(s, t, attn="error").item() == pytest.approx(error_attention_l1(s, t).item())
    assert kd_loss(s, t, y, "trust").item() == pytest.approx(trust_attention_l1(s, t, y).item())
    both = error_attention_l1(s, t, mask) + trust_attention_l1(s, t, y, mask)
    assert kd_loss(s, t, y, "both", mask).item() == pytest.approx(both.item())
    with pytest.raises(ValueError, match="ground truth"):
        kd_loss(s, t, attn="trust")
    with pytest.raises(ValueError, match="attn"):
        kd_loss(s, t, y, attn="soft")


def test_losses_under_bf16_autocast_compute_in_float32() -> None:
    torch.manual_seed(2)
    s = torch.rand(2, 3, 16, 16, requires_grad=True)
    t, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    lr = imresize_torch(t, 1 / 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = [kd_loss(s, t, y, "both"), edge_loss(s, t), edge_loss(s, t, "laplacian"),
                  backprojection_loss(s, lr, 4)]
    ref = [kd_loss(s, t, y, "both"), edge_loss(s, t), edge_loss(s, t, "laplacian"), backprojection_loss(s, lr, 4)]
    for got, want in zip(losses, ref):
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
    sum(losses).backward()
    assert torch.isfinite(s.grad).all()


# ----------------------------------------------------------------------------------------------
# VGG perceptual loss
# ----------------------------------------------------------------------------------------------
def random_vgg19_state(extra: bool = True) -> dict[str, torch.Tensor]:
    """A random state dict with torchvision's vgg19 key names and shapes (features up to 34)."""
    gen = torch.Generator().manual_seed(3)
    sd: dict[str, torch.Tensor] = {}
    for idx, (cin, cout) in VGG19_CONVS.items():
        std = (2.0 / (9 * cin)) ** 0.5
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * std
        sd[f"features.{idx}.bias"] = torch.randn(cout, generator=gen) * 0.01
    if extra:  # what the published file also holds; must be ignored
        sd["classifier.6.weight"] = torch.zeros(10, 4)
        sd["classifier.6.bias"] = torch.zeros(10)
    return sd


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(random_vgg19_state(), path)
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: thread start-up costs more than the work, worst on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_vgg_layer_names() -> None:
    convs = [i for i, name in enumerate(VGG19_LAYERS) if name.startswith("conv")]
    assert convs == sorted(VGG19_CONVS)
    assert VGG19_LAYERS[34] == "conv5_4" and VGG19_LAYERS[35] == "relu5_4"
    assert len(VGG19_LAYERS) == 37 and VGG19_LAYERS[-1] == "pool5"


def test_vgg_keys_match_torchvision(vgg_file: Path) -> None:
    ext = VGGFeatureExtractor("conv5_4", weights_path=vgg_file)
    keys = [f"features.{k}" for k in ext.features.state_dict()]
    expected = [f"features.{i}.{p}" for i in sorted(VGG19_CONVS) for p in ("weight", "bias")]
    assert keys == expected
    assert len(ext.features) == 35  # truncated right after conv5_4: its output is taken before the ReLU
    assert isinstance(ext.features[34], torch.nn.Conv2d)
    assert not any(p.requires_grad for p in ext.parameters())
    ext.train()
    assert not ext.training
    state = torch.load(vgg_file, weights_only=True)
    assert torch.equal(ext.features[34].weight, state["features.34.weight"])
    assert ext.features[34].weight.device.type == "cpu"


def test_perceptual_loss_values(vgg_file: Path) -> None:
    torch.manual_seed(4)
    crit = PerceptualLoss(weights_path=vgg_file)
    x = torch.rand(2, 3, 16, 16)
    assert crit(x, x.clone()).item() == 0.0
    s = torch.rand(2, 3, 16, 16, requires_grad=True)
    loss = crit(s, x)
    assert loss.item() > 0
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    # per-sample masks: a bool mask runs VGG on the selected samples only
    with torch.no_grad():
        first = crit(s, x, torch.tensor([True, False])).item()
        second = crit(s, x, torch.tensor([False, True])).item()
        assert loss.item() == pytest.approx((first + second) / 2, rel=1e-5)
        assert crit(s, x, torch.tensor([1.0, 0.0])).item() == pytest.approx(first, rel=1e-5)
    leaf = torch.rand(2, 3, 16, 16, requires_grad=True)
    assert_zero_with_grad(crit(leaf, x, torch.tensor([False, False])), leaf)


def test_perceptual_needs_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, vgg_file: Path) -> None:
    calls = []

    def offline(url: str, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PerceptualWeightsError, match="could not obtain the VGG19 weights") as info:
        PerceptualLoss()
    assert calls == [VGG19_URL]
    assert "\n" not in str(info.value) and "Rate_lpts" in str(info.value)
    with pytest.raises(PerceptualWeightsError, match="not found"):
        PerceptualLoss(weights_path=tmp_path / "absent.pth")
    partial = torch.load(vgg_file, weights_only=True)
    del partial["features.34.weight"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(PerceptualWeightsError, match="features.34.weight"):
        PerceptualLoss(weights_path=tmp_path / "partial.pth")
    # a shallower layer needs only its own keys
    assert PerceptualLoss("relu2_2", weights_path=tmp_path / "partial.pth").vgg.last_index == 8
    with pytest.raises(ValueError, match="unknown VGG19 layer"):
        VGGFeatureExtractor("conv6_1", weights_path=tmp_path / "partial.pth")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_losses_under_cuda_bf16_autocast(vgg_file: Path) -> None:
    torch.manual_seed(6)
    s = torch.rand(2, 3, 32, 32, device="cuda", requires_grad=True)
    t, y = torch.rand(2, 3, 32, 32, device="cuda"), torch.rand(2, 3, 32, 32, device="cuda")
    lr = imresize_torch(t, 1 / 4)
    crit = PerceptualLoss(weights_path=vgg_file).cuda()
    mask = torch.tensor([True, False], device="cuda")
    fns = [lambda: kd_loss(s, t, y, "both", mask), lambda: edge_loss(s, t), lambda: backprojection_loss(s, lr, 4)]
    ref = [f().item() for f in fns]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = [f() for f in fns]
        perceptual = crit(s, t, mask)
    assert all(g.dtype == torch.float32 for g in got) and perceptual.dtype == torch.float32
    assert [g.item() for g in got] == pytest.approx(ref, rel=1e-5)
    (sum(got) + perceptual).backward()
    assert torch.isfinite(s.grad).all()
