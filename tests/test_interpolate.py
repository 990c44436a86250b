"""Network interpolation: blends equal the linear mix, bad inputs fail in one line, the choice follows the rule."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from Model import build_model
from Utils.checkpoint import read_state_dict
from Utils.interpolate import InterpolationError, alpha_of, blend_state_dicts, choose, main, write_blends


def _pair() -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(3, 4, generator=g), "n": torch.tensor(7)}
    b = {"w": torch.randn(3, 4, generator=g), "n": torch.tensor(7)}
    return a, b


def test_blend_is_the_linear_mix_and_keeps_the_ends_exactly():
    a, b = _pair()
    mid = blend_state_dicts(a, b, 0.3)
    torch.testing.assert_close(mid["w"], 0.3 * b["w"] + 0.7 * a["w"], rtol=0, atol=1e-6)
    assert mid["w"].dtype == torch.float32 and torch.equal(mid["n"], torch.tensor(7))
    assert torch.equal(blend_state_dicts(a, b, 1.0)["w"], b["w"])
    assert torch.equal(blend_state_dicts(a, b, 0.0)["w"], a["w"])


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("n"), "keys differ"),
    (lambda b: b.__setitem__("w", torch.zeros(4, 3)), r"has shape \(4, 3\)"),
    (lambda b: b.__setitem__("n", torch.tensor(8)), "integer tensor n differs"),
])
def test_blend_refuses_files_that_do_not_match(change, message):
    a, b = _pair()
    change(b)
    with pytest.raises(InterpolationError, match=message):
        blend_state_dicts(a, b, 0.5, "a.pth", "b.pth")
    with pytest.raises(InterpolationError, match="outside"):
        blend_state_dicts(*_pair(), 1.5)


def test_write_blends_loads_strictly_names_by_alpha_and_never_overwrites(tmp_path, capsys):
    torch.manual_seed(0)
    s1, s2 = tmp_path / "s1.pth", tmp_path / "teacher.pth"
    torch.save(build_model("EdgeSRN_small").state_dict(), s1)
    torch.save({"params": build_model("EdgeSRN_small").state_dict()}, s2)  # a wrapped file reads the same
    paths = write_blends(s1, s2, [1.0, 0.8], tmp_path / "out", model_name="EdgeSRN_small")
    assert [p.name for p in paths] == ["teacher_a1.00.pth", "teacher_a0.80.pth"]
    assert alpha_of(paths[1].name) == 0.8 and alpha_of("final.pth") is None
    one, ref = read_state_dict(paths[0]), read_state_dict(s2)
    assert all(torch.equal(one[k], ref[k]) for k in ref)
    before = paths[1].read_bytes()
    code = main(["blend", str(s1), str(s2), "--alpha", "0.8", "--out_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "teacher_a0.80.pth: exists; not overwritten" in err
    assert paths[1].read_bytes() == before


def _summary() -> pd.DataFrame:
    rows = []
    # fidelity reference: Demo (3 images) 30 dB / NIQE 7, train (1 image) 26 dB / NIQE 11 -> pooled 29 / 8
    for ckpt, demo, train in [("f.pth", (30.0, 7.0), (26.0, 11.0)),
                              ("t_a1.00.pth", (27.0, 6.0), (27.0, 7.0)),    # 27.0 / 6.25: psnr -0.5, niqe +1.25
                              ("t_a0.90.pth", (27.6, 6.5), (27.6, 7.5)),    # 27.6 / 6.75: +0.1, +0.75
                              ("t_a0.80.pth", (28.0, 7.0), (28.0, 7.4)),    # 28.0 / 7.1: +0.5, +0.4
                              ("t_a0.70.pth", (28.5, 7.5), (28.5, 7.5))]:   # 28.5 / 7.5: +1.0, 0.0
        rows.append({"checkpoint": ckpt, "dataset": "Demo", "images": 3, "psnr": demo[0], "niqe": demo[1]})
        rows.append({"checkpoint": ckpt, "dataset": "train", "images": 1, "psnr": train[0], "niqe": train[1]})
    return pd.DataFrame(rows)


def test_choose_takes_the_largest_worst_slack_on_image_weighted_means():
    names = ["t_a1.00.pth", "t_a0.90.pth", "t_a0.80.pth", "t_a0.70.pth"]
    ranked = choose(_summary(), "f.pth", names, ["Demo", "train"])
    assert list(ranked["checkpoint"]) == ["t_a0.80.pth", "t_a0.90.pth", "t_a0.70.pth", "t_a1.00.pth"]
    best = ranked.iloc[0]
    assert best["psnr"] == pytest.approx(28.0) and best["niqe"] == pytest.approx(7.1)
    assert best["slack_psnr"] == pytest.approx(0.5) and best["slack_niqe"] == pytest.approx(0.4)
    tie = _summary()
    tie.loc[tie["checkpoint"] == "t_a0.90.pth", "psnr"] += 0.3  # 27.9 / 6.75: worst slack 0.4, as 0.80's
    assert choose(tie, "f.pth", names, ["Demo", "train"]).iloc[0]["checkpoint"] == "t_a0.90.pth"


def test_choose_cli_prints_the_choice_and_fails_in_one_line(tmp_path, capsys):
    path = tmp_path / "summary.csv"
    _summary().to_csv(path, index=False)
    base = ["choose", str(path), "--fidelity", "f.pth", "--datasets", "Demo", "train", "--candidates"]
    assert main(base + ["dir/t_a1.00.pth", "dir/t_a0.80.pth"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "chosen: t_a0.80.pth"
    assert main(base + ["t_a0.50.pth"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no row for t_a0.50.pth on Demo, train" in err


def test_choose_never_picks_a_candidate_without_niqe(tmp_path, capsys):
    """A NaN NIQE is no slack: before, pandas' min() skipped it and the candidate could win on PSNR alone."""
    table = _summary()
    table.loc[(table["checkpoint"] == "t_a0.70.pth") & (table["dataset"] == "train"), "niqe"] = float("nan")
    table.loc[table["checkpoint"] == "t_a0.70.pth", "psnr"] += 5.0  # the best PSNR by far
    names = ["t_a0.70.pth", "t_a0.80.pth"]
    ranked = choose(table, "f.pth", names, ["Demo", "train"])
    assert list(ranked["checkpoint"]) == ["t_a0.80.pth", "t_a0.70.pth"]
    assert pd.isna(ranked.iloc[1]["worst_slack"]) and pd.isna(ranked.iloc[1]["niqe"])  # no partial mean
    path = tmp_path / "summary.csv"
    table.to_csv(path, index=False)
    base = ["choose", str(path), "--fidelity", "f.pth", "--datasets", "Demo", "train", "--candidates"]
    assert main(base + names) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "chosen: t_a0.80.pth"
    assert out[-2].startswith("cannot judge: NIQE unavailable for t_a0.70.pth (niqe is empty for train")


@pytest.mark.parametrize("drop", ["nan", "column"])
def test_choose_without_reference_niqe_chooses_nothing(tmp_path, capsys, drop):
    table = _summary()
    if drop == "nan":
        table.loc[table["checkpoint"] == "f.pth", "niqe"] = float("nan")
    else:
        table = table.drop(columns=["niqe"])
    path = tmp_path / "summary.csv"
    table.to_csv(path, index=False)
    assert main(["choose", str(path), "--fidelity", "f.pth", "--datasets", "Demo", "train",
                 "--candidates", "t_a0.80.pth", "t_a0.90.pth"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert not any(line.startswith("chosen:") for line in lines)
    judged = [line for line in lines if line.startswith("cannot judge: ")]
    assert len(judged) == 2 and all("NIQE unavailable for " in line and "f.pth (" in line for line in judged)
    assert "no candidate can be judged" in captured.err
