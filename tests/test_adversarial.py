"""The adversarial term (``--Rate_adv``): the relativistic losses by hand, the discriminator's shape,
a gradient through the term alone, D learning in ``critic_step``, "real" = the perceptual teacher's
outputs on routed samples only, exact resume (D and its optimizer included), DDP ranks in sync and
bf16. Synthetic images and random-weight teachers: nothing needs ../shared/data.
"""
from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from Model import build_model

from .test_kd_methods import (_train_args, rfdn_teacher_ckpt, straight_and_split, teacher_ckpt,  # noqa: F401
                               tiny_hr)


def test_relativistic_losses_by_hand():
    from Utils.objectives.adversarial import relativistic_losses

    # equal logits: every relative logit is 0, both losses are log 2
    g, d = relativistic_losses(torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3, 3))
    assert g.item() == pytest.approx(math.log(2)) and d.item() == pytest.approx(math.log(2))
    # real +a, fake -a: relative logits +2a (real) and -2a (fake); D is right, the generator is not
    a = 0.75
    g, d = relativistic_losses(torch.full((1, 1, 2, 2), a), torch.full((1, 1, 2, 2), -a))
    softplus = lambda t: math.log1p(math.exp(t))  # noqa: E731  BCE(z, 0) = softplus(z), BCE(z, 1) = softplus(-z)
    assert g.item() == pytest.approx(softplus(2 * a))
    assert d.item() == pytest.approx(softplus(-2 * a))
    # mixed values, against the formula written out
    r, f = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 3.0]])
    rr, ff = r - f.mean(), f - r.mean()
    g_hand = 0.5 * (F.softplus(rr).mean() + F.softplus(-ff).mean())
    d_hand = 0.5 * (F.softplus(-rr).mean() + F.softplus(ff).mean())
    g, d = relativistic_losses(r, f)
    assert g.item() == pytest.approx(g_hand.item()) and d.item() == pytest.approx(d_hand.item())


def test_patch_discriminator_gives_one_logit_per_8x8_patch():
    from Utils.objectives.adversarial import PatchDiscriminator

    disc = PatchDiscriminator(3, 8)
    assert disc(torch.rand(2, 3, 96, 96)).shape == (2, 1, 12, 12)
    assert disc(torch.rand(1, 3, 16, 24)).shape == (1, 1, 2, 3)
    n_sn = sum(1 for name, _ in disc.named_parameters() if name.endswith("parametrizations.weight.original"))
    assert n_sn == 4  # spectral norm on every convolution but the first and the last


def _gt_cfg(**kw) -> dict:
    cfg = {"model_name": "RFDN", "scale": 4, "kd_method": "gt", "Rate_l1": 0.0, "Rate_adv": 1.0, "adv_channels": 8,
           "adv_lr": 1e-3}
    cfg.update(kw)
    return cfg


def test_adversarial_term_alone_changes_the_network_and_d_learns(one_thread):
    from Utils.objectives import build_objective

    torch.manual_seed(0)
    student = build_model("RFDN", 4).train()
    obj = build_objective(_gt_cfg(), torch.device("cpu"))
    assert obj.term_names == ("l1", "adv") and obj.stat_names == ("d_loss",)
    assert obj.trainable_parameters() == []  # D has its own optimizer, not the student's
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 64, 64)
    before = student.B1.c1_r.weight.detach().clone()
    d_before = {k: v.clone() for k, v in obj.adv.disc.state_dict().items()}
    terms, stats = obj(student(x), {"lr": x, "hr": y})
    assert terms["l1"].item() == 0 and terms["adv"].item() > 0 and stats["d_loss"].item() > 0
    sum(terms.values()).backward()
    assert all(p.grad is None for p in obj.adv.disc.parameters())  # D is frozen on the generator's side
    opt.step()
    assert not torch.equal(before, student.B1.c1_r.weight)
    obj.critic_step()
    changed = [k for k, v in obj.adv.disc.state_dict().items() if not torch.equal(v, d_before[k])]
    assert any(k.endswith("original") for k in changed) and any(k.endswith("_u") for k in changed)
    # D alone (student fixed) learns to tell smooth "fakes" from noisy "reals": its loss falls
    smooth, noisy = torch.full((4, 3, 32, 32), 0.5), torch.rand(4, 3, 32, 32)
    first = None
    for _ in range(30):
        _, d = obj.adv.generator_loss(smooth, noisy)
        first = d.item() if first is None else first
        obj.adv.critic_step()
    _, d = obj.adv.generator_loss(smooth, noisy)
    assert d.item() < 0.5 * first


def test_generator_pass_equals_the_joint_pass_and_builds_no_graph_for_the_real_side(one_thread):
    """The generator's side judges the real images without autograd (a speed-up: no backward for
    them); the loss and the gradient reaching the student equal one joint pass over both."""
    from Utils.objectives.adversarial import AdversarialTerm, relativistic_losses

    torch.manual_seed(0)
    term = AdversarialTerm({"adv_channels": 8}, torch.device("cpu"))
    fake, real = torch.rand(3, 3, 32, 32, requires_grad=True), torch.rand(3, 3, 32, 32)
    g, d = term.generator_loss(fake, real)
    g.backward()
    grad_split, fake.grad = fake.grad.clone(), None
    term.disc.eval()
    g_joint, d_joint = relativistic_losses(*term._judge(real, fake))
    g_joint.backward()
    torch.testing.assert_close(g, g_joint, rtol=1e-6, atol=0)
    torch.testing.assert_close(d, d_joint.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_split, fake.grad, rtol=1e-5, atol=1e-9)
    seen = []
    hook = term.disc.register_forward_hook(lambda m, a, out: seen.append(out.requires_grad))
    term.generator_loss(fake, real)
    hook.remove()
    assert seen == [False, True]  # real: no graph; fake: the path to the student


def test_dtkd_adversarial_term_judges_against_p_on_routed_samples_only(teacher_ckpt, rfdn_teacher_ckpt, one_thread):
    from Utils.objectives import build_objective

    cfg = {"model_name": "RFDN", "scale": 4, "kd_method": "dtkd", "t1_model_name": "IMDN", "t1_checkpoint": teacher_ckpt,
           "t2_model_name": "RFDN", "t2_checkpoint": rfdn_teacher_ckpt, "entropy_gate": "0", "loss_attn": "none",
           "Rate_l1": 0.0, "Rate_kd": 0.0, "Rate_adv": 1.0, "adv_channels": 8}
    obj = build_objective(cfg, torch.device("cpu"))
    assert obj.adv_real == "teacher" and obj.term_names == ("l1", "kd", "adv")
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        p = obj.t2(x)
    # the student's output is P's output: real and fake are the same images, so G's and D's losses are equal
    sr = p.clone().requires_grad_(True)
    terms, stats = obj(sr, {"lr": x, "hr": y, "t2": p})
    assert terms["adv"].item() == pytest.approx(stats["d_loss"].item(), rel=1e-6)
    # ... and against the ground truth (--adv_real gt) they are not
    obj_gt = build_objective({**cfg, "adv_real": "gt"}, torch.device("cpu"))
    obj_gt.adv.disc.load_state_dict(obj.adv.disc.state_dict())
    terms, stats = obj_gt(sr, {"lr": x, "hr": y, "t2": p})
    assert terms["adv"].item() != pytest.approx(stats["d_loss"].item(), rel=1e-3)
    # nothing routed to P: the term is an exact zero, with a gradient path, and D does not move
    obj.router.gate = 8.0
    d_before = {k: v.clone() for k, v in obj.adv.disc.state_dict().items()}
    sr = torch.rand(2, 3, 64, 64, requires_grad=True)
    terms, stats = obj(sr, {"lr": x, "hr": y, "t2": p})
    assert terms["adv"].item() == 0.0 and terms["adv"].requires_grad
    obj.critic_step()
    assert all(torch.equal(v, d_before[k]) for k, v in obj.adv.disc.state_dict().items())
    # one sample routed: D sees that sample alone
    obj.router.gate = 0.0
    obj.router.route = lambda hr: torch.tensor([True, False])
    seen = []
    hook = obj.adv.disc.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    obj(sr, {"lr": x, "hr": y, "t2": p})
    hook.remove()
    assert seen == [1, 1]  # the routed sample alone: P's output (no graph), then the student's


def test_bad_adversarial_flags_are_clear_errors(teacher_ckpt):
    from Utils.objectives import build_objective

    with pytest.raises(ValueError, match="--adv_real teacher needs a perceptual teacher"):
        build_objective(_gt_cfg(adv_real="teacher"), torch.device("cpu"))
    with pytest.raises(ValueError, match="--adv_channels must be >= 1"):
        build_objective(_gt_cfg(adv_channels=0), torch.device("cpu"))
    with pytest.raises(ValueError, match="--adv_start must be >= 0, got -1"):
        build_objective(_gt_cfg(adv_start=-1), torch.device("cpu"))
    cfg = {"model_name": "RFDN", "scale": 4, "kd_method": "dtkd", "t1_model_name": "IMDN", "t1_checkpoint": teacher_ckpt,
           "t2_checkpoint": "", "Rate_adv": 1.0, "adv_real": "teacher"}
    with pytest.raises(ValueError, match="--adv_real teacher needs a perceptual teacher"):
        build_objective(cfg, torch.device("cpu"))


def test_adversarial_warm_up_has_no_term_and_no_critic_step_until_it_ends(one_thread):
    from Utils.objectives import build_objective

    torch.manual_seed(0)
    student = build_model("RFDN", 4).train()
    obj = build_objective(_gt_cfg(adv_start=2), torch.device("cpu"))
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 64, 64)
    d_before = {k: v.clone() for k, v in obj.adv.disc.state_dict().items()}
    for it in (1, 2):  # the warm-up: the term is 0 and D is untouched, power-iteration vectors included
        obj.begin_step(it)
        terms, stats = obj(student(x), {"lr": x, "hr": y})
        assert terms["adv"].item() == 0 and float(stats["d_loss"]) == 0
        obj.critic_step()
        assert all(torch.equal(v, d_before[k]) for k, v in obj.adv.disc.state_dict().items())
    obj.begin_step(3)
    before = student.B1.c1_r.weight.detach().clone()
    terms, stats = obj(student(x), {"lr": x, "hr": y})
    assert terms["adv"].item() > 0 and float(stats["d_loss"]) > 0
    terms["adv"].backward()  # the term alone moves the student once the warm-up is over
    torch.optim.SGD(student.parameters(), lr=1.0).step()
    assert not torch.equal(before, student.B1.c1_r.weight)
    obj.critic_step()
    assert any(not torch.equal(v, d_before[k]) for k, v in obj.adv.disc.state_dict().items())


ADV = ("--Rate_adv", "0.1", "--adv_channels", "8")


def test_adversarial_warm_up_resumes_exactly_inside_it(tmp_path, tiny_hr, teacher_ckpt, one_thread):
    a, b, at1 = straight_and_split(tmp_path, tiny_hr, teacher_ckpt, 3, 1, *ADV, "--adv_start", "2")
    for part in ("model",):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), k
    da, db, d1 = a["objective"]["disc"], b["objective"]["disc"], at1["objective"]["disc"]
    assert all(torch.equal(da[k], db[k]) for k in da)
    assert any(not torch.equal(da[k], d1[k]) for k in da), "D did not start after the warm-up"
    with open(tmp_path / "straight" / "run" / "log.csv", newline="") as f:
        adv = [float(r["adv"]) for r in csv.DictReader(f)]
    assert adv[:2] == [0.0, 0.0] and adv[2] > 0


def test_adversarial_training_resumes_exactly_discriminator_included(tmp_path, tiny_hr, teacher_ckpt, one_thread):
    straight, split = tmp_path / "straight", tmp_path / "split"
    a, b, at1 = straight_and_split(tmp_path, tiny_hr, teacher_ckpt, 3, 1, *ADV)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    da, db = a["objective"]["disc"], b["objective"]["disc"]
    for k in da:
        assert torch.equal(da[k], db[k]), k
    assert any(not torch.equal(da[k], at1["objective"]["disc"][k]) for k in da), "D did not train"
    assert a["objective"]["opt"]["state"]  # D's Adam moments are saved
    with open(straight / "run" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:6] == ["iter", "lr", "l1", "adv", "total", "nonfinite"] and "d_loss" in rows[0]
    strip = lambda rows: [",".join(r.split(",")[:8]) for r in rows]  # noqa: E731  (timing columns differ)
    assert strip((straight / "run" / "log.csv").read_text().splitlines()) == \
        strip((split / "run" / "log.csv").read_text().splitlines())


def test_dtkd_adversarial_with_feature_hints_resumes_exactly(tmp_path, tiny_hr, teacher_ckpt, rfdn_teacher_ckpt,
                                                             one_thread):
    extra = ("--train_by_TT", "True", "--t2_model_name", "RFDN", "--t2_checkpoint", rfdn_teacher_ckpt,
             "--Rate_pfeat", "1", "--entropy_gate", "auto", *ADV)
    a, b, _ = straight_and_split(tmp_path, tiny_hr, teacher_ckpt, 2, 1, *extra)
    assert set(a["objective"]) == {"p_hints", "adv"}
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, v in a["objective"]["adv"]["disc"].items():
        assert torch.equal(v, b["objective"]["adv"]["disc"][k]), k


def test_feature_hint_state_from_before_the_adversarial_term_still_loads(teacher_ckpt, rfdn_teacher_ckpt):
    from Utils.objectives import build_objective

    cfg = {"model_name": "RFDN", "scale": 4, "kd_method": "dtkd", "t1_model_name": "IMDN", "t1_checkpoint": teacher_ckpt,
           "t2_model_name": "RFDN", "t2_checkpoint": rfdn_teacher_ckpt, "Rate_pfeat": 1.0}
    obj = build_objective(cfg, torch.device("cpu"))
    obj.attach_student(build_model("RFDN", 4))
    old = {"adapters": {k: torch.full_like(v, 0.5) for k, v in obj.p_hints.learned_state()["adapters"].items()}}
    obj.load_learned_state(old)  # the hints' state alone, as such checkpoints hold it
    assert all(torch.equal(v, old["adapters"][k]) for k, v in obj.learned_state()["p_hints"]["adapters"].items())
    adv = build_objective({**cfg, "Rate_adv": 1.0, "adv_channels": 8}, torch.device("cpu"))
    adv.attach_student(build_model("RFDN", 4))
    with pytest.raises(ValueError, match="no 'p_hints' part"):
        adv.load_learned_state(old)


def test_torchrun_adversarial_keeps_ranks_in_sync(tmp_path, tiny_hr, teacher_ckpt):
    """D is outside DDP: its gradients are averaged by hand and its power iteration advances once per
    step on every rank, so the checksum (which covers D and its optimizer) agrees."""
    from .test_trainer import _env, _explain, _free_port, _run_main

    launcher = ("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port()))
    proc = _run_main(_train_args(tmp_path, tiny_hr, teacher_ckpt, 2, *ADV, "--cpu"), launcher=launcher, env=_env())
    assert proc.returncode == 0 and "ranks in sync:" in proc.stdout + proc.stderr, _explain(proc)


def test_adversarial_training_under_bf16(tmp_path, tiny_hr, teacher_ckpt, one_thread):
    import main

    assert main.main(_train_args(tmp_path, tiny_hr, teacher_ckpt, 2, *ADV, "--amp", "bf16", "--cpu")) == 0
    with open(tmp_path / "run" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(math.isfinite(float(r["adv"])) and math.isfinite(float(r["d_loss"])) for r in rows)


@pytest.mark.parametrize("adv_amp, want", [(False, torch.float32), (True, torch.bfloat16)])
def test_critic_step_precision_follows_adv_amp(one_thread, adv_amp, want):
    """D's own update runs in float32 unless --adv_amp True asks for the run's bf16 autocast; either way
    D learns. Without --amp bf16 the flag is a clear error (main's parser and the term alike)."""
    import main
    from Utils.objectives import build_objective

    torch.manual_seed(0)
    obj = build_objective(_gt_cfg(amp="bf16", adv_amp=adv_amp), torch.device("cpu"))
    seen = []
    obj.adv.disc.body[2].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    fake, real = torch.full((2, 3, 32, 32), 0.5), torch.rand(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the trainer's step: the generator side in bf16
        obj.adv.generator_loss(fake, real)
    before = obj.adv.disc.body[2].parametrizations.weight.original.detach().clone()
    seen.clear()
    obj.critic_step()
    assert seen == [want]
    assert not torch.equal(before, obj.adv.disc.body[2].parametrizations.weight.original)
    assert obj.adv.disc.body[2].parametrizations.weight.original.dtype == torch.float32  # weights stay float32
    with pytest.raises(ValueError, match="--adv_amp True needs --amp bf16, got --amp none"):
        build_objective(_gt_cfg(amp="none", adv_amp=True), torch.device("cpu"))
    with pytest.raises(SystemExit):
        main.parse_config(["--model_name", "RFDN", "--adv_amp", "True"])


def test_weighted_relativistic_generator_loss_by_hand():
    from Utils.objectives.adversarial import relativistic_losses

    r, f = torch.tensor([[[[1.0, -2.0]]]]), torch.tensor([[[[0.5, 3.0]]]])
    w = torch.tensor([[[[1.0, 0.0]]]])
    rr, ff = r - f.mean(), f - r.mean()
    g_hand = 0.5 * ((w * F.softplus(rr)).mean() + (w * F.softplus(-ff)).mean())
    g, d = relativistic_losses(r, f, w)
    assert g.item() == pytest.approx(g_hand.item())
    assert d.item() == pytest.approx(relativistic_losses(r, f)[1].item())  # D's loss is never weighted
    assert relativistic_losses(r, f, torch.ones_like(w))[0].item() == pytest.approx(relativistic_losses(r, f)[0].item())
    # two real images per fake one (--adv_real both): the weights repeat over them
    r2 = torch.cat([r, r + 1.0])
    rr2, ff2 = r2 - f.mean(), f - r2.mean()
    g_hand = 0.5 * ((torch.cat([w, w]) * F.softplus(rr2)).mean() + (w * F.softplus(-ff2)).mean())
    assert relativistic_losses(r2, f, w)[0].item() == pytest.approx(g_hand.item())


def _dtkd_adv_cfg(teacher_ckpt, rfdn_teacher_ckpt, **kw) -> dict:
    cfg = {"model_name": "RFDN", "scale": 4, "kd_method": "dtkd", "t1_model_name": "IMDN", "t1_checkpoint": teacher_ckpt,
           "t2_model_name": "RFDN", "t2_checkpoint": rfdn_teacher_ckpt, "entropy_gate": "0", "loss_attn": "none",
           "Rate_l1": 0.0, "Rate_kd": 0.0, "Rate_adv": 1.0, "adv_channels": 8, "adv_lr": 1e-3}
    cfg.update(kw)
    return cfg


def test_trust_map_marks_pixels_where_the_teacher_is_closer():
    from Utils.losses import trust_map

    y = torch.zeros(1, 3, 2, 2)
    s = torch.full((1, 3, 2, 2), 0.5)
    t = torch.tensor([0.1, 0.9, 0.5, 0.2]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    m = trust_map(s, t, y)
    assert m.shape == (1, 1, 2, 2) and m.flatten().tolist() == [1.0, 0.0, 0.0, 1.0]  # ties are not trusted


@pytest.mark.parametrize("extra", [{"adv_real": "both"}, {"adv_real": "gt", "adv_trust": True}])
def test_p_guided_adversarial_terms_alone_change_the_student(teacher_ckpt, rfdn_teacher_ckpt, one_thread, extra):
    from Utils.objectives import build_objective

    torch.manual_seed(0)
    obj = build_objective(_dtkd_adv_cfg(teacher_ckpt, rfdn_teacher_ckpt, **extra), torch.device("cpu"))
    student = build_model("RFDN")
    before = [p.detach().clone() for p in student.parameters()]
    opt = torch.optim.SGD(student.parameters(), lr=1.0)
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 64, 64)
    terms, stats = obj(student(x), {"lr": x, "hr": y})
    assert set(terms) == {"l1", "kd", "adv"} and terms["adv"].item() > 0
    (terms["l1"] + terms["kd"] + terms["adv"]).backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, student.parameters()))
    d_before = {k: v.clone() for k, v in obj.adv.disc.state_dict().items()}
    obj.critic_step()
    assert any(not torch.equal(v, d_before[k]) for k, v in obj.adv.disc.state_dict().items())
    if extra.get("adv_trust"):
        assert 0.0 <= stats["adv_trust"].item() <= 1.0


def test_adv_real_both_shows_d_the_ground_truth_and_p(teacher_ckpt, rfdn_teacher_ckpt, one_thread):
    from Utils.objectives import build_objective

    obj = build_objective(_dtkd_adv_cfg(teacher_ckpt, rfdn_teacher_ckpt, adv_real="both"), torch.device("cpu"))
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 64, 64)
    obj.router.route = lambda hr: torch.tensor([True, False])
    seen = []
    hook = obj.adv.disc.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    with torch.no_grad():
        p = obj.t2(x)
    obj(torch.rand(2, 3, 64, 64, requires_grad=True), {"lr": x, "hr": y, "t2": p})
    hook.remove()
    real = seen[0]  # the real side: the routed sample's ground truth, then P's output for it
    assert real.shape[0] == 2 and torch.equal(real[0], y[0]) and torch.equal(real[1], p[0])


def test_adv_trust_with_an_untrusted_teacher_teaches_nothing(teacher_ckpt, rfdn_teacher_ckpt, one_thread):
    from Utils.objectives import build_objective

    obj = build_objective(_dtkd_adv_cfg(teacher_ckpt, rfdn_teacher_ckpt, adv_real="gt", adv_trust=True),
                          torch.device("cpu"))
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        p = obj.t2(x)
    y = p + 0.3  # the student is the ground truth itself: P is never closer, the map is all zeros
    sr = y.clone().requires_grad_(True)
    terms, stats = obj(sr, {"lr": x, "hr": y, "t2": p})
    assert stats["adv_trust"].item() == 0.0 and terms["adv"].item() == 0.0
    terms["adv"].backward()
    assert sr.grad is not None and sr.grad.abs().max().item() == 0.0


def test_p_guided_adversarial_flags_need_p(teacher_ckpt):
    from Utils.objectives import build_objective

    cfg = {"model_name": "RFDN", "scale": 4, "kd_method": "dtkd", "t1_model_name": "IMDN", "t1_checkpoint": teacher_ckpt,
           "t2_checkpoint": "", "Rate_adv": 1.0}
    with pytest.raises(ValueError, match="--adv_real both needs a perceptual teacher"):
        build_objective({**cfg, "adv_real": "both"}, torch.device("cpu"))
    with pytest.raises(ValueError, match="--adv_trust True needs a perceptual teacher"):
        build_objective({**cfg, "adv_real": "gt", "adv_trust": True}, torch.device("cpu"))
