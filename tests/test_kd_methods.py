"""The field's KD baselines (``--kd_method output|fakd|fitnet|at``): known values of every loss, FAKD's
blockwise affinity equal to the naive one, a gradient through each KD term alone, clear errors for
feature points, and FitNet's learned adapters resumed exactly.

Teachers are IMDN with random weights saved to a temporary file (weights do not matter for these
properties); training runs use four synthetic 64x64 images, so nothing needs ../shared/data.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from Model import build_model


def _random_weights(tmp_path_factory, preset: str, seed: int) -> str:
    """A checkpoint of ``preset`` with random weights (seeded), in a temporary folder."""
    torch.manual_seed(seed)
    path = tmp_path_factory.mktemp("teacher") / f"{preset}_random.pth"
    torch.save(build_model(preset, 4).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> str:
    return _random_weights(tmp_path_factory, "IMDN", 1)


def _cfg(method: str, teacher: str, **kw) -> dict:
    cfg = {"model_name": "RFDN", "scale": 4, "kd_method": method, "t1_model_name": "IMDN", "t1_checkpoint": teacher,
           "Rate_l1": 1.0, "Rate_kd": 1.0, "Rate_feat": None}
    cfg.update(kw)
    return cfg


# ----------------------------------------------------------------------------- 1. known values

def test_identical_features_give_zero():
    from Utils.objectives.at import at_loss
    from Utils.objectives.fakd import fakd_loss, fakd_loss_naive
    from Utils.objectives.fitnet import fitnet_loss

    f = torch.randn(2, 6, 5, 7)
    assert fakd_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert fakd_loss_naive(f, f.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert at_loss(f, f.clone()).item() == 0.0
    ident = torch.nn.Conv2d(6, 6, 1)
    with torch.no_grad():
        ident.weight.copy_(torch.eye(6)[:, :, None, None])
        ident.bias.zero_()
    assert fitnet_loss(ident(f), f).item() == pytest.approx(0.0, abs=1e-12)
    # scale-free: FAKD compares directions, AT normalised maps (a brighter teacher teaches the same)
    assert fakd_loss(f, 3 * f).item() == pytest.approx(0.0, abs=1e-6)
    assert at_loss(f, 3 * f).item() == pytest.approx(0.0, abs=1e-12)


def test_fakd_on_a_hand_computed_3x3_affinity():
    from Utils.objectives.fakd import fakd_loss, fakd_loss_naive, spatial_affinity

    # three pixels (1x3 map, 2 channels): vectors (1,0), (0,2), (3,4) -> unit (1,0), (0,1), (0.6,0.8)
    fs = torch.tensor([[1.0, 0.0, 3.0], [0.0, 2.0, 4.0]]).reshape(1, 2, 1, 3)
    a = spatial_affinity(fs)[0]
    expect = torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8], [0.6, 0.8, 1.0]])
    assert torch.allclose(a, expect, atol=1e-6)
    ft = torch.tensor([[1.0, 2.0, 5.0], [0.0, 0.0, 0.0]]).reshape(1, 2, 1, 3)  # all along (1,0): affinity 1
    # |A_S - 1| = [[0,1,.4],[1,0,.2],[.4,.2,0]]: sum 3.2 over 9 entries
    assert fakd_loss_naive(fs, ft).item() == pytest.approx(3.2 / 9, abs=1e-6)
    assert fakd_loss(fs, ft).item() == pytest.approx(3.2 / 9, abs=1e-6)
    assert fakd_loss(fs, ft, chunk_elems=1).item() == pytest.approx(3.2 / 9, abs=1e-6)  # one row per block


def test_attention_maps_by_hand():
    from Utils.objectives.at import at_loss, attention_map

    # 2 channels, 1x2 pixels: p1 = (1, -1), p2 = (2, 0) -> channel energy (1+1)/2 = 1, (4+0)/2 = 2
    fs = torch.tensor([[1.0, 2.0], [-1.0, 0.0]]).reshape(1, 2, 1, 2)
    q = attention_map(fs)
    assert torch.allclose(q, torch.tensor([[1.0, 2.0]]) / math.sqrt(5), atol=1e-7)
    ft = torch.tensor([[3.0, 0.0], [0.0, 0.0]]).reshape(1, 2, 1, 2)  # energy (4.5, 0) -> (1, 0)
    expect = ((1 / math.sqrt(5) - 1) ** 2 + (2 / math.sqrt(5)) ** 2) / 2
    assert at_loss(fs, ft).item() == pytest.approx(expect, rel=1e-6)


def test_blockwise_fakd_equals_the_naive_one_values_and_gradients():
    from Utils.objectives.fakd import fakd_loss, fakd_loss_naive

    torch.manual_seed(0)
    fs = torch.randn(3, 5, 7, 9, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(3, 5, 7, 9, dtype=torch.float64)
    naive = fakd_loss_naive(fs, ft)
    (g_naive,) = torch.autograd.grad(naive, fs)
    for chunk in (1, 3 * 63 * 5, 3 * 63 * 20, 1 << 22):  # one row, 5 rows, 20 rows (uneven last), all
        blocked = fakd_loss(fs, ft, chunk_elems=chunk)
        (g,) = torch.autograd.grad(blocked, fs)
        assert blocked.item() == pytest.approx(naive.item(), rel=1e-12), chunk
        assert torch.allclose(g, g_naive, rtol=1e-10, atol=1e-14), chunk


def test_pairing_of_feature_points():
    from Utils.objectives.features import FEATURE_POINTS, pair_points

    pairs = pair_points(FEATURE_POINTS["RFDN"], FEATURE_POINTS["IMDN"])
    assert pairs == [("B1", "IMDB2"), ("B2", "IMDB3"), ("B3", "IMDB5"), ("B4", "IMDB6")]
    assert pair_points(("a", "b"), ("x", "y")) == [("a", "x"), ("b", "y")]


# ----------------------------------------------------------------------------- 2. each KD term carries gradient

@pytest.mark.parametrize("method", ["output", "fakd", "fitnet", "at"])
def test_one_step_through_the_kd_term_alone_changes_the_student(method, teacher_ckpt, one_thread):
    from Utils.objectives import build_objective

    torch.manual_seed(0)
    student = build_model("RFDN", 4).train()
    obj = build_objective(_cfg(method, teacher_ckpt, Rate_l1=0.0), torch.device("cpu"))
    obj.attach_student(student)
    opt = torch.optim.Adam([*student.parameters(), *obj.trainable_parameters()], lr=1e-3)
    x = torch.rand(2, 3, 20, 20)
    batch = {"lr": x, "hr": torch.rand(2, 3, 80, 80)}
    before = {k: v.clone() for k, v in student.state_dict().items()}
    terms, _ = obj(student(x), batch)
    kd_name = "kd" if method == "output" else method
    assert set(terms) == {"l1", kd_name} and terms["l1"].item() == 0.0 and terms[kd_name].item() > 0
    sum(terms.values()).backward()
    g = student.B1.c1_r.weight.grad  # the first block: reached by every method's term
    assert g is not None and g.abs().sum() > 0, f"{method}: no gradient reaches the student through the KD term"
    opt.step()
    after = student.state_dict()
    assert not torch.equal(before["B1.c1_r.weight"], after["B1.c1_r.weight"])
    # the teacher stayed frozen, in eval mode, without gradients
    teacher = obj.t1 if method == "output" else obj.teacher
    assert not teacher.net.training and all(not p.requires_grad and p.grad is None for p in teacher.net.parameters())


def test_student_hooks_collect_nothing_in_eval_mode(teacher_ckpt):
    from Utils.objectives import build_objective

    student = build_model("RFDN", 4)
    obj = build_objective(_cfg("at", teacher_ckpt), torch.device("cpu"))
    obj.attach_student(student)
    student.eval()
    with torch.no_grad():
        student(torch.rand(1, 3, 20, 20))  # a validation pass
    assert obj.s_tap.feats == {}


# ----------------------------------------------------------------------------- 3. clear errors

def test_unknown_feature_point_is_a_clear_error(teacher_ckpt):
    from Utils.objectives import build_objective

    student = build_model("RFDN", 4)
    obj = build_objective(_cfg("fakd", teacher_ckpt, kd_student_points=["B9"], kd_teacher_points=["IMDB1"]),
                          torch.device("cpu"))
    with pytest.raises(ValueError, match=r"student RFDN has no module 'B9' to take features from"):
        obj.attach_student(student)
    with pytest.raises(ValueError, match=r"teacher IMDN has no module 'IMDB9'"):
        build_objective(_cfg("at", teacher_ckpt, kd_teacher_points=["IMDB9", "IMDB2", "IMDB3", "IMDB4"]),
                        torch.device("cpu"))
    with pytest.raises(ValueError, match=r"--kd_teacher_points: 1 points for 4 student points"):
        build_objective(_cfg("at", teacher_ckpt, kd_teacher_points=["IMDB1"]), torch.device("cpu"))


def test_preset_without_feature_points_is_a_clear_error(teacher_ckpt):
    from Utils.objectives import build_objective

    with pytest.raises(ValueError, match=r"--kd_method fitnet: preset LBNet declares no feature points"):
        build_objective(_cfg("fitnet", teacher_ckpt, model_name="LBNet"), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"--kd_method at needs --t1_checkpoint"):
        build_objective(_cfg("at", ""), torch.device("cpu"))


def test_kd_method_defaults_follow_train_by_tt():
    import main
    from Utils.objectives import kd_method

    assert kd_method(main.parse_config([])) == "gt"
    assert kd_method(main.parse_config(["--train_by_TT", "True"])) == "dtkd"
    cfg = main.parse_config(["--kd_method", "fakd"])
    assert kd_method(cfg) == "fakd" and cfg["name"] == "RFDN_fakd"
    assert main.parse_config(["--train_by_TT", "True"])["name"] == "RFDN_dtkd"


# ----------------------------------------------------------------------------- 4. training runs, exact resume

@pytest.fixture(scope="module")
def tiny_hr(tmp_path_factory) -> Path:
    from Utils.image_io import write_image

    folder = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(4):
        img = 127 + 60 * np.sin(xx / (3 + i))[..., None] * np.cos(yy / (4 + i))[..., None] \
            + rng.normal(0, 20, (64, 64, 3))
        write_image(folder / f"img{i}.png", np.clip(img, 0, 255).astype(np.uint8))
    return folder


def _train_args(root: Path, hr: Path, teacher: str, iters: int, *extra: str) -> list[str]:
    return ["--model_name", "RFDN", "--patch_size", "64", "--batch_size", "2", "--iters", str(iters),
            "--save_every", "1", "--num_workers", "0", "--train_hr", str(hr), "--experiments_root", str(root),
            "--cache_dir", str(root / "cache"), "--name", "run", "--valid_dataset", "", "--test_every", "0",
            "--scheduler", "constant", "--quiet", "--t1_model_name", "IMDN", "--t1_checkpoint", teacher, *extra]


def straight_and_split(root: Path, hr: Path, teacher: str, iters: int, split_at: int,
                       *extra: str) -> tuple[dict, dict, dict]:
    """The last checkpoints of a run straight to ``iters`` and of one stopped at ``split_at`` and resumed,
    and the latter's checkpoint at the stop (under ``root / "straight"`` and ``root / "split"``)."""
    import main

    straight, split = root / "straight", root / "split"
    latest = lambda d: torch.load(d / "run" / "checkpoints" / "latest.pth", weights_only=False)  # noqa: E731
    assert main.main(_train_args(straight, hr, teacher, iters, *extra)) == 0
    assert main.main(_train_args(split, hr, teacher, split_at, *extra)) == 0
    at_stop = latest(split)
    assert main.main(_train_args(split, hr, teacher, iters, *extra, "--auto_resume")) == 0
    return latest(straight), latest(split), at_stop


def test_fitnet_resume_is_exact_and_adapters_train(tmp_path, tiny_hr, teacher_ckpt, one_thread):
    straight, split = tmp_path / "straight", tmp_path / "split"
    a, b, at2 = straight_and_split(tmp_path, tiny_hr, teacher_ckpt, 4, 2, "--kd_method", "fitnet")
    assert a["iteration"] == b["iteration"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ad_a, ad_b = a["objective"]["adapters"], b["objective"]["adapters"]
    for k in ad_a:
        assert torch.equal(ad_a[k], ad_b[k]), k
        assert not torch.equal(ad_a[k], at2["objective"]["adapters"][k]), f"adapter {k} did not train"
    assert len(a["optimizer"]["param_groups"]) == 2  # student, adapters
    log_a = (straight / "run" / "log.csv").read_text().splitlines()
    log_b = (split / "run" / "log.csv").read_text().splitlines()
    assert log_a[0].split(",")[:5] == ["iter", "lr", "l1", "fitnet", "total"]
    strip = lambda rows: [",".join(r.split(",")[:5]) for r in rows]  # noqa: E731  (timing columns differ)
    assert strip(log_a) == strip(log_b)
    # exported weights are the student's alone (loadable by get_model)
    final = torch.load(straight / "run" / "weights" / "final.pth", weights_only=True)
    assert set(final) == set(build_model("RFDN", 4).state_dict())


def test_resuming_a_checkpoint_without_adapter_state_is_a_clear_error(tmp_path, tiny_hr, teacher_ckpt, one_thread,
                                                                      caplog):
    import main

    assert main.main(_train_args(tmp_path, tiny_hr, teacher_ckpt, 1, "--kd_method", "at")) == 0
    assert main.main(_train_args(tmp_path, tiny_hr, teacher_ckpt, 2, "--kd_method", "fitnet", "--auto_resume")) == 1
    assert "holds no state of the objective's learned parts" in caplog.text


# ----------------------------------------------------------------------------- 5. DUKD

def test_dihedral_transforms_are_eight_distinct_and_exactly_inverted():
    from Utils.objectives.dukd import N_DIHEDRAL, dihedral, dihedral_inverse

    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)  # non-square: transposes show
    seen = set()
    for k in range(N_DIHEDRAL):
        y = dihedral(x, k)
        assert torch.equal(dihedral_inverse(y, k), x), k
        seen.add(tuple(y[0, 0].flatten().tolist()) + tuple(y.shape))
    assert len(seen) == 8  # the whole dihedral group, no transform twice
    # known values on a 2x2 [[a, b], [c, d]]: k=1 turns counter-clockwise, k=4 flips left-right,
    # k=5 (flip, then a turn) is the transpose
    m = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert dihedral(m, 1).tolist() == [[2.0, 4.0], [1.0, 3.0]]
    assert dihedral(m, 4).tolist() == [[2.0, 1.0], [4.0, 3.0]]
    assert dihedral(m, 5).tolist() == [[1.0, 3.0], [2.0, 4.0]]
    # re-applying the same operations in the same order is no inverse once a transpose is involved
    # (the bug of a well-known code base): vertical flip then transpose, "undone" the same way, is a half turn
    sq = x[..., :4]
    fwd = lambda t: t.flip(-2).transpose(-1, -2)  # noqa: E731
    assert torch.equal(fwd(fwd(sq)), torch.rot90(sq, 2, dims=(-2, -1))) and not torch.equal(fwd(fwd(sq)), sq)
    with pytest.raises(ValueError, match="0..7"):
        dihedral(x, 8)


def test_upcycled_inputs_known_sizes_values_and_padding(teacher_ckpt):
    from Utils.objectives import build_objective
    from Utils.objectives.dukd import mirror_pad_to, random_crops

    obj = build_objective(_cfg("dukd", teacher_ckpt, patch_size=64), torch.device("cpu"))
    obj.attach_student(build_model("RFDN", 4))
    assert obj.min_input == 15  # RFDN's ESA needs 15x15: the 8x8 zoom-out inputs are mirror-padded
    x, y = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 64, 64)
    zin, zout = obj.upcycle(x, y)
    assert zin.shape == (3, 3, 16, 16) and zout.shape == (3, 3, 15, 15)
    # a constant image stays constant through crops, bicubic downscaling and mirror padding
    zin, zout = obj.upcycle(torch.full((1, 3, 16, 16), 0.3), torch.full((1, 3, 64, 64), 0.6))
    assert torch.allclose(zin, torch.full_like(zin, 0.6), atol=1e-6)
    assert torch.allclose(zout, torch.full_like(zout, 0.3), atol=1e-6)
    # each crop is a true sub-window of its own sample
    torch.manual_seed(3)
    big = torch.arange(2 * 1 * 10 * 10, dtype=torch.float32).reshape(2, 1, 10, 10)
    crops = random_crops(big, 4)
    for i in range(2):
        hits = [(t, l) for t in range(7) for l in range(7) if torch.equal(big[i, :, t:t + 4, l:l + 4], crops[i])]
        assert len(hits) == 1
    p = mirror_pad_to(torch.arange(4.0).reshape(1, 1, 1, 4).expand(1, 1, 4, 4), 6)
    assert p.shape[-2:] == (6, 6) and p[0, 0, 0].tolist() == [1.0, 0.0, 1.0, 2.0, 3.0, 2.0]
    with pytest.raises(ValueError, match="cannot mirror-pad"):
        mirror_pad_to(torch.zeros(1, 1, 2, 2), 8)


@pytest.mark.parametrize("consistency", [True, False])
def test_dukd_upcycled_terms_alone_change_the_student(teacher_ckpt, one_thread, consistency):
    from Utils.objectives import build_objective

    torch.manual_seed(0)
    student = build_model("RFDN", 4).train()
    obj = build_objective(_cfg("dukd", teacher_ckpt, Rate_l1=0.0, Rate_kd=0.0, patch_size=64,
                               dukd_consistency=consistency), torch.device("cpu"))
    obj.attach_student(student)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    x = torch.rand(2, 3, 16, 16)
    batch = {"lr": x, "hr": torch.rand(2, 3, 64, 64)}
    before = {k: v.clone() for k, v in student.state_dict().items()}
    terms, _ = obj(student(x), batch)
    assert set(terms) == {"l1", "kd", "zoom_in", "zoom_out"}
    assert terms["l1"].item() == 0.0 and terms["kd"].item() == 0.0
    assert terms["zoom_in"].item() > 0 and terms["zoom_out"].item() > 0
    sum(terms.values()).backward()
    assert student.B1.c1_r.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before["B1.c1_r.weight"], student.state_dict()["B1.c1_r.weight"])
    assert not obj.t1.net.training and all(p.grad is None for p in obj.t1.net.parameters())


def test_dukd_zoom_terms_vanish_for_a_student_equal_to_its_teacher(teacher_ckpt, monkeypatch):
    """The teacher labels exactly what the student sees, and the inverse is applied correctly: a student
    that is the teacher gives zero zoom terms without transforms, and with them when it is equivariant."""
    from Utils.objectives import build_objective
    from Utils.objectives.dukd import N_DIHEDRAL

    student = build_model("IMDN", 4)
    student.load_state_dict(torch.load(teacher_ckpt, weights_only=True))
    student.eval()
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 64, 64)
    obj = build_objective(_cfg("dukd", teacher_ckpt, model_name="IMDN", patch_size=64, dukd_consistency=False),
                          torch.device("cpu"))
    obj.attach_student(student)
    with torch.no_grad():
        terms, _ = obj(student(x), {"lr": x, "hr": y})
    assert terms["kd"].item() == 0.0 and terms["zoom_in"].item() == 0.0 and terms["zoom_out"].item() == 0.0
    # an equivariant network (1x1 conv, nearest upsampling) as both: zero under each of the 8 transforms
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Upsample(scale_factor=4, mode="nearest"))
    obj = build_objective(_cfg("dukd", teacher_ckpt, model_name="IMDN", patch_size=64), torch.device("cpu"))
    obj.attach_student(net)
    obj.t1.net = net
    for k in range(N_DIHEDRAL):
        monkeypatch.setattr(torch, "randint", lambda *a, _k=k, **kw: torch.tensor(_k) if a == (0, N_DIHEDRAL, ())
                            else _randint(*a, **kw))
        with torch.no_grad():
            terms, _ = obj(net(x), {"lr": x, "hr": y})
        assert terms["zoom_in"].item() < 1e-6 and terms["zoom_out"].item() < 1e-6, k
    # a network that is not equivariant (a 3x3 conv) is not: the transform is really applied
    net3 = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Upsample(scale_factor=4))
    obj.student = obj.t1.net = net3
    with torch.no_grad():
        assert obj(net3(x), {"lr": x, "hr": y})[0]["zoom_in"].item() > 1e-4  # k = 7 from the last patch


_randint = torch.randint


def test_dukd_trains_and_resumes_exactly(tmp_path, tiny_hr, teacher_ckpt, one_thread):
    straight, split = tmp_path / "straight", tmp_path / "split"
    a, b, _ = straight_and_split(tmp_path, tiny_hr, teacher_ckpt, 3, 1, "--kd_method", "dukd")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    log_a = (straight / "run" / "log.csv").read_text().splitlines()
    assert log_a[0].split(",")[:7] == ["iter", "lr", "l1", "kd", "zoom_in", "zoom_out", "total"]
    strip = lambda rows: [",".join(r.split(",")[:7]) for r in rows]  # noqa: E731  (timing columns differ)
    assert strip(log_a) == strip((split / "run" / "log.csv").read_text().splitlines())


# ----------------------------------------------------------------------------- 6. torchrun and AMP

def test_torchrun_fitnet_equals_one_process_adapters_included(tmp_path, tiny_hr, teacher_ckpt):
    """Two ranks of one sample against one process of two: the student and FitNet's adapters (whose
    gradients the trainer averages by hand, outside DDP) end the same up to rounding, ranks in sync."""
    import main

    from .test_trainer import _env, _explain, _free_port, _run_main

    launcher = ("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port()))
    proc = _run_main(_train_args(tmp_path / "ddp", tiny_hr, teacher_ckpt, 3, "--kd_method", "fitnet", "--cpu"),
                     launcher=launcher, env=_env())
    assert proc.returncode == 0 and "ranks in sync:" in proc.stdout + proc.stderr, _explain(proc)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main.main(_train_args(tmp_path / "one", tiny_hr, teacher_ckpt, 3, "--kd_method", "fitnet",
                                     "--cpu")) == 0
    finally:
        torch.set_num_threads(n)
    a = torch.load(tmp_path / "ddp" / "run" / "checkpoints" / "latest.pth", weights_only=False)
    b = torch.load(tmp_path / "one" / "run" / "checkpoints" / "latest.pth", weights_only=False)
    worst = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    ad_a, ad_b = a["objective"]["adapters"], b["objective"]["adapters"]
    worst_ad = max((ad_a[k] - ad_b[k]).abs().max().item() for k in ad_a)
    assert worst < 1e-4 and worst_ad < 1e-4, (worst, worst_ad)


def test_torchrun_dukd_extra_passes_keep_ranks_in_sync(tmp_path, tiny_hr, teacher_ckpt):
    """DUKD's upcycled passes run on the unwrapped student inside the same backward: DDP averages
    their gradients with the main pass's, so the ranks stay bitwise in sync."""
    from .test_trainer import _env, _explain, _free_port, _run_main

    launcher = ("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port()))
    proc = _run_main(_train_args(tmp_path, tiny_hr, teacher_ckpt, 2, "--kd_method", "dukd", "--cpu"),
                     launcher=launcher, env=_env())
    assert proc.returncode == 0 and "ranks in sync:" in proc.stdout + proc.stderr, _explain(proc)


@pytest.mark.parametrize("method", ["output", "fakd", "fitnet", "at", "dukd"])
def test_every_kd_method_trains_under_bf16_autocast(method, tmp_path, tiny_hr, teacher_ckpt, one_thread):
    import csv

    import main

    assert main.main(_train_args(tmp_path, tiny_hr, teacher_ckpt, 2, "--kd_method", method, "--amp", "bf16",
                                 "--cpu")) == 0
    with open(tmp_path / "run" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iter"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(r["total"])) and r["nonfinite"] == "0" for r in rows)


# ----------------------------------------------------------------------------- 7. DTKD with P's feature hints

@pytest.fixture(scope="module")
def rfdn_teacher_ckpt(tmp_path_factory) -> str:
    return _random_weights(tmp_path_factory, "RFDN", 2)


def _dtkd_pfeat_cfg(t1: str, t2: str, **kw) -> dict:
    cfg = {"model_name": "RFDN", "scale": 4, "kd_method": "dtkd", "t1_model_name": "IMDN", "t1_checkpoint": t1,
           "t2_model_name": "RFDN", "t2_checkpoint": t2, "entropy_gate": "0", "loss_attn": "none",
           "Rate_l1": 0.0, "Rate_kd": 0.0, "Rate_pfeat": 1.0}
    cfg.update(kw)
    return cfg


def test_dtkd_perceptual_feature_hints_alone_change_the_student_only_on_routed_samples(
        teacher_ckpt, rfdn_teacher_ckpt, one_thread):
    from Utils.objectives import build_objective

    torch.manual_seed(0)
    student = build_model("RFDN", 4).train()
    obj = build_objective(_dtkd_pfeat_cfg(teacher_ckpt, rfdn_teacher_ckpt), torch.device("cpu"))
    assert obj.term_names == ("l1", "kd", "pfeat")
    obj.attach_student(student)
    assert len(obj.trainable_parameters()) == 8  # 4 adapters (weight, bias), RFDN B1..B4 <- RFDN B1..B4
    opt = torch.optim.Adam([*student.parameters(), *obj.trainable_parameters()], lr=1e-3)
    x = torch.rand(2, 3, 20, 20)
    batch = {"lr": x, "hr": torch.rand(2, 3, 80, 80)}
    before = student.B1.c1_r.weight.detach().clone()
    terms, _ = obj(student(x), batch)
    assert terms["l1"].item() == 0 and terms["kd"].item() == 0 and terms["pfeat"].item() > 0
    sum(terms.values()).backward()
    opt.step()
    assert not torch.equal(before, student.B1.c1_r.weight)
    # P is the same frozen teacher for its output and its hints: loaded once
    assert obj.p_hints.teacher is obj.t2
    calls = []
    obj.t2.register_forward_pre_hook(lambda *a: calls.append(1))
    # without the teacher cache, P runs once per step (its pass serves the output and the hints)
    terms, _ = obj(student(x), batch)
    assert terms["pfeat"].item() > 0 and len(calls) == 1
    # the hints equal those of a separate pass of P on the batch
    with torch.no_grad():
        student(x)
        shared = obj.p_hints.feature_term(x).item()
        student(x)
        obj.t2(x)
        ran = obj.p_hints.feature_term(x, teacher_ran=True).item()
    assert shared == pytest.approx(ran, rel=1e-6)
    # nothing routed to P (gate above any entropy): the hint term is an exact zero and, with P's output
    # from the cache (in the batch), P is not run
    calls.clear()
    obj.router.gate = 8.0
    with torch.no_grad():
        p_out = obj.t2(x)
    calls.clear()
    terms, _ = obj(student(x), {**batch, "t2": p_out})
    assert terms["pfeat"].item() == 0.0 and not calls
    # one of two samples routed: the term equals that sample's hint loss alone
    mask = torch.tensor([True, False])
    with torch.no_grad():
        student(x)
        part = obj.p_hints.feature_term(x, mask).item()
        student(x[:1])
        alone = obj.p_hints.feature_term(x[:1]).item()
    assert part == pytest.approx(alone, rel=1e-5)


def test_dtkd_with_feature_hints_resumes_exactly(tmp_path, tiny_hr, teacher_ckpt, rfdn_teacher_ckpt, one_thread):
    extra = ("--train_by_TT", "True", "--t2_model_name", "RFDN", "--t2_checkpoint", rfdn_teacher_ckpt,
             "--Rate_pfeat", "1", "--entropy_gate", "auto")
    a, b, _ = straight_and_split(tmp_path, tiny_hr, teacher_ckpt, 3, 1, *extra)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ad_a, ad_b = a["objective"]["p_hints"]["adapters"], b["objective"]["p_hints"]["adapters"]
    for k in ad_a:
        assert torch.equal(ad_a[k], ad_b[k]), k
    header = (tmp_path / "straight" / "run" / "log.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["iter", "lr", "l1", "kd", "pfeat"]
