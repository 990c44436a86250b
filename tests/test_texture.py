"""The weight-free texture-statistics loss (``--Rate_tex``) and its place in the objectives."""
from __future__ import annotations

import pytest
import torch

from Utils.losses import image_gradients, texture_loss

from .conftest import WEIGHTS, need

DY = 219.0 / 255.0  # Y step between black and white, in [0, 1] units


def gray(values: torch.Tensor) -> torch.Tensor:
    """An HxW tensor of gray levels in [0, 1] as a 1x3xHxW RGB image."""
    return values.expand(1, 3, *values.shape).clone()


def step(size: int, column: int) -> torch.Tensor:
    img = torch.zeros(size, size)
    img[:, column:] = 1.0
    return gray(img)


def test_image_gradients_of_a_step():
    g = image_gradients(step(16, 8))
    assert g.shape == (1, 2, 16, 16)
    # Sobel gx is 4 * dY on the two columns beside the step, 0 elsewhere; gy is 0 (replicate padding)
    expected = torch.zeros(16, 16)
    expected[:, 7:9] = 4 * DY
    torch.testing.assert_close(g[0, 0], expected, atol=1e-6, rtol=0)
    assert g[0, 1].abs().max() < 1e-6  # float rounding of the Y offset only


def test_gradw1_known_value_and_position_blindness():
    flat = gray(torch.full((16, 16), 0.5))
    # one 16x16 window: 32 of the 256 gx values are 4 dY, the rest 0; gy all 0 -> 32 * 4 dY / 512
    assert texture_loss(step(16, 8), flat, "gradw1", 16).item() == pytest.approx(0.25 * DY, rel=1e-6)
    # the same edge elsewhere in the window has the same statistics: no pixel-aligned demand
    assert texture_loss(step(16, 8), step(16, 4), "gradw1", 16).item() == pytest.approx(0.0, abs=1e-7)
    # ... which a pixel loss on edge maps does not forgive
    assert (image_gradients(step(16, 8)) - image_gradients(step(16, 4))).abs().mean() > 0.1
    # a smaller window that separates the two positions sees the difference
    assert texture_loss(step(16, 8), step(16, 4), "gradw1", 4).item() > 0.1


def test_spectrum_blind_to_circular_shifts_within_a_window():
    torch.manual_seed(0)
    tile = 0.2 + 0.6 * torch.rand(8, 8)
    a = gray(tile.repeat(2, 2))
    b = gray(torch.roll(tile, shifts=(3, 5), dims=(0, 1)).repeat(2, 2))
    assert texture_loss(a, b, "spectrum", 8).item() == pytest.approx(0.0, abs=1e-6)
    assert texture_loss(a, gray(torch.full((16, 16), tile.mean().item())), "spectrum", 8).item() > 0.05
    # a brightness offset is removed with the tile mean
    assert texture_loss(a, a + 0.1, "spectrum", 8).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["gradw1", "spectrum", "gram"])
def test_texture_loss_prefers_the_sharp_image_and_carries_gradient(kind):
    torch.manual_seed(0)
    sharp = torch.rand(2, 3, 32, 32)
    blurred = torch.nn.functional.avg_pool2d(sharp, 3, 1, 1, count_include_pad=False)
    assert texture_loss(blurred, sharp, kind).item() > texture_loss(sharp, sharp, kind).item() == 0
    s = blurred.clone().requires_grad_(True)
    texture_loss(s, sharp, kind, sample_mask=torch.tensor([True, False])).backward()
    assert s.grad[0].abs().sum() > 0 and s.grad[1].abs().sum() == 0  # only the selected sample learns


def test_texture_loss_rejects_bad_arguments():
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="texture kind"):
        texture_loss(x, x, "fft")
    with pytest.raises(ValueError, match="window"):
        texture_loss(x, x, "gradw1", 1)
    with pytest.raises(ValueError, match="same shape"):
        texture_loss(x, x[..., :8], "gradw1")


def _one_step_changes_student(objective, batch) -> bool:
    from Model import build_model

    torch.manual_seed(0)
    student = build_model("RFDN", 4)
    before = [p.detach().clone() for p in student.parameters()]
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    terms, _ = objective(student(batch["lr"]), batch)
    assert set(terms) >= {"tex"}
    assert all(float(v.detach()) == 0 for k, v in terms.items() if k != "tex"), terms  # every other term is weighted 0
    torch.stack(list(terms.values())).sum().backward()
    opt.step()
    return any(not torch.equal(b, p) for b, p in zip(before, student.parameters()))


def _published_teachers(**kw) -> dict:
    """A DTKD configuration with the published IMDN (F) and DTKD-RFDN-perceptual (P), plus ``kw``."""
    return {"t1_model_name": "IMDN", "t1_checkpoint": str(need(WEIGHTS / "IMDN" / "IMDN_x4.pth")),
            "t2_model_name": "RFDN", "t2_checkpoint": str(need(WEIGHTS / "SRDTKD" / "DTKD-RFDN-perceptual.pth")),
            "scale": 4, **kw}


def _batch() -> dict:
    torch.manual_seed(1)
    hr = torch.rand(2, 3, 64, 64)
    return {"lr": torch.nn.functional.avg_pool2d(hr, 4), "hr": hr}


def test_texture_term_alone_trains_the_student_on_ground_truth():
    from Utils.objectives.ground_truth import GroundTruthObjective

    obj = GroundTruthObjective({"Rate_l1": 0.0, "Rate_tex": 1.0, "scale": 4}, torch.device("cpu"))
    assert obj.term_names == ("l1", "tex")
    assert _one_step_changes_student(obj, _batch())


def test_texture_term_alone_trains_the_student_from_the_perceptual_teacher():
    from Utils.objectives.dtkd import DTKDObjective

    cfg = _published_teachers(entropy_gate="0", loss_attn="both", Rate_l1=0.0, Rate_kd=0.0, Rate_tex=1.0,
                              t2_pixel_kd=False)
    obj = DTKDObjective(cfg, torch.device("cpu"))
    assert obj.term_names == ("l1", "kd", "tex")
    assert obj.stat_names == ("frac_perceptual", "kd_err", "kd_trust")
    assert _one_step_changes_student(obj, _batch())
    # no sample routed to P (gate 8 bits): the texture term is an exact zero
    obj.router.gate = 8.0
    from Model import build_model

    b = _batch()
    terms, stats = obj(build_model("RFDN", 4)(b["lr"]), b)
    assert float(terms["tex"].detach()) == 0 and float(stats["frac_perceptual"]) == 0


def test_error_and_trust_parts_are_logged_and_sum_to_the_kd_term():
    from Model import build_model
    from Utils.objectives.dtkd import DTKDObjective

    cfg = _published_teachers(entropy_gate="none", loss_attn="both", Rate_kd=0.7)
    obj = DTKDObjective(cfg, torch.device("cpu"))
    b = _batch()
    with torch.no_grad():
        terms, stats = obj(build_model("RFDN", 4)(b["lr"]), b)
    assert float(stats["kd_err"]) > 0 and float(stats["kd_trust"]) > 0
    assert float(stats["kd_err"] + stats["kd_trust"]) == pytest.approx(float(terms["kd"]), rel=1e-6)


def test_mscn_features_known_values():
    from Utils.losses import mscn_features

    flat = gray(torch.full((20, 20), 0.3))
    assert mscn_features(flat).abs().max() < 1e-4  # no contrast: every coefficient is 0
    # a vertical step: MSCN is antisymmetric about the edge, zero far from it, and bounded by
    # (Y - mu) / (sigma + 1) < 255 / 1
    m = mscn_features(step(20, 10))[0]
    assert m.shape == (3, 20, 20)
    torch.testing.assert_close(m[0, :, 9], -m[0, :, 10], atol=1e-3, rtol=0)
    assert m[0, :, 9].mean() < -0.5 and m[0, :, :3].abs().max() < 1e-4
    # the neighbour products: horizontal product across the edge is negative, vertical one positive
    assert m[1, 5, 9] < 0 < m[2, 5, 9]


def test_mscn_texture_loss_is_blind_to_position_and_sees_blur():
    torch.manual_seed(0)
    tile = torch.rand(16, 16)
    a = gray(tile)
    b = gray(torch.flip(tile, dims=(1,)))  # the same texture mirrored: same statistics up to the borders
    c = gray(torch.nn.functional.avg_pool2d(tile[None, None], 3, 1, 1, count_include_pad=False)[0, 0])
    assert texture_loss(a, b, "mscn", 16).item() < 0.25 * texture_loss(a, c, "mscn", 16).item()


def test_radial_spectrum_blind_to_orientation_and_shift():
    torch.manual_seed(0)
    tile = 0.2 + 0.6 * torch.rand(16, 16)
    a = gray(tile)
    turned = gray(tile.t().contiguous())  # a 90-degree turn (transpose) keeps every ring's power
    shifted = gray(torch.roll(tile, shifts=(5, 2), dims=(0, 1)))
    assert texture_loss(a, turned, "radial", 16).item() == pytest.approx(0.0, abs=1e-5)
    assert texture_loss(a, shifted, "radial", 16).item() == pytest.approx(0.0, abs=1e-5)
    blurred = gray(torch.nn.functional.avg_pool2d(tile[None, None], 3, 1, 1, count_include_pad=False)[0, 0])
    assert texture_loss(a, blurred, "radial", 16).item() > 0.3  # lost power at high radial frequencies


def test_unsharp_mask_known_values():
    from Utils.losses import unsharp_mask

    flat = gray(torch.full((12, 12), 0.4))
    torch.testing.assert_close(unsharp_mask(flat, 2.0), flat)  # nothing to sharpen
    s = 0.25 + 0.5 * step(12, 6)
    sharp = unsharp_mask(s, 1.0)
    row = sharp[0, 0, 6]
    assert row[5] < 0.25 < 0.75 < row[6]  # overshoot on both sides of the edge
    torch.testing.assert_close(row[:3], torch.full((3,), 0.25))  # far from the edge: unchanged
    assert torch.equal(unsharp_mask(s, 0.0), s)


def test_band_split_known_values():
    from Utils.losses import band_split

    torch.manual_seed(0)
    a = torch.rand(1, 3, 24, 24)
    assert torch.allclose(band_split(a, a, 1.0), a, atol=1e-6)  # one image: itself
    # constants are all low frequency: the result is the low-frequency image's constant
    lo, hi = torch.full((1, 1, 16, 16), 0.25), torch.full((1, 1, 16, 16), 0.75)
    assert torch.allclose(band_split(lo, hi, 2.0), lo, atol=1e-6)
    # a checkerboard (Nyquist) is above any Gaussian's pass band: it comes from the high image, kept
    # at 1 - (the Gaussian's response at Nyquist) of its amplitude
    cb = (torch.arange(16)[:, None] + torch.arange(16)[None, :]).remainder(2).float()[None, None] - 0.5
    g = torch.exp(-torch.arange(-3, 4.0) ** 2 / 2)
    g = g / g.sum()
    nyq = float((g * torch.tensor([(-1.0) ** k for k in range(-3, 4)])).sum())  # 1-D response at Nyquist
    out = band_split(lo, lo + 0.1 * cb, 1.0)[..., 4:-4, 4:-4]
    assert torch.allclose(out, lo[..., 4:-4, 4:-4] + 0.1 * cb[..., 4:-4, 4:-4] * (1 - nyq ** 2), atol=1e-6)


def test_band_split_target_of_dtkd():
    from Utils.objectives.dtkd import DTKDObjective

    cfg = _published_teachers(entropy_gate="0", loss_attn="none", Rate_l1=0.0, t2_band=1.0)
    obj = DTKDObjective(cfg, torch.device("cpu"))
    b = _batch()
    f, p = torch.rand_like(b["hr"]), torch.rand_like(b["hr"])
    from Utils.losses import band_split

    target = band_split(f, p, 1.0)
    terms, _ = obj(target.clone(), {**b, "t1": f, "t2": p})
    assert float(terms["kd"]) == pytest.approx(0.0, abs=1e-7)  # the student at the band-split target: no loss
    terms, _ = obj(p.clone(), {**b, "t1": f, "t2": p})
    assert float(terms["kd"]) > 0.01  # P's own pixels are not the target any more
    with pytest.raises(ValueError, match="t2_pixel_kd"):
        DTKDObjective({**cfg, "t2_pixel_kd": False}, torch.device("cpu"))


def test_gram_texture_known_values():
    from Utils.losses import RANDOM_FILTER_SIZES, RANDOM_FILTERS_PER_SIZE, random_texture_features

    torch.manual_seed(0)
    f = random_texture_features(torch.rand(1, 3, 20, 20))
    assert f.shape == (1, len(RANDOM_FILTER_SIZES) * RANDOM_FILTERS_PER_SIZE, 20, 20) and (f >= 0).all()
    # zero-mean filters: flat images of any brightness have no features, hence equal (zero) Grams
    flat_dark, flat_bright = torch.full((1, 3, 32, 32), 0.2), torch.full((1, 3, 32, 32), 0.9)
    assert random_texture_features(flat_bright).abs().max().item() < 1e-5
    assert texture_loss(flat_dark, flat_bright, "gram").item() == pytest.approx(0.0, abs=1e-9)
    # the same seeded bank every time (a run and its resume compare against the same statistics)
    assert torch.equal(random_texture_features(flat_bright[..., :8, :8] + torch.eye(8)),
                       random_texture_features(flat_bright[..., :8, :8] + torch.eye(8)))
    # a stripe texture against itself shifted within the tiles costs much less than against a blurred
    # copy or flat grey (not zero: a 32-pixel tile holds a different part of the 12.6-pixel period)
    x = torch.arange(64.0)
    stripes = (0.5 + 0.3 * torch.sin(x / 2)).expand(1, 3, 64, 64).contiguous()
    shifted = torch.roll(stripes, 3, dims=-1)
    blurred = torch.nn.functional.avg_pool2d(stripes, 5, 1, 2, count_include_pad=False)
    grey = torch.full_like(stripes, 0.5)
    d_shift, d_blur, d_grey = (texture_loss(stripes, o, "gram", 32).item() for o in (shifted, blurred, grey))
    assert d_shift < 0.5 * d_blur < 0.5 * d_grey


def test_gram_on_selected_samples_equals_the_full_computation():
    torch.manual_seed(4)
    s = torch.rand(3, 3, 32, 32, requires_grad=True)
    t = torch.rand(3, 3, 32, 32)
    mask = torch.tensor([True, False, True])
    fast = texture_loss(s, t, "gram", 16, sample_mask=mask)
    g_fast, = torch.autograd.grad(fast, s)
    # reference: every sample computed, then masked (the selection is only a speed-up)
    full = [texture_loss(s[i:i + 1], t[i:i + 1], "gram", 16) for i in range(3)]
    ref = (full[0] + full[2]) / 2
    g_ref, = torch.autograd.grad(ref, s)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(g_fast, g_ref, atol=1e-9) and g_fast[1].abs().sum() == 0
    assert texture_loss(s, t, "gram", 16, sample_mask=torch.tensor([False] * 3)).item() == 0


def test_blend_target_of_dtkd():
    from Utils.objectives.dtkd import DTKDObjective

    cfg = _published_teachers(entropy_gate="0", loss_attn="none", Rate_l1=0.0, t2_blend=0.25)
    obj = DTKDObjective(cfg, torch.device("cpu"))
    b = _batch()
    f, p = torch.zeros_like(b["hr"]), torch.ones_like(b["hr"])
    terms, _ = obj(torch.full_like(f, 0.25), {**b, "t1": f, "t2": p})
    assert float(terms["kd"]) == pytest.approx(0.0, abs=1e-7)  # the target is 0.75 F + 0.25 P
    terms, _ = obj(p.clone(), {**b, "t1": f, "t2": p})
    assert float(terms["kd"]) == pytest.approx(0.75, abs=1e-6)
    for bad, msg in (({"t2_blend": 1.5}, r"\[0, 1\]"), ({"t2_band": 1.0}, "no --t2_band")):
        with pytest.raises(ValueError, match=msg):
            DTKDObjective({**cfg, **bad}, torch.device("cpu"))
