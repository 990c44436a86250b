"""The perception–distortion front (Utils/front.py): margins above a reference line and PSNR differences at
matched NIQE, against values computed by hand on a synthetic table."""
from __future__ import annotations

import io
import math

import pandas as pd
import pytest

from Utils import front

T_975_2 = 4.302652729911275  # Student t quantile 0.975, 2 degrees of freedom

# start (28.5, 6.0) and P (28.0, 5.0): the line gains 0.5 dB per NIQE unit, PSNR(n) = 28.5 + 0.5 (n - 6)
REFS = pd.read_csv(io.StringIO("""name,dataset,psnr,niqe
start,Set14,28.5,6.0
P,Set14,28.0,5.0
F,Set14,28.6,6.4
"""))

# arm "a" and control "c", three seeds, marks 500 and 1000 (the last iteration)
MARKS = pd.read_csv(io.StringIO("""arm,seed,mark,dataset,psnr,niqe
c,0,500,Set14,28.30,5.8
c,0,1000,Set14,28.00,5.2
c,1,500,Set14,28.20,5.6
c,1,1000,Set14,27.90,5.0
c,2,500,Set14,28.40,5.9
c,2,1000,Set14,28.10,5.5
a,0,500,Set14,28.40,5.9
a,0,1000,Set14,28.30,5.5
a,1,500,Set14,28.35,5.8
a,1,1000,Set14,28.20,5.4
a,2,500,Set14,28.45,5.95
a,2,1000,Set14,28.25,5.45
"""))
FINALS = MARKS[MARKS["mark"] == 1000].drop(columns="mark").reset_index(drop=True)


def test_line_psnr_by_hand():
    assert front.line_psnr(5.5, (28.5, 6.0), (28.0, 5.0)) == pytest.approx(28.25)
    assert front.line_psnr(6.4, (28.5, 6.0), (28.0, 5.0)) == pytest.approx(28.7)  # beyond the start: extended
    assert math.isnan(front.line_psnr(5.5, (28.5, 6.0), (28.0, 6.0)))  # a vertical line has no PSNR at a NIQE
    assert math.isnan(front.line_psnr(math.nan, (28.5, 6.0), (28.0, 5.0)))


def test_margins_by_hand():
    m = front.add_margins(FINALS, REFS, ("start", "P")).set_index(["arm", "seed"])["margin"]
    # a: (28.30, 5.5) -> line 28.25 -> +0.05; (28.20, 5.4) -> 28.20 -> 0; (28.25, 5.45) -> 28.225 -> +0.025
    assert m[("a", 0)] == pytest.approx(0.05) and m[("a", 1)] == pytest.approx(0.0, abs=1e-12)
    assert m[("a", 2)] == pytest.approx(0.025)
    # c: (28.00, 5.2) -> 28.10 -> -0.10; (27.90, 5.0) -> 28.0 -> -0.10; (28.10, 5.5) -> 28.25 -> -0.15
    assert [m[("c", s)] for s in range(3)] == pytest.approx([-0.10, -0.10, -0.15])


def test_path_psnr_takes_the_highest_crossing_and_never_extrapolates():
    # a path that goes down in NIQE, back up, and down again: NIQE 6 -> 5 -> 5.8 -> 5.2
    niqe, psnr = [6.0, 5.0, 5.8, 5.2], [28.5, 28.0, 28.4, 28.3]
    # at 5.5: segment 1 gives 28.25, segment 2 28.25, segment 3 28.35 -> the highest, 28.35
    assert front.path_psnr_at(niqe, psnr, 5.5) == pytest.approx(28.35)
    assert math.isnan(front.path_psnr_at(niqe, psnr, 4.9))  # never reached
    assert front.path_psnr_at(niqe, psnr, 6.0) == pytest.approx(28.5)  # an end point
    assert math.isnan(front.path_psnr_at([], [], 5.0))


def test_matched_niqe_differences_by_hand():
    origin = (28.5, 6.0)
    d = front.matched_differences(FINALS, MARKS, "a", "c", "Set14", origin)
    # seed 0: a at NIQE 5.5; c's path 6.0/28.5 -> 5.8/28.3 -> 5.2/28.0: at 5.5 on the second segment,
    #   28.3 + (5.5 - 5.8) * (28.0 - 28.3) / (5.2 - 5.8) = 28.15 -> 28.30 - 28.15 = +0.15
    # seed 1: a at 5.4; c 6.0/28.5 -> 5.6/28.2 -> 5.0/27.9: 28.2 + (-0.2) * (-0.3) / (-0.6) = 28.1 -> +0.10
    # seed 2: a at 5.45; c 6.0/28.5 -> 5.9/28.4 -> 5.5/28.1: never reaches 5.45 -> NaN
    assert d[0] == pytest.approx(0.15) and d[1] == pytest.approx(0.10) and math.isnan(d[2])
    # without the origin seed 0's path starts at 5.8: same answer; a NIQE above 5.8 would be out of reach
    assert front.matched_differences(FINALS, MARKS, "a", "c", "Set14")[0] == pytest.approx(0.15)


def test_front_summary_by_hand():
    s = front.front_summary(FINALS, MARKS, REFS, ("start", "P"), "c", "start").set_index("arm")
    margins = [0.05, 0.0, 0.025]
    mean = sum(margins) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in margins) / 2)
    assert s.loc["a", "margin_mean"] == pytest.approx(mean)
    assert s.loc["a", "margin_ci"] == pytest.approx(T_975_2 * sd / math.sqrt(3))
    assert s.loc["a", "margin_n"] == 3 and not s.loc["a", "margin_sig"]  # 0.025 ± 0.062
    # c: -0.10, -0.10, -0.15 -> mean -0.11667, sd 0.028868 -> half 0.0717: below the line, significantly
    assert s.loc["c", "margin_mean"] == pytest.approx(-0.35 / 3)
    assert s.loc["c", "margin_sig"]
    # matched NIQE: two seeds reach (0.15, 0.10): mean 0.125, sd 0.035355, t(0.975, 1) = 12.7062
    assert s.loc["a", "matched_n"] == 2 and s.loc["a", "matched_diff"] == pytest.approx(0.125)
    assert s.loc["a", "matched_ci"] == pytest.approx(12.706204736174696 * 0.05 / math.sqrt(2) / math.sqrt(2))
    assert not s.loc["a", "matched_sig"]
    assert s.loc["c", "matched_n"] == 0 and math.isnan(s.loc["c", "matched_diff"])  # the control itself


def test_mean_curves_start_at_the_origin():
    c = front.mean_curves(MARKS, REFS, "start")
    a = c[c["arm"] == "a"]
    assert a["mark"].tolist() == [0, 500, 1000]
    assert a["psnr"].tolist() == pytest.approx([28.5, (28.40 + 28.35 + 28.45) / 3, (28.30 + 28.20 + 28.25) / 3])
    assert a["niqe"].tolist() == pytest.approx([6.0, (5.9 + 5.8 + 5.95) / 3, (5.5 + 5.4 + 5.45) / 3])


def test_missing_niqe_gives_no_margin():
    finals = FINALS.copy()
    finals.loc[finals["arm"] == "a", "niqe"] = math.nan
    s = front.front_summary(finals, MARKS, REFS, ("start", "P"), None, None).set_index("arm")
    assert s.loc["a", "margin_n"] == 0 and math.isnan(s.loc["a", "margin_mean"]) and not s.loc["a", "margin_sig"]


def test_command_line_margins_of_a_runs_csv(tmp_path, capsys):
    FINALS.to_csv(tmp_path / "runs.csv", index=False)
    REFS.to_csv(tmp_path / "refs.csv", index=False)
    rc = front.main([str(tmp_path / "runs.csv"), "--references", str(tmp_path / "refs.csv"), "--line", "start", "P",
                     "--out", str(tmp_path / "m.csv")])
    assert rc == 0
    m = pd.read_csv(tmp_path / "m.csv").set_index("arm")
    assert m.loc["a", "margin_mean"] == pytest.approx(0.025, abs=1e-6)  # the CSV keeps 6 decimals
    assert m.loc["c", "margin_mean"] == pytest.approx(-0.35 / 3, abs=1e-6)
    assert front.main([str(tmp_path / "runs.csv"), "--references", str(tmp_path / "refs.csv"), "--line", "start",
                       "Q"]) == 2
    assert "no reference 'Q'" in capsys.readouterr().err
