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
