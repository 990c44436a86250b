"""Utils.compare: summaries -> markdown/CSV table, merge of duplicates, bad files, perception-distortion plot."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
from PIL import Image

from Utils.compare import comparison_table, load_summaries, main, method_labels, plot_perception_distortion, to_markdown
from Utils.evaluate import SUMMARY_COLUMNS

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64


def summary_row(model: str, ckpt: str, sha: str, dataset: str, psnr="", ssim="", niqe="", lpips="",
                params="704560") -> dict:
    return {"model": model, "checkpoint": ckpt, "dataset": dataset, "images": "5", "failed": "0",
            "psnr": psnr, "ssim": ssim, "niqe": niqe, "lpips": lpips, "ag": "5.000000", "params": params,
            "seconds": "1.000000", "sha256": sha, "results": f"/out/{ckpt}/{dataset}"}


def write_summary(path: Path, rows: list[dict], columns=SUMMARY_COLUMNS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def summaries(tmp_path: Path) -> tuple[Path, Path]:
    a = write_summary(tmp_path / "a" / "summary.csv", [
        summary_row("RFDN", "DTKD-RFDN.pth", SHA_A, "Set5", "31.341775", "0.877272", "6.358075", "0.170000"),
        summary_row("RFDN", "DTKD-RFDN.pth", SHA_A, "Set14", "28.013526", "0.761793", "5.166641", "0.250000"),
        summary_row("LBNet", "DTKD-LBNet.pth", SHA_B, "Set5", "32.096300", "0.891900", "6.900000", "0.160000",
                    params="742000"),
        summary_row("LBNet", "DTKD-LBNet.pth", SHA_B, "Set14", "28.500000", "0.780000", "5.000000", "0.260000",
                    params="742000"),
    ])
    b = write_summary(tmp_path / "b" / "summary.csv", [
        summary_row("IMDN", "IMDN_x4.pth", SHA_C, "Set5", "32.209600", "0.894800", "7.100000", "0.165000",
                    params="715176"),
        # the same (model, checkpoint, sha256, dataset) as in a: this later row wins
        summary_row("RFDN", "DTKD-RFDN.pth", SHA_A, "Set5", "31.400000", "0.880000", "6.000000", "0.170000"),
    ])
    return a, b


def table_lines(markdown: str) -> dict[str, list[str]]:
    """Markdown table rows by their first cell, as lists of stripped cells."""
    out = {}
    for line in markdown.splitlines():
        if line.startswith("|") and not line.startswith("|-"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            out[cells[0]] = cells
    return out


def test_merge_keeps_last_duplicate(summaries, caplog):
    caplog.set_level(logging.INFO, logger="Utils.compare")
    rows = load_summaries(summaries)
    assert len(rows) == 5
    rfdn_set5 = [r for r in rows if r["model"] == "RFDN" and r["dataset"] == "Set5"]
    assert len(rfdn_set5) == 1 and rfdn_set5[0]["psnr"] == pytest.approx(31.4)
    assert rfdn_set5[0]["params"] == 704560 and rfdn_set5[0]["images"] == 5
    assert "duplicate RFDN DTKD-RFDN.pth on Set5" in caplog.text
    assert str(summaries[1]) in caplog.text


def test_markdown_values_and_bold(summaries):
    header, rows = comparison_table(load_summaries(summaries), ["psnr", "ssim", "niqe"])
    assert [str(c) for c in header] == ["Method", "Params", "Set5 PSNR / SSIM", "Set5 NIQE",
                                        "Set14 PSNR / SSIM", "Set14 NIQE"]
    md = to_markdown(header, rows)
    lines = table_lines(md)
    assert lines["Method"][3] == "Set5 NIQE ↓"
    # IMDN has the best Set5 PSNR and SSIM; RFDN (after the merge) the lowest Set5 NIQE
    assert lines["IMDN_x4"][1:4] == ["715.2K", "**32.2096** / **0.8948**", "7.1000"]
    assert lines["DTKD-RFDN"][1:4] == ["704.6K", "31.4000 / 0.8800", "**6.0000**"]
    assert lines["DTKD-LBNet"][2:4] == ["32.0963 / 0.8919", "6.9000"]
    # Set14: LBNet has the higher PSNR/SSIM and the lower NIQE; IMDN was not evaluated there
    assert lines["DTKD-LBNet"][4:6] == ["**28.5000** / **0.7800**", "**5.0000**"]
    assert lines["DTKD-RFDN"][4:6] == ["28.0135 / 0.7618", "5.1666"]
    assert lines["IMDN_x4"][4:6] == ["- / -", "-"]


def test_lower_is_better_for_lpips_and_ties(tmp_path):
    p = write_summary(tmp_path / "s.csv", [
        summary_row("Alpha", "a.pth", SHA_A, "Set5", "30.000000", "0.9", lpips="0.200000"),
        summary_row("Beta", "b.pth", SHA_B, "Set5", "30.000010", "0.8", lpips="0.100000"),
    ])
    md = to_markdown(*comparison_table(load_summaries([p]), ["psnr", "lpips", "ag"]))
    lines = table_lines(md)
    assert lines["Alpha (a)"][2:] == ["**30.0000**", "0.2000", "5.0000"]  # equal when shown: both bold
    assert lines["Beta (b)"][2:] == ["**30.0000**", "**0.1000**", "5.0000"]  # AG has no better direction


def test_labels(summaries):
    rows = load_summaries(summaries)
    assert list(method_labels(rows, "both").values()) == ["DTKD-RFDN", "DTKD-LBNet", "IMDN_x4"]
    assert list(method_labels(rows, "model").values()) == ["RFDN", "LBNet", "IMDN"]
    same_model = [{"model": "RFDN", "checkpoint": c, "sha256": s} for c, s in
                  (("x/best.pth", SHA_A), ("y/best.pth", SHA_B), ("last.pth", SHA_C))]
    assert list(method_labels(same_model, "model").values()) == [
        f"RFDN (best) #{SHA_A[:8]}", f"RFDN (best) #{SHA_B[:8]}", "RFDN (last)"]


def test_main_writes_markdown_csv_and_plot(summaries, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main([str(p) for p in summaries] + ["--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "**32.2096** / **0.8948**" in stdout
    assert table_lines(stdout)["Method"][2:] == ["Set5 PSNR / SSIM", "Set5 NIQE ↓", "Set5 LPIPS ↓",
                                                 "Set14 PSNR / SSIM", "Set14 NIQE ↓", "Set14 LPIPS ↓"]
    assert "**32.2096**" in (out / "compare.md").read_text()
    with open(out / "compare.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = {r["method"]: r for r in reader}
    assert reader.fieldnames == ["method", "params", "Set5_psnr", "Set5_ssim", "Set5_niqe", "Set5_lpips",
                                 "Set14_psnr", "Set14_ssim", "Set14_niqe", "Set14_lpips"]
    assert rows["DTKD-RFDN"]["Set5_psnr"] == "31.400000" and rows["DTKD-RFDN"]["params"] == "704560"
    assert rows["IMDN_x4"]["Set14_psnr"] == ""
    png = out / "perception_distortion.png"
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert im.width >= 600 and im.height >= 400
        im.verify()
    assert 10_000 < png.stat().st_size < 5_000_000


def test_plot_defaults_beside_first_summary(summaries):
    assert main([str(summaries[0]), "--metrics", "psnr"]) == 0
    assert (summaries[0].parent / "perception_distortion.png").is_file()
    assert not (summaries[0].parent / "compare.md").exists()


def test_no_perceptual_measure_warns_and_draws_nothing(tmp_path, caplog):
    p = write_summary(tmp_path / "s" / "summary.csv", [
        summary_row("Alpha", "a.pth", SHA_A, "Set5", "30.000000", "0.9"),
        summary_row("Beta", "b.pth", SHA_B, "Set5", "31.000000", "0.8"),
    ])
    with caplog.at_level(logging.WARNING, logger="Utils.compare"):
        assert plot_perception_distortion(load_summaries([p]), tmp_path / "pd.png") is None
        assert main([str(p)]) == 0
    assert "no perception-distortion plot" in caplog.text
    assert not (tmp_path / "pd.png").exists()
    assert not (p.parent / "perception_distortion.png").exists()


def test_no_perceptual_measure_removes_an_earlier_plot(tmp_path, caplog):
    """A plot left by an earlier comparison must not pass for this one (the demo lists only files that exist)."""
    p = write_summary(tmp_path / "s" / "summary.csv", [
        summary_row("Alpha", "a.pth", SHA_A, "Set5", "30.000000", "0.9"),
        summary_row("Beta", "b.pth", SHA_B, "Set5", "31.000000", "0.8"),
    ])
    stale = tmp_path / "out" / "perception_distortion.png"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    with caplog.at_level(logging.WARNING, logger="Utils.compare"):
        assert main([str(p), "--out", str(tmp_path / "out")]) == 0
    assert not stale.exists() and "removed the earlier" in caplog.text
    assert "NIQE" not in (tmp_path / "out" / "compare.md").read_text()


def test_niqe_column_when_niqe_is_present(tmp_path):
    p = write_summary(tmp_path / "s" / "summary.csv", [
        summary_row("Alpha", "a.pth", SHA_A, "Demo", "30.000000", "0.9", niqe="6.100000"),
        summary_row("Beta", "b.pth", SHA_B, "Demo", "31.000000", "0.8", niqe="6.400000"),
    ])
    assert main([str(p), "--out", str(tmp_path / "out")]) == 0
    assert "Demo NIQE ↓" in (tmp_path / "out" / "compare.md").read_text()
    assert (tmp_path / "out" / "perception_distortion.png").is_file()


def test_missing_column_is_exit_2_naming_the_file(tmp_path, caplog):
    cols = [c for c in SUMMARY_COLUMNS if c != "sha256"]
    p = write_summary(tmp_path / "bad.csv", [summary_row("Alpha", "a.pth", SHA_A, "Set5", "30")], cols)
    assert main([str(p)]) == 2
    assert str(p) in caplog.text and "missing column(s): sha256" in caplog.text


def test_unparsable_number_and_missing_file(tmp_path, caplog, summaries):
    p = write_summary(tmp_path / "bad.csv", [summary_row("Alpha", "a.pth", SHA_A, "Set5", "30"),
                                             summary_row("Alpha", "a.pth", SHA_A, "Set14", "thirty")])
    assert main([str(summaries[0]), str(p)]) == 2
    assert f"{p} row 3: column 'psnr'" in caplog.text and "'thirty'" in caplog.text
    caplog.clear()
    assert main([str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv: no such file" in caplog.text
