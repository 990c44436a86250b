"""The demo's verdict lines on a hand-made summary table."""
from __future__ import annotations

import pandas as pd
import pytest

from Utils.demo_verdict import main, verdict


def _table(p_niqe: float, s_psnr: float) -> pd.DataFrame:
    rows = [("f.pth", 29.0, 6.4), ("p.pth", 28.0, p_niqe), ("b.pth", 29.0, 6.2), ("s.pth", s_psnr, 6.1)]
    return pd.DataFrame([{"checkpoint": c, "dataset": "Demo", "psnr": p, "niqe": n} for c, p, n in rows])


@pytest.mark.parametrize("p_niqe, s_psnr, expected", [
    (5.9, 28.95, (True, True)),     # teacher 0.5 below, 1.0 dB below; student -0.05 dB, lower NIQE
    (5.95, 28.95, (False, True)),   # teacher only 0.45 below the fidelity teacher's NIQE
    (5.9, 28.85, (True, False)),    # student 0.15 dB below the baseline
])
def test_verdict_checks(p_niqe, s_psnr, expected):
    checks = verdict(_table(p_niqe, s_psnr), "Demo", "f.pth", "p.pth", "b.pth", "s.pth")
    assert tuple(ok for ok, _ in checks) == expected


def test_verdict_cli_prints_and_strict_exit(tmp_path, capsys):
    path = tmp_path / "summary.csv"
    _table(5.95, 28.95).to_csv(path, index=False)
    args = [str(path), "--dataset", "Demo", "--fidelity", "f.pth", "--perceptual", "p.pth", "--baseline", "b.pth",
            "--student", "s.pth"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("FAIL  perceptual teacher p.pth: NIQE 5.950 vs fidelity teacher 6.400 (-0.450")
    assert out[1].startswith("PASS  DTKD student s.pth")
    assert main(args + ["--strict"]) == 1


def test_verdict_teacher_only_and_half_a_student_pair(tmp_path, capsys):
    path = tmp_path / "summary.csv"
    _table(5.9, 28.95).to_csv(path, index=False)
    args = [str(path), "--dataset", "Demo", "--fidelity", "f.pth", "--perceptual", "p.pth"]
    assert main(args + ["--strict"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("PASS  perceptual teacher p.pth")
    with pytest.raises(SystemExit) as exc:
        main(args + ["--baseline", "b.pth"])
    assert exc.value.code == 2
    assert "--baseline and --student go together" in capsys.readouterr().err


def _cli(path, *extra: str) -> list[str]:
    return [str(path), "--dataset", "Demo", "--fidelity", "f.pth", "--perceptual", "p.pth", "--baseline", "b.pth",
            "--student", "s.pth", *extra]


def test_nan_niqe_gives_no_pass_and_strict_exits_1(tmp_path, capsys):
    """NIQE off for every model (the summary's niqe cells empty): no verdict, one 'cannot judge' line each."""
    path = tmp_path / "summary.csv"
    table = _table(5.9, 28.95)
    table["niqe"] = float("nan")
    table.to_csv(path, index=False)
    assert main(_cli(path)) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and not any("PASS" in line for line in out), out
    assert out[0].startswith("cannot judge: NIQE unavailable for p.pth, f.pth (niqe is empty in the summary")
    assert out[1].startswith("cannot judge: NIQE unavailable for s.pth, b.pth (")
    assert main(_cli(path, "--strict")) == 1


def test_one_nan_is_enough_to_withhold_the_verdict(tmp_path, capsys):
    """The case that printed PASS on NaN before: only the fidelity teacher's NIQE is missing."""
    table = _table(5.9, 28.95)
    table.loc[table["checkpoint"] == "f.pth", "niqe"] = float("nan")
    checks = verdict(table, "Demo", "f.pth", "p.pth", "b.pth", "s.pth")
    assert checks[0][0] is None and "NIQE unavailable for f.pth (" in checks[0][1]
    assert checks[1][0] is True  # the student pair has its figures
    path = tmp_path / "summary.csv"
    table.to_csv(path, index=False)
    assert main(_cli(path, "--strict")) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("cannot judge: NIQE unavailable for f.pth") and out[1].startswith("PASS  DTKD student")


def test_missing_niqe_column_gives_no_pass_and_strict_exits_1(tmp_path, capsys):
    path = tmp_path / "summary.csv"
    _table(5.9, 28.95).drop(columns=["niqe"]).to_csv(path, index=False)
    assert main(_cli(path)) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and not any("PASS" in line or "FAIL" in line for line in out), out
    assert all(line.startswith("cannot judge: NIQE unavailable for ") and "(the summary has no niqe column)" in line
               for line in out)
    assert main(_cli(path, "--strict")) == 1


def test_criterion_met_never_passes_on_nan():
    from Utils.demo_verdict import criterion_met, teacher_slacks

    nan = float("nan")
    assert criterion_met(teacher_slacks({"psnr": 29.0, "niqe": nan}, {"psnr": 28.0, "niqe": nan})) is None
    assert criterion_met((0.5, nan)) is None and criterion_met((nan, -1.0)) is None
    assert criterion_met((0.0, 0.1)) is True and criterion_met((0.1, -0.01)) is False


def test_missing_summary_is_one_line_error(tmp_path, capsys):
    assert main(_cli(tmp_path / "absent.csv")) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'absent.csv'}: summary file not found"
